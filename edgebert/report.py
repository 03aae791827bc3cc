"""Reports: a sweep's results as `report.md` and a self-contained `report.html`.

The input is a sweep directory (its `results.json`) or any bench results file (edgebert/results.py).
Every result becomes one `Cell`: a (variant, quantize mode, threads) measurement, ok or failed. The
report shows, per (mode, threads), the p50 latency over the L x H grid of the BERT Miniatures and, per
mode, the model size; latency against parameters; latency against accuracy with its Pareto frontier
when accuracy figures are present; and one long table of every cell.

The HTML page needs nothing but itself: inline CSS and the plots as base64 PNG data URIs, so it opens
from a phone's file browser or an air-gapped CI artifact. Plots use matplotlib's object API with the
Agg canvas (no pyplot, no global backend switch), imported only when a report is built.
"""
from __future__ import annotations

import base64
import html
import io
import math
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from edgebert.errors import BundleError, OutputError, UnknownVariantError, UsageError
from edgebert.results import read_results
from edgebert.variants import HIDDEN_CHOICES, LAYER_CHOICES, Variant, parse_variant

RESULTS_FILE = "results.json"
REPORT_MD, REPORT_HTML = "report.md", "report.html"
MODE_ORDER = ("float32", "float16", "dynamic-int8", "int8")  # display order; other modes follow by name
RANDOM_NOTE = "random weights: latency and size are real, accuracy is not meaningful"
NA, FAILED = "n/a", "failed"
MISSING_COLOR, FAILED_COLOR = "#d9d9d9", "#f4c7c3"


@dataclass(frozen=True)
class Cell:
    """One measured (or failed) bundle of a sweep: a variant in one quantize mode at one thread count."""

    name: str                       # Google's variant name, else the bundle's name
    nickname: str | None
    layers: int | None
    hidden: int | None
    quantize: str
    threads: int | None
    seq_len: int | None
    ok: bool
    error: str | None
    parameters: int | None
    model_bytes: int | None
    p50: float | None
    p90: float | None
    p99: float | None
    peak_rss_mb: float | None
    growth_mb: float | None
    accuracy: dict | None           # {"task", "metric", "value"}
    random_weights: bool
    runtime: str | None
    xnnpack_applied: bool | None

    @property
    def model_mb(self) -> float | None:
        return None if self.model_bytes is None else self.model_bytes / 1e6

    @property
    def label(self) -> str:
        """Short enough for a plot: `bert-mini`, `bert-L6-H256`, else the name."""
        return Variant(self.layers, self.hidden).short_name if self.on_grid else self.name

    @property
    def on_grid(self) -> bool:
        return self.layers is not None and self.hidden is not None


# --- loading -------------------------------------------------------------------------------------------

def load_sweep(path: str | os.PathLike) -> dict:
    """Read a sweep directory (its results.json) or a bench results file.

    Returns {"path": the results file, "directory": where the report goes by default, "device": the
    device facts, "cells": [Cell, ...]}. Bad input is a one-line BundleError naming the file.
    """
    path = Path(path)
    if path.is_dir():
        results_file, directory = path / RESULTS_FILE, path
    elif path.exists():
        results_file, directory = path, path.parent
    else:
        raise BundleError("no such sweep directory or results file", path)
    try:
        data = read_results(results_file)
    except (TypeError, AttributeError, KeyError) as error:  # read_results assumes dicts where it looks
        raise BundleError(f"malformed results file ({type(error).__name__}: {error})", results_file) from None
    results = data.get("results")
    if not isinstance(results, list):
        raise BundleError("'results' is not a list", results_file)
    if not results:
        raise BundleError("no results to report", results_file)
    device = data.get("device") or {}
    if not isinstance(device, dict):
        raise BundleError("'device' is not an object", results_file)
    cells = []
    for index, result in enumerate(results):
        try:
            cells.append(_cell(result))
        except (TypeError, ValueError) as error:
            raise BundleError(f"result {index}: {error}", results_file) from None
    return {"path": results_file, "directory": directory, "device": device, "cells": cells}


def _section(result: dict, key: str) -> dict:
    value = result.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{key!r} is not an object")
    return value


def _number(value, what: str) -> float | None:
    """A figure, or None when absent (JSON null, or NaN/Infinity, which Python's json reads)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{what} is not a number ({value!r})")
    return float(value) if math.isfinite(value) else None


def _integer(value, what: str) -> int | None:
    number = _number(value, what)
    if number is not None and number != int(number):
        raise ValueError(f"{what} is not a whole number ({value!r})")
    return None if number is None else int(number)


def _first(*values):
    return next((value for value in values if value is not None), None)


def _one_line(text) -> str:
    return " ".join(str(text).split())


def _cell(result: dict) -> Cell:
    if not isinstance(result, dict):
        raise ValueError("not an object")
    bundle, sweep = _section(result, "bundle"), _section(result, "sweep")
    settings, latency = _section(result, "settings"), _section(result, "latency_ms")
    memory, runtime = _section(result, "memory"), _section(result, "runtime")

    layers = _integer(_first(sweep.get("layers"), bundle.get("layers")), "layers")
    hidden = _integer(_first(sweep.get("hidden"), bundle.get("hidden")), "hidden")
    variant_name = sweep.get("variant") or bundle.get("variant")
    if (layers is None or hidden is None) and variant_name:
        try:
            parsed = parse_variant(str(variant_name))
            layers, hidden = parsed.layers, parsed.hidden
        except UnknownVariantError:
            pass
    variant = Variant(layers, hidden) if layers is not None and hidden is not None else None
    if not variant_name and variant is not None and (layers, hidden) in _GRID:
        variant_name = variant.name
    name = str(variant_name or bundle.get("name") or Path(str(bundle.get("path", "?"))).name)

    error = sweep.get("error") or result.get("error")
    ok = "error" not in result and sweep.get("status", "ok") == "ok" and not error
    if not ok and not error:
        error = f"status {sweep.get('status')!r}"

    accuracy = sweep.get("accuracy")
    if accuracy is not None:
        if not isinstance(accuracy, dict):
            raise ValueError("'sweep.accuracy' is not an object")
        accuracy = {"task": str(accuracy.get("task") or "task"), "metric": str(accuracy.get("metric") or "metric"),
                    "value": _number(accuracy.get("value"), "accuracy value")}
        if accuracy["value"] is None:
            accuracy = None

    parameters = _integer(bundle.get("parameters"), "bundle.parameters")
    if parameters is None and variant is not None and (layers, hidden) in _GRID:
        parameters = variant.encoder_parameters
    threads = _first(sweep.get("threads"), settings.get("threads"))
    seq_len = _first(settings.get("seq_len"), bundle.get("seq_len"))
    runtime_name = " ".join(str(part) for part in (runtime.get("name"), runtime.get("version")) if part) or None
    xnnpack = result.get("xnnpack_applied")
    return Cell(
        name=name, nickname=variant.nickname if variant else None, layers=layers, hidden=hidden,
        quantize=str(sweep.get("quantize") or bundle.get("quantize") or "unknown"),
        threads=_integer(threads, "threads"), seq_len=_integer(seq_len, "seq_len"),
        ok=ok, error=None if ok else _one_line(error),
        parameters=parameters, model_bytes=_integer(bundle.get("model_bytes"), "bundle.model_bytes"),
        p50=_number(latency.get("p50"), "latency_ms.p50"), p90=_number(latency.get("p90"), "latency_ms.p90"),
        p99=_number(latency.get("p99"), "latency_ms.p99"),
        peak_rss_mb=_number(memory.get("peak_rss_mb"), "memory.peak_rss_mb"),
        growth_mb=_number(memory.get("growth_mb"), "memory.growth_mb"),
        accuracy=accuracy, random_weights=bool(_first(sweep.get("random_weights"), bundle.get("random_weights"), False)),
        runtime=runtime_name, xnnpack_applied=xnnpack if isinstance(xnnpack, bool) else None)


_GRID = {(layers, hidden) for layers in LAYER_CHOICES for hidden in HIDDEN_CHOICES}


# --- grouping ------------------------------------------------------------------------------------------

def _mode_key(mode: str):
    return (MODE_ORDER.index(mode), "") if mode in MODE_ORDER else (len(MODE_ORDER), mode)


def _threads_text(threads: int | None) -> str:
    if threads is None:
        return "threads n/a"
    return f"{threads} thread" + ("" if threads == 1 else "s")


def _groups(cells: list[Cell]) -> list[tuple]:
    """The (mode, threads, seq_len) groups, in display order. seq_len is None unless the results measure
    more than one (a failed result may not know its seq_len at all)."""
    vary_seq = len({c.seq_len for c in cells if c.seq_len is not None}) > 1
    keys = {(c.quantize, c.threads, c.seq_len if vary_seq else None) for c in cells}
    return sorted(keys, key=lambda k: (_mode_key(k[0]), k[1] if k[1] is not None else -1,
                                       k[2] if k[2] is not None else -1))


def _in_group(cell: Cell, group: tuple) -> bool:
    mode, threads, seq_len = group
    return cell.quantize == mode and cell.threads == threads and (seq_len is None or cell.seq_len == seq_len)


def _group_label(group: tuple) -> str:
    mode, threads, seq_len = group
    return f"{mode}, {_threads_text(threads)}" + (f", seq {seq_len}" if seq_len is not None else "")


def _modes(cells: list[Cell]) -> list[str]:
    return sorted({c.quantize for c in cells}, key=_mode_key)


def _axes(cells: list[Cell]) -> tuple[list[int], list[int]]:
    """Rows (layers) and columns (hidden): the Miniatures grid plus any other shape the results carry."""
    layers = sorted(set(LAYER_CHOICES) | {c.layers for c in cells if c.on_grid})
    hidden = sorted(set(HIDDEN_CHOICES) | {c.hidden for c in cells if c.on_grid})
    return layers, hidden


def _pick(cells: list[Cell]) -> Cell | None:
    """The cell that stands for a grid position: the first ok one, else the first failed one."""
    return next((c for c in cells if c.ok), cells[0] if cells else None)


def _grid(cells: list[Cell], value) -> dict:
    """{(L, H): (status, number)} with status "ok", "failed" or "n/a" (nothing measured)."""
    layers, hidden = _axes(cells)
    grid = {}
    for l in layers:
        for h in hidden:
            cell = _pick([c for c in cells if c.layers == l and c.hidden == h])
            if cell is None:
                grid[l, h] = (NA, None)
            elif cell.ok:
                number = value(cell)
                grid[l, h] = ("ok", number) if number is not None else (NA, None)
            else:
                grid[l, h] = (FAILED, None)
    return grid


def _size_cells(cells: list[Cell], mode: str) -> list[Cell]:
    """A mode's cells for the size grid: the model size does not depend on the thread count, so an ok
    measurement at any thread count stands for the variant."""
    return [c for c in cells if c.quantize == mode and (not c.ok or c.model_bytes is not None)]


def _pareto(points: list[tuple[float, float, Cell]]) -> list[tuple[float, float, Cell]]:
    """Points (latency, accuracy, cell) that no other point beats on both (faster and at least as
    accurate, or as fast and more accurate), sorted by latency."""
    frontier, best = [], -math.inf
    for latency, accuracy, cell in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            frontier.append((latency, accuracy, cell))
            best = accuracy
    return frontier


def _accuracy_sets(cells: list[Cell]) -> list[tuple[str, str]]:
    return sorted({(c.accuracy["task"], c.accuracy["metric"]) for c in cells if c.ok and c.accuracy and c.p50 is not None})


def _accuracy_points(cells: list[Cell], task: str, metric: str) -> list[tuple[float, float, Cell]]:
    return [(c.p50, c.accuracy["value"], c) for c in cells
            if c.ok and c.p50 is not None and c.accuracy and (c.accuracy["task"], c.accuracy["metric"]) == (task, metric)]


# --- tables (one description, rendered as Markdown and as HTML) ----------------------------------------

@dataclass
class _Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    numeric: list[bool]              # right-align these columns
    classes: list[list[str]] | None = None  # per-cell CSS class for HTML ("na", "failed")


def _fmt(value: float | None, digits: int) -> str:
    return NA if value is None else f"{value:.{digits}f}"


def _grid_table(title: str, cells: list[Cell], value, digits: int) -> _Table:
    layers, hidden = _axes(cells)
    grid = _grid(cells, value)
    rows, classes = [], []
    for l in layers:
        row, row_classes = [str(l)], [""]
        for h in hidden:
            status, number = grid[l, h]
            row.append(_fmt(number, digits) if status == "ok" else status)
            row_classes.append("" if status == "ok" else ("failed" if status == FAILED else "na"))
        rows.append(row)
        classes.append(row_classes)
    return _Table(title, ["L \\ H"] + [str(h) for h in hidden], rows, [True] * (len(hidden) + 1), classes)


def _accuracy_text(cell: Cell, named: bool) -> str:
    if not cell.accuracy:
        return ""
    value = f"{cell.accuracy['value']:.4f}"
    return f"{value} ({cell.accuracy['task']} {cell.accuracy['metric']})" if named else value


def _sorted_cells(cells: list[Cell]) -> list[Cell]:
    return sorted(cells, key=lambda c: (_mode_key(c.quantize), c.threads if c.threads is not None else -1,
                                        c.layers if c.layers is not None else math.inf,
                                        c.hidden if c.hidden is not None else math.inf, c.name))


def _long_table(cells: list[Cell]) -> _Table:
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
    return _Table("Every cell", headers, rows, numeric, classes)


def _pareto_table(cells: list[Cell], task: str, metric: str) -> _Table:
    frontier = _pareto(_accuracy_points(cells, task, metric))
    rows = [[c.name, c.nickname or "", c.quantize, "" if c.threads is None else str(c.threads),
             f"{latency:.2f}", f"{accuracy:.4f}"] for latency, accuracy, c in frontier]
    return _Table(f"Pareto frontier: p50 latency vs {task} {metric}",
                  ["variant", "nickname", "mode", "threads", "p50 ms", metric], rows,
                  [False, False, False, True, True, True])


def _grid_tables(cells: list[Cell]) -> list[_Table]:
    if not any(c.on_grid for c in cells):
        return []
    gridded = [c for c in cells if c.on_grid]
    tables = [_grid_table(f"p50 latency (ms), {_group_label(g)}", [c for c in gridded if _in_group(c, g)],
                          lambda c: c.p50, 2) for g in _groups(gridded)]
    tables += [_grid_table(f"model size (MB), {mode}", _size_cells(gridded, mode), lambda c: c.model_mb, 1)
               for mode in _modes(gridded)]
    return tables


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _markdown_table(table: _Table) -> str:
    lines = ["| " + " | ".join(_markdown_cell(h) for h in table.headers) + " |",
             "|" + "|".join("---:" if n else "---" for n in table.numeric) + "|"]
    lines += ["| " + " | ".join(_markdown_cell(v) for v in row) + " |" for row in table.rows]
    return "\n".join(lines)


def _html_table(table: _Table, css: str = "", caption: bool = True) -> str:
    esc = html.escape
    head = "".join(f'<th class="{"num" if n else ""}">{esc(h)}</th>' for h, n in zip(table.headers, table.numeric))
    body = []
    for r, row in enumerate(table.rows):
        tds = []
        for i, value in enumerate(row):
            names = " ".join(filter(None, ["num" if table.numeric[i] else "",
                                           table.classes[r][i] if table.classes else ""]))
            tag = "th" if css == "grid" and i == 0 else "td"
            tds.append(f'<{tag} class="{names}">{esc(value)}</{tag}>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    title = f"<caption>{esc(table.title)}</caption>" if caption else ""
    return f'<table class="{css}">{title}<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


# --- header facts --------------------------------------------------------------------------------------

DEVICE_FIELDS = (("cpu_model", "CPU"), ("cores", "cores"), ("machine", "machine"), ("system", "system"),
                 ("release", "release"), ("python", "Python"), ("numpy", "numpy"), ("hostname", "host"))


def _facts(sweep: dict) -> list[tuple[str, str]]:
    cells, device = sweep["cells"], sweep["device"]
    facts = [(label, _one_line(device[key])) for key, label in DEVICE_FIELDS if device.get(key) not in (None, "")]
    facts += [(_one_line(key), _one_line(value)) for key, value in device.items()
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


def _notes(cells: list[Cell], heat_maps: bool = False) -> list[str]:
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


# --- plots ---------------------------------------------------------------------------------------------

def _matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise UsageError(f"the HTML report needs matplotlib ({error.name or 'matplotlib'} is missing): "
                         "pip install 'edgebert[report]'") from None
    return Figure, FigureCanvasAgg


def _png(figure, canvas_class) -> str:
    canvas_class(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _log_scale(axis, suffix: str = "", scale: float = 1.0) -> None:
    """Label a log axis with plain numbers (1, 10, 100; 2 and 5 in between), not powers of ten."""
    from matplotlib.ticker import FuncFormatter

    def major(value, _):
        return f"{value / scale:g}{suffix}"

    def minor(value, _):
        lead = round(value / 10 ** math.floor(math.log10(value))) if value > 0 else 0
        return f"{value / scale:g}{suffix}" if lead in (2, 5) else ""

    axis.set_major_formatter(FuncFormatter(major))
    axis.set_minor_formatter(FuncFormatter(minor))


def _wide_range(values: list[float]) -> bool:
    """Whether the values span enough (more than 10x) to be read on a log scale."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 10


def _compact(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _heat_map(mpl, title: str, unit: str, cells: list[Cell], value, cmap_name: str, shared: list[float]) -> str:
    """One L x H heat map. Its colour scale spans `shared` (every map of the same figure kind), so
    colours compare across modes and thread counts; the numbers are written in the cells."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.patches import Patch, Rectangle

    Figure, canvas = mpl
    layers, hidden = _axes(cells)
    grid = _grid(cells, value)
    values = np.full((len(layers), len(hidden)), np.nan)
    for (l, h), (status, number) in grid.items():
        if status == "ok":
            values[layers.index(l), hidden.index(h)] = number
    low, high = (min(shared), max(shared)) if shared else (0.0, 1.0)
    if _wide_range(shared):
        norm, scale = LogNorm(low, high), " (log colour scale)"
    else:
        norm, scale = Normalize(low, high if high > low else low + 1), ""
    cmap = colormaps[cmap_name].with_extremes(bad=MISSING_COLOR)

    figure = Figure(figsize=(6.2, 5.4))
    ax = figure.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
    bar = figure.colorbar(image, ax=ax, shrink=0.85)
    bar.set_label(unit + scale)
    if scale:
        _log_scale(bar.ax.yaxis)
    ax.set_xticks(range(len(hidden)), [str(h) for h in hidden])
    ax.set_yticks(range(len(layers)), [str(l) for l in layers])
    ax.set_xlabel("hidden size H")
    ax.set_ylabel("layers L")
    ax.set_title(title)
    ax.set_xticks(np.arange(len(hidden) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(layers) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    statuses = set()
    for (l, h), (status, number) in grid.items():
        y, x = layers.index(l), hidden.index(h)
        statuses.add(status)
        if status == "ok":
            red, green, blue, _ = cmap(norm(number))
            colour = "white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.5 else "black"
            ax.text(x, y, _compact(number), ha="center", va="center", fontsize=9, color=colour)
        elif status == FAILED:
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, facecolor=FAILED_COLOR, edgecolor="white", linewidth=1.5))
            ax.text(x, y, FAILED, ha="center", va="center", fontsize=8, color="#9b1c1c")
        else:
            ax.text(x, y, NA, ha="center", va="center", fontsize=8, color="#555555")
    handles = [Patch(facecolor=MISSING_COLOR, label="n/a: not measured")] if NA in statuses else []
    handles += [Patch(facecolor=FAILED_COLOR, label="failed")] if FAILED in statuses else []
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False,
                  fontsize=8)
    return _png(figure, canvas)


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _series_style(index: int) -> dict:
    from matplotlib import colormaps

    return {"color": colormaps["tab10"](index % 10), "marker": _MARKERS[index % len(_MARKERS)]}


def _scatter(mpl, cells: list[Cell]) -> str | None:
    Figure, canvas = mpl
    usable = [c for c in cells if c.ok and c.p50 is not None and c.parameters]
    if not usable:
        return None
    figure = Figure(figsize=(8, 5.2))
    ax = figure.add_subplot()
    for index, group in enumerate(_groups(cells)):
        members = sorted((c for c in usable if _in_group(c, group)), key=lambda c: c.parameters)
        if members:
            ax.scatter([c.parameters for c in members], [c.p50 for c in members], s=42, alpha=0.85,
                       label=_group_label(group), **_series_style(index))
    ax.set_xscale("log")
    _log_scale(ax.xaxis, "M", 1e6)
    log_y = _wide_range([c.p50 for c in usable])
    if log_y:
        ax.set_yscale("log")
        _log_scale(ax.yaxis)
    ax.set_xlabel("encoder parameters (log scale; M = million)")
    ax.set_ylabel("p50 latency (ms)" + (", log scale" if log_y else ""))
    ax.set_title("Latency vs parameters")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(title="mode, threads", fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1),
              borderaxespad=0)
    return _png(figure, canvas)


def _pareto_plot(mpl, cells: list[Cell], task: str, metric: str) -> str:
    Figure, canvas = mpl
    points = _accuracy_points(cells, task, metric)
    frontier = _pareto(points)
    figure = Figure(figsize=(8, 5.2))
    ax = figure.add_subplot()
    for index, group in enumerate(_groups(cells)):
        members = [(lat, acc) for lat, acc, c in points if _in_group(c, group)]
        if members:
            ax.scatter(*zip(*members), s=42, alpha=0.6, label=_group_label(group), **_series_style(index))
    xs, ys = [p[0] for p in frontier], [p[1] for p in frontier]
    ax.plot(xs, ys, drawstyle="steps-post", color="black", linewidth=1.5, zorder=3, label="Pareto frontier")
    ax.scatter(xs, ys, s=130, facecolors="none", edgecolors="black", linewidths=1.8, zorder=4)
    for latency, accuracy, cell in frontier:
        ax.annotate(f"{cell.label}, {cell.quantize}, {_threads_text(cell.threads)}",
                    (latency, accuracy), textcoords="offset points", xytext=(9, 6), fontsize=7.5, zorder=5,
                    bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "#999999", "alpha": 0.85})
    log_x = _wide_range([p[0] for p in points])
    if log_x:
        ax.set_xscale("log")
        _log_scale(ax.xaxis)
    ax.set_xlabel("p50 latency (ms)" + (", log scale" if log_x else ""))
    ax.set_ylabel(f"{task} {metric}")
    random = any(c.random_weights for _, _, c in points)
    ax.set_title(f"Latency vs {task} {metric}: Pareto frontier" + ("\n(" + RANDOM_NOTE + ")" if random else ""),
                 fontsize=10 if random else 12)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    return _png(figure, canvas)


def _figures(cells: list[Cell]) -> list[tuple[str, list[tuple[str, str]], bool]]:
    """[(section title, [(caption, base64 PNG), ...], wide), ...]; wide plots take a whole row."""
    mpl = _matplotlib()
    sections = []
    gridded = [c for c in cells if c.on_grid]
    if gridded:
        latencies = [c.p50 for c in gridded if c.ok and c.p50 is not None]
        sizes = [c.model_mb for c in gridded if c.ok and c.model_mb is not None]
        sections.append(("Latency over the L × H grid", [
            (f"p50 latency (ms), {_group_label(g)}",
             _heat_map(mpl, f"p50 latency, {_group_label(g)}", "p50 latency (ms)",
                       [c for c in gridded if _in_group(c, g)], lambda c: c.p50, "YlOrRd", latencies))
            for g in _groups(gridded)], False))
        sections.append(("Model size over the L × H grid", [
            (f"model size (MB), {mode}",
             _heat_map(mpl, f"model size, {mode}", "model size (MB)", _size_cells(gridded, mode),
                       lambda c: c.model_mb, "Blues", sizes))
            for mode in _modes(gridded)], False))
    scatter = _scatter(mpl, cells)
    if scatter:
        sections.append(("Latency vs parameters", [("p50 latency vs encoder parameters, one series per mode and "
                                                    "thread count", scatter)], True))
    pareto = [(f"p50 latency vs {task} {metric}; the frontier (black) holds the cells that no other cell "
               "beats on both", _pareto_plot(mpl, cells, task, metric)) for task, metric in _accuracy_sets(cells)]
    if pareto:
        sections.append(("Latency vs accuracy", pareto, True))
    return sections


# --- documents -----------------------------------------------------------------------------------------

TITLE = "edgebert benchmark report"


def render_markdown(sweep: dict) -> str:
    cells = sweep["cells"]
    out = [f"# {TITLE}", "", "| fact | value |", "|---|---|"]
    out += [f"| {_markdown_cell(k)} | {_markdown_cell(v)} |" for k, v in _facts(sweep)]
    out.append("")
    out += [f"> **note:** {note}" + "\n" for note in _notes(cells)]
    grid_tables = _grid_tables(cells)
    if grid_tables:
        out += ["## Over the L × H grid", ""]
        for table in grid_tables:
            out += [f"### {table.title}", "", _markdown_table(table), ""]
    for task, metric in _accuracy_sets(cells):
        table = _pareto_table(cells, task, metric)
        out += [f"## {table.title}", "", _markdown_table(table), ""]
    long = _long_table(cells)
    out += [f"## {long.title}", "", _markdown_table(long), ""]
    return "\n".join(out)


CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1f2328; background: #f6f8fa; margin: 0; }
main { max-width: 1280px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 12px; }
h2 { font-size: 20px; margin: 32px 0 12px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
.facts { border-collapse: collapse; margin: 8px 0 16px; }
.facts th { text-align: left; padding: 2px 16px 2px 0; color: #57606a; font-weight: 600; }
.facts td { padding: 2px 0; }
.note { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 8px 12px; margin: 8px 0; }
.figs { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 18px; }
figure { margin: 0; padding: 10px; border: 1px solid #d0d7de; border-radius: 8px; background: #fff; }
figure img { display: block; width: 100%; height: auto; }
figure.wide { grid-column: 1 / -1; }
figure.wide img { max-width: 920px; margin: 0 auto; }
figcaption { font-size: 13px; color: #57606a; margin-top: 6px; }
.tables { display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr)); gap: 18px; }
table.data, table.grid { border-collapse: collapse; font-size: 13px; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
table.data th, table.data td, table.grid th, table.grid td { border: 1px solid #d0d7de; padding: 3px 8px; }
thead th { background: #f0f3f6; text-align: left; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
td.na { background: #eeeeee; color: #6e7781; }
td.failed, th.failed { background: #fde8e6; color: #8b1a12; }
.scroll { overflow-x: auto; }
table.long { font-size: 12.5px; }
table.long td { white-space: nowrap; padding: 3px 6px; }
table.long thead th { padding: 3px 6px; vertical-align: bottom; }
table.long td:last-child { white-space: normal; min-width: 180px; }
""".strip()


def render_html(sweep: dict, sections: list | None = None) -> str:
    """The page; `sections` are `_figures(cells)` when the caller already has them."""
    cells, esc = sweep["cells"], html.escape
    if sections is None:
        sections = _figures(cells)  # first: a missing matplotlib fails before anything else happens
    facts = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in _facts(sweep))
    notes = "".join(f'<p class="note"><strong>note:</strong> {esc(n)}</p>' for n in _notes(cells, heat_maps=True))
    parts = [f"<h1>{TITLE}</h1>", f'<table class="facts">{facts}</table>', notes]
    for title, figures, wide in sections:
        parts.append(f"<h2>{esc(title)}</h2><div class=\"figs\">")
        for caption, png in figures:
            parts.append(f'<figure class="{"wide" if wide else ""}"><img alt="{esc(caption)}" src="data:image/png;base64,{png}">'
                         f"<figcaption>{esc(caption)}</figcaption></figure>")
        parts.append("</div>")
    grid_tables = _grid_tables(cells)
    if grid_tables:
        parts.append('<h2>Over the L × H grid</h2><div class="tables">')
        parts += [_html_table(t, "grid") for t in grid_tables]
        parts.append("</div>")
    for task, metric in _accuracy_sets(cells):
        table = _pareto_table(cells, task, metric)
        parts.append(f"<h2>{esc(table.title)}</h2>" + _html_table(table, "data", caption=False))
    long = _long_table(cells)
    parts.append(f'<h2>{esc(long.title)}</h2><div class="scroll">{_html_table(long, "data long", caption=False)}</div>')
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{TITLE}: {esc(sweep['path'].parent.name or str(sweep['path']))}</title>\n"
            f"<style>\n{CSS}\n</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n")


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
    sections = _figures(sweep["cells"])
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
