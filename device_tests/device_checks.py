"""The checks the device suite runs, as plain functions (no pytest here): bundle discovery, the budget
file, golden outputs, tokenizer ids, file hashes.

Device side only: numpy, tokenizers and an interpreter, through `edgebert`; never TensorFlow.
Each check returns a list of problems (one line each, carrying the measured figure and the limit);
an empty list means the check passed.
"""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import numpy as np

MANIFEST = "manifest.json"
BUDGET_KEYS = ("p50_ms", "p90_ms", "p99_ms", "peak_mb")
BUDGET_SECTIONS = ("default", "bundles")
# A max-abs bound never goes below this share of the output's own scale: runtimes on other CPUs may
# sum in another order, and a float32 bundle's validation difference can be ~1e-7.
RELATIVE_FLOOR = 1e-4


class BudgetError(ValueError):
    """A budget file that cannot be used; str() is the one-line problem (the caller names the file)."""


# --- bundles -------------------------------------------------------------------------------------------

def find_bundles(paths) -> list[Path]:
    """Each path is a bundle directory (it holds manifest.json) or a directory of bundle directories.
    Raises ValueError naming the path that holds no bundle."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw).expanduser()
        if not path.is_dir():
            raise ValueError(f"{raw}: no such directory")
        if (path / MANIFEST).is_file():
            candidates = [path]
        else:
            candidates = sorted(child for child in path.iterdir()
                                if child.is_dir() and not child.name.startswith(".") and (child / MANIFEST).is_file())
        if not candidates:
            raise ValueError(f"{raw}: not a bundle (no {MANIFEST}) and holds no bundle directories")
        found.extend(candidate for candidate in candidates if candidate.resolve() not in
                     {f.resolve() for f in found})
    return found


def check_files(bundle) -> list[str]:
    """Every file the manifest lists has its recorded sha256 (a transfer that changed a byte fails)."""
    problems = []
    for name, record in sorted(bundle.manifest.get("files", {}).items()):
        digest = hashlib.sha256((bundle.path / name).read_bytes()).hexdigest()
        if record.get("sha256") and digest != record["sha256"]:
            problems.append(f"{name}: sha256 {digest[:12]}... differs from the manifest's {record['sha256'][:12]}...")
    return problems


# --- the budget file -----------------------------------------------------------------------------------

def load_budget(path) -> dict:
    """Read and check a budget file: JSON, or TOML when the name ends in .toml (Python 3.11+).

        {"default": {"p90_ms": 50, "peak_mb": 120},
         "bundles": {"bert-mini.dynamic-int8.s128": {"p90_ms": 5, "peak_mb": 100}}}

    Limits are positive numbers: p50_ms, p90_ms, p99_ms (warm latency percentiles, milliseconds) and
    peak_mb (peak resident memory of a fresh process that loads and runs the bundle, MB = 1e6 bytes).
    Raises BudgetError with the problem (without the file name)."""
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise BudgetError("budget file not found") from None
    except OSError as error:
        raise BudgetError(f"cannot read the budget file ({error.strerror})") from None
    if path.suffix.lower() == ".toml":
        try:
            import tomllib
        except ImportError:  # Python < 3.11
            raise BudgetError("TOML budget files need Python 3.11+ (tomllib); write it as JSON instead") from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
            raise BudgetError(f"not valid TOML ({error})") from None
    else:
        try:
            data = json.loads(raw.decode("utf-8-sig"))
        except UnicodeDecodeError as error:
            raise BudgetError(f"not UTF-8 (bad byte at offset {error.start})") from None
        except json.JSONDecodeError as error:
            raise BudgetError(f"not valid JSON ({error})") from None
    if not isinstance(data, dict):
        raise BudgetError(f"must be an object with {' and/or '.join(repr(k) for k in BUDGET_SECTIONS)}, "
                          f"got {type(data).__name__}")
    unknown = sorted(set(data) - set(BUDGET_SECTIONS))
    if unknown:
        raise BudgetError(f"unknown key {unknown[0]!r} (allowed: {', '.join(BUDGET_SECTIONS)})")
    budget = {"default": _check_limits(data.get("default", {}), "default"), "bundles": {}}
    bundles = data.get("bundles", {})
    if not isinstance(bundles, dict):
        raise BudgetError(f"'bundles' must map bundle names to limits, got {type(bundles).__name__}")
    for name, limits in bundles.items():
        budget["bundles"][name] = _check_limits(limits, f"bundles[{name!r}]")
    return budget


def _check_limits(limits, where: str) -> dict:
    if not isinstance(limits, dict):
        raise BudgetError(f"{where} must be an object like {{\"p90_ms\": 50, \"peak_mb\": 120}}, "
                          f"got {type(limits).__name__}")
    for key, value in limits.items():
        if key not in BUDGET_KEYS:
            raise BudgetError(f"{where}: unknown key {key!r} (allowed: {', '.join(BUDGET_KEYS)})")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            raise BudgetError(f"{where}.{key} must be a positive number, got {value!r}")
    return dict(limits)


def budget_for(budget: dict, bundle_name: str) -> tuple[dict, str]:
    """The limits for one bundle (its own entry over the default) and where they came from."""
    own = budget["bundles"].get(bundle_name)
    limits = {**budget["default"], **(own or {})}
    origin = f"bundles[{bundle_name!r}]" if own else "default"
    if own and any(key not in own for key in limits):
        origin += " + default"
    return limits, origin


def check_budget(measured: dict, limits: dict) -> list[str]:
    """measured: {"p50_ms", "p90_ms", "p99_ms", "peak_mb"} (any subset); one problem per limit missed."""
    labels = {"p50_ms": ("p50 latency", "ms"), "p90_ms": ("p90 latency", "ms"), "p99_ms": ("p99 latency", "ms"),
              "peak_mb": ("peak RSS", "MB")}
    problems = []
    for key, limit in limits.items():
        label, unit = labels[key]
        if measured.get(key) is None:
            problems.append(f"{label} was not measured (budget {key} {limit:g})")
        elif measured[key] > limit:
            problems.append(f"{label} {measured[key]:.3f} {unit} exceeds the budget {key} {limit:g} {unit}")
    return problems


# --- golden outputs ------------------------------------------------------------------------------------

def _describe(index: int, example: dict) -> str:
    if not isinstance(example, dict):
        return f"example {index} (not an object: {type(example).__name__})"
    text = str(example.get("text", ""))
    if example.get("text_pair") is not None:
        text = f"{text} | {example['text_pair']}"
    short = text if len(text) <= 40 else text[:40] + "..."
    return f"example {index} ({short!r})"


def golden_inputs(example: dict) -> dict[str, np.ndarray]:
    return {name: np.asarray([example[name]], dtype=np.int32)
            for name in ("input_ids", "attention_mask", "token_type_ids")}


def _golden_view(name: str, value: np.ndarray, length: int) -> dict[str, np.ndarray]:
    """What golden.json keeps of an output (see converters.pipeline._golden_value), keyed by label."""
    if name == "sequence_output":
        return {f"{name}.first_token": value[0, 0], f"{name}.mean_token": value[0, :length].mean(0)}
    return {name: value[0]}


def max_abs_bound(manifest: dict, name: str, expected: np.ndarray) -> tuple[float | None, str]:
    """The largest |device - golden| allowed for output `name`, and how it was derived.

    golden.json holds the converter machine's outputs of this very model. The manifest records how far
    those outputs were (at worst, over the validation texts) from the float model: d. A device whose
    own quantization/rounding error against the float model is no worse than d can differ from the
    golden outputs by at most 2·d (triangle inequality), so 2·d is the bound; it never goes below
    RELATIVE_FLOOR × the output's scale (float32 exports can have d ~ 1e-7, and other CPUs sum in
    another order). Without recorded figures there is no bound (the cosine still applies)."""
    entry = (manifest.get("validation") or {}).get("outputs", {}).get(name) or {}
    recorded = entry.get("max_abs_diff")
    if not isinstance(recorded, (int, float)) or isinstance(recorded, bool):
        return None, "no validation max |diff| in the manifest"
    floor = RELATIVE_FLOOR * max(1.0, float(np.abs(expected).max(initial=0.0)))
    if 2 * recorded >= floor:
        return 2 * recorded, f"2 x the manifest's validation max |diff| {recorded:.3g}"
    return floor, f"floor {RELATIVE_FLOOR:g} x output scale; validation max |diff| {recorded:.3g}"


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    norms = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norms) if norms > 0 else float(np.array_equal(a, b))


# What a malformed golden.json (or a model that fails on its ids) raises while one example is checked:
# reported as that example's problem, never as an error of the suite.
MALFORMED = (KeyError, TypeError, ValueError, IndexError, OverflowError, AttributeError)


def check_golden(bundle, model=None, outputs: list | None = None) -> list[str]:
    """Run each golden example's ids through `model` (or take `outputs[i]`, the outputs a child process
    got for example i: {"outputs": {name: values}} or {"error": "..."}); compare with the recorded
    outputs. A malformed example is a problem of its own, not an error."""
    from edgebert.errors import EdgebertError

    golden = bundle.golden
    try:
        min_cosine = float((golden.get("tolerance") or {}).get("min_cosine", 0.999))
    except MALFORMED as error:
        return [f"golden.json tolerance is malformed ({error})"]
    examples = golden.get("examples") or []
    if not isinstance(examples, list):
        return [f"golden.json examples is {type(examples).__name__}, not a list"]
    if not examples:
        return ["golden.json has no examples"]
    problems = []
    for index, example in enumerate(examples):
        try:
            if outputs is not None:
                record = outputs[index]
                if "error" in record:
                    raise ValueError(record["error"])
                got = {name: np.asarray(values, dtype=np.float32) for name, values in record["outputs"].items()}
            else:
                got = model(**golden_inputs(example))
            problems.extend(_check_example(bundle, index, example, got, min_cosine))
        except EdgebertError as error:  # the model failed on these ids
            problems.append(f"{_describe(index, example)}: {error}")
        except MALFORMED as error:
            problems.append(f"{_describe(index, example)}: cannot be checked ({type(error).__name__}: "
                            f"{' '.join(str(error).split())[:200]})")
    return problems


def _check_example(bundle, index: int, example: dict, outputs: dict, min_cosine: float) -> list[str]:
    problems = []
    length = int(np.asarray(example["attention_mask"]).sum())
    for name, recorded in (example.get("outputs") or {}).items():
        if name not in outputs:
            problems.append(f"{_describe(index, example)}: the model has no output {name!r} "
                            f"(it has {', '.join(sorted(outputs))})")
            continue
        actual = _golden_view(name, np.asarray(outputs[name]), length)
        expected = {f"{name}.{part}": values for part, values in recorded.items()} \
            if isinstance(recorded, dict) else {name: recorded}
        for label, want in expected.items():
            want = np.asarray(want, dtype=np.float64)
            got = np.asarray(actual.get(label), dtype=np.float64)
            if got.shape != want.shape:
                problems.append(f"{_describe(index, example)}: {label} has shape {got.shape}, "
                                f"golden.json has {want.shape}")
                continue
            cosine = _cosine(want, got)
            if not cosine >= min_cosine:
                problems.append(f"{_describe(index, example)}: {label} cosine {cosine:.6f} "
                                f"< min_cosine {min_cosine:g}")
            bound, why = max_abs_bound(bundle.manifest, name, want)
            worst = float(np.abs(want - got).max(initial=0.0))
            if bound is not None and not worst <= bound:
                problems.append(f"{_describe(index, example)}: {label} max |diff| {worst:.4g} "
                                f"> bound {bound:.4g} ({why})")
    return problems


# --- tokenizer -----------------------------------------------------------------------------------------

def check_tokenizer(bundle) -> list[str]:
    """The bundle's tokenizer.json, through edgebert.tokenizer.encode at the bundle's seq_len, gives
    exactly golden.json's ids for each text (and text pair)."""
    from edgebert import tokenizer as tokenization

    from edgebert.errors import EdgebertError

    try:
        tokenizer = tokenization.load_tokenizer(bundle.tokenizer_path)
    except EdgebertError as error:
        return [str(error)]
    examples = bundle.golden.get("examples") or []
    if not isinstance(examples, list):
        return [f"golden.json examples is {type(examples).__name__}, not a list"]
    problems = []
    for index, example in enumerate(examples):
        try:
            problems.extend(_check_ids(tokenization, tokenizer, bundle, index, example))
        except (EdgebertError, *MALFORMED) as error:
            problems.append(f"{_describe(index, example)}: cannot be checked ({type(error).__name__}: "
                            f"{' '.join(str(error).split())[:200]})")
    return problems


def _check_ids(tokenization, tokenizer, bundle, index: int, example: dict) -> list[str]:
    problems = []
    pair = example.get("text_pair")
    texts = [(example["text"], pair)] if pair is not None else [example["text"]]
    # A model with length buckets has golden examples at each of its lengths.
    width = len(example.get("input_ids") or [])
    encoded = tokenization.encode(tokenizer, texts, width if width in bundle.seq_lens else bundle.seq_len)
    for name in ("input_ids", "attention_mask", "token_type_ids"):
        got, want = encoded[name][0].tolist(), list(example.get(name, []))
        if got == want:
            continue
        position = next((i for i, (g, w) in enumerate(zip(got, want)) if g != w), min(len(got), len(want)))
        at = (f"at position {position}: tokenizer gives {got[position] if position < len(got) else 'nothing'}, "
              f"golden.json has {want[position] if position < len(want) else 'nothing'}")
        problems.append(f"{_describe(index, example)}: {name} differ {at} (lengths {len(got)}/{len(want)})")
    return problems
