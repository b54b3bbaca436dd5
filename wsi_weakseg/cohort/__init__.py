"""Cohorts: many slides on a Dask cluster, resumable and failure-isolated (``wsi-weakseg cohort``)."""

from .inputs import DEFAULT_PATTERNS, SlideJob, find_slides
from .runner import CohortOptions, CohortSummary, run_cohort

__all__ = ["DEFAULT_PATTERNS", "CohortOptions", "CohortSummary", "SlideJob", "find_slides", "run_cohort"]
