"""Validation of an export against the float Keras model: measured figures and thresholds that fail.

Each quantization mode has its own thresholds. A miss raises ValidationError carrying the figure and
the threshold, and the conversion leaves no bundle behind.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from converters.export import QuantizeMode
from edgebert.errors import ValidationError
from edgebert.scores import LOGITS, PROBABILITIES


@dataclass(frozen=True)
class Thresholds:
    min_cosine: float  # worst example's cosine, per encoder output
    min_agreement: float  # share of examples whose classifier argmax matches the float model
    # A classifier is checked by its probabilities, not its logits' cosine: for a text the classifier is
    # unsure of, the logits of two labels sit near each other and their cosine can be anything (a
    # full-int8 SST-2 model scored -0.9996 on such a text while its probabilities moved by little).
    max_probability_diff: float  # worst |softmax(float) - export's probabilities| over examples and labels


THRESHOLDS = {
    QuantizeMode.FLOAT32: Thresholds(min_cosine=0.99999, min_agreement=1.0, max_probability_diff=1e-4),
    QuantizeMode.FLOAT16: Thresholds(min_cosine=0.999, min_agreement=0.95, max_probability_diff=0.01),
    QuantizeMode.DYNAMIC_INT8: Thresholds(min_cosine=0.99, min_agreement=0.9, max_probability_diff=0.05),
    QuantizeMode.INT8: Thresholds(min_cosine=0.95, min_agreement=0.8, max_probability_diff=0.2),
    # int4 weights: half the bytes of dynamic int8, for a guarantee one notch looser (issue 11's 0.99)
    QuantizeMode.DYNAMIC_INT4: Thresholds(min_cosine=0.98, min_agreement=0.85, max_probability_diff=0.1),
}
# The pooled output is what downstream classifiers read, and a sentence embedding is what a search
# compares: dynamic int8 must keep them at 0.999.
POOLED_MIN_COSINE = {QuantizeMode.FLOAT32: 0.99999, QuantizeMode.FLOAT16: 0.999,
                     QuantizeMode.DYNAMIC_INT8: 0.999, QuantizeMode.INT8: 0.98, QuantizeMode.DYNAMIC_INT4: 0.99}
POOLED_OUTPUTS = ("pooled_output", "sentence_embedding")
# A classifier's output is compared under the name `edgebert convert` ships it, PROBABILITIES: the float
# model gives logits, the export gives probabilities (a SOFTMAX appended in the graph,
# converters/mediapipe_metadata.py) or, before the SOFTMAX is appended (the mixed-precision search's
# candidates), logits. Both sides are compared as probabilities.


def _cosines(expected: np.ndarray, actual: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    """Cosine per example; for sequence outputs, over the real (unpadded) tokens only."""
    if mask is not None:
        keep = mask[..., None].astype(bool)
        expected, actual = np.where(keep, expected, 0.0), np.where(keep, actual, 0.0)
    e = expected.reshape(len(expected), -1).astype(np.float64)
    a = actual.reshape(len(actual), -1).astype(np.float64)
    norms = np.linalg.norm(e, axis=1) * np.linalg.norm(a, axis=1)
    return np.where(norms > 0, (e * a).sum(1) / np.maximum(norms, 1e-30), 1.0)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    return np.exp(shifted) / np.exp(shifted).sum(-1, keepdims=True)


def as_probabilities(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The outputs with a classifier's `logits` replaced by their softmax, `probabilities`."""
    if LOGITS not in outputs or PROBABILITIES in outputs:
        return outputs
    return {(PROBABILITIES if name == LOGITS else name): (_softmax(np.asarray(value)) if name == LOGITS else value)
            for name, value in outputs.items()}


def compare_outputs(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray],
                    attention_mask: np.ndarray) -> dict[str, dict]:
    """Per output: max and mean absolute difference, worst and mean cosine (and, for a classifier's
    probabilities, argmax agreement and the max probability difference, which is their max absolute
    difference). Outputs are [N, ...] arrays over the same N examples; logits on either side are
    compared as their softmax."""
    expected, actual = as_probabilities(expected), as_probabilities(actual)
    report = {}
    for name, want in expected.items():
        got = actual[name]
        mask = attention_mask if name == "sequence_output" else None
        cosines = _cosines(want, got, mask)
        diff = np.abs(want - got) if mask is None else np.abs(want - got)[attention_mask.astype(bool)]
        entry = {"max_abs_diff": float(diff.max()), "mean_abs_diff": float(diff.mean()),
                 "min_cosine": float(cosines.min()), "mean_cosine": float(cosines.mean())}
        if name == PROBABILITIES:
            entry["argmax_agreement"] = float((want.argmax(-1) == got.argmax(-1)).mean())
            entry["max_probability_diff"] = float(diff.max())
        report[name] = entry
    return report


def check_thresholds(report: dict[str, dict], mode: QuantizeMode) -> dict:
    """Raise ValidationError on the first miss; return the thresholds applied (for the manifest)."""
    limits = THRESHOLDS[mode]
    applied = {}
    for name, entry in report.items():
        if name == PROBABILITIES:
            applied[name] = {"max_probability_diff": limits.max_probability_diff}
            if entry["max_probability_diff"] > limits.max_probability_diff:
                raise ValidationError(f"{name} max probability difference vs float ({mode.value})",
                                      entry["max_probability_diff"], limits.max_probability_diff)
        else:
            floor = POOLED_MIN_COSINE[mode] if name in POOLED_OUTPUTS else limits.min_cosine
            applied[name] = {"min_cosine": floor}
            if entry["min_cosine"] < floor:
                raise ValidationError(f"{name} min cosine vs float ({mode.value})", entry["min_cosine"], floor)
        if "argmax_agreement" in entry:
            applied[name]["argmax_agreement"] = limits.min_agreement
            if entry["argmax_agreement"] < limits.min_agreement:
                raise ValidationError(f"{name} argmax agreement vs float ({mode.value})",
                                      entry["argmax_agreement"], limits.min_agreement)
    return applied


def shortfall(report: dict[str, dict], mode: QuantizeMode) -> float:
    """How far a report is from the mode's thresholds, as one number: the worst output's error over the
    error its threshold allows ((1 - min cosine) / (1 - floor), probability change / limit, ...). At most
    1 where check_thresholds passes; the mixed-precision search ranks layers and mixes by it."""
    limits, ratios = THRESHOLDS[mode], []
    for name, entry in report.items():
        if name == PROBABILITIES:
            ratios.append(entry["max_probability_diff"] / limits.max_probability_diff)
            ratios.append(_ratio(1 - entry["argmax_agreement"], 1 - limits.min_agreement))
        else:
            floor = POOLED_MIN_COSINE[mode] if name in POOLED_OUTPUTS else limits.min_cosine
            ratios.append(_ratio(1 - entry["min_cosine"], 1 - floor))
    return max(ratios)


def _ratio(error: float, allowed: float) -> float:
    return error / allowed if allowed > 0 else (0.0 if error <= 0 else float("inf"))


class ExportCheck:
    """Validation of one or many candidate exports of the same float model on the same inputs: the
    float model's outputs are computed once (the mixed-precision search validates dozens of mixes).

    `references` (one per input) is what the float model sees instead of the input itself: a model
    with length buckets is checked at each of its lengths against the float model at the longest,
    the same ids padded further, so padding is shown to change nothing beyond the mode's thresholds."""

    def __init__(self, keras_model, inputs: list[dict[str, np.ndarray]], mode: QuantizeMode,
                 references: list[dict[str, np.ndarray]] | None = None):
        self.inputs, self.mode = inputs, mode
        self.expected = [{name: _first_rows(value.numpy(), example["input_ids"].shape[-1])
                          for name, value in keras_model(reference, training=False).items()}
                         for example, reference in zip(inputs, references or inputs)]

    def measure(self, tflite) -> dict[str, dict]:
        """The merged report of `tflite` (anything called like edgebert.interpreter.TFLiteModel)."""
        return _merge_reports(self._reports(tflite, range(len(self.inputs))))

    def by_length(self, tflite) -> dict[int, dict[str, dict]]:
        """The report of each input length apart (each signature of a model with length buckets)."""
        widths = [example["input_ids"].shape[-1] for example in self.inputs]
        return {width: _merge_reports(self._reports(tflite, [i for i, w in enumerate(widths) if w == width]))
                for width in sorted(set(widths))}

    def _reports(self, tflite, indices) -> list[dict]:
        return [compare_outputs(self.expected[i], tflite(**self.inputs[i]), self.inputs[i]["attention_mask"])
                for i in indices]

    def passes(self, report: dict[str, dict]) -> bool:
        try:
            check_thresholds(report, self.mode)
        except ValidationError:
            return False
        return True

    def record(self, report: dict[str, dict]) -> dict:
        """The manifest's "validation" entry; raises ValidationError on the first miss."""
        return {"examples": len(self.inputs), "outputs": report, "thresholds": check_thresholds(report, self.mode),
                "passed": True}


def _first_rows(value: np.ndarray, width: int) -> np.ndarray:
    """A sequence output [1, S, H] of the float model at a longer length, cut to the input's S rows."""
    return value[:, :width] if value.ndim == 3 else value


def validate_export(keras_model, tflite, inputs: list[dict[str, np.ndarray]], mode: QuantizeMode) -> dict:
    """Run both models on every [1, S] input dict and check the figures against the mode's thresholds.
    Compared example by example (dynamic models see each text at its own length), then merged."""
    check = ExportCheck(keras_model, inputs, mode)
    return check.record(check.measure(tflite))


def _merge_reports(reports: list[dict]) -> dict:
    merged = {}
    for name in reports[0]:
        values = [r[name] for r in reports]
        merged[name] = {"max_abs_diff": max(v["max_abs_diff"] for v in values),
                        "mean_abs_diff": float(np.mean([v["mean_abs_diff"] for v in values])),
                        "min_cosine": min(v["min_cosine"] for v in values),
                        "mean_cosine": float(np.mean([v["mean_cosine"] for v in values]))}
        if "argmax_agreement" in values[0]:
            merged[name]["argmax_agreement"] = float(np.mean([v["argmax_agreement"] for v in values]))
            merged[name]["max_probability_diff"] = max(v["max_probability_diff"] for v in values)
    return merged
