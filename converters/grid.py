"""The BERT Miniatures' protocol as one run: for each (variant or model, task), the fine-tuning search (batch sizes
{8,16,32,64,128} x learning rates {3e-4,1e-4,5e-5,3e-5}, 4 epochs, early stopping on dev), the best run
on dev exported to dynamic int8 (or through a recipe), scored from its .tflite on dev, and benchmarked;
then the paper's table (rows L, columns H, one table per task). Checkpoints given by path (--models: a real
pretrained model such as all-MiniLM-L6-v2) run the same protocol and are listed beside that table.

The search's runs go one after another here, or as Ray Tune trials on a cluster
(converters.distributed); the results are the same files either way:

    DIR/checkpoints/<name>/                   random checkpoints made here (no real one at hand)
    DIR/cells/<short>.<task>/                 the best fine-tuned checkpoint of the cell
    DIR/cells/<short>.<task>.search/          its runs (and, with Ray, the Tune experiment under ray/)
    DIR/cells/<short>.<task>.json             the finished cell: its inputs' key and its result
    DIR/bundles/<short>.<task>.<mode>.s<seq>/ the exported bundle
    DIR/grid.json                             every cell: trials, best, .tflite dev score, latency
    DIR/results.json                          the benchmarks in edgebert.results' format (`edgebert report DIR`
                                              draws the heat maps and the accuracy/latency Pareto view)
    DIR/table.md                              the paper's table, one per task

A rerun skips finished cells whose key (source, data, options, grid, recipe, benchmark settings) is
unchanged; a cell's search with other inputs is refused with one line (finetune.claim_search_dir) unless
--restart. A cell that fails is recorded with its error and the grid goes on.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from converters import finetune as ft
from edgebert import __version__
from edgebert.bundle import file_sha256, output_lock
from edgebert.errors import OutputError, UsageError
from edgebert.results import BENCH_SCHEMA
from edgebert.variants import HIDDEN_CHOICES, LAYER_CHOICES, Variant

Log = Callable[[str], None]
GRID_FILE, TABLE_FILE, RESULTS_FILE = "grid.json", "table.md", "results.json"
# The BERT Miniatures release's SST-2 test accuracy (4 epochs, best of the 20-run grid), for the table.
PAPER_SST2_TEST = {(2, 128): 83.2, (4, 256): 85.9, (4, 512): 89.7, (8, 512): 89.6}


@dataclass(frozen=True)
class GridRow:
    """What a row of grid.json and the tables calls a model: a miniature variant, or a checkpoint given by
    path (any BERT-architecture model; its shape is read from its config, None when it cannot be loaded)."""
    name: str
    short_name: str
    layers: int | None
    hidden: int | None
    miniature: bool


def model_name(path: Path) -> str:
    """A checkpoint's name for the tables and file names: its folder's (or archive's) name, e.g. all-MiniLM-L6-v2."""
    name = path.name[:-4] if path.suffix == ".zip" else path.name
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"


@dataclass(frozen=True)
class GridPlan:
    variants: tuple[Variant, ...]
    tasks: tuple[str, ...]  # folder names under data: SST-2, CoLA, MRPC, ...
    data: Path  # <data>/<task>/train.tsv and dev.tsv (GLUE's layout)
    options: ft.FinetuneOptions = ft.FinetuneOptions()
    batch_sizes: tuple[int, ...] = ft.MINIATURES_BATCH_SIZES
    learning_rates: tuple[float, ...] = ft.MINIATURES_LEARNING_RATES
    teacher: str | None = None  # a path, "{task}" standing for the task's name
    recipe: str | None = None  # a conversion recipe (edgebert recipes) instead of plain dynamic int8
    checkpoints: Path | None = None
    download: bool = False
    threads: int = 1
    runs: int = 30
    warmup: int = 5
    models: tuple[Path, ...] = ()  # checkpoints by path (--models): real models beside the miniatures

    def __post_init__(self):
        if not (self.variants or self.models) or not self.tasks:
            raise UsageError("a grid needs at least one variant or model, and one task")
        for path in self.models:
            if not Path(path).exists():
                raise UsageError("no such checkpoint (--models)", path)
        names = [model_name(Path(path)) for path in self.models] + [v.short_name for v in self.variants]
        clash = next((name for name in names if names.count(name) > 1), None)
        if clash:
            raise UsageError(f"two models of the grid would both be called {clash!r}; give each its own folder name")
        if not self.batch_sizes or not self.learning_rates:
            raise UsageError("a grid needs at least one batch size and one learning rate")
        for task in self.tasks:
            for split in ("train", "dev"):
                if not (Path(self.data) / task / f"{split}.tsv").is_file():
                    raise UsageError(f"has no {task}/{split}.tsv (GLUE's layout: <data>/<task>/train.tsv, dev.tsv)",
                                     self.data)
        if self.threads < 1 or self.runs < 1 or self.warmup < 0:
            raise UsageError("--threads and --runs must be at least 1, --warmup at least 0")

    def teacher_for(self, task: str) -> Path | None:
        if self.teacher is None:
            return None
        path = Path(self.teacher.replace("{task}", task))
        if not path.exists():
            raise UsageError(f"--teacher {self.teacher}: {path} does not exist")
        return path


def cell_key(plan: GridPlan, source_sha: str, task: str, options: ft.FinetuneOptions) -> str:
    data = Path(plan.data) / task
    inputs = {"source": source_sha, "train": file_sha256(data / "train.tsv"), "dev": file_sha256(data / "dev.tsv"),
              "options": options.fingerprint(), "batch_sizes": list(plan.batch_sizes),
              "learning_rates": list(plan.learning_rates), "recipe": plan.recipe,
              "teacher": file_sha256(options.teacher) if options.teacher and options.teacher.is_file() else
              str(options.teacher), "threads": plan.threads, "runs": plan.runs, "warmup": plan.warmup,
              "edgebert": __version__}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def run_grid(plan: GridPlan, out_dir: str | Path, *, log: Log = lambda message: None, run_trials=None,
             restart: bool = False, progress: ft.Progress | None = None) -> dict:
    """Run (or resume) the grid; returns grid.json's content. `run_trials` as finetune.search takes it
    (None: one run after another here; converters.distributed.tune_trials: on Ray)."""
    out_dir = Path(out_dir)
    with output_lock(out_dir):
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"cannot create the grid directory: {error.strerror}", out_dir) from None
        return _run_grid(plan, out_dir, log, run_trials, restart, progress or ft.Progress(log=log))


def _run_grid(plan: GridPlan, out_dir: Path, log: Log, run_trials, restart: bool, progress: ft.Progress) -> dict:
    from converters.sources import load_source
    from converters.sweep import SweepPlan, _atomic_write, _release_tensorflow_memory, resolve_checkpoint
    from edgebert.device_info import device_facts
    from edgebert.tasks import load_task

    cells, bench_results = [], []
    entries = [*plan.variants, *(Path(path) for path in plan.models)]
    total, done = len(entries) * len(plan.tasks), 0
    for entry in entries:
        try:
            if isinstance(entry, Path):
                checkpoint = entry
            else:
                checkpoint = resolve_checkpoint(entry, SweepPlan(variants=(entry,), checkpoints=plan.checkpoints,
                                                                 download=plan.download), out_dir, log)
            source = load_source(checkpoint)
            source_error = None
        except OutputError:
            raise
        except Exception as error:  # noqa: BLE001 - a broken variant is recorded; the grid goes on
            source, source_error = None, ft.one_line_error(error)
        row = _row(entry, source)
        for task in plan.tasks:
            done += 1
            name = f"{row.short_name}.{task}"
            log(f"[{done}/{total}] {name}")
            cell_file = out_dir / "cells" / f"{name}.json"
            if source is None:
                cell = _failed_cell(row, task, f"no checkpoint: {source_error}")
            else:
                cell = _cell(plan, row, task, source, out_dir, cell_file, log, run_trials, restart, progress,
                             load_task)
            cells.append(cell)
            if cell.get("bench"):
                bench_results.append(cell["bench"])
            grid = {"plan": _plan_record(plan), "cells": cells}
            _atomic_write(out_dir / GRID_FILE, grid)
            _atomic_write(out_dir / RESULTS_FILE, {"schema": BENCH_SCHEMA, "device": device_facts(),
                                                    "results": bench_results})
            (out_dir / TABLE_FILE).write_text(table_markdown(cells), encoding="utf-8")
        del source
        _release_tensorflow_memory()
    return {"plan": _plan_record(plan), "cells": cells}


def _row(entry: Variant | Path, source) -> GridRow:
    if isinstance(entry, Variant):
        return GridRow(entry.name, entry.short_name, entry.layers, entry.hidden, miniature=True)
    layers, hidden = (source.config.num_layers, source.config.hidden_size) if source is not None else (None, None)
    return GridRow(model_name(entry), model_name(entry), layers, hidden, miniature=False)


def _plan_record(plan: GridPlan) -> dict:
    return json.loads(json.dumps({**dataclasses.asdict(plan), "variants": [v.name for v in plan.variants],
                                  "options": plan.options.fingerprint()}, default=str))


def _row_record(row: GridRow) -> dict:
    return {"variant": row.name, "short_name": row.short_name, "layers": row.layers, "hidden": row.hidden,
            "miniature": row.miniature}


def _failed_cell(row: GridRow, task: str, error: str) -> dict:
    return {**_row_record(row), "task": task, "status": "failed", "error": error}


def _cell(plan, row, task, source, out_dir, cell_file, log, run_trials, restart, progress, load_task) -> dict:
    from converters.sweep import _atomic_write

    data = Path(plan.data) / task
    name = f"{row.short_name}.{task}"
    try:
        options = dataclasses.replace(plan.options, teacher=plan.teacher_for(task))
        key = cell_key(plan, source.sha256, task, options)
        finished = _finished(cell_file, key)
        if finished is not None and not restart:
            log(f"{name}: unchanged, skipped")
            return finished
        train, dev = load_task(data / "train.tsv"), load_task(data / "dev.tsv")
        best_dir = out_dir / "cells" / name
        result = ft.search(source, train, dev, best_dir, options, list(plan.batch_sizes), list(plan.learning_rates),
                           progress=progress, force=True, restart=restart, run_trials=run_trials)
        trials = result.record["search"]
        metric = dev.metric_names[0]
        bundle_dir = _export(plan, best_dir, out_dir, name, data, log, progress)
        from edgebert.bundle import read_bundle

        manifest = read_bundle(bundle_dir).manifest
        tflite_metrics = manifest["evaluation"]["metrics"]
        log(f"{name}: benchmarking {bundle_dir.name}")
        bench = _bench(plan, bundle_dir, row, task, metric, tflite_metrics[metric], source)
        cell = {**_row_record(row), "task": task, "metric": metric, "status": "ok", "error": None,
                "random_weights": source.random_weights, "trials": trials,
                "best": {"run": ft.run_name(result.record["options"]["batch_size"],
                                            result.record["options"]["learning_rate"]),
                         "batch_size": result.record["options"]["batch_size"],
                         "learning_rate": result.record["options"]["learning_rate"],
                         "best_epoch": result.record["best_epoch"], "dev_metrics": result.best_metrics},
                "tflite": {"bundle": str(bundle_dir), "quantize": manifest["recipe"]["quantize"],
                           "recipe": plan.recipe, "model_bytes": manifest["sizes"]["model_bytes"],
                           "dev_metrics": tflite_metrics},
                "latency_ms": bench.get("latency_ms"), "bench": bench}
        if bench.get("error"):
            cell.update(status="failed", error=f"benchmark: {bench['error']}")
        log(f"{name}: best {cell['best']['run']}, dev {metric} {result.best_metrics[metric]:.4f} (float), "
            f"{tflite_metrics[metric]:.4f} (int8 .tflite)")
    except (OutputError, ft.ChangedInputsError):  # the disk, or old results that must not mix: stop here
        raise
    except Exception as error:  # noqa: BLE001 - a failed cell is recorded with its error; the grid goes on
        log(f"{name}: failed: {ft.one_line_error(error)}")
        cell = _failed_cell(row, task, ft.one_line_error(error))
        key = None
    _atomic_write(cell_file, {"key": key, "cell": cell})
    return cell


def _finished(cell_file: Path, key: str) -> dict | None:
    try:
        held = json.loads(cell_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    cell = held.get("cell") or {}
    return cell if held.get("key") == key and cell.get("status") == "ok" else None


def _export(plan: GridPlan, best_dir: Path, out_dir: Path, name: str, data: Path, log: Log, progress) -> Path:
    """The best checkpoint as a dynamic-int8 bundle (or through plan.recipe), scored from its .tflite on dev."""
    from converters.export import QuantizeMode
    from converters.pipeline import ConvertOptions, convert

    seq_len = plan.options.max_seq_len
    if plan.recipe is None:
        bundle_dir = out_dir / "bundles" / f"{name}.{QuantizeMode.DYNAMIC_INT8.value}.s{seq_len}"
        log(f"{name}: converting to {bundle_dir.name}")
        convert(best_dir, bundle_dir, ConvertOptions(quantize=QuantizeMode.DYNAMIC_INT8, seq_len=seq_len, force=True,
                                                     eval_file=data / "dev.tsv"), log=log)
        return bundle_dir
    from converters.recipes import RecipeInputs, convert_options, load_recipe, run_recipe

    recipe = load_recipe(plan.recipe)
    options = convert_options(recipe, {"seq_len": seq_len}, force=True, eval_file=data / "dev.tsv")
    bundle_dir = out_dir / "bundles" / f"{name}.{recipe.name}.s{seq_len}"
    shutil.rmtree(bundle_dir.with_name(bundle_dir.name + ".recipe-work"), ignore_errors=True)
    log(f"{name}: recipe {recipe.name} into {bundle_dir.name}")
    run_recipe(recipe, best_dir, bundle_dir, RecipeInputs(task=data / "train.tsv", dev=data / "dev.tsv"), options,
               log=log, progress=progress)
    return bundle_dir


def _bench(plan: GridPlan, bundle_dir: Path, row: GridRow, task: str, metric: str, value: float, source) -> dict:
    from edgebert.bench import bench_in_fresh_process

    result = bench_in_fresh_process(bundle_dir, threads=plan.threads, runs=plan.runs, warmup=plan.warmup)
    error = result.get("error")
    result["sweep"] = {"variant": row.name, "short_name": row.short_name, "layers": row.layers,
                       "hidden": row.hidden, "quantize": plan.recipe or "dynamic-int8", "threads": plan.threads,
                       "random_weights": source.random_weights, "status": "failed" if error else "ok",
                       "error": error, "accuracy": {"task": task, "metric": metric, "value": value}}
    return result


def table_markdown(cells: list[dict]) -> str:
    """The paper's table: one per task, rows L, columns H; each cell the best run's dev score on the float
    model, then the int8 .tflite's, x100 (a failed cell says so). Models given by path follow in a list of
    their own (they are not miniatures, whatever their shape)."""
    lines = ["# Fine-tuning grid", "",
             "Dev scores x100: the best of the search on the float model / its dynamic-int8 .tflite. "
             "Random-weight checkpoints are marked *; their scores say nothing of the miniatures'.", ""]
    for task in dict.fromkeys(cell["task"] for cell in cells):
        these = [cell for cell in cells if cell["task"] == task]
        miniatures = [cell for cell in these if cell.get("miniature", True)]
        others = [cell for cell in these if not cell.get("miniature", True)]
        metric = next((cell["metric"] for cell in these if cell.get("metric")), "score")
        lines += [f"## {task} (dev {metric})", ""]
        if miniatures:
            by_shape = {(cell["layers"], cell["hidden"]): cell for cell in miniatures}
            layers = [n for n in LAYER_CHOICES if any(shape[0] == n for shape in by_shape)]
            hiddens = [h for h in HIDDEN_CHOICES if any(shape[1] == h for shape in by_shape)]
            lines += ["| | " + " | ".join(f"H={h}" for h in hiddens) + " |", "|---|" + "---|" * len(hiddens)]
            for n in layers:
                row = [_table_cell(by_shape.get((n, h))) for h in hiddens]
                lines.append(f"| L={n} | " + " | ".join(row) + " |")
            lines.append("")
        if others:
            lines += ["| model | L | H | dev |", "|---|---:|---:|---|"]
            lines += [f"| {cell['variant']} | {_or_dash(cell.get('layers'))} | {_or_dash(cell.get('hidden'))} | "
                      f"{_table_cell(cell)} |" for cell in others]
            lines.append("")
        if task.upper() == "SST-2":
            paper = ", ".join(f"L={n}/H={h} {score}" for (n, h), score in PAPER_SST2_TEST.items())
            lines += [f"Published SST-2 **test** accuracy of the real miniatures (BERT Miniatures release): {paper}.",
                      ""]
    return "\n".join(lines)


def _or_dash(value) -> str:
    return "-" if value is None else str(value)


def _table_cell(cell: dict | None) -> str:
    if cell is None:
        return ""
    if cell.get("status") != "ok":
        return "failed"
    metric = cell["metric"]
    mark = "*" if cell.get("random_weights") else ""
    return f"{100 * cell['best']['dev_metrics'][metric]:.1f} / {100 * cell['tflite']['dev_metrics'][metric]:.1f}{mark}"
