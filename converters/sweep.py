"""The sweep: for each variant x quantization mode x thread count, get a checkpoint, convert, validate
and benchmark, so a user can pick a variant from one table.

One variant's weights are in memory at a time (Base in float32 is ~440 MB). Every step is resumable:

    DIR/checkpoints/<name>/                  random checkpoints made here (when no real one is at hand)
    DIR/bundles/<short>.<mode>.s<seq>/       converted bundles (reused when source and recipe match)
    DIR/cells/<name>.<mode>.s<seq>.t<N>.json one finished cell: its inputs' key and its result
    DIR/results.json                         every cell so far, in the edgebert.results format

A rerun skips cells whose key (source digest, recipe, bench settings, edgebert version) is unchanged
and whose result is a success; it redoes failed and interrupted ones. A failure in one cell is recorded
with its one-line error and the sweep goes on; a failure to write into DIR (a full disk, a read-only
place) stops the sweep with one line instead, since every later cell would fail the same way.

One sweep at a time writes a directory: the run holds the lock `.DIR.lock` beside it (edgebert.bundle's
output_lock), and a second sweep of the same directory fails at once, naming it.

With a `cells` runner (converters.distributed.RayCells: `sweep --ray`) each cell is converted and measured on
a node of a Ray cluster; the driver still resolves the checkpoints, skips the finished cells and writes every
file above, so the directory is the same either way and a rerun with or without Ray resumes it. Each result
carries the device facts of the machine that measured it (`device`; on Ray also `sweep.ray_node`).
"""
from __future__ import annotations

import gc
import hashlib
import io
import json
import os
import shutil
import tarfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from converters.config import BertConfig
from converters.export import QuantizeMode
from converters.google_checkpoint import RANDOM_MARKER, write_random_checkpoint
from converters.pipeline import ConvertOptions, convert
from converters.sources import Source, load_source
from converters.vocab import synthetic_vocab
from edgebert import __version__
from edgebert.bundle import MANIFEST_FILE, output_lock, read_bundle, to_json_bytes
from edgebert.device_info import device_facts
from edgebert.errors import EdgebertError, OutputError, UsageError
from edgebert.fetch import cached_checkpoint, fetch_checkpoint
from edgebert.results import BENCH_SCHEMA
from edgebert.variants import Variant

Log = Callable[[str], None]


@dataclass(frozen=True)
class SweepPlan:
    variants: tuple[Variant, ...]
    modes: tuple[QuantizeMode, ...] = (QuantizeMode.FLOAT32, QuantizeMode.DYNAMIC_INT8)
    threads: tuple[int, ...] = (1,)
    seq_len: int = 128
    runs: int = 30
    warmup: int = 5
    checkpoints: Path | None = None  # a directory holding <name>/ or <name>.zip per variant (real weights)
    download: bool = False  # fetch real checkpoints that are neither given nor cached

    def __post_init__(self):
        if not self.variants or not self.modes or not self.threads:
            raise UsageError("a sweep needs at least one variant, one mode and one thread count")
        if min(self.threads) < 1 or self.runs < 1 or self.warmup < 0:
            raise UsageError("--threads and --runs must be at least 1, --warmup at least 0")
        if self.checkpoints is not None and not Path(self.checkpoints).is_dir():
            raise UsageError(f"{self.checkpoints}: --checkpoints is not a directory")


def _atomic_write(path: Path, data: dict) -> None:
    """Write JSON beside `path`, fsync it, rename it into place; a failure is one OutputError naming `path`
    and leaves the previous file as it was."""
    temp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temp, "wb") as handle:
            handle.write(to_json_bytes(data))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except OSError as error:
        temp.unlink(missing_ok=True)
        raise OutputError(f"cannot write: {error.strerror or error}", path) from None


def resolve_checkpoint(variant: Variant, plan: SweepPlan, out_dir: Path, log: Log) -> Path:
    """A real checkpoint if one is given or cached (or --download), else a random one made here."""
    if plan.checkpoints is not None:
        for candidate in (Path(plan.checkpoints) / variant.name, Path(plan.checkpoints) / f"{variant.name}.zip"):
            if candidate.exists():
                return candidate
    cached = cached_checkpoint(variant)
    if cached is not None:
        return cached
    if plan.download:
        return fetch_checkpoint(variant)
    random_dir = out_dir / "checkpoints" / variant.name
    if not (random_dir / RANDOM_MARKER).is_file():
        log(f"{variant.short_name}: writing a random checkpoint in Google's layout")
        config = BertConfig.from_variant(variant)
        write_random_checkpoint(config, random_dir, synthetic_vocab(config.vocab_size), seed=0, force=True)
    return random_dir


def cell_key(source: Source, mode: QuantizeMode, threads: int, plan: SweepPlan) -> str:
    inputs = {"source": source.sha256, "mode": mode.value, "seq_len": plan.seq_len, "threads": threads,
              "runs": plan.runs, "warmup": plan.warmup, "edgebert": __version__}
    return hashlib.sha256(json.dumps(inputs, sort_keys=True).encode()).hexdigest()


def _bundle_is_current(bundle_dir: Path, source: Source, mode: QuantizeMode, seq_len: int) -> bool:
    if not (bundle_dir / MANIFEST_FILE).is_file():
        return False
    try:
        manifest = read_bundle(bundle_dir).manifest
    except EdgebertError:
        return False
    return (manifest["source"]["sha256"] == source.sha256 and manifest["recipe"]["quantize"] == mode.value
            and manifest["recipe"]["seq_len"] == seq_len and manifest["tools"]["edgebert"] == __version__)


def _cell_path(out_dir: Path, variant: Variant, mode: QuantizeMode, seq_len: int, threads: int) -> Path:
    return out_dir / "cells" / f"{variant.name}.{mode.value}.s{seq_len}.t{threads}.json"


def _finished_cell(path: Path, key: str) -> dict | None:
    try:
        cell = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = cell.get("key") == key and cell.get("result", {}).get("sweep", {}).get("status") == "ok"
    return cell["result"] if ok else None


def _sweep_facts(variant: Variant, mode: QuantizeMode, threads: int, random_weights: bool,
                 error: str | None, ray_node: dict | None = None) -> dict:
    return {"variant": variant.name, "short_name": variant.short_name, "layers": variant.layers,
            "hidden": variant.hidden, "quantize": mode.value, "threads": threads,
            "random_weights": random_weights, "status": "failed" if error else "ok",
            "error": error, "accuracy": None, "ray_node": ray_node}


def _failed(bundle_dir: Path, variant, mode, threads, random_weights: bool, error: str,
            ray_node: dict | None = None) -> dict:
    return {"bundle": {"path": str(bundle_dir), "name": bundle_dir.name}, "error": error,
            "sweep": _sweep_facts(variant, mode, threads, random_weights, error, ray_node)}


def measuring_device() -> dict:
    """The facts of the machine a cell is measured on, as `bench` writes them for its results file."""
    from edgebert import cpu_features

    return {**device_facts(), **cpu_features.device_facts()}


@dataclass(frozen=True)
class PendingCell:
    """A cell to convert (if its bundle is not current) and measure."""

    index: int  # 1-based, in the plan's order
    variant: Variant
    mode: QuantizeMode
    threads: int
    path: Path  # its cell file
    key: str
    bundle_dir: Path
    random_weights: bool


def pack_dir(directory: Path) -> bytes:
    """A directory's files as an uncompressed tar (a bundle travelling to or from a Ray node)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(Path(directory).iterdir()):
            tar.add(path, arcname=path.name)
    return buffer.getvalue()


def unpack_dir(data: bytes, directory: Path) -> None:
    Path(directory).mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(directory, filter="data")


def _install_bundle(data: bytes, bundle_dir: Path) -> None:
    """A bundle converted on a node, written into DIR/bundles atomically (staging directory, then rename)."""
    staging = bundle_dir.with_name(f".{bundle_dir.name}.tmp-{os.getpid()}")
    try:
        shutil.rmtree(staging, ignore_errors=True)
        unpack_dir(data, staging)
        if bundle_dir.exists():
            shutil.rmtree(bundle_dir)
        staging.rename(bundle_dir)
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"cannot write: {error.strerror or error}", bundle_dir) from None


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text if isinstance(error, EdgebertError) else f"{type(error).__name__}: {text}"


def run_sweep(plan: SweepPlan, out_dir: str | Path, log: Log = lambda message: None, cells=None) -> dict:
    """Run (or resume) the sweep; returns the results file dict, also written to DIR/results.json.
    `cells`: None to convert and measure here, one cell after another; a converters.distributed.RayCells to
    do it on a Ray cluster."""
    out_dir = Path(out_dir)
    with output_lock(out_dir):
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"cannot create the sweep directory: {error.strerror}", out_dir) from None
        return _run_sweep(plan, out_dir, log, cells)


class _Results:
    """DIR/results.json: the cells so far in the plan's order, rewritten after each finished cell."""

    def __init__(self, out_dir: Path):
        self.path = out_dir / "results.json"
        self.file = {"schema": BENCH_SCHEMA, "device": device_facts(), "results": []}
        self.by_index: dict[int, dict] = {}

    def add(self, index: int, result: dict, write: bool = True) -> None:
        self.by_index[index] = result
        self.file["results"] = [self.by_index[i] for i in sorted(self.by_index)]
        if write:
            _atomic_write(self.path, self.file)


def _run_sweep(plan: SweepPlan, out_dir: Path, log: Log, cells=None) -> dict:
    _remove_leftovers(out_dir)
    _atomic_write(out_dir / "sweep.json", {"plan": {**asdict(plan), "variants": [v.name for v in plan.variants],
                                                    "modes": [m.value for m in plan.modes],
                                                    "checkpoints": str(plan.checkpoints) if plan.checkpoints else None}})
    if cells is not None:
        cells.check(plan)
    results = _Results(out_dir)
    total = len(plan.variants) * len(plan.modes) * len(plan.threads)
    done = 0
    for variant in plan.variants:
        source = None
        try:
            source = load_source(resolve_checkpoint(variant, plan, out_dir, log))
        except OutputError:  # DIR cannot be written (full, read-only): every cell would fail the same way
            raise
        except Exception as error:  # noqa: BLE001 - a sweep records a broken variant and goes on
            message = _one_line(error)
            log(f"{variant.short_name}: cannot get a checkpoint: {message}")
        random_weights = bool(source and source.random_weights)
        groups = []
        for mode in plan.modes:
            bundle_dir = out_dir / "bundles" / f"{variant.short_name}.{mode.value}.s{plan.seq_len}"
            pending = []
            for threads in plan.threads:
                done += 1
                cell = _cell_path(out_dir, variant, mode, plan.seq_len, threads)
                key = cell_key(source, mode, threads, plan) if source else None
                finished = _finished_cell(cell, key) if key else None
                if finished is not None:
                    log(f"[{done}/{total}] {bundle_dir.name} t{threads}: unchanged, skipped")
                    results.add(done, finished, write=False)
                else:
                    pending.append(PendingCell(done, variant, mode, threads, cell, key, bundle_dir, random_weights))
            if not pending:
                continue
            current = bool(source) and _bundle_is_current(bundle_dir, source, mode, plan.seq_len)
            if source is None:
                for item in pending:
                    _finish(item, _failed(bundle_dir, variant, mode, item.threads, False,
                                          "no checkpoint (see the log)"), total, results, log)
            elif cells is not None:
                groups.append((mode, bundle_dir, current, pending))
            else:
                _run_here(plan, source, mode, bundle_dir, current, pending, total, results, log)
        if groups:
            cells.submit(source, groups, plan)
        del source
        _release_tensorflow_memory()
    if cells is not None:
        for kind, item, value in cells.finished():
            if kind == "bundle":  # a conversion on a node ended: its bundle into DIR/bundles
                _converted(item, value, log)
            else:
                _finish(item, _node_result(item, value), total, results, log, value.get("node"))
    _atomic_write(results.path, results.file)
    return results.file


def _run_here(plan, source, mode, bundle_dir, current, pending, total, results, log) -> None:
    from edgebert.bench import bench_in_fresh_process

    conversion_error = None
    if not current:
        log(f"{bundle_dir.name}: converting")
        try:
            convert(source.path, bundle_dir, ConvertOptions(quantize=mode, seq_len=plan.seq_len, force=True),
                    source=source)
        except OutputError:
            raise
        except Exception as error:  # noqa: BLE001
            conversion_error = _one_line(error)
    device = None
    for item in pending:
        if conversion_error:
            result = _failed(bundle_dir, item.variant, mode, item.threads, item.random_weights, conversion_error)
        else:
            log(f"[{item.index}/{total}] {bundle_dir.name} t{item.threads}: benchmarking")
            result = bench_in_fresh_process(bundle_dir, threads=item.threads, runs=plan.runs, warmup=plan.warmup)
            if "error" not in result:
                result["device"] = device = device or measuring_device()
            result["sweep"] = _sweep_facts(item.variant, mode, item.threads, item.random_weights, result.get("error"))
        _finish(item, result, total, results, log)


def _converted(group: tuple, value: dict, log: Log) -> None:
    bundle_dir = group[1]
    where = _node_name(value.get("node"))
    if "error" in value:
        log(f"{bundle_dir.name}: conversion failed{where}: {value['error']}")
        return
    _install_bundle(value["bundle"], bundle_dir)
    log(f"{bundle_dir.name}: converted{where}")


def _node_result(item: PendingCell, value: dict) -> dict:
    """A cell's result from its node, as a local sweep records it (the bundle's path is the one in DIR)."""
    if "error" in value:
        return _failed(item.bundle_dir, item.variant, item.mode, item.threads, item.random_weights, value["error"],
                       value.get("node"))
    result = value["result"]
    if "error" in result:
        result["bundle"]["path"] = str(item.bundle_dir)
    else:
        result["bundle"]["path"] = str(item.bundle_dir.resolve())
    result["sweep"] = _sweep_facts(item.variant, item.mode, item.threads, item.random_weights, result.get("error"),
                                   value.get("node"))
    return result


def _node_name(node: dict | None) -> str:
    return f" on node {node['ip']} ({node['node_id'][:8]})" if node else ""


def _finish(item: PendingCell, result: dict, total: int, results: _Results, log: Log, node: dict | None = None) -> None:
    name = f"[{item.index}/{total}] {item.bundle_dir.name} t{item.threads}: "
    log(name + (f"failed: {result['error']}" if "error" in result else
                f"p50 {result['latency_ms']['p50']:.2f} ms") + _node_name(node))
    _atomic_write(item.path, {"key": item.key, "result": result})
    results.add(item.index, result)


def _remove_leftovers(out_dir: Path) -> None:
    """A killed run can leave hidden staging directories (bundles and checkpoints are written atomically,
    so nothing visible is half-written); clear them before resuming."""
    import shutil

    for folder in (out_dir / "bundles", out_dir / "checkpoints", out_dir / "cells"):
        for leftover in folder.glob(".*.tmp-*") if folder.is_dir() else ():
            shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)


def _release_tensorflow_memory() -> None:
    """Keras keeps every model built in the session; drop them before the next variant."""
    from converters.tf_import import tf_keras

    tf_keras.backend.clear_session()
    gc.collect()
