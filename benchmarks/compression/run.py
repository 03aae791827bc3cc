"""The compression benchmark's cells (see the package docstring)."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import statistics
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from benchmarks.compression import SCHEMA


@dataclass(frozen=True)
class Settings:
    data: Path  # a GLUE task folder with train.tsv and dev.tsv
    variants: tuple  # Shape
    epochs: int = 4  # base fine-tuning
    recover_epochs: int = 2  # every run that starts from base
    batch_size: int = 128
    learning_rate: float = 3e-4
    max_seq_len: int = 128  # training
    seq_len: int = 128  # bundles
    trim_max_tokens: int = 9634  # the row budget: 2.5x smaller BERT-Tiny dynamic-int8 model
    runs: int = 100  # timed runs per bundle and round
    rounds: int = 3
    seed: int = 0
    checkpoints: dict = field(default_factory=dict)  # variant name -> path (else random, or fetched)
    pretrained: bool = False
    max_train_examples: int | None = None  # quick runs only


# name -> (steps after base, as recipe step tables, or None for base itself)
PRUNED = {
    "unstructured-50": [{"kind": "finetune", "prune": 0.5, "prune_end": 0.6}],
    "unstructured-80": [{"kind": "finetune", "prune": 0.8, "prune_end": 0.6}],
    "2:4": [{"kind": "finetune", "prune_pattern": "2:4", "prune_end": 0.6}],
    "structured-50": [{"kind": "prune", "heads": 0.5, "ffn": 0.5}, {"kind": "finetune"}],
    "vocab-trimmed": [{"kind": "trim-vocab", "keep_characters": "ascii", "keep_predictions": True}],
    "vocab-trimmed-heldout": [{"kind": "trim-vocab", "keep_characters": "ascii", "keep_predictions": True}],
}
# The text each trim keeps pieces (and labels) for: the task's sentences, unlabelled. The held-out trim
# never sees dev, so its dev agreement shows what text outside the corpus can expect.
TRIM_CORPUS = {"vocab-trimmed": ("train.tsv", "dev.tsv"), "vocab-trimmed-heldout": ("train.tsv",)}
# (model, export mode) rows of the table, in order.
ROWS = [("base", "float32"), ("base", "dynamic-int8"), ("base", "int8"), ("unstructured-50", "dynamic-int8"),
        ("unstructured-80", "dynamic-int8"), ("2:4", "dynamic-int8"), ("structured-50", "dynamic-int8"),
        ("vocab-trimmed", "dynamic-int8"), ("vocab-trimmed-heldout", "dynamic-int8")]


def _recipe(name: str, steps: list[dict]):
    from converters.recipes import Recipe, Step

    return Recipe(name, f"benchmark: {name}", tuple(Step(s["kind"], {k: v for k, v in s.items() if k != "kind"})
                                                     for s in steps), {}, Path(f"<{name}>"))


@dataclass(frozen=True)
class Shape:
    """A model shape to benchmark: a grid variant's name and config, or a custom one (smoke tests)."""

    name: str
    config: object  # converters.config.BertConfig
    vocab: tuple  # the vocab a random checkpoint of this shape gets


def grid_shape(variant) -> Shape:
    from converters.config import BertConfig
    from converters.vocab import synthetic_vocab
    from edgebert.tokenizer import read_vocab

    real = _real_vocab()
    vocab = read_vocab(real) if real else synthetic_vocab()
    return Shape(variant.name, BertConfig.from_variant(variant, len(vocab)), tuple(vocab))


def _real_vocab() -> Path | None:
    """The uncased vocab beside the repository (../shared/data), when present."""
    candidate = Path(__file__).resolve().parents[3] / "shared" / "data" / "vocab" / "bert_uncased_vocab.txt"
    return candidate if candidate.is_file() else None


def _checkpoint(shape: Shape, settings: Settings, work: Path, log) -> Path | str:
    """The starting checkpoint: given, fetched (pretrained) or random in Google's layout."""
    if shape.name in settings.checkpoints:
        return settings.checkpoints[shape.name]
    if settings.pretrained:
        return shape.name
    from converters.google_checkpoint import write_random_checkpoint

    path = work / "random-checkpoint"
    if not (path / "bert_model.ckpt.index").is_file():
        log(f"{shape.name}: writing a random checkpoint (seed {settings.seed})")
        write_random_checkpoint(shape.config, path, list(shape.vocab), seed=settings.seed, force=True)
    return path


def _train_options(settings: Settings, epochs: int) -> dict:
    return {"epochs": epochs, "batch_size": settings.batch_size, "learning_rate": settings.learning_rate,
            "max_seq_len": settings.max_seq_len, "seed": settings.seed,
            "max_train_examples": settings.max_train_examples}


def build_checkpoints(variant: Shape, settings: Settings, work: Path, log, progress) -> dict[str, Path]:
    """base and each pruned / trimmed model, resumably (run_steps reuses finished steps)."""
    from converters.recipes import RecipeInputs, run_steps

    inputs = RecipeInputs(task=settings.data / "train.tsv", dev=settings.data / "dev.tsv")
    start = _checkpoint(variant, settings, work, log)
    base = run_steps(_recipe("base", [{"kind": "finetune"}]), start, work / "base", inputs, log=log,
                     progress=progress, step_overrides={"finetune": _train_options(settings, settings.epochs)})
    made = {"base": Path(base)}
    for name, steps in PRUNED.items():
        overrides = {"finetune": {**_train_options(settings, settings.recover_epochs),
                                  **({"teacher": Path(base)} if name == "structured-50" else {})},
                     "trim-vocab": {"max_tokens": settings.trim_max_tokens}}
        corpus = tuple(settings.data / file for file in TRIM_CORPUS.get(name, ()))
        made[name] = Path(run_steps(_recipe(name, steps), base, work / name.replace(":", "of"),
                                    dataclasses.replace(inputs, corpus=corpus), log=log, progress=progress,
                                    step_overrides=overrides))
    return made


def _calibration_text(settings: Settings, work: Path) -> Path:
    """Full int8 is calibrated on the task's own training sentences (the default, samples/, is general
    English): 200 of them, drawn with the run's seed."""
    import numpy as np

    from edgebert.tasks import load_task

    path = work / "calibration.txt"
    if not path.is_file():
        texts = load_task(settings.data / "train.tsv").texts
        chosen = np.random.default_rng(settings.seed).permutation(len(texts))[:200]
        lines = [texts[i] if isinstance(texts[i], str) else texts[i][0] for i in chosen]
        path.write_text("\n".join(line.replace("\n", " ") for line in lines) + "\n", encoding="utf-8")
    return path


def _bundle(checkpoint: Path, out: Path, mode: str, settings: Settings, calibration: Path, log) -> dict:
    """Convert (evaluated on dev by running the .tflite), reusing a finished bundle of the same checkpoint.
    An export that fails its validation is recorded as {"error": ...}, and the run goes on."""
    from converters.export import QuantizeMode
    from converters.pipeline import ConvertOptions, convert
    from converters.sources import load_source
    from edgebert.errors import ValidationError

    source = load_source(checkpoint)
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        if manifest["source"]["sha256"] == source.sha256 and manifest["recipe"]["quantize"] == mode:
            return manifest
    options = ConvertOptions(quantize=QuantizeMode(mode), seq_len=settings.seq_len, force=True,
                             eval_file=settings.data / "dev.tsv", calibration_file=calibration,
                             calibration_size=200)
    log(f"converting {out.name}")
    try:
        return convert(checkpoint, out, options, log=lambda message: None, source=source).manifest
    except ValidationError as error:
        log(f"{out.name}: {error}")
        return {"error": str(error)}


def _sizes(bundle: Path) -> dict:
    files = sorted(p for p in bundle.iterdir() if p.is_file())
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as archive:
        for path in files:
            archive.write(path, path.name)
    return {"model_bytes": (bundle / "model.tflite").stat().st_size,
            "bundle_bytes": sum(p.stat().st_size for p in files), "zipped_bytes": len(buffer.getvalue())}


def _latencies(bundles: dict[str, Path], settings: Settings, log) -> dict[str, dict]:
    """Every bundle in a fresh process per round, the order rotated each round; medians of round p50s."""
    from edgebert.bench import bench_in_fresh_process

    names = list(bundles)
    p50s: dict[str, list[float]] = {name: [] for name in names}
    memory: dict[str, float] = {}
    for round_index in range(settings.rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            result = bench_in_fresh_process(bundles[name], runs=settings.runs, threads=1)
            if "error" in result:
                raise RuntimeError(f"benchmark of {bundles[name]} failed: {result['error']}")
            p50s[name].append(result["latency_ms"]["p50"])
            memory[name] = result["memory"]["peak_rss_mb"]
        log(f"latency round {round_index + 1}/{settings.rounds} done")
    return {name: {"p50_ms": statistics.median(values), "round_p50s_ms": values, "peak_rss_mb": memory[name]}
            for name, values in p50s.items()}


def _predictions(bundle: Path, dev) -> list[int]:
    from edgebert.evaluate import evaluate_bundle

    return evaluate_bundle(bundle, dev)["predictions"]


def run_variant(variant: Shape, settings: Settings, out: Path, log, progress) -> dict:
    from edgebert.tasks import load_task

    started = time.perf_counter()
    work = out / "work" / variant.name
    checkpoints = build_checkpoints(variant, settings, work, log, progress)
    bundles, manifests, failed = {}, {}, []
    calibration = _calibration_text(settings, work)
    for model, mode in ROWS:
        key = f"{model} {mode}"
        path = out / "bundles" / variant.name / f"{model.replace(':', 'of')}.{mode}"
        manifest = _bundle(checkpoints[model], path, mode, settings, calibration, log)
        if "error" in manifest:
            failed.append({"model": model, "mode": mode, "error": manifest["error"]})
            continue
        manifests[key], bundles[key] = manifest, path
    dev = load_task(settings.data / "dev.tsv")
    predictions = {key: _predictions(path, dev) for key, path in bundles.items()}
    latency = _latencies(bundles, settings, log)
    float_key, int8_key = "base float32", "base dynamic-int8"
    rows = []
    for key, path in bundles.items():
        model, mode = key.rsplit(" ", 1)
        manifest = manifests[key]
        history = manifest["source"]["history"]
        row = {"model": model, "mode": mode, "bundle": str(path),
               "accuracy": manifest["evaluation"]["metrics"]["accuracy"],
               **_sizes(path), **latency[key],
               "agreement_with_float32": _agreement(predictions[key], predictions[float_key]),
               "agreement_with_base_dynamic_int8": _agreement(predictions[key], predictions[int8_key]),
               "parameters": manifest["sizes"]["parameters"], "vocab_size": manifest["model"]["vocab_size"],
               "layer_heads": manifest["model"].get("layer_heads"),
               "layer_intermediate_sizes": manifest["model"].get("layer_intermediate_sizes"),
               "steps": [entry["step"] for entry in history]}
        pruning = next((e["pruning"] for e in reversed(history) if e.get("step") == "finetune" and e.get("pruning")),
                       None)
        if pruning:
            row["sparsity"] = pruning["measured"]["overall"]
        trim = next((e for e in history if e.get("step") == "vocab-trim"), None)
        if trim:
            row["trim"] = {k: trim[k] for k in ("original_vocab_size", "vocab_size", "max_tokens")}
            row["trim"]["corpus_coverage"] = trim["corpus"]["coverage"]
            row["trim"]["corpus_files"] = list(TRIM_CORPUS.get(model, ("train.tsv",)))
            row["trim"]["kept_predictions"] = trim.get("kept_predictions")
        rows.append(row)
    base_record = manifests[float_key]["source"]["history"][-1]
    return {"variant": variant.name, "rows": rows, "failed": failed, "targets": check_targets(rows),
            "training": {"base_best_epoch": base_record["best_epoch"], "base_epochs": len(base_record["epochs"]),
                         "base_dev": base_record["dev_metrics"], "options": base_record["options"]},
            "random_weights": manifests[float_key]["source"]["random_weights"],
            "seconds": round(time.perf_counter() - started, 1)}


def _agreement(a: list[int], b: list[int]) -> float:
    return sum(x == y for x, y in zip(a, b)) / len(a)


def check_targets(rows: list[dict]) -> list[dict]:
    by = {(r["model"], r["mode"]): r for r in rows}
    flt, dyn = by[("base", "float32")], by[("base", "dynamic-int8")]
    structured, trimmed = by[("structured-50", "dynamic-int8")], by[("vocab-trimmed", "dynamic-int8")]
    points = lambda row: 100 * (row["accuracy"] - flt["accuracy"])  # noqa: E731
    speedup = dyn["p50_ms"] / structured["p50_ms"]
    smaller = dyn["model_bytes"] / trimmed["model_bytes"]
    return [
        {"target": "dynamic int8 within 0.5 points of float32", "value": round(points(dyn), 2),
         "met": abs(points(dyn)) <= 0.5},
        {"target": "structured-50 + dynamic int8 within 1.5 points of float32", "value": round(points(structured), 2),
         "met": points(structured) >= -1.5},
        {"target": "structured-50 >= 1.6x faster than base dynamic int8", "value": round(speedup, 2),
         "met": speedup >= 1.6},
        {"target": "vocab trim: model >= 2.5x smaller than base dynamic int8", "value": round(smaller, 2),
         "met": smaller >= 2.5},
        {"target": "vocab trim: same predictions as base dynamic int8 on dev",
         "value": trimmed["agreement_with_base_dynamic_int8"], "met": trimmed["agreement_with_base_dynamic_int8"] == 1.0},
    ]


def run(settings: Settings, out: Path, log: Callable[[str], None], progress=None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    results = {"schema": SCHEMA, "data": str(settings.data), "machine": _machine(), "variants": []}
    previous = out / "compression.json"
    if previous.is_file():  # variants measured by an earlier command (other settings) stay, each with its own
        kept = json.loads(previous.read_text())
        names = {variant.name for variant in settings.variants}
        results["variants"] = [v for v in kept.get("variants", []) if v["variant"] not in names]
    for variant in settings.variants:
        log(f"== {variant.name}")
        record = run_variant(variant, settings, out, log, progress)
        record["settings"] = _settings_record(settings)
        results["variants"].append(record)
        _write_json(previous, results)  # after each variant, so a long run shows progress
    from benchmarks.compression.report import format_markdown

    (out / "compression.md").write_text(format_markdown(results), encoding="utf-8")
    return results


def _settings_record(settings: Settings) -> dict:
    record = {k: v for k, v in settings.__dict__.items() if k not in ("variants", "data", "checkpoints")}
    record["variants"] = [v.name for v in settings.variants]
    record["checkpoints"] = {k: str(v) for k, v in settings.checkpoints.items()}
    return record


def _machine() -> dict:
    import platform

    return {"cpu": _cpu_name(), "cores": os.cpu_count(), "python": platform.python_version()}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _write_json(path: Path, value: dict) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(value, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)
