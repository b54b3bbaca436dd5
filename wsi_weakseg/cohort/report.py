"""``OUT/report.html``: one self-contained page that shows a cohort, rewritten as slides finish (issue 19).

One row per slide: a thumbnail of its preview (``OUT/<slide id>/*.preview.png``, embedded as a ``data:``
URI), nuclei, tissue mm², nuclei per mm², duration, status, the failure message, and relative links to the
slide's outputs. A summary sits on top. Columns sort on a header click (numeric-aware; ``report.html#sort=
nuclei`` or ``#sort=-nuclei`` opens sorted). The page loads nothing from outside; every text is escaped
(slide names and error messages come from files and exceptions, so they are untrusted).
"""

from __future__ import annotations

import base64
import functools
import html
import io
import json
import logging
import math
import os
import time
import uuid
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from ..viz import OKABE_ITO

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
#: Longest side of an embedded thumbnail, pixels.
THUMB_PX = 256
#: Longest error message shown in a cell (the ledger keeps the whole one).
MAX_ERROR = 2000

#: (key, header, sort type, row field or None, number format) of each table column.
COLUMNS = (
    ("preview", "preview", None, None, ""),
    ("slide", "slide", "text", "slide_id", ""),
    ("status", "status", "text", "status", ""),
    ("nuclei", "nuclei", "num", "nuclei", "d"),
    ("tissue", "tissue mm²", "num", "tissue_area_mm2", ".3f"),
    ("density", "nuclei/mm²", "num", "nuclei_per_mm2", ".0f"),
    ("duration", "time s", "num", "duration_s", ".1f"),
    ("error", "failure", "text", None, ""),
    ("outputs", "outputs", None, None, ""),
)
_STATUS_COLOUR = {"done": OKABE_ITO["green"], "skipped": OKABE_ITO["sky"], "failed": OKABE_ITO["vermillion"]}

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}th,td{border:1px solid #ccc;padding:4px 8px;vertical-align:middle}
th[data-type]{cursor:pointer;user-select:none;background:#f3f3f3}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.err{max-width:40em;white-space:pre-wrap;
word-break:break-word;font-family:monospace;font-size:12px}.status{font-weight:600;padding:1px 6px;
border-radius:3px;color:#fff}.nopreview{color:#888;font-style:italic}dl{display:grid;
grid-template-columns:max-content auto;gap:2px 1em}dt{font-weight:600}
"""

# Sorting and the image check; reads ``#sort=key`` / ``#sort=-key``. Logs nothing (tests treat any
# console message as an error).
_JS = """
(function(){
  var table=document.getElementById('slides'),body=table.tBodies[0];
  function value(row,i,type){var c=row.cells[i],v=c.getAttribute('data-v');if(v===null)v=c.textContent;
    if(type!=='num')return v;return v===''?NaN:parseFloat(v);}
  function sortBy(key,desc){
    var ths=table.tHead.rows[0].cells,i=-1,type;
    for(var j=0;j<ths.length;j++){ths[j].removeAttribute('aria-sort');
      if(ths[j].getAttribute('data-key')===key){i=j;type=ths[j].getAttribute('data-type');}}
    if(i<0||!type)return;
    var rows=Array.prototype.slice.call(body.rows),k=desc?-1:1;
    rows.sort(function(a,b){var x=value(a,i,type),y=value(b,i,type);
      if(type==='num'){var nx=isNaN(x),ny=isNaN(y);if(nx||ny)return nx-ny;return (x-y)*k;}
      return x.localeCompare(y,undefined,{numeric:true,sensitivity:'base'})*k;});
    rows.forEach(function(r){body.appendChild(r);});
    ths[i].setAttribute('aria-sort',desc?'descending':'ascending');
    document.body.setAttribute('data-sorted',(desc?'-':'')+key);
  }
  function fromHash(){var m=/(?:^#|&)sort=(-?)([\\w-]+)/.exec(location.hash);if(m)sortBy(m[2],m[1]==='-');}
  Array.prototype.forEach.call(table.tHead.rows[0].cells,function(th){
    if(!th.getAttribute('data-type'))return;
    th.addEventListener('click',function(){var key=th.getAttribute('data-key'),
      desc=th.getAttribute('aria-sort')==='ascending';sortBy(key,desc);
      try{history.replaceState(null,'','#sort='+(desc?'-':'')+key);}catch(e){}});
  });
  window.addEventListener('hashchange',fromHash);
  fromHash();
  window.addEventListener('load',function(){
    var imgs=Array.prototype.slice.call(document.images);
    document.body.setAttribute('data-images',String(imgs.length));
    document.body.setAttribute('data-images-ok',String(imgs.every(function(i){
      return i.complete&&i.naturalWidth>0;})));
  });
})();
"""


def final_rows(ledger: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The latest final row of every slide in a ledger (``cohort.jsonl``), in order of first appearance.

    Parameters
    ----------
    ledger : path
        The cohort's ledger; rows marked ``retrying`` are attempts, not final, and are passed over.

    Returns
    -------
    list of dict
        One row per slide id; a later run's row replaces an earlier one.
    """
    latest: dict[str, dict[str, Any]] = {}
    with open(ledger, encoding="utf-8") as fh:
        for line in fh:
            try:
                row = json.loads(line)
            except ValueError:  # a line cut short by a killed driver
                continue
            if isinstance(row, dict) and "slide_id" in row and not row.get("retrying"):
                latest[str(row["slide_id"])] = row
    return list(latest.values())


def write_report(
    out_dir: str | os.PathLike[str],
    rows: Sequence[dict[str, Any]],
    seconds: float | None = None,
    pending: int = 0,
) -> Path:
    """Write ``out_dir/report.html`` atomically (temporary name in ``out_dir``, then ``os.replace``).

    Parameters
    ----------
    out_dir : path
        The cohort output folder; slide folders are ``out_dir/<slide id>/``.
    rows : sequence of dict
        The final ledger row of each slide to show (see :func:`final_rows`).
    seconds : float, optional
        The cohort's wall time so far, shown in the summary when given.
    pending : int
        Slides not finished yet (a running cohort), shown in the summary when nonzero.

    Returns
    -------
    Path
        The report's path.

    Raises
    ------
    OSError
        When the folder cannot be written.
    """
    out = Path(out_dir)
    page = render(out, rows, seconds, pending)
    path = out / REPORT_NAME
    tmp = out / f".{REPORT_NAME}.{uuid.uuid4().hex[:12]}.tmp"
    try:
        tmp.write_text(page, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def render(out: Path, rows: Sequence[dict[str, Any]], seconds: float | None = None, pending: int = 0) -> str:
    """The report page as a string (see :func:`write_report`)."""
    head = "".join(
        f'<th data-key="{key}"' + (f' data-type="{kind}"' if kind else "") + f">{html.escape(label)}</th>"
        for key, label, kind, _, _ in COLUMNS
    )
    body = "\n".join(_row_html(out, row) for row in rows)
    title = f"wsi-weakseg cohort: {out.name}"
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>\n'
        f"<style>{_CSS}</style></head>\n<body>\n<h1>{html.escape(title)}</h1>\n"
        f"{_summary_html(rows, seconds, pending)}\n"
        f'<table id="slides"><thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody></table>\n'
        f"<script>{_JS}</script>\n</body></html>\n"
    )


def _summary_html(rows: Sequence[dict[str, Any]], seconds: float | None, pending: int) -> str:
    """The summary list: slides per status, total nuclei and tissue, wall time, when written."""
    counts = {s: sum(r.get("status") == s for r in rows) for s in ("done", "failed", "skipped")}
    nuclei = sum(_number(r.get("nuclei")) or 0 for r in rows)
    tissue = sum(_number(r.get("tissue_area_mm2")) or 0.0 for r in rows)
    items = [
        ("slides", "slides", f"{len(rows)}: {counts['done']} done, {counts['failed']} failed, "
         f"{counts['skipped']} skipped (already done)" + (f", {pending} still running" if pending else "")),
        ("nuclei", "nuclei", f"{int(nuclei)}"),
        ("tissue", "tissue", f"{tissue:.3f} mm²"),
        ("density", "nuclei per mm²", f"{nuclei / tissue:.0f}" if tissue > 0 else "-"),
    ]
    if seconds is not None:
        items.append(("wall", "wall time", f"{seconds:.1f} s"))
    items.append(("written", "written", time.strftime("%Y-%m-%d %H:%M:%S %z")))
    cells = "".join(f'<dt>{html.escape(k)}</dt><dd id="sum-{i}">{html.escape(v)}</dd>' for i, k, v in items)
    return f'<dl id="summary">{cells}</dl>'


def _row_html(out: Path, row: dict[str, Any]) -> str:
    """One ``<tr>``: thumbnail, fields, failure message and output links; every text escaped."""
    slide_id = str(row.get("slide_id", ""))
    folder = out / slide_id
    outputs = _outputs(folder, row)
    cells = [_preview_cell(folder, outputs)]
    for key, _, kind, field, spec in COLUMNS[1:7]:
        value = row.get(field)
        if kind == "num":
            num = _number(value)
            text = "-" if num is None else format(int(num) if spec == "d" else num, spec)
            cells.append(f'<td class="num" data-v="{"" if num is None else repr(num)}">{text}</td>')
        elif key == "status":
            status = str(value or "")
            rgb = _STATUS_COLOUR.get(status, (102, 102, 102))
            cells.append(f'<td data-v="{html.escape(status)}"><span class="status" '
                         f'style="background:rgb{rgb}">{html.escape(status)}</span></td>')
        else:
            cells.append(f"<td>{html.escape(str(value or ''))}</td>")
    cells.append(f'<td class="err">{html.escape(_error(row))}</td>')
    links = " ".join(
        f'<a href="{quote(slide_id, safe="")}/{quote(name, safe="")}">{html.escape(name)}</a>' for name in outputs
    )
    cells.append(f"<td>{links}</td>")
    return f'<tr data-slide="{html.escape(slide_id)}">{"".join(cells)}</tr>'


def _number(value: Any) -> float | None:
    """A finite number from a ledger field, else None (missing, text, NaN)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return value


def _error(row: dict[str, Any]) -> str:
    """``ErrorType: message`` of a failed row (cut to :data:`MAX_ERROR` characters), else empty."""
    if row.get("status") != "failed":
        return ""
    text = f"{row.get('error_type') or 'Error'}: {row.get('error') or ''}"
    return text if len(text) <= MAX_ERROR else text[:MAX_ERROR] + " …"


def _outputs(folder: Path, row: dict[str, Any]) -> list[str]:
    """File names of a slide's outputs: the row's ``outputs``, else its done-manifest's, else none."""
    names = row.get("outputs")
    if not isinstance(names, list) and row.get("status") in ("done", "skipped"):
        try:
            names = json.loads((folder / "done.json").read_text()).get("outputs")
        except (OSError, ValueError, AttributeError):
            names = None
    if not isinstance(names, list):
        return []
    return [n for n in names if isinstance(n, str) and n and "/" not in n and n not in (".", "..")]


def _preview_cell(folder: Path, outputs: Iterable[str]) -> str:
    """The thumbnail cell: the first ``*.preview.png`` of ``outputs`` or of the folder, else "no preview"."""
    names = [n for n in outputs if n.endswith(".preview.png")]
    try:
        names += sorted(p.name for p in folder.glob("*.preview.png"))
    except OSError:
        pass
    for name in names:
        path = folder / name
        try:
            st = path.stat()
            uri = _thumbnail(str(path), st.st_size, st.st_mtime_ns)
        except OSError as exc:
            log.warning("report: no thumbnail from %s: %s", path, exc)
            continue
        if uri:
            return f'<td data-v="1"><img src="{uri}" alt="preview of {html.escape(folder.name)}"></td>'
    return '<td data-v="0" class="nopreview">no preview</td>'


@functools.lru_cache(maxsize=4096)
def _thumbnail(path: str, size: int, mtime_ns: int) -> str | None:
    """A JPEG ``data:`` URI of the image at ``path``, longest side :data:`THUMB_PX`; cached per file version."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            im.thumbnail((THUMB_PX, THUMB_PX))
            rgb = im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("report: cannot read preview %s: %s", path, exc)
        return None
    buf = io.BytesIO()
    rgb.save(buf, format="JPEG", quality=85)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
