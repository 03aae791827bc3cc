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
"""
from __future__ import annotations

import gc
import hashlib
import json
import os
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


def _sweep_facts(variant: Variant, mode: QuantizeMode, threads: int, source: Source | None,
                 error: str | None) -> dict:
    return {"variant": variant.name, "short_name": variant.short_name, "layers": variant.layers,
            "hidden": variant.hidden, "quantize": mode.value, "threads": threads,
            "random_weights": bool(source and source.random_weights), "status": "failed" if error else "ok",
            "error": error, "accuracy": None}


def _failed(bundle_dir: Path, variant, mode, threads, source, error: str) -> dict:
    return {"bundle": {"path": str(bundle_dir), "name": bundle_dir.name}, "error": error,
            "sweep": _sweep_facts(variant, mode, threads, source, error)}


def _one_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text if isinstance(error, EdgebertError) else f"{type(error).__name__}: {text}"


def run_sweep(plan: SweepPlan, out_dir: str | Path, log: Log = lambda message: None) -> dict:
    """Run (or resume) the sweep; returns the results file dict, also written to DIR/results.json."""
    out_dir = Path(out_dir)
    with output_lock(out_dir):
        try:
            out_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise OutputError(f"cannot create the sweep directory: {error.strerror}", out_dir) from None
        return _run_sweep(plan, out_dir, log)


def _run_sweep(plan: SweepPlan, out_dir: Path, log: Log) -> dict:
    from edgebert.bench import bench_in_fresh_process

    _remove_leftovers(out_dir)
    _atomic_write(out_dir / "sweep.json", {"plan": {**asdict(plan), "variants": [v.name for v in plan.variants],
                                                    "modes": [m.value for m in plan.modes],
                                                    "checkpoints": str(plan.checkpoints) if plan.checkpoints else None}})
    results_file = {"schema": BENCH_SCHEMA, "device": device_facts(), "results": []}
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
        for mode in plan.modes:
            bundle_dir = out_dir / "bundles" / f"{variant.short_name}.{mode.value}.s{plan.seq_len}"
            conversion_error = None if source else "no checkpoint (see the log)"
            pending = []
            for threads in plan.threads:
                done += 1
                cell = _cell_path(out_dir, variant, mode, plan.seq_len, threads)
                key = cell_key(source, mode, threads, plan) if source else None
                finished = _finished_cell(cell, key) if key else None
                if finished is not None:
                    log(f"[{done}/{total}] {bundle_dir.name} t{threads}: unchanged, skipped")
                    results_file["results"].append(finished)
                else:
                    pending.append((done, threads, cell, key))
            if pending and source and not _bundle_is_current(bundle_dir, source, mode, plan.seq_len):
                log(f"{bundle_dir.name}: converting")
                try:
                    convert(source.path, bundle_dir, ConvertOptions(quantize=mode, seq_len=plan.seq_len, force=True),
                            source=source)
                except OutputError:
                    raise
                except Exception as error:  # noqa: BLE001
                    conversion_error = _one_line(error)
            for index, threads, cell, key in pending:
                if conversion_error:
                    result = _failed(bundle_dir, variant, mode, threads, source, conversion_error)
                else:
                    log(f"[{index}/{total}] {bundle_dir.name} t{threads}: benchmarking")
                    result = bench_in_fresh_process(bundle_dir, threads=threads, runs=plan.runs, warmup=plan.warmup)
                    error = result.get("error")
                    result["sweep"] = _sweep_facts(variant, mode, threads, source, error)
                log(f"[{index}/{total}] {bundle_dir.name} t{threads}: " + (
                    f"failed: {result['error']}" if "error" in result else f"p50 {result['latency_ms']['p50']:.2f} ms"))
                _atomic_write(cell, {"key": key, "result": result})
                results_file["results"].append(result)
                _atomic_write(out_dir / "results.json", results_file)
        del source
        _release_tensorflow_memory()
    _atomic_write(out_dir / "results.json", results_file)
    return results_file


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
