"""Accuracy-aware mixed precision: an export that misses its mode's thresholds gets the fewest, most
sensitive layers raised one precision step (int4 -> int8 -> float32) until every threshold holds.

Real pretrained BERTs carry outlier activations in a few hidden dimensions; quantizing the layers that
read them costs most of the error (all-MiniLM-L6-v2's dynamic int8 export: sentence-embedding cosine
0.994 against float, threshold 0.999). The search, on the export's own validation inputs:

1. Quantize every layer at the mode's precision (recipe overrides applied). If that passes, done.
2. Sensitivity: for each layer that can still be raised, quantize it alone at its current precision,
   everything else float32, and take the validation's shortfall (validate.shortfall: the worst error
   over what the thresholds allow; 1.0 = on the threshold).
3. Raise the k most sensitive layers one step, for the smallest k that passes: k = 1, 2, 4, ... until one
   passes, then bisection between the last failure and it.
4. If raising every candidate one step still fails, that becomes the new starting point and the search
   goes on from 2 one step up (an int4 export reaches int8 everywhere before any layer goes float32).
5. Give back: each raised layer, least sensitive first, is lowered one step again where the mix still
   passes without it (step 4 and the doubling overshoot).

Full int8 climbs the same ladder on other rungs. The TensorFlow converter's all-integer export comes
first; when it misses, the search starts from ai-edge-quantizer's static int8 on every dense layer (int8
weights and activations, ranges calibrated once) with every other op float32, and raises dense layers to
float32. On real weights nothing else can be integer (converters/quantize.py).

The budget bounds it: the share of the layers' weights (counted at float32 bytes) kept in float32 may
not pass it. Layers a recipe override set are never changed. Every candidate is a real `.tflite` run
with the interpreter, as the bundle will be.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from converters.quantize import Layer, Precision
from edgebert.errors import UsageError, ValidationError

DEFAULT_BUDGET = 0.25  # largest share of the layers' float32 bytes the search may keep in float32
# Full int8's search, when the converter's all-integer export misses: ai-edge-quantizer's static int8 on
# the dense layers alone (converters/quantize.py says why no other op can take int8 on real weights).
STATIC_ACTIVATIONS = ("int8 dense layers take int8 activations (per-tensor ranges calibrated once); "
                      "every other op runs float32")


@dataclass(frozen=True)
class Candidate:
    plan: dict  # layer name -> Precision
    model: bytes | None  # kept only when it passed: a search measures dozens, each up to float size
    size: int  # of the model, in bytes
    report: dict  # validate.compare_outputs, merged
    passed: bool
    shortfall: float


class Evaluator:
    """plan -> Candidate, each a quantized `.tflite` validated with the interpreter; cached by plan."""

    def __init__(self, prepared: bytes, layers: list[Layer], check, scratch: Path,
                 quantize: Callable[[bytes, list[Layer], dict], bytes]):
        self.prepared, self.layers, self.check, self.scratch, self.quantize = prepared, layers, check, scratch, quantize
        self.cache: dict[tuple, Candidate] = {}

    def __call__(self, plan: dict) -> Candidate:
        from converters.validate import shortfall
        from edgebert.interpreter import TFLiteModel

        key = tuple(sorted((name, precision.value) for name, precision in plan.items()))
        if key not in self.cache:
            model = self.quantize(self.prepared, self.layers, plan)
            path = self.scratch / f"candidate-{len(self.cache)}.tflite"
            path.write_bytes(model)
            report = self.check.measure(TFLiteModel(path))
            path.unlink()
            passed = self.check.passes(report)
            self.cache[key] = Candidate(dict(plan), model if passed else None, len(model), report, passed,
                                        shortfall(report, self.check.mode))
        return self.cache[key]

    @property
    def evaluations(self) -> int:
        return len(self.cache)


@dataclass(frozen=True)
class SearchResult:
    best: Candidate
    raised: dict  # layer name -> (from Precision, to Precision, sensitivity)


def float_share(plan: dict, layers: list[Layer]) -> float:
    total = sum(layer.float_bytes for layer in layers)
    kept = sum(layer.float_bytes for layer in layers if plan[layer.name] is Precision.FLOAT32)
    return kept / total if total else 0.0


def check_budget(budget: float) -> float:
    if not 0.0 <= budget <= 1.0:
        raise UsageError(f"--mixed-precision-budget must be a share between 0 and 1 of the weights' float32 "
                         f"bytes, got {budget!r}")
    return budget


def search(evaluate: Evaluator, layers: list[Layer], start: dict, fixed: set[str], budget: float,
           log: Callable[[str], None] = lambda message: None) -> SearchResult:
    """The fewest, most sensitive layers raised until the export passes (see the module docstring).
    Raises ValidationError, with the best mix's figure, when no mix within the budget passes."""
    current, raised = dict(start), {}
    best = evaluate(current)
    while not best.passed:
        candidates = [layer for layer in layers
                      if layer.name not in fixed and current[layer.name] is not Precision.FLOAT32]
        if not candidates:
            _fail(evaluate, best, "every layer is already float32")
        log(f"mixed precision: measuring {len(candidates)} layers' sensitivity alone at their precision")
        sensitivity = {}
        for layer in candidates:
            alone = {name: Precision.FLOAT32 for name in current} | {layer.name: current[layer.name]}
            sensitivity[layer.name] = evaluate(alone).shortfall
        order = sorted(candidates, key=lambda layer: -sensitivity[layer.name])
        raise_top = functools.partial(_raise_top, current, order)
        passing, failing, over_budget = None, 0, False
        for k in _doubling(len(order)):
            plan = raise_top(k)
            if float_share(plan, layers) > budget:
                over_budget = True
                break
            candidate = evaluate(plan)
            log(f"mixed precision: {k} most sensitive raised -> shortfall {candidate.shortfall:.3g}"
                f"{' (passes)' if candidate.passed else ''}")
            if candidate.passed:
                passing = k
                break
            failing, best = k, min(best, candidate, key=lambda c: c.shortfall)
        if passing is not None:
            while passing - failing > 1:  # bisection: the fewest layers that pass
                middle = (passing + failing) // 2
                if float_share(raise_top(middle), layers) <= budget and evaluate(raise_top(middle)).passed:
                    passing = middle
                else:
                    failing = middle
            best = evaluate(raise_top(passing))
            _record(raised, order[:passing], current, sensitivity)
            break
        if over_budget:
            _fail(evaluate, best, f"no mix within --mixed-precision-budget {budget:g} passes; the best kept "
                                  f"{float_share(best.plan, layers):.1%} of the weights float32")
        # Raising every candidate one step was not enough: start again from there, one step up.
        _record(raised, order, current, sensitivity)
        current = raise_top(len(order))
        best = evaluate(current)
    return _give_back(evaluate, best, raised, log)


def _give_back(evaluate: Evaluator, best: Candidate, raised: dict, log: Callable[[str], None]) -> SearchResult:
    """Undo, least sensitive first, each raise the passing mix turns out not to need: raising a whole
    level at once (every layer int4 -> int8 before any goes float32) or the doubling's last step can
    overshoot. One measurement per raised layer."""
    raised = dict(raised)
    for name in sorted(raised, key=lambda layer: raised[layer][2]):
        before, after, sensitivity = raised[name]
        lower = after.lowered()
        trial = evaluate(best.plan | {name: lower})
        if trial.passed:
            best = trial
            if lower is before:
                del raised[name]
            else:
                raised[name] = (before, lower, sensitivity)
    log(f"mixed precision: {len(raised)} raised layer{'s' if len(raised) != 1 else ''} needed")
    return SearchResult(best, raised)


def _record(raised: dict, layers: list[Layer], current: dict, sensitivity: dict) -> None:
    """raised[name] = (its precision before the search, after this step, its last sensitivity)."""
    for layer in layers:
        before = raised.get(layer.name, (current[layer.name],))[0]
        raised[layer.name] = (before, current[layer.name].raised(), sensitivity[layer.name])


def _raise_top(current: dict, order: list[Layer], k: int) -> dict:
    """`current` with the first k layers of `order` one precision step up."""
    return current | {layer.name: current[layer.name].raised() for layer in order[:k]}


def _doubling(n: int) -> list[int]:
    """1, 2, 4, ... and n itself."""
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def _fail(evaluate: Evaluator, best: Candidate, why: str):
    try:
        evaluate.check.record(best.report)
    except ValidationError as error:
        raise ValidationError(error.metric, error.value, error.threshold, why) from None
    raise AssertionError("a failing candidate passed its thresholds")  # unreachable: best did not pass


# --- the export step the pipeline calls ---------------------------------------------------------------

@dataclass(frozen=True)
class QuantizedExport:
    model: bytes
    validation: dict  # the manifest's "validation" (without the runtime)
    manifest: dict  # the manifest's "quantization"
    summary: str | None  # one line for the user when the search ran


def quantizer_precision(mode, compat) -> Precision | None:
    """The precision ai-edge-quantizer gives a mode's layers, or None where only the TensorFlow converter
    exports it (float32, float16, full int8, and --compat tflite-runtime-2.14, which needs the converter's
    per-tensor dense quantization)."""
    from converters.export import QuantizeMode

    if compat is not None:
        return None
    return {QuantizeMode.DYNAMIC_INT8: Precision.INT8, QuantizeMode.DYNAMIC_INT4: Precision.INT4}.get(mode)


def converter_makes_it(mode, compat, overrides) -> bool:
    """Whether the TensorFlow converter exports the mode itself (then ai-edge-quantizer steps in only for
    a search). dynamic-int8 without overrides: the converter's model is 1.6-3 % smaller than AEQ's (per
    tensor, not per row, embedding scales) with the same speed and fidelity (README)."""
    from converters.export import QuantizeMode

    precision = quantizer_precision(mode, compat)
    return precision is None or (mode is QuantizeMode.DYNAMIC_INT8 and not overrides)


def finish_export(converted: bytes, export_float: Callable[[], bytes], mode, compat, overrides: tuple, mixed: bool,
                  budget: float, check, scratch: Path, log: Callable[[str], None],
                  refine: Callable[[bytes], bytes] | None = None, calibration=None,
                  by_converter: bool | None = None) -> QuantizedExport:
    """Validate the export and, where it misses and the mode allows it, search a mix of precisions.
    `converted` is the TensorFlow converter's export in `mode` (when `by_converter`, by default
    converter_makes_it) or in float32;
    `export_float()` gives the float32 export when a search needs it. `refine` rewrites each candidate
    ai-edge-quantizer makes (outlier equalization's GPTQ). `calibration`: full int8's calibration inputs
    (pipeline._calibration); with them a full-int8 export that misses is searched too, its candidates'
    int8 dense layers static (STATIC_ACTIVATIONS). Raises ValidationError if nothing passes; nothing is
    written here."""
    from converters import quantize
    from converters.export import QuantizeMode
    from edgebert.interpreter import TFLiteModel

    precision = quantizer_precision(mode, compat)
    static = mode is QuantizeMode.INT8 and compat is None and calibration is not None
    if static:
        precision = Precision.INT8
    first_bytes, fallback = None, {}
    if converter_makes_it(mode, compat, overrides) if by_converter is None else by_converter:
        path = scratch / "converted.tflite"
        path.write_bytes(converted)
        report = check.measure(TFLiteModel(path))
        if check.passes(report) or precision is None or not mixed:
            return QuantizedExport(converted, check.record(report),
                                   _manifest(converted, f"tensorflow {_tf_version()}", {}, mixed, budget,
                                             f"the TensorFlow converter's {mode.value}"), None)
        missed = _shortfall(report, mode)
        log(f"the converter's {mode.value} export misses its thresholds (shortfall "
            f"{missed:.3g}); searching a mix of precisions with ai-edge-quantizer"
            + (f": {STATIC_ACTIVATIONS}" if static else ""))
        first_bytes, converted = len(converted), export_float()
        # The manifest says why ai-edge-quantizer made a mode the converter normally makes.
        fallback = {"tensorflow_converter": {"passed": False, "shortfall": round(missed, 4), "bytes": first_bytes}}

    prepared = quantize.prepare(converted)
    layers = quantize.find_layers(prepared)
    chosen = quantize.apply_overrides(layers, precision, overrides)
    start = {name: choice[0] for name, choice in chosen.items()}
    fixed = {layer.name for layer in layers if any(override.matches(layer.name) for override in overrides)}
    ranges = None
    if static:
        log("calibrating the dense layers' activation ranges")
        ranges = quantize.calibrate(prepared, layers, calibration)
    quantizer = functools.partial(quantize.quantize, static=ranges) if refine is None else (
        lambda model, layers, plan: refine(quantize.quantize(model, layers, plan)))
    evaluate = Evaluator(prepared, layers, check, scratch, quantizer)
    reasons = {name: choice[1] for name, choice in chosen.items()}
    tool = f"ai-edge-quantizer {quantize.quantizer_version()}"
    if static:  # the manifest's layers say which dense layers are int8; this says what runs around them
        fallback["activations"] = STATIC_ACTIVATIONS
    first = evaluate(start)
    if first.passed or not mixed:
        validation = check.record(first.report)  # raises when it missed and the search is off
        return QuantizedExport(first.model, validation,
                               {**_manifest(first.model, tool, reasons, mixed, budget), **fallback}, None)
    result = search(evaluate, layers, start, fixed, budget, log)
    for name, (before, after, sensitivity) in result.raised.items():
        reasons[name] = (f"mixed precision: raised from {before.value} to {after.value} (quantized alone it "
                         f"used {sensitivity:.3g} of the thresholds' error budget)")
    baseline = first_bytes or first.size
    summary = _summary(result, layers, baseline, mode, evaluate.evaluations)
    manifest = {**_manifest(result.best.model, tool, reasons, mixed, budget), **fallback}
    manifest["mixed_precision"].update({
        "searched": True, "evaluations": evaluate.evaluations, "raised": sorted(result.raised),
        "float_share": round(float_share(result.best.plan, layers), 4), "bytes_all_mode": baseline,
        "cost_bytes": len(result.best.model) - baseline, "summary": summary})
    return QuantizedExport(result.best.model, check.record(result.best.report), manifest, summary)


def _summary(result: SearchResult, layers: list[Layer], baseline: int, mode, evaluations: int) -> str:
    """The one line a user reads: which layers went up, what it cost, the figure that now holds."""
    steps: dict[str, list[str]] = {}
    for name, (before, after, _) in sorted(result.raised.items(), key=lambda item: -item[1][2]):
        steps.setdefault(f"{before.value} -> {after.value}", []).append(name)
    shown = "; ".join(f"{step}: {', '.join(names[:5])}{f' and {len(names) - 5} more' if len(names) > 5 else ''}"
                      for step, names in steps.items())
    cost = len(result.best.model) - baseline
    worst = min(((name, entry) for name, entry in result.best.report.items() if "min_cosine" in entry
                 and "argmax_agreement" not in entry), key=lambda item: item[1]["min_cosine"], default=None)
    figure = f"; {worst[0]} min cos {worst[1]['min_cosine']:.5f}" if worst else ""
    return (f"mixed precision: {len(result.raised)} of {len(layers)} layers raised ({shown}), "
            f"{cost:+,} bytes ({cost / baseline:+.1%}) over all-{mode.value}{figure}; {evaluations} candidates measured")


def _manifest(model: bytes, tool: str, reasons: dict, mixed: bool, budget: float, default_reason: str = "") -> dict:
    from converters import quantize

    records = []
    for layer in quantize.find_layers(model):
        reason = reasons.get(layer.name) or (
            f"fewer than {quantize.MIN_WEIGHTS} weights: kept float32" if not layer.quantizable
            else default_reason)
        record = {"name": layer.name, "op": layer.op, "weights": layer.weights, "precision": layer.dtype,
                  "reason": reason}
        if layer.activations:
            record["activations"] = layer.activations
        records.append(record)
    return {"tool": tool, "layers": records,
            "mixed_precision": {"enabled": mixed, "budget": budget, "searched": False}}


def _shortfall(report: dict, mode) -> float:
    from converters.validate import shortfall
    return shortfall(report, mode)


def _tf_version() -> str:
    from converters.tf_import import tf
    return tf.__version__
