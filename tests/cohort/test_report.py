"""``OUT/report.html`` of a real cohort run, checked in a real headless Chromium (issue 19).

The browser is required: without ``chromium`` these tests fail, saying how to install it. A screenshot of
the page is kept in ``tests/artifacts/`` (git-ignored) for people to look at.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from wsi_weakseg.cohort import CohortOptions, find_slides, run_cohort
from wsi_weakseg.cohort.report import final_rows, write_report
from wsi_weakseg.engine.segment import SegmentOptions
from wsi_weakseg.viz import save_png

from .conftest import MODEL, ledger_rows

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
PREVIEW_SHAPE = (700, 1200)  # (H, W) of the preview written for s0; its thumbnail is 256 x 149


def chromium() -> str:
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.fail("chromium is needed to test the cohort report: apt-get install chromium")
    return exe


def browse(url: str, profile: Path, screenshot: Path | None = None) -> tuple[str, list[str]]:
    """Load ``url`` in headless Chromium: the DOM after its scripts ran and every console message."""
    args = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--enable-logging=stderr",
            "--v=0", f"--user-data-dir={profile}", "--window-size=1400,900"]
    args += [f"--screenshot={screenshot}"] if screenshot else ["--dump-dom"]
    proc = subprocess.run([*args, url], check=False, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return proc.stdout, console


class Table(HTMLParser):
    """The report's body attributes, summary and table rows: per row its cells (text, attributes, links, images)."""

    def __init__(self, page: str) -> None:
        super().__init__(convert_charrefs=True)
        self.body: dict[str, str] = {}
        self.summary: dict[str, str] = {}
        self.rows: list[dict] = []
        self.headers: list[dict] = []
        self.scripts = 0
        self._cell = self._dd = None
        self.feed(page)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "body":
            self.body = a
        elif tag == "script":
            self.scripts += 1
        elif tag == "dd":
            self._dd = a.get("id", "")
            self.summary[self._dd] = ""
        elif tag == "th":
            self.headers.append(a)
        elif tag == "tr" and "data-slide" in a:
            self.rows.append({"slide": a["data-slide"], "cells": []})
        elif tag == "td" and self.rows:
            self._cell = {"text": "", "attrs": a, "links": [], "imgs": []}
            self.rows[-1]["cells"].append(self._cell)
        elif tag == "a" and self._cell is not None:
            self._cell["links"].append(a["href"])
        elif tag == "img" and self._cell is not None:
            self._cell["imgs"].append(a["src"])

    def handle_endtag(self, tag):
        if tag == "td":
            self._cell = None
        elif tag == "dd":
            self._dd = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell["text"] += data
        if self._dd is not None:
            self.summary[self._dd] += data

    def by_slide(self) -> dict[str, dict]:
        keys = [h.get("data-key") for h in self.headers]
        return {r["slide"]: dict(zip(keys, r["cells"])) for r in self.rows}


@pytest.fixture(scope="module")
def cohort_run(cohort_slides: Path, tmp_path_factory) -> Path:
    """A real cohort of two good slides and the corrupt ``bad.svs``, then a preview PNG for s0 and a report."""
    from distributed import LocalCluster

    from wsi_weakseg.cohort import runner

    out = tmp_path_factory.mktemp("report") / "out"
    jobs = [j for j in find_slides(cohort_slides) if j.slide_id in ("bad", "s0", "s1")]

    def spy(out_dir, rows, **kwargs):
        REWRITES.append((len(rows), kwargs["pending"]))
        return write_report(out_dir, rows, **kwargs)

    with pytest.MonkeyPatch.context() as mp, \
            LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        mp.setattr(runner, "write_report", spy)
        summary = run_cohort(jobs, out, MODEL, SegmentOptions(batch_size=4, progress=False),
                             CohortOptions(scheduler_address=cluster.scheduler_address, progress=False, retries=0))
    assert [r["status"] for r in summary.rows] == ["failed", "done", "done"]
    return out


REWRITES: list[tuple[int, int]] = []  # (rows shown, slides still running) of each report rewrite by the runner


def write_preview(out: Path) -> Path:
    """``OUT/s0/s0.preview.png`` as segment will write it (longest side <= 2048): a cividis-like ramp."""
    h, w = PREVIEW_SHAPE
    ramp = np.linspace(0, 255, w, dtype=np.float64)[None, :].repeat(h, 0)
    rgb = np.stack([ramp, np.full((h, w), 128.0), 255 - ramp], axis=-1).astype(np.uint8)
    return save_png(out / "s0" / "s0.preview.png", rgb)


def test_runner_writes_the_report_as_slides_finish(cohort_run: Path):
    page = (cohort_run / "report.html").read_text()
    table = Table(page)
    assert sorted(table.by_slide()) == ["bad", "s0", "s1"]  # written by run_cohort itself
    # rewritten while the cohort ran (the first finished slide always rewrites it), and once at the end
    assert REWRITES[0] == (1, 2) and REWRITES[-1] == (3, 0) and len(REWRITES) >= 2
    assert "2 done, 1 failed" in table.summary["sum-slides"] and table.summary["sum-wall"].endswith(" s")
    assert "still running" not in table.summary["sum-slides"]
    assert not list(cohort_run.glob(".report.html.*"))  # atomic: no temporary left behind


def test_report_in_chromium_matches_the_ledger(cohort_run: Path, tmp_path: Path):
    write_preview(cohort_run)
    rows = final_rows(cohort_run / "cohort.jsonl")
    assert len(rows) == 3 and {r["slide_id"] for r in rows} == {"bad", "s0", "s1"}
    report = write_report(cohort_run, rows, seconds=12.5)
    dom, console = browse(report.as_uri(), tmp_path / "profile")
    assert console == []  # no errors, no messages at all
    table = Table(dom)
    with_preview = [s for s in ("s0", "s1") if list((cohort_run / s).glob("*.preview.png"))]  # segment may write s1's
    assert table.body.get("data-images") == str(len(with_preview)) and table.body.get("data-images-ok") == "true"
    assert len(table.rows) == len(rows)
    cells = table.by_slide()
    for row in rows:
        c = cells[row["slide_id"]]
        assert c["status"]["text"] == row["status"]
        assert c["duration"]["text"] == f"{row['duration_s']:.1f}"
        if row["status"] == "done":
            assert c["nuclei"]["text"] == str(row["nuclei"]) and row["nuclei"] > 50
            assert c["tissue"]["text"] == f"{row['tissue_area_mm2']:.3f}"
            assert c["density"]["text"] == f"{row['nuclei_per_mm2']:.0f}"
            assert float(c["nuclei"]["attrs"]["data-v"]) == row["nuclei"]
            assert c["error"]["text"] == ""
            outputs = json.loads((cohort_run / row["slide_id"] / "done.json").read_text())["outputs"]
            assert c["outputs"]["links"] == [f"{row['slide_id']}/{n}" for n in outputs] and len(outputs) >= 3
            assert all((cohort_run / href).exists() for href in c["outputs"]["links"])  # relative to the page
    bad = cells["bad"]
    row = next(r for r in rows if r["slide_id"] == "bad")
    assert row["status"] == "failed" and row["error"]
    assert bad["error"]["text"] == f"{row['error_type']}: {row['error']}"
    assert bad["nuclei"]["text"] == "-" and bad["outputs"]["links"] == []
    # the thumbnail: a decodable downscaled copy of s0's preview; the failed slide has none
    (src,) = cells["s0"]["preview"]["imgs"]
    assert src.startswith("data:image/jpeg;base64,")
    from PIL import Image

    thumb = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
    assert thumb.size == (256, round(256 * PREVIEW_SHAPE[0] / PREVIEW_SHAPE[1]))
    left, right = thumb.convert("RGB").getpixel((2, 70)), thumb.convert("RGB").getpixel((253, 70))
    assert left[0] < 30 and right[0] > 225 and left[2] > 225 and right[2] < 30  # the ramp, not another image
    assert len(cells["s1"]["preview"]["imgs"]) == ("s1" in with_preview)
    assert cells["bad"]["preview"]["imgs"] == [] and cells["bad"]["preview"]["text"] == "no preview"
    # the summary
    done = [r for r in rows if r["status"] == "done"]
    assert table.summary["sum-slides"] == "3: 2 done, 1 failed, 0 skipped (already done)"
    assert table.summary["sum-nuclei"] == str(sum(r["nuclei"] for r in done))
    assert table.summary["sum-tissue"] == f"{sum(r['tissue_area_mm2'] for r in done):.3f} mm²"
    assert table.summary["sum-density"] == f"{sum(r['nuclei'] for r in done) / sum(r['tissue_area_mm2'] for r in done):.0f}"
    assert table.summary["sum-wall"] == "12.5 s"
    assert "http:" not in dom.replace("http://www.w3.org", "") and "https:" not in dom  # self-contained
    # a screenshot for people to look at
    shot = tmp_path / "report.png"
    browse(report.as_uri(), tmp_path / "profile", screenshot=shot)
    assert Image.open(shot).size == (1400, 900)
    ARTIFACTS.mkdir(exist_ok=True)
    shutil.copy(shot, ARTIFACTS / "cohort_report.png")


def test_sorting_numeric_aware_by_fragment_and_click(cohort_run: Path, tmp_path: Path):
    rows = final_rows(cohort_run / "cohort.jsonl")
    report = write_report(cohort_run, rows)
    by_nuclei = sorted((r for r in rows if r["status"] != "failed"), key=lambda r: r["nuclei"])
    ascending = [r["slide_id"] for r in by_nuclei] + ["bad"]  # no number: last either way
    descending = [r["slide_id"] for r in reversed(by_nuclei)] + ["bad"]
    assert by_nuclei[0]["nuclei"] != by_nuclei[1]["nuclei"]
    for fragment, order in (("#sort=nuclei", ascending), ("#sort=-nuclei", descending)):
        dom, console = browse(report.as_uri() + fragment, tmp_path / "profile")
        assert console == [] and [r["slide"] for r in Table(dom).rows] == order, fragment
        assert Table(dom).body["data-sorted"] == fragment[len("#sort="):]
    # header clicks: first ascending, then descending
    page = report.read_text()
    clicks = "<script>var th=document.querySelector('th[data-key=nuclei]');th.click();</script>"
    for n, order in ((1, ascending), (2, descending)):
        clicked = cohort_run / f"click{n}.html"
        clicked.write_text(page.replace("</body>", clicks * n + "</body>"))
        dom, console = browse(clicked.as_uri(), tmp_path / "profile")
        table = Table(dom)
        assert console == [] and [r["slide"] for r in table.rows] == order
        th = next(h for h in table.headers if h.get("data-key") == "nuclei")
        assert th.get("aria-sort") == ("ascending" if n == 1 else "descending")
        clicked.unlink()
    # text columns sort numeric-aware too: s2 before s10
    (tmp_path / "fake").mkdir()
    fake = [{"slide_id": sid, "status": "done", "nuclei": 1} for sid in ("s10", "s2", "s1")]
    dom, _ = browse(write_report(tmp_path / "fake", fake).as_uri() + "#sort=slide", tmp_path / "profile")
    assert [r["slide"] for r in Table(dom).rows] == ["s1", "s2", "s10"]


def test_untrusted_text_is_escaped(tmp_path: Path):
    evil_id = '<script>document.body.setAttribute("data-pwned","id")</script>'
    evil_error = '<img src=x onerror="document.body.setAttribute(\'data-pwned\',\'err\')"> & <script>x()</script>'
    rows = [{"slide_id": evil_id, "status": "failed", "error_type": "SlideReadError", "error": evil_error,
             "duration_s": 0.25},
            {"slide_id": "ok", "status": "skipped", "nuclei": 7, "tissue_area_mm2": 0.5, "nuclei_per_mm2": 14.0,
             "duration_s": 0.0, "outputs": ['a"b<.geojson']}]
    out = tmp_path / "out"
    out.mkdir()
    report = write_report(out, rows)
    page = report.read_text()
    assert "<script>document" not in page and "<img src=x" not in page
    dom, console = browse(report.as_uri(), tmp_path / "profile")
    table = Table(dom)
    assert "data-pwned" not in table.body and table.scripts == 1 and console == []
    cells = table.by_slide()
    assert cells[evil_id]["slide"]["text"] == evil_id
    assert cells[evil_id]["error"]["text"] == f"SlideReadError: {evil_error}"
    assert cells["ok"]["outputs"]["links"] == ["ok/a%22b%3C.geojson"]
    assert table.summary["sum-slides"] == "2: 0 done, 1 failed, 1 skipped (already done)"
    assert html.escape(evil_id) in page


def test_report_failure_never_fails_a_slide_and_all_skipped_rewrites(cohort_run: Path, cohort_slides: Path,
                                                                      monkeypatch, caplog):
    from distributed import LocalCluster

    from wsi_weakseg.cohort import runner

    jobs = [j for j in find_slides(cohort_slides) if j.slide_id in ("s0", "s1")]
    write_preview(cohort_run)
    (cohort_run / "report.html").unlink()
    summary = run_cohort(jobs, cohort_run, MODEL, SegmentOptions(batch_size=4, progress=False),
                         CohortOptions(progress=False))  # every slide already done: no cluster starts
    assert [r["status"] for r in summary.rows] == ["skipped", "skipped"]
    table = Table((cohort_run / "report.html").read_text())
    assert [r["slide"] for r in table.rows] == ["s0", "s1"]
    assert [c["status"]["text"] for c in table.by_slide().values()] == ["skipped", "skipped"]
    assert table.by_slide()["s0"]["preview"]["imgs"] and table.summary["sum-slides"].startswith("2: 0 done")
    assert table.by_slide()["s1"]["nuclei"]["text"] == str(summary.rows[1]["nuclei"])

    def broken(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(runner, "write_report", broken)
    n_before = len(ledger_rows(cohort_run))
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        summary = run_cohort(jobs[1:], cohort_run, MODEL, SegmentOptions(batch_size=4, progress=False),
                             CohortOptions(scheduler_address=cluster.scheduler_address, progress=False,
                                           overwrite=True))  # s1 computed again, its report rewrite fails
    assert [r["status"] for r in summary.rows] == ["done"] and summary.rows[0]["nuclei"] > 50
    assert len(ledger_rows(cohort_run)) == n_before + 1
    assert any("cannot write the cohort report" in r.getMessage() for r in caplog.records)
    assert re.search(r"Permission denied", caplog.text)
