"""Magnitude pruning while fine-tuning, with tensorflow-model-optimization, and proof that it happened.

What is pruned: the six Dense kernels of every encoder layer (query, key, value, attention output,
intermediate, output), the matrices that hold the compute. The embeddings (a lookup, and the one table
a download is mostly made of) and the small pooler and classifier are left dense.

Patterns: unstructured, N:M (`2:4`: at most 2 non-zeros in every 4 consecutive weights) and block
(`block:1x4`). None of them makes the model faster with XNNPACK, which runs the matrices dense; they
shrink the zipped download (see FINDINGS, "Pruning and speed"). Structured pruning
(`converters.structured`) is what makes the matrices smaller.

tfmot updates the masks only at steps where (step - begin) % frequency == 0, and its default frequency
is 100: with fewer steps than that, or an end step off that grid, the target sparsity is silently
never reached. So the schedule here puts the end step on the grid, and `check_sparsity` measures the
stripped weights and raises if the target was missed.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from enum import Enum

import numpy as np

from converters.config import BertConfig
from edgebert.errors import UsageError, ValidationError

ENCODER_DENSE = ("query", "key", "value", "attention_output", "intermediate", "output")
SPARSITY_TOLERANCE = 0.005  # magnitude ties and rounding (a kernel of n weights keeps round(n * s))


class Pattern(str, Enum):
    UNSTRUCTURED = "unstructured"
    M_BY_N = "m-by-n"
    BLOCK = "block"


@dataclass(frozen=True)
class PruningSpec:
    """What to prune to, and when. `begin`/`end` are fractions of the fine-tuning steps: sparsity
    rises from 0 at `begin` to `target` at `end` (polynomial decay, as tfmot's PolynomialDecay), and
    the rest of training recovers with the masks fixed."""

    target: float = 0.5
    pattern: Pattern = Pattern.UNSTRUCTURED
    m_by_n: tuple[int, int] | None = None  # (2, 4): 2 non-zeros in every 4
    block: tuple[int, int] | None = None  # (1, 4)
    begin: float = 0.0
    end: float = 0.7
    frequency: int | None = None  # None: about 20 mask updates between begin and end

    def __post_init__(self):
        object.__setattr__(self, "pattern", Pattern(self.pattern))
        if self.pattern is Pattern.M_BY_N:
            m, n = self.m_by_n or (0, 0)
            if not 0 < m < n:
                raise UsageError(f"an N:M pattern needs 0 < N < M, got {self.m_by_n}")
            object.__setattr__(self, "target", 1 - m / n)
        elif not 0 < self.target < 1:
            raise UsageError(f"target sparsity must be between 0 and 1 (exclusive), got {self.target}")
        if not 0 <= self.begin < self.end <= 1:
            raise UsageError(f"pruning must begin before it ends, within training (0 <= begin < end <= 1), "
                             f"got begin {self.begin}, end {self.end}")
        if self.pattern is Pattern.BLOCK and not (self.block and min(self.block) >= 1 and max(self.block) > 1):
            raise UsageError(f"block pruning needs a block such as 1x4, got {self.block}")

    @classmethod
    def parse(cls, sparsity: float | None, pattern: str = "unstructured", **schedule) -> "PruningSpec":
        """From the CLI's words: pattern `unstructured`, `2:4` (any N:M) or `block:1x4` (any RxC)."""
        text = pattern.strip().lower()
        if match := re.fullmatch(r"(\d+):(\d+)", text):
            return cls(pattern=Pattern.M_BY_N, m_by_n=(int(match[1]), int(match[2])), **schedule)
        if match := re.fullmatch(r"block:(\d+)x(\d+)", text):
            return cls(target=_need_target(sparsity, text), pattern=Pattern.BLOCK,
                       block=(int(match[1]), int(match[2])), **schedule)
        if text == "unstructured":
            return cls(target=_need_target(sparsity, text), **schedule)
        raise UsageError(f"unknown pruning pattern {pattern!r} (unstructured, 2:4 or another N:M, block:1x4)")

    def describe(self) -> str:
        if self.pattern is Pattern.M_BY_N:
            return f"{self.m_by_n[0]}:{self.m_by_n[1]}"
        shape = f" block {self.block[0]}x{self.block[1]}" if self.pattern is Pattern.BLOCK else ""
        return f"{self.target:.0%}{shape}"

    def to_dict(self) -> dict:
        return {**asdict(self), "pattern": self.pattern.value}


def _need_target(sparsity: float | None, pattern: str) -> float:
    if sparsity is None:
        raise UsageError(f"pruning pattern {pattern} needs a target sparsity (--prune 0.5)")
    return sparsity


@dataclass(frozen=True)
class Schedule:
    begin_step: int
    end_step: int
    frequency: int


def schedule_for(spec: PruningSpec, total_steps: int) -> Schedule:
    """Steps for tfmot, with end_step on the frequency grid so that the last mask update happens and
    carries the target sparsity. The end stays two steps short of the last batch: tfmot's wrapper and its
    step callback both move the counter, and the final update must fall inside training."""
    last = total_steps - 2
    begin = min(int(round(spec.begin * total_steps)), last)
    span = max(min(int(round(spec.end * total_steps)), last) - begin, 0)
    frequency = spec.frequency or max(1, span // 20)
    if span < frequency:
        raise UsageError(f"pruning needs more fine-tuning: {total_steps} steps leave {span} for the schedule, "
                         f"fewer than its update frequency {frequency} (more examples or epochs, or a larger --prune-end)")
    end = begin + (span // frequency) * frequency  # on the grid: the final update happens at end
    return Schedule(begin, end, frequency)


def prunable_layers(config: BertConfig) -> list[str]:
    return [f"layer_{i}_{name}" for i in range(config.num_layers) for name in ENCODER_DENSE]


def wrap_for_pruning(model, config: BertConfig, spec: PruningSpec, schedule: Schedule):
    """A clone of the Keras model with the encoder's Dense layers wrapped by prune_low_magnitude and the
    weights copied over (clone_model re-initializes them)."""
    import tensorflow_model_optimization as tfmot

    from converters.tf_import import tf_keras

    names = set(prunable_layers(config))
    polynomial = tfmot.sparsity.keras.PolynomialDecay(
        initial_sparsity=0.0, final_sparsity=spec.target, begin_step=schedule.begin_step,
        end_step=schedule.end_step, frequency=schedule.frequency)
    keywords = {"pruning_schedule": polynomial}
    if spec.pattern is Pattern.M_BY_N:
        keywords["sparsity_m_by_n"] = spec.m_by_n
    elif spec.pattern is Pattern.BLOCK:
        keywords["block_size"] = spec.block

    def wrap(layer):
        clone = layer.__class__.from_config(layer.get_config())
        return tfmot.sparsity.keras.prune_low_magnitude(clone, **keywords) if layer.name in names else clone

    wrapped = tf_keras.models.clone_model(model, clone_function=wrap)
    for layer in model.layers:
        if layer.weights:
            if layer.name in names:  # the wrapper is named prune_low_magnitude_<name>; it holds the Dense
                wrapped.get_layer(f"prune_low_magnitude_{layer.name}").layer.set_weights(layer.get_weights())
            else:
                wrapped.get_layer(layer.name).set_weights(layer.get_weights())
    return wrapped


def strip(model):
    import tensorflow_model_optimization as tfmot

    return tfmot.sparsity.keras.strip_pruning(model)


def measure_sparsity(weights: dict[str, np.ndarray], config: BertConfig) -> dict:
    """Fraction of exact zeros in each pruned kernel (Google-named weights) and over all of them."""
    from converters.model import google_names

    names = google_names(config)
    per_layer, zeros, total = {}, 0, 0
    for layer in prunable_layers(config):
        kernel = weights[names[layer][0]]
        per_layer[layer] = float(np.mean(kernel == 0))
        zeros, total = zeros + int(np.sum(kernel == 0)), total + kernel.size
    return {"overall": zeros / total, "min_layer": min(per_layer.values()), "layers": per_layer}


def m_by_n_violations(weights: dict[str, np.ndarray], config: BertConfig, m: int, n: int) -> int:
    """Groups of n consecutive input weights (per output column, as tfmot groups them) with more than m
    non-zeros."""
    from converters.model import google_names

    names, bad = google_names(config), 0
    for layer in prunable_layers(config):
        kernel = weights[names[layer][0]]  # (in, out)
        rows = kernel.shape[0] - kernel.shape[0] % n
        groups = kernel[:rows].T.reshape(kernel.shape[1], -1, n)  # (out, in/n, n)
        bad += int(np.sum(np.count_nonzero(groups, axis=-1) > m))
    return bad


def check_sparsity(weights: dict[str, np.ndarray], config: BertConfig, spec: PruningSpec) -> dict:
    """Measure the stripped weights; raise ValidationError if any pruned kernel missed the target."""
    report = measure_sparsity(weights, config)
    floor = spec.target - SPARSITY_TOLERANCE
    if report["min_layer"] < floor:
        worst = min(report["layers"], key=report["layers"].get)
        raise ValidationError(f"sparsity of {worst} after stripping (target {spec.target:.0%})",
                              report["min_layer"], floor, "the pruning schedule did not reach its target")
    if spec.pattern is Pattern.M_BY_N:
        violations = m_by_n_violations(weights, config, *spec.m_by_n)
        report["m_by_n_violations"] = violations
        if violations:
            raise ValidationError(f"groups breaking the {spec.describe()} pattern", violations, 0)
    return report
