"""The quickstart notebook runs end to end on the demo slide and shows what it promises.

The notebook is executed in memory with nbclient (the file in the repository is never rewritten) by a
kernel running this very interpreter: a throwaway kernelspec in ``tmp_path`` launches
``sys.executable -m ipykernel_launcher``, so a ``python3`` kernelspec registered elsewhere (another
environment, a user-level install) can never be picked up instead. The kernel's working directory and
``TMPDIR`` are ``tmp_path``, so the demo slide, the outputs and ``overlay.png`` all land there.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "quickstart.ipynb"
KERNEL_NAME = "wsi-weakseg-test-python"


def _stream_text(nb) -> str:
    return "".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("output_type") == "stream" and out.get("name") == "stdout"
    )


def test_notebook_is_stored_without_outputs():
    nbformat = pytest.importorskip("nbformat")
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code, "the notebook has no code cells"
    for cell in code:
        assert cell.outputs == [] and cell.execution_count is None, "clear the notebook's outputs before committing"


def _start_kernel(tmp_path: Path):
    """A started kernel manager for this interpreter; fails when no kernel starts (the test extra is installed)."""
    pytest.importorskip("ipykernel", reason="ipykernel is needed to run the notebook (pip install -e .[test])")
    from jupyter_client.kernelspec import KernelSpecManager
    from jupyter_client.manager import KernelManager

    spec_dir = tmp_path / "kernels" / KERNEL_NAME
    spec_dir.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "wsi-weakseg test kernel",
        "language": "python",
    }
    (spec_dir / "kernel.json").write_text(json.dumps(spec))
    km = KernelManager(
        kernel_name=KERNEL_NAME, kernel_spec_manager=KernelSpecManager(kernel_dirs=[str(spec_dir.parent)])
    )
    work = tmp_path / "work"
    work.mkdir()
    try:
        km.start_kernel(cwd=str(work), env={**os.environ, "TMPDIR": str(work)})
        kc = km.client()
        kc.start_channels()
        try:
            kc.wait_for_ready(timeout=120)
        finally:
            kc.stop_channels()
    except Exception as exc:  # the test extra is installed (ipykernel imported above): a kernel must start
        if km.has_kernel:
            km.shutdown_kernel(now=True)
        pytest.fail(f"cannot start a Jupyter kernel for {sys.executable}: {type(exc).__name__}: {exc}")
    return km, work


def test_quickstart_notebook_runs(tmp_path):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient", reason="nbclient is needed to run the notebook (pip install -e .[test])")

    nb = nbformat.read(NOTEBOOK, as_version=4)
    km, work = _start_kernel(tmp_path)
    try:
        client = nbclient.NotebookClient(
            nb, km=km, timeout=300, allow_errors=False, resources={"metadata": {"path": str(work)}}
        )
        client.execute()  # raises CellExecutionError on the first failing cell
    finally:
        km.shutdown_kernel(now=True)

    for cell in nb.cells:
        for out in cell.get("outputs", []):
            assert out.get("output_type") != "error", f"cell failed: {out.get('ename')}: {out.get('evalue')}"

    text = _stream_text(nb)

    counts = [int(n) for n in re.findall(r"^nuclei: (\d+)$", text, flags=re.M)]
    assert counts, f"the notebook printed no 'nuclei: N' line:\n{text}"
    assert counts[0] > 0 and len(set(counts)) == 1, counts  # segment() and the GeoJSON agree

    m = re.search(r"^label ids match the GeoJSON 'Label': (\d+)/(\d+)$", text, flags=re.M)
    assert m, f"no label-map check printed:\n{text}"
    assert int(m.group(2)) > 0 and m.group(1) == m.group(2), m.group(0)

    m = re.search(r"^overlay saved: (.+)$", text, flags=re.M)
    assert m, f"no overlay path printed:\n{text}"
    overlay = Path(m.group(1).strip())
    assert overlay.is_file() and overlay.resolve().is_relative_to(work.resolve()), overlay
    from PIL import Image

    with Image.open(overlay) as img:
        assert img.format == "PNG" and min(img.size) >= 64, (img.format, img.size)
        rgb = np.asarray(img.convert("RGB")).astype(int)
    # outlines are green (PIL) or lime (matplotlib, antialiased); the H&E colours are never this green
    green = (rgb[..., 1] > 180) & (rgb[..., 0] < 120) & (rgb[..., 2] < 120)
    assert green.sum() > 100, "no outlines drawn on the overlay"

    m = re.search(r"^GeoJSON:\s+(.+)$", text, flags=re.M)
    assert m and Path(m.group(1).strip()).is_file(), "GeoJSON output missing"
