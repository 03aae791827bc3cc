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
    base_modes: tuple = ("float32", "dynamic-int8", "int8")  # base's exports (QuantizeMode values)
    models: tuple | None = None  # the models made from base (PRUNED's names, in its order); None: all
    calibration_size: int = 200  # full int8: training sentences to calibrate on
    trim_max_tokens: int = 9634  # the row budget: 2.5x smaller BERT-Tiny dynamic-int8 model
    runs: int = 100  # timed runs per bundle and round
    rounds: int = 3
    seed: int = 0
    checkpoints: dict = field(default_factory=dict)  # variant name -> path (else random, or fetched)
    pretrained: bool = False
    max_train_examples: int | None = None  # quick runs only

    def __post_init__(self):
        from converters.export import QuantizeMode

        unknown = [name for name in self.models or () if name not in PRUNED]
        if unknown:
            raise ValueError(f"unknown model {unknown[0]!r} (choose from {', '.join(PRUNED)})")
        for mode in self.base_modes:
            QuantizeMode.parse(mode)
        if "float32" not in self.base_modes:
            raise ValueError("the base modes must include float32: every row is compared with it")
        if self.calibration_size < 1:
            raise ValueError(f"the calibration size must be at least 1, got {self.calibration_size}")

    @property
    def derived(self) -> list[str]:
        """The models made from base, in PRUNED's order."""
        return [name for name in PRUNED if self.models is None or name in self.models]

    @property
    def rows(self) -> list[tuple[str, str]]:
        """(model, export mode) rows of the table, in order: base in each of its modes, then every
        model made from it in dynamic int8."""
        return [("base", mode) for mode in self.base_modes] + [(name, "dynamic-int8") for name in self.derived]


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


@dataclass(frozen=True)
class Target:
    """A target the run checks and reports (never asserts) on one row of the table.
    kind: "points" |Δ accuracy vs float32| <= limit; "drop" Δ >= -limit; "speedup" base dynamic int8's
    p50 / the row's >= limit; "smaller" base dynamic int8's model bytes / the row's >= limit; "agreement"
    the share of dev predictions equal to base dynamic int8's >= limit. A row whose export failed misses
    its targets; a row the run did not make has none."""

    text: str
    kind: str
    model: str
    mode: str
    limit: float


# The Google miniatures from random or pretrained weights (the README's first tables).
MINIATURE_TARGETS = (
    Target("dynamic int8 within 0.5 points of float32", "points", "base", "dynamic-int8", 0.5),
    Target("structured-50 + dynamic int8 within 1.5 points of float32", "drop", "structured-50", "dynamic-int8", 1.5),
    Target("structured-50 >= 1.6x faster than base dynamic int8", "speedup", "structured-50", "dynamic-int8", 1.6),
    Target("vocab trim: model >= 2.5x smaller than base dynamic int8", "smaller", "vocab-trimmed", "dynamic-int8", 2.5),
    Target("vocab trim: same predictions as base dynamic int8 on dev", "agreement", "vocab-trimmed", "dynamic-int8",
           1.0),
)
# A real pretrained model given with --source (issue 11: MiniLM fine-tuned on SST-2).
SOURCE_TARGETS = (
    Target("dynamic int8 within 0.3 points of float32", "points", "base", "dynamic-int8", 0.3),
    Target("full int8 converts by default, within 1.0 point of float32", "points", "base", "int8", 1.0),
    Target("dynamic int4 within 1.0 point of float32", "points", "base", "dynamic-int4", 1.0),
    Target("structured-50 + dynamic int8 within 2.0 points of float32", "drop", "structured-50", "dynamic-int8", 2.0),
    Target("structured-50 >= 1.6x faster than base dynamic int8", "speedup", "structured-50", "dynamic-int8", 1.6),
)


def _recipe(name: str, steps: list[dict]):
    from converters.recipes import Recipe, Step

    return Recipe(name, f"benchmark: {name}", tuple(Step(s["kind"], {k: v for k, v in s.items() if k != "kind"})
                                                     for s in steps), {}, Path(f"<{name}>"))


@dataclass(frozen=True)
class Shape:
    """A model shape to benchmark: a grid variant's name and config, a custom one (smoke tests), or a
    source of one's own (a Hugging Face / sentence-transformers folder, or any checkpoint edgebert reads),
    whose shape is its config's."""

    name: str
    config: object  # converters.config.BertConfig
    vocab: tuple  # the vocab a random checkpoint of this shape gets (a source's own: unused)
    source: Path | None = None  # start from this checkpoint
    targets: tuple = MINIATURE_TARGETS


def source_shape(name: str, path: Path) -> Shape:
    """A shape for the checkpoint at `path`, read from its config (SourceError when edgebert cannot read it)."""
    from converters.sources import load_source

    return Shape(name, load_source(path).config, (), source=Path(path), targets=SOURCE_TARGETS)


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
    if shape.source is not None:
        return shape.source
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
    for name in settings.derived:
        steps = PRUNED[name]
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
    English): calibration_size of them (200 by default), drawn with the run's seed."""
    import numpy as np

    from edgebert.tasks import load_task

    size = settings.calibration_size
    path = work / ("calibration.txt" if size == 200 else f"calibration-{size}.txt")
    if not path.is_file():
        texts = load_task(settings.data / "train.tsv").texts
        chosen = np.random.default_rng(settings.seed).permutation(len(texts))[:size]
        lines = [texts[i] if isinstance(texts[i], str) else texts[i][0] for i in chosen]
        path.write_text("\n".join(line.replace("\n", " ") for line in lines) + "\n", encoding="utf-8")
    return path


def _bundle(checkpoint: Path, out: Path, mode: str, settings: Settings, calibration: Path, log) -> dict:
    """Convert (evaluated on dev by running the .tflite), reusing a finished bundle of the same checkpoint.
    An export that fails (its validation refuses it, or the converter gives up) is recorded as
    {"error": the one-line message the CLI would print}, and the run goes on. The failure is kept beside
    the bundle (<bundle>.failed.json), so that a rerun with the same inputs and the same converter code
    does not try again; a changed converter tries again."""
    from converters.export import QuantizeMode
    from converters.pipeline import ConvertOptions, convert
    from converters.sources import load_source
    from edgebert.errors import EdgebertError

    source = load_source(checkpoint)
    manifest_path = out / "manifest.json"
    if manifest_path.is_file():
        manifest = json.loads(manifest_path.read_text())
        recipe = manifest["recipe"]
        if (manifest["source"]["sha256"] == source.sha256 and recipe["quantize"] == mode
                and recipe["seq_len"] == settings.seq_len
                and (mode != "int8" or recipe.get("calibration") == str(calibration))):
            return manifest
    options = ConvertOptions(quantize=QuantizeMode(mode), seq_len=settings.seq_len, force=True,
                             eval_file=settings.data / "dev.tsv", calibration_file=calibration,
                             calibration_size=settings.calibration_size)
    failure = out.with_name(out.name + ".failed.json")
    identity = {"source_sha256": source.sha256, "mode": mode, "seq_len": settings.seq_len,
                "calibration": calibration.name if mode == "int8" else None, "converters": _converter_digest()}
    if failure.is_file():
        recorded = json.loads(failure.read_text())
        if recorded.get("identity") == identity:
            log(f"{out.name}: failed before with the same inputs: {recorded['error']}")
            return {"error": recorded["error"]}
    log(f"converting {out.name}")
    started = time.perf_counter()
    try:
        manifest = convert(checkpoint, out, options, log=lambda message: None, source=source).manifest
    except EdgebertError as error:
        message = str(error)
        log(f"{out.name}: {type(error).__name__}: {message}")
        _write_json(failure, {"identity": identity, "error": message,
                              "seconds": round(time.perf_counter() - started, 1)})
        return {"error": message}
    failure.unlink(missing_ok=True)
    log(f"{out.name}: converted in {time.perf_counter() - started:.0f} s, dev accuracy "
        f"{manifest['evaluation']['metrics']['accuracy']:.4f}")
    return manifest


def _converter_digest() -> str:
    """The sha256 of the converter's code (converters/, every file): a failed export is tried again once
    the code that refused it has changed."""
    import hashlib

    root = Path(__file__).resolve().parents[2] / "converters"
    digest = hashlib.sha256()
    for path in sorted(p for p in root.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        digest.update(f"{path.relative_to(root)}\0".encode() + path.read_bytes())
    return digest.hexdigest()


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


def _predictions(bundle: Path, manifest: dict, dev, cache: Path) -> list[int]:
    """The bundle's class index for each dev example, from model.tflite; kept in `cache` and reused while
    they match the manifest's predictions_sha256 (a rerun that only re-times runs no model on dev)."""
    from edgebert.evaluate import evaluate_bundle, predictions_sha256

    expected = manifest["evaluation"]["predictions_sha256"]
    if cache.is_file():
        kept = json.loads(cache.read_text())
        if predictions_sha256(kept) == expected:
            return kept
    predictions = [int(p) for p in evaluate_bundle(bundle, dev)["predictions"]]
    if predictions_sha256(predictions) == expected:  # else the manifest's record is not this run's: no cache
        cache.parent.mkdir(parents=True, exist_ok=True)
        _write_json(cache, predictions)
    return predictions


def run_variant(variant: Shape, settings: Settings, out: Path, log, progress) -> dict:
    from edgebert.tasks import load_task

    started = time.perf_counter()
    work = out / "work" / variant.name
    checkpoints = build_checkpoints(variant, settings, work, log, progress)
    bundles, manifests, failed = {}, {}, []
    calibration = _calibration_text(settings, work)
    for model, mode in settings.rows:
        key = f"{model} {mode}"
        path = out / "bundles" / variant.name / f"{model.replace(':', 'of')}.{mode}"
        manifest = _bundle(checkpoints[model], path, mode, settings, calibration, log)
        if "error" in manifest:
            failed.append({"model": model, "mode": mode, "error": manifest["error"]})
            continue
        manifests[key], bundles[key] = manifest, path
    dev = load_task(settings.data / "dev.tsv")
    predictions = {key: _predictions(path, manifests[key], dev, work / "predictions" / f"{path.name}.json")
                   for key, path in bundles.items()}
    float_key, int8_key = "base float32", "base dynamic-int8"
    if float_key not in bundles:
        raise RuntimeError(f"{variant.name}: the float32 export failed ({failed[0]['error']}); nothing to compare with")
    latency = _latencies(bundles, settings, log)
    rows = []
    for key, path in bundles.items():
        model, mode = key.rsplit(" ", 1)
        manifest = manifests[key]
        history = manifest["source"]["history"]
        row = {"model": model, "mode": mode, "bundle": str(path),
               "accuracy": manifest["evaluation"]["metrics"]["accuracy"],
               **_sizes(path), **latency[key],
               "agreement_with_float32": _agreement(predictions[key], predictions[float_key]),
               "agreement_with_base_dynamic_int8": (_agreement(predictions[key], predictions[int8_key])
                                                    if int8_key in predictions else None),
               "parameters": manifest["sizes"]["parameters"], "vocab_size": manifest["model"]["vocab_size"],
               "layer_heads": manifest["model"].get("layer_heads"),
               "layer_intermediate_sizes": manifest["model"].get("layer_intermediate_sizes"),
               "steps": [entry["step"] for entry in history],
               "quantization": _quantization_summary(manifest)}
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
    return {"variant": variant.name, "rows": rows, "failed": failed,
            "targets": check_targets(rows, variant.targets, failed), "shape": _shape_record(variant),
            "training": {"base_best_epoch": base_record["best_epoch"], "base_epochs": len(base_record["epochs"]),
                         "base_dev": base_record["dev_metrics"], "options": base_record["options"]},
            "random_weights": manifests[float_key]["source"]["random_weights"],
            "seconds": round(time.perf_counter() - started, 1)}


def _agreement(a: list[int], b: list[int]) -> float:
    return sum(x == y for x, y in zip(a, b)) / len(a)


def check_targets(rows: list[dict], targets: tuple = MINIATURE_TARGETS, failed: list[dict] = ()) -> list[dict]:
    """Each target of the rows the run made: {"target", "value", "met"}; a row whose export failed gives
    {"value": None, "met": False, "error": its message}. A target whose row (or reference row) the run did
    not make is left out."""
    by = {(r["model"], r["mode"]): r for r in rows}
    errors = {(r["model"], r["mode"]): r["error"] for r in failed}
    flt, dyn = by.get(("base", "float32")), by.get(("base", "dynamic-int8"))
    checked = []
    for target in targets:
        key = (target.model, target.mode)
        if key in errors:
            checked.append({"target": target.text, "value": None, "met": False, "error": errors[key]})
            continue
        row = by.get(key)
        reference = flt if target.kind in ("points", "drop") else dyn
        if row is None or reference is None:
            continue
        if target.kind in ("points", "drop"):
            value = round(100 * (row["accuracy"] - flt["accuracy"]), 2)
            met = abs(value) <= target.limit if target.kind == "points" else value >= -target.limit
        elif target.kind == "speedup":
            value = round(dyn["p50_ms"] / row["p50_ms"], 2)
            met = value >= target.limit
        elif target.kind == "smaller":
            value = round(dyn["model_bytes"] / row["model_bytes"], 2)
            met = value >= target.limit
        else:  # agreement
            value = row["agreement_with_base_dynamic_int8"]
            met = value >= target.limit
        checked.append({"target": target.text, "value": value, "met": met})
    return checked


def _quantization_summary(manifest: dict) -> dict:
    """Which tool quantized the model, how many layers ended at each precision, and the mixed-precision
    search's one line when it ran."""
    quantization = manifest.get("quantization") or {}
    precisions: dict[str, int] = {}
    for layer in quantization.get("layers", []):
        precisions[layer["precision"]] = precisions.get(layer["precision"], 0) + 1
    mixed = quantization.get("mixed_precision") or {}
    return {"tool": quantization.get("tool"), "layer_precisions": precisions,
            "mixed_precision": mixed.get("summary") if mixed.get("searched") else None}


def _shape_record(shape: Shape) -> dict:
    config = shape.config
    return {"layers": config.num_layers, "hidden": config.hidden_size, "heads": config.num_heads,
            "intermediate": config.intermediate_size, "vocab_size": config.vocab_size,
            "source": str(shape.source) if shape.source is not None else None}


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
