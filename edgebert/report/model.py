"""The results model: a sweep's results.json (or a bench results file) as a list of `Cell`s, one per
(variant, quantize mode, threads) measurement, ok or failed, and the ways the report groups them."""
from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

from edgebert.errors import BundleError, UnknownVariantError
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


def one_line(text) -> str:
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
        ok=ok, error=None if ok else one_line(error),
        parameters=parameters, model_bytes=_integer(bundle.get("model_bytes"), "bundle.model_bytes"),
        p50=_number(latency.get("p50"), "latency_ms.p50"), p90=_number(latency.get("p90"), "latency_ms.p90"),
        p99=_number(latency.get("p99"), "latency_ms.p99"),
        peak_rss_mb=_number(memory.get("peak_rss_mb"), "memory.peak_rss_mb"),
        growth_mb=_number(memory.get("growth_mb"), "memory.growth_mb"),
        accuracy=accuracy, random_weights=bool(_first(sweep.get("random_weights"), bundle.get("random_weights"), False)),
        runtime=runtime_name, xnnpack_applied=xnnpack if isinstance(xnnpack, bool) else None)


_GRID = {(layers, hidden) for layers in LAYER_CHOICES for hidden in HIDDEN_CHOICES}


# --- grouping ------------------------------------------------------------------------------------------

def mode_key(mode: str):
    return (MODE_ORDER.index(mode), "") if mode in MODE_ORDER else (len(MODE_ORDER), mode)


def threads_text(threads: int | None) -> str:
    if threads is None:
        return "threads n/a"
    return f"{threads} thread" + ("" if threads == 1 else "s")


def groups(cells: list[Cell]) -> list[tuple]:
    """The (mode, threads, seq_len) groups, in display order. seq_len is None unless the results measure
    more than one (a failed result may not know its seq_len at all)."""
    vary_seq = len({c.seq_len for c in cells if c.seq_len is not None}) > 1
    keys = {(c.quantize, c.threads, c.seq_len if vary_seq else None) for c in cells}
    return sorted(keys, key=lambda k: (mode_key(k[0]), k[1] if k[1] is not None else -1,
                                       k[2] if k[2] is not None else -1))


def in_group(cell: Cell, group: tuple) -> bool:
    mode, threads, seq_len = group
    return cell.quantize == mode and cell.threads == threads and (seq_len is None or cell.seq_len == seq_len)


def group_label(group: tuple) -> str:
    mode, threads, seq_len = group
    return f"{mode}, {threads_text(threads)}" + (f", seq {seq_len}" if seq_len is not None else "")


def modes(cells: list[Cell]) -> list[str]:
    return sorted({c.quantize for c in cells}, key=mode_key)


def axes(cells: list[Cell]) -> tuple[list[int], list[int]]:
    """Rows (layers) and columns (hidden): the Miniatures grid plus any other shape the results carry."""
    layers = sorted(set(LAYER_CHOICES) | {c.layers for c in cells if c.on_grid})
    hidden = sorted(set(HIDDEN_CHOICES) | {c.hidden for c in cells if c.on_grid})
    return layers, hidden


def _pick(cells: list[Cell]) -> Cell | None:
    """The cell that stands for a grid position: the first ok one, else the first failed one."""
    return next((c for c in cells if c.ok), cells[0] if cells else None)


def grid_values(cells: list[Cell], value) -> dict:
    """{(L, H): (status, number)} with status "ok", "failed" or "n/a" (nothing measured)."""
    layers, hidden = axes(cells)
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


def size_cells(cells: list[Cell], mode: str) -> list[Cell]:
    """A mode's cells for the size grid: the model size does not depend on the thread count, so an ok
    measurement at any thread count stands for the variant."""
    return [c for c in cells if c.quantize == mode and (not c.ok or c.model_bytes is not None)]


def pareto(points: list[tuple[float, float, Cell]]) -> list[tuple[float, float, Cell]]:
    """Points (latency, accuracy, cell) that no other point beats on both (faster and at least as
    accurate, or as fast and more accurate), sorted by latency."""
    frontier, best = [], -math.inf
    for latency, accuracy, cell in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            frontier.append((latency, accuracy, cell))
            best = accuracy
    return frontier


def accuracy_sets(cells: list[Cell]) -> list[tuple[str, str]]:
    return sorted({(c.accuracy["task"], c.accuracy["metric"]) for c in cells if c.ok and c.accuracy and c.p50 is not None})


def accuracy_points(cells: list[Cell], task: str, metric: str) -> list[tuple[float, float, Cell]]:
    return [(c.p50, c.accuracy["value"], c) for c in cells
            if c.ok and c.p50 is not None and c.accuracy and (c.accuracy["task"], c.accuracy["metric"]) == (task, metric)]

