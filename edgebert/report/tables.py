"""The report's tables and notes, described once (`Table`) and rendered by markdown.py and html.py."""
from __future__ import annotations

import math
from dataclasses import dataclass

from edgebert.report.model import (
    FAILED,
    NA,
    RANDOM_NOTE,
    Cell,
    accuracy_points,
    axes,
    grid_values,
    group_label,
    groups,
    in_group,
    mode_key,
    modes,
    one_line,
    pareto,
    size_cells,
)

TITLE = "edgebert benchmark report"


# --- tables (one description, rendered as Markdown and as HTML) ----------------------------------------

@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool]              # right-align these columns
    classes: list[list[str]] | None = None  # per-cell CSS class for HTML ("na", "failed")


def _fmt(value: float | None, digits: int) -> str:
    return NA if value is None else f"{value:.{digits}f}"


def _grid_table(title: str, cells: list[Cell], value, digits: int) -> Table:
    layers, hidden = axes(cells)
    grid = grid_values(cells, value)
    rows, classes = [], []
    for l in layers:
        row, row_classes = [str(l)], [""]
        for h in hidden:
            status, number = grid[l, h]
            row.append(_fmt(number, digits) if status == "ok" else status)
            row_classes.append("" if status == "ok" else ("failed" if status == FAILED else "na"))
        rows.append(row)
        classes.append(row_classes)
    return Table(title, ["L \\ H"] + [str(h) for h in hidden], rows, [True] * (len(hidden) + 1), classes)


def _accuracy_text(cell: Cell, named: bool) -> str:
    if not cell.accuracy:
        return ""
    value = f"{cell.accuracy['value']:.4f}"
    return f"{value} ({cell.accuracy['task']} {cell.accuracy['metric']})" if named else value


def _sorted_cells(cells: list[Cell]) -> list[Cell]:
    return sorted(cells, key=lambda c: (mode_key(c.quantize), c.threads if c.threads is not None else -1,
                                        c.layers if c.layers is not None else math.inf,
                                        c.hidden if c.hidden is not None else math.inf, c.name))


def long_table(cells: list[Cell]) -> Table:
    kinds = {(c.accuracy["task"], c.accuracy["metric"]) for c in cells if c.accuracy}
    with_accuracy = bool(kinds)
    # One task and metric: say it in the header and keep the column narrow; several: say it per cell.
    accuracy_header = " ".join(next(iter(kinds))) if len(kinds) == 1 else "accuracy"
    headers = ["variant", "nickname", "mode", "threads", "params", "MB", "p50 ms", "p90 ms", "p99 ms",
               "peak RSS MB", "growth MB"] + ([accuracy_header] if with_accuracy else []) + ["status"]
    numeric = [False, False, False, True, True, True, True, True, True, True, True] + \
              ([len(kinds) == 1] if with_accuracy else []) + [False]
    rows, classes = [], []
    for c in _sorted_cells(cells):
        measured = [_fmt(c.p50, 2), _fmt(c.p90, 2), _fmt(c.p99, 2), _fmt(c.peak_rss_mb, 1), _fmt(c.growth_mb, 1)]
        row = [c.name, c.nickname or "", c.quantize, "" if c.threads is None else str(c.threads),
               "" if c.parameters is None else f"{c.parameters:,}",
               "" if c.model_bytes is None else _fmt(c.model_mb, 1)] + (measured if c.ok else [""] * 5)
        row += ([_accuracy_text(c, named=len(kinds) > 1)] if with_accuracy else []) + ["ok" if c.ok else f"failed: {c.error}"]
        rows.append(row)
        classes.append(["failed" if not c.ok else ""] * len(row))
    return Table("Every cell", headers, rows, numeric, classes)


def pareto_table(cells: list[Cell], task: str, metric: str) -> Table:
    frontier = pareto(accuracy_points(cells, task, metric))
    rows = [[c.name, c.nickname or "", c.quantize, "" if c.threads is None else str(c.threads),
             f"{latency:.2f}", f"{accuracy:.4f}"] for latency, accuracy, c in frontier]
    return Table(f"Pareto frontier: p50 latency vs {task} {metric}",
                  ["variant", "nickname", "mode", "threads", "p50 ms", metric], rows,
                  [False, False, False, True, True, True])


def build_grid_tables(cells: list[Cell]) -> list[Table]:
    if not any(c.on_grid for c in cells):
        return []
    gridded = [c for c in cells if c.on_grid]
    tables = [_grid_table(f"p50 latency (ms), {group_label(g)}", [c for c in gridded if in_group(c, g)],
                          lambda c: c.p50, 2) for g in groups(gridded)]
    tables += [_grid_table(f"model size (MB), {mode}", size_cells(gridded, mode), lambda c: c.model_mb, 1)
               for mode in modes(gridded)]
    return tables


# --- header facts --------------------------------------------------------------------------------------

DEVICE_FIELDS = (("cpu_model", "CPU"), ("cores", "cores"), ("machine", "machine"), ("system", "system"),
                 ("release", "release"), ("python", "Python"), ("numpy", "numpy"), ("hostname", "host"))


def device_facts(sweep: dict) -> list[tuple[str, str]]:
    cells, device = sweep["cells"], sweep["device"]
    facts = [(label, one_line(device[key])) for key, label in DEVICE_FIELDS if device.get(key) not in (None, "")]
    facts += [(one_line(key), one_line(value)) for key, value in device.items()
              if key not in dict(DEVICE_FIELDS) and isinstance(value, (str, int, float)) and not isinstance(value, bool)]
    runtimes = sorted({c.runtime for c in cells if c.runtime})
    facts.append(("runtime", ", ".join(runtimes) or NA))
    xnnpack = {c.xnnpack_applied for c in cells if c.ok and c.xnnpack_applied is not None}
    if xnnpack:
        facts.append(("XNNPACK applied", "yes" if xnnpack == {True} else "no" if xnnpack == {False} else "some"))
    seq_lens = sorted({c.seq_len for c in cells if c.seq_len is not None})
    if seq_lens:
        facts.append(("sequence length", ", ".join(map(str, seq_lens))))
    ok = sum(c.ok for c in cells)
    facts.append(("cells", f"{len(cells)} ({ok} ok, {len(cells) - ok} failed)"))
    facts.append(("source", str(sweep["path"])))
    return facts


def report_notes(cells: list[Cell], heat_maps: bool = False) -> list[str]:
    notes = []
    random_cells = sum(c.random_weights for c in cells)
    if random_cells == len(cells):
        notes.append(RANDOM_NOTE)
    elif random_cells:
        notes.append(f"{random_cells} of {len(cells)} cells used random weights: their latency and size are "
                     "real, their accuracy is not meaningful")
    if any(c.on_grid for c in cells):
        notes.append("grid tables: p50 latency in ms (median of the warm runs) per quantize mode and thread "
                     "count; model size in MB (10^6 bytes) per quantize mode, which does not depend on the "
                     "thread count. n/a: not measured; failed: see the table of every cell."
                     + (" Heat maps of one kind share one colour scale." if heat_maps else ""))
    return notes

