"""Reports: a sweep's results as `report.md` and a self-contained `report.html`.

The input is a sweep directory (its `results.json`) or any bench results file (edgebert/results.py).
Every result becomes one `Cell`: a (variant, quantize mode, threads) measurement, ok or failed. The
report shows, per (mode, threads), the p50 latency over the L x H grid of the BERT Miniatures and, per
mode, the model size; latency against parameters; latency against accuracy with its Pareto frontier
when accuracy figures are present; and one long table of every cell.

The HTML page needs nothing but itself: inline CSS and the plots as base64 PNG data URIs, so it opens
from a phone's file browser or an air-gapped CI artifact. Plots use matplotlib's object API with the
Agg canvas (no pyplot, no global backend switch), imported only when a report is built.

The parts: model.py (results -> cells, and how they group), tables.py (tables and notes, described
once), markdown.py and html.py (the two renderings), figures.py (the plots); this module writes them.
"""
from __future__ import annotations

import base64
import os
import re
import tempfile
from pathlib import Path

from edgebert.errors import OutputError
from edgebert.report.figures import plot_sections
from edgebert.report.html import render_html
from edgebert.report.markdown import render_markdown
from edgebert.report.model import RANDOM_NOTE, REPORT_HTML, REPORT_MD, RESULTS_FILE, Cell, load_sweep

__all__ = ["RANDOM_NOTE", "RESULTS_FILE", "Cell", "build_report", "load_sweep", "render_html", "render_markdown"]


def _write_atomically(target: Path, content: str | bytes) -> None:
    binary = isinstance(content, bytes)
    handle = tempfile.NamedTemporaryFile("wb" if binary else "w", encoding=None if binary else "utf-8",
                                         dir=target.parent, prefix=f".{target.name}.tmp-", delete=False)
    try:
        with handle:
            handle.write(content)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, target)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:80]


def build_report(path: str | os.PathLike, out_dir: str | os.PathLike | None = None,
                 figures: bool = False) -> tuple[Path, Path]:
    """Write report.md and report.html for a sweep directory or results file; return their paths.
    With `figures`, also write every plot as a PNG file under `figures/` (for a README to show).

    Both documents are rendered in memory first, so bad input or a missing matplotlib writes nothing;
    each file is then written to a temporary sibling and renamed into place.
    """
    sweep = load_sweep(path)
    sections = plot_sections(sweep["cells"])
    markdown = render_markdown(sweep)
    page = render_html(sweep, sections)
    out = Path(out_dir) if out_dir is not None else sweep["directory"]
    if out.exists() and not out.is_dir():
        raise OutputError("exists and is not a directory", out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        md_path, html_path = out / REPORT_MD, out / REPORT_HTML
        if figures:
            (out / "figures").mkdir(exist_ok=True)
            for _, plots, _ in sections:
                for caption, png in plots:
                    _write_atomically(out / "figures" / f"{_slug(caption)}.png", base64.b64decode(png))
        _write_atomically(md_path, markdown)
        _write_atomically(html_path, page)
    except OSError as error:
        raise OutputError(f"cannot write the report ({error.strerror or error})", out) from None
    return md_path, html_path
