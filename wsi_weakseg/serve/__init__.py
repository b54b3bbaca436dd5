"""``wsi-weakseg serve``: the engine behind a local HTTP API (FastAPI + uvicorn), jobs on the cohort engine."""
