"""Recipes: named conversion pipelines kept as data (TOML files), run step by step with resume.

A recipe is a list of steps, each a plain function from checkpoint directory to checkpoint directory,
followed by the export:

    description = "Fine-tune on the task, then dynamic int8."
    [[steps]]
    kind = "finetune"        # FinetuneOptions fields, plus prune / prune_pattern / prune_begin / prune_end
    epochs = 4
    [[steps]]
    kind = "prune"           # structured: heads, ffn, drop_layers, examples
    heads = 0.5
    [[steps]]
    kind = "trim-vocab"      # max_tokens, min_count, keep_characters, keep_predictions
    [convert]                # ConvertOptions: quantize, seq_len (one, or a list: length buckets), compat,
                             # last_layer, mixed_precision, mixed_precision_budget
    quantize = "dynamic-int8"
    [[convert.overrides]]    # per-layer precision (dynamic-int8 / dynamic-int4; converters/quantize.py)
    layers = "layer_[0-2]/output"   # a regular expression matching whole layer names
    precision = "float32"           # float32, int8 or int4

The shipped recipes live in `converters/recipes/NAME.toml`; `--recipe` also takes a path to one's own
file. Every step's output goes to `OUT.recipe-work/NN-kind/` with a record of what made it, so an
interrupted run redoes only what is missing (and a finished step made by other settings is redone).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
try:
    import tomllib
except ImportError:  # Python < 3.11
    import tomli as tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from edgebert.errors import SourceError, UsageError

RECIPES_DIR = Path(__file__).resolve().parent / "recipes"
STEP_KINDS = ("finetune", "prune", "trim-vocab")
_PRUNING_KEYS = {"prune": "sparsity", "prune_pattern": "pattern", "prune_begin": "begin", "prune_end": "end",
                 "prune_frequency": "frequency"}
_PRUNE_KEYS = {"heads": "heads_fraction", "ffn": "ffn_fraction", "drop_layers": "drop_layers",
               "examples": "max_examples"}
_TRIM_KEYS = {"max_tokens": "max_tokens", "min_count": "keep_min_count", "keep_characters": "keep_characters",
              "keep_predictions": "keep_predictions"}
_CONVERT_KEYS = ("quantize", "seq_len", "compat", "mixed_precision", "mixed_precision_budget", "overrides",
                 "last_layer")


@dataclass(frozen=True)
class Step:
    kind: str
    options: dict


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    steps: tuple[Step, ...]
    convert: dict
    path: Path

    @property
    def needs_task(self) -> bool:
        return any(step.kind in ("finetune", "prune") for step in self.steps)

    @property
    def needs_corpus(self) -> bool:
        return any(step.kind == "trim-vocab" for step in self.steps)

    def summary(self) -> str:
        steps = " -> ".join([step.kind for step in self.steps] + [self.convert.get("quantize", "dynamic-int8")])
        return f"{self.name}: {steps}"


def shipped_recipes() -> list[Recipe]:
    return [load_recipe(path) for path in sorted(RECIPES_DIR.glob("*.toml"))]


def load_recipe(name_or_path: str | Path) -> Recipe:
    """A shipped recipe by name, or a TOML file by path. Unknown names list the shipped ones; unknown
    keys, steps or values are one-line errors naming the file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = RECIPES_DIR / f"{name_or_path}.toml"
        if not path.is_file():
            names = ", ".join(p.stem for p in sorted(RECIPES_DIR.glob("*.toml")))
            raise UsageError(f"unknown recipe {str(name_or_path)!r} (shipped: {names}; or give a .toml file)")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceError("recipe file not found", path) from None
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise SourceError(f"not a readable TOML recipe ({error})", path) from None
    unknown = set(raw) - {"description", "steps", "convert"}
    if unknown:
        raise SourceError(f"unknown recipe key(s) {', '.join(sorted(unknown))} (description, steps, convert)", path)
    steps = []
    for number, entry in enumerate(raw.get("steps", []), 1):
        if not isinstance(entry, dict) or entry.get("kind") not in STEP_KINDS:
            raise SourceError(f"step {number} needs kind = one of {', '.join(STEP_KINDS)}", path)
        options = {k: v for k, v in entry.items() if k != "kind"}
        allowed = _allowed_keys(entry["kind"])
        bad = set(options) - allowed
        if bad:
            raise SourceError(f"step {number} ({entry['kind']}) has unknown option(s) {', '.join(sorted(bad))} "
                              f"(allowed: {', '.join(sorted(allowed))})", path)
        steps.append(Step(entry["kind"], options))
    convert = raw.get("convert", {})
    bad = set(convert) - set(_CONVERT_KEYS)
    if bad:
        raise SourceError(f"[convert] has unknown option(s) {', '.join(sorted(bad))} "
                          f"(allowed: {', '.join(_CONVERT_KEYS)})", path)
    recipe = Recipe(path.stem, str(raw.get("description", "")), tuple(steps), dict(convert), path)
    try:  # build every step's options once, so a bad value fails now, not an hour into the run
        for step in recipe.steps:
            _step_options(step, recipe)
        convert_options(recipe, {})
    except UsageError as error:
        raise SourceError(error.problem, path) from None
    return recipe


def _allowed_keys(kind: str) -> set[str]:
    if kind == "finetune":
        from converters.finetune import FinetuneOptions

        return {f.name for f in dataclasses.fields(FinetuneOptions)} - {"pruning", "teacher"} | set(_PRUNING_KEYS)
    return set(_PRUNE_KEYS if kind == "prune" else _TRIM_KEYS)


def _step_options(step: Step, recipe: Recipe, overrides: dict | None = None):
    """The library options a step's TOML table stands for."""
    options = {**step.options, **(overrides or {})}
    if step.kind == "finetune":
        from converters.finetune import FinetuneOptions
        from converters.pruning import PruningSpec

        pruning = {_PRUNING_KEYS[k]: options.pop(k) for k in list(options) if k in _PRUNING_KEYS}
        spec = None
        if pruning:
            spec = PruningSpec.parse(pruning.pop("sparsity", None), pruning.pop("pattern", "unstructured"), **pruning)
        return FinetuneOptions(**options, pruning=spec)
    keys = _PRUNE_KEYS if step.kind == "prune" else _TRIM_KEYS
    options = {keys[k]: v for k, v in options.items()}
    if not isinstance(options.get("keep_predictions", False), bool):
        raise UsageError(f"keep_predictions must be true or false, got {options['keep_predictions']!r}")
    return options


def convert_options(recipe: Recipe, chosen: dict, **extra):
    """ConvertOptions from the recipe's [convert] table. `chosen` holds the command line's quantize,
    seq_len, compat, mixed_precision and mixed_precision_budget (None where not given): given ones win
    over the recipe's. `extra` goes to ConvertOptions as it is (force, labels, eval_file, ...)."""
    from converters.export import Compat, QuantizeMode
    from converters.pipeline import ConvertOptions, parse_last_layer, parse_seq_lens
    from converters.quantize import parse_overrides

    values = {**recipe.convert, **{k: v for k, v in chosen.items() if v is not None}}
    if "quantize" in values:
        extra["quantize"] = QuantizeMode.parse(str(values["quantize"]))
    if "seq_len" in values:  # 128, "dynamic", "16,32,64,128" or [16, 32, 64, 128] (length buckets)
        given = values["seq_len"]
        extra["seq_len"], extra["buckets"] = parse_seq_lens(
            ",".join(map(str, given)) if isinstance(given, list) else str(given))
    if "compat" in values:
        extra["compat"] = Compat.parse(values["compat"])
    if "last_layer" in values:
        extra["last_layer"] = parse_last_layer(str(values["last_layer"]))
    if "mixed_precision" in values:
        if not isinstance(values["mixed_precision"], bool):
            raise UsageError(f"mixed_precision must be true or false, got {values['mixed_precision']!r}")
        extra["mixed_precision"] = values["mixed_precision"]
    if "mixed_precision_budget" in values:
        budget = values["mixed_precision_budget"]
        if isinstance(budget, bool) or not isinstance(budget, (int, float)):
            raise UsageError(f"mixed_precision_budget must be a number between 0 and 1, got {budget!r}")
        extra["mixed_precision_budget"] = float(budget)
    if "overrides" in recipe.convert:
        extra["layer_overrides"] = parse_overrides(recipe.convert["overrides"], recipe.path)
    return ConvertOptions(recipe_name=recipe.name, **extra)


@dataclass
class RecipeInputs:
    task: Path | None = None  # training TSV: fine-tuning, pruning scores, default corpus
    dev: Path | None = None  # dev TSV: early stopping and the bundle's evaluation
    corpus: tuple[Path, ...] = ()  # vocabulary trimming (default: the task's texts)


def _fingerprint(step: Step, source_sha: str, inputs: RecipeInputs, overrides: dict) -> dict:
    from edgebert.bundle import file_sha256

    files = [p for p in (inputs.task, inputs.dev, *inputs.corpus) if p is not None]
    return json.loads(json.dumps({"kind": step.kind, "options": step.options, "overrides": overrides,
                                  "source_sha256": source_sha,
                                  "files": {str(p): file_sha256(p) for p in files}}, default=str))


def run_steps(recipe: Recipe, source_path: str | Path, work_dir: Path, inputs: RecipeInputs, *,
              log: Callable[[str], None] = lambda message: None, progress=None,
              step_overrides: dict | None = None) -> Path | str:
    """Run the recipe's steps; return the last one's checkpoint directory (or source_path when there are
    none). `step_overrides` maps a step kind to options that replace the recipe's (e.g. fewer epochs)."""
    from converters import finetune as finetuning
    from converters import structured, vocab_trim
    from converters.sources import load_source
    from edgebert.tasks import load_task

    if recipe.needs_task and inputs.task is None:
        raise UsageError(f"recipe {recipe.name} fine-tunes or prunes on a task: pass --task TRAIN.tsv")
    if recipe.needs_corpus and inputs.task is None and not inputs.corpus:
        raise UsageError(f"recipe {recipe.name} trims the vocabulary to a corpus: pass --corpus FILE or --task")
    work_dir.mkdir(parents=True, exist_ok=True)
    current: str | Path = source_path
    for number, step in enumerate(recipe.steps, 1):
        overrides = (step_overrides or {}).get(step.kind, {})
        out = work_dir / f"{number:02d}-{step.kind}"
        stamp = work_dir / f"{number:02d}-{step.kind}.json"
        source = load_source(current)
        fingerprint = _fingerprint(step, source.sha256, inputs, overrides)
        if out.is_dir() and _read_stamp(stamp) == fingerprint:
            log(f"step {number}/{len(recipe.steps)} {step.kind}: done before, reusing {out}")
            current = out
            continue
        shutil.rmtree(out, ignore_errors=True)
        log(f"step {number}/{len(recipe.steps)} {step.kind}")
        options = _step_options(step, recipe, overrides)
        if step.kind == "finetune":
            train = load_task(inputs.task)
            dev = load_task(inputs.dev) if inputs.dev else None
            finetuning.finetune(source, train, dev, out, options, progress=progress or finetuning.Progress(log=log))
        elif step.kind == "prune":
            structured.prune_to_directory(current, inputs.task, out, log=log, **options)
        else:
            texts = vocab_trim.load_corpus(inputs.corpus) if inputs.corpus else list(load_task(inputs.task).texts)
            if options.pop("keep_predictions", False):
                seq_len = convert_options(recipe, {}).seq_len
                trimmed, report = vocab_trim.trim_keeping_predictions(
                    source, texts, finetuning.label_predictor(seq_len or 128), log=log, **options)
            else:
                trimmed, report = vocab_trim.trim_vocabulary(source, texts, **options)
            log(f"vocab {report['original_vocab_size']:,} -> {report['vocab_size']:,} tokens")
            vocab_trim.write_trimmed(trimmed, report, out)
        partial = stamp.with_name(f".{stamp.name}.tmp-{os.getpid()}")  # a kill never leaves half a stamp
        partial.write_text(json.dumps(fingerprint, indent=2) + "\n")
        os.replace(partial, stamp)
        current = out
    return current


def _read_stamp(path: Path):
    """A step's stamp, or None when it is missing or unreadable (then the step is redone)."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def run_recipe(recipe: Recipe, source_path: str | Path, out_dir: Path, inputs: RecipeInputs, options, *,
               log: Callable[[str], None] = lambda message: None, progress=None, fetch_progress=None,
               keep_work: bool = False, step_overrides: dict | None = None):
    """The steps, then the export into the bundle out_dir with `options` (from `convert_options`). The
    work directory goes once the bundle is written, unless keep_work."""
    from converters.pipeline import convert
    from edgebert.bundle import check_output_dir

    from converters.sources import load_source

    out_dir = Path(out_dir)
    check_output_dir(out_dir, options.force)
    work_dir = out_dir.with_name(out_dir.name + ".recipe-work")
    checkpoint = run_steps(recipe, source_path, work_dir, inputs, log=log, progress=progress,
                           step_overrides=step_overrides)
    log(f"converting ({options.quantize.value})")
    source = load_source(checkpoint, options.lowercase, fetch_progress=fetch_progress)
    if options.eval_file is None and inputs.dev is not None and source.num_labels:
        options = dataclasses.replace(options, eval_file=inputs.dev)  # score the classifier on the dev set
    result = convert(checkpoint, out_dir, options, log=log, source=source)
    if not keep_work:
        shutil.rmtree(work_dir, ignore_errors=True)
    return result
