"""Structured pruning: remove whole attention heads, FFN neurons and (optionally) layers, so that the
dense matrices themselves get smaller.

Why structured: TFLite's XNNPACK runs a sparse matrix as a dense one, so unstructured, 2:4 or block
sparsity shrink only the zipped download and give no speed (see FINDINGS.md, "Pruning and speed").
Latency falls only when the FULLY_CONNECTED ops get smaller: fewer heads make Q/K/V narrower (and the
attention-output kernel shorter), fewer neurons make the FFN's two kernels smaller, and a dropped
layer is gone altogether.

The method, in three steps:

1. `importance_scores(source, task_data)`: first-order Taylor importance (Molchanov et al. 2019,
   "Importance Estimation for Neural Network Pruning"). Removing a group S of weights (setting them to
   zero) changes the loss by about -sum_{s in S} w_s * dL/dw_s. For each batch of the task's training
   texts we take the cross-entropy of the fine-tuned classifier, compute w * dL/dw for every weight, sum
   it over each group and add the absolute value to the group's score. The absolute value is taken per
   batch, as Molchanov et al. accumulate their criterion per minibatch: |sum over all data| would cancel
   towards zero on a well fine-tuned model, whose training-set gradient is close to zero. Scores are
   divided by the number of examples (a per-example loss change).
   - a head's group: its D columns of the Q, K and V kernels and biases, and its D rows of the
     attention-output kernel;
   - a neuron's group: its column of the intermediate kernel and its bias, and its row of the output
     kernel;
   - a layer's score: the sum of its heads' and neurons' scores.
2. `prune_structure(source, scores, heads_fraction=, ffn_fraction=, drop_layers=)`: each layer loses
   the same fraction (so the layers stay balanced): it keeps its max(1, round(n * (1 - fraction))) most
   important heads and its most important neurons, that count rounded up to a multiple of 8 (SIMD
   friendly) but never above the original. `drop_layers` removes the layers with the lowest scores;
   the remaining ones are renumbered layer_0, layer_1, ... Kept heads and neurons keep their order.
   The result is a new Source whose config carries per-layer shapes (`layer_heads`,
   `layer_intermediate_sizes`); the model builder and the converter follow them.
3. `write_pruned(source, out_dir)`: a checkpoint directory in the source's format (Hugging Face's
   config.json + model.safetensors for a Hugging Face source, else Google's bert_config.json and
   checkpoint; converters/hf_checkpoint.py), the config with edgebert's per-layer keys, the vocab, and
   the record (labels, casing, word-length limit, history) that `edgebert convert` carries into the
   bundle's manifest.

Removing heads and neurons is exact in one sense: the pruned model computes what the original computes
with the removed heads' attention-output rows and the removed neurons' output rows set to zero (the
tests check this). The accuracy that this costs is recovered by fine-tuning the pruned checkpoint.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from converters import google_checkpoint, hf_checkpoint
from converters.config import BertConfig
from converters.sources import Source, check_weights_match
from edgebert.tasks import TaskData
from edgebert.errors import UsageError

IMPORTANCE_METHOD = ("first-order Taylor (Molchanov et al. 2019): |sum over the group of w * dL/dw| of the "
                     "task's cross-entropy, per batch, summed over batches, divided by the examples")
FFN_MULTIPLE = 8  # kept neuron counts are rounded up to this (SIMD-friendly widths)
FINETUNE_HINT = "fine-tune it on the task first (edgebert finetune SOURCE --task TRAIN.tsv), then prune that"

# The Google variables of one encoder layer, by role.
_QKV = ("attention/self/query", "attention/self/key", "attention/self/value")
_ATTENTION_OUTPUT = "attention/output/dense"
_INTERMEDIATE, _OUTPUT = "intermediate/dense", "output/dense"


@dataclass
class StructureScores:
    """Importance of every head, neuron and layer of one model (higher: removing it costs more)."""

    heads: list[np.ndarray]  # per layer, [heads_l]
    neurons: list[np.ndarray]  # per layer, [intermediate_l]
    layers: np.ndarray  # [num_layers]
    examples: int  # how many training examples the scores were measured on


def _layer_scope(index: int) -> str:
    return f"bert/encoder/layer_{index}"


def check_task(source: Source, task_data: TaskData) -> None:
    """The source must be a classifier for this task, and the task must have labels."""
    if task_data.labels is None:
        raise UsageError("has no labels (an unlabelled test file?); importance is measured on the labelled "
                         "training data", task_data.path)
    if not source.num_labels:
        raise UsageError(f"has no classifier head, so there is no task loss to measure importance with; "
                         f"{FINETUNE_HINT}", source.path)
    if task_data.num_labels != source.num_labels:
        raise UsageError(f"the task has {task_data.num_labels} labels but the classifier in {source.path} has "
                         f"{source.num_labels}; {FINETUNE_HINT}", task_data.path)


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value!r}")
    return value


def _check_seq_len(config: BertConfig, seq_len) -> None:
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or not 3 <= seq_len <= config.max_positions:
        raise UsageError(f"--seq-len must be a whole number from 3 to the model's {config.max_positions} "
                         f"positions, got {seq_len!r}")


def _sample(n: int, limit: int) -> np.ndarray:
    """Which examples to score: all of them, or a fixed random subset (a sorted file must not bias it)."""
    if n <= limit:
        return np.arange(n)
    return np.sort(np.random.default_rng(0).choice(n, size=limit, replace=False))


def importance_scores(source: Source, task_data: TaskData, *, max_examples: int = 2048, batch_size: int = 32,
                      seq_len: int = 128) -> StructureScores:
    """First-order Taylor importance of every head, FFN neuron and layer on the task's training data
    (see the module docstring). The source must have a classifier head fitting the task."""
    from converters.model import build_bert, set_google_weights
    from converters.pipeline import bundle_tokenizer
    from converters.tf_import import tf
    from edgebert import tokenizer as tokenization

    check_task(source, task_data)
    _positive_int(max_examples, "max_examples")
    _positive_int(batch_size, "batch_size")
    config = source.config
    _check_seq_len(config, seq_len)

    chosen = _sample(len(task_data), max_examples)
    texts = [task_data.texts[i] for i in chosen]
    labels = np.asarray(task_data.labels, np.int32)[chosen]
    tokenizer = bundle_tokenizer(source, seq_len)

    num_labels = source.num_labels
    model = build_bert(config, None, num_labels)
    set_google_weights(model, config, source.weights, num_labels, str(source.path))
    roles = [*_QKV, _ATTENTION_OUTPUT, _INTERMEDIATE, _OUTPUT]
    keras_names = {"attention/self/query": "query", "attention/self/key": "key", "attention/self/value": "value",
                   _ATTENTION_OUTPUT: "attention_output", _INTERMEDIATE: "intermediate", _OUTPUT: "output"}
    variables = []  # per layer per role: (kernel, bias)
    for index in range(config.num_layers):
        for role in roles:
            layer = model.get_layer(f"layer_{index}_{keras_names[role]}")
            variables.extend([layer.kernel, layer.bias])

    @tf.function(reduce_retracing=True)
    def weight_times_gradient(inputs, targets):
        with tf.GradientTape() as tape:
            logits = model(inputs, training=False)["logits"]  # (B, num_labels)
            loss = tf.reduce_sum(tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits))
        gradients = tape.gradient(loss, variables)
        return [v * g for v, g in zip(variables, gradients)]

    heads = [np.zeros(config.heads_in(n), np.float64) for n in range(config.num_layers)]
    neurons = [np.zeros(config.intermediate_in(n), np.float64) for n in range(config.num_layers)]
    d, per_layer = config.head_size, 2 * len(roles)
    for start in range(0, len(texts), batch_size):
        inputs = tokenization.encode(tokenizer, texts[start:start + batch_size], seq_len)
        products = [p.numpy().astype(np.float64)
                    for p in weight_times_gradient(inputs, labels[start:start + batch_size])]
        for n in range(config.num_layers):
            wg = dict(zip([(role, part) for role in roles for part in ("kernel", "bias")],
                          products[n * per_layer:(n + 1) * per_layer]))
            n_heads = config.heads_in(n)
            head_sum = wg[(_ATTENTION_OUTPUT, "kernel")].reshape(n_heads, d, -1).sum(axis=(1, 2))
            for role in _QKV:
                head_sum += wg[(role, "kernel")].reshape(-1, n_heads, d).sum(axis=(0, 2))
                head_sum += wg[(role, "bias")].reshape(n_heads, d).sum(axis=1)
            neuron_sum = (wg[(_INTERMEDIATE, "kernel")].sum(axis=0) + wg[(_INTERMEDIATE, "bias")]
                          + wg[(_OUTPUT, "kernel")].sum(axis=1))
            heads[n] += np.abs(head_sum)
            neurons[n] += np.abs(neuron_sum)
    count = len(texts)
    heads = [h / count for h in heads]
    neurons = [i / count for i in neurons]
    layers = np.array([h.sum() + i.sum() for h, i in zip(heads, neurons)])
    return StructureScores(heads=heads, neurons=neurons, layers=layers, examples=count)


def _round_half_up(x: float) -> int:
    return math.floor(x + 0.5 + 1e-9)  # 1e-9: 10 * (1 - 0.35) is 6.499999...


def kept_heads_count(n: int, fraction: float) -> int:
    return max(1, _round_half_up(n * (1.0 - fraction)))


def kept_neurons_count(n: int, fraction: float) -> int:
    kept = max(1, _round_half_up(n * (1.0 - fraction)))
    return min(n, math.ceil(kept / FFN_MULTIPLE) * FFN_MULTIPLE)


def check_options(config: BertConfig | None, heads_fraction, ffn_fraction, drop_layers) -> None:
    """Fractions in [0, 1) and 0 <= drop_layers < num_layers, else a UsageError naming the option."""
    for name, value in (("--heads", heads_fraction), ("--ffn", ffn_fraction)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
            raise UsageError(f"{name} is the fraction of each layer's {'heads' if name == '--heads' else 'FFN neurons'}"
                             f" to remove and must be in [0, 1), got {value!r}")
    if isinstance(drop_layers, bool) or not isinstance(drop_layers, int) or drop_layers < 0:
        raise UsageError(f"--drop-layers must be 0 or more, got {drop_layers!r}")
    if config is not None and drop_layers >= config.num_layers:
        raise UsageError(f"--drop-layers {drop_layers} would leave no layer (the model has {config.num_layers})")


def _check_scores(config: BertConfig, scores: StructureScores) -> None:
    fits = (len(scores.heads) == len(scores.neurons) == len(scores.layers) == config.num_layers
            and all(len(scores.heads[n]) == config.heads_in(n) and len(scores.neurons[n]) == config.intermediate_in(n)
                    for n in range(config.num_layers)))
    if not fits:
        raise UsageError("the importance scores were measured on a model of another shape than this source")


def _most_important(scores: np.ndarray, keep: int) -> np.ndarray:
    """Indices of the `keep` highest scores (ties: the lower index), in their original order."""
    order = np.argsort(-np.asarray(scores), kind="stable")
    return np.sort(order[:keep])


def count_parameters(config: BertConfig, num_labels: int = 0) -> int:
    """Parameters of the exported model (encoder, pooler and the classifier head when there is one)."""
    shapes = dict(google_checkpoint.encoder_variable_shapes(config))
    if num_labels:
        shapes.update(google_checkpoint.classifier_shapes(config, num_labels))
    return int(sum(math.prod(shape) for shape in shapes.values()))


def encoder_dense_macs_per_token(config: BertConfig) -> int:
    """Multiply-accumulates of the encoder's dense layers per token (Q/K/V, attention output, FFN); the
    attention score products, which grow with the sequence length, are not included."""
    h = config.hidden_size
    return sum(4 * h * config.attention_width(n) + 2 * h * config.intermediate_in(n)
               for n in range(config.num_layers))


def prune_structure(source: Source, scores: StructureScores, *, heads_fraction: float, ffn_fraction: float,
                    drop_layers: int = 0) -> tuple[Source, dict]:
    """A new Source without the least important heads, neurons and layers, and the record of what went.

    The record (also appended to the new source's history) lists per new layer the original indices of
    the kept heads (`kept_heads`) and the removed ones (`removed_heads`, keyed by the new layer names),
    the kept neuron counts (`kept_intermediate`), the original indices of the kept and removed layers,
    and parameters and dense MACs per token before and after. The source is not modified."""
    config = source.config
    check_options(config, heads_fraction, ffn_fraction, drop_layers)
    _check_scores(config, scores)

    removed_layers = sorted(int(n) for n in np.argsort(np.asarray(scores.layers), kind="stable")[:drop_layers])
    kept_layers = [n for n in range(config.num_layers) if n not in removed_layers]
    d = config.head_size
    weights = {name: value for name, value in source.weights.items() if not name.startswith("bert/encoder/")}
    kept_heads, removed_heads, kept_intermediate, kept_neurons = [], {}, [], []
    for new, old in enumerate(kept_layers):
        n_heads, n_neurons = config.heads_in(old), config.intermediate_in(old)
        heads = _most_important(scores.heads[old], kept_heads_count(n_heads, heads_fraction))
        neurons = _most_important(scores.neurons[old], kept_neurons_count(n_neurons, ffn_fraction))
        columns = (heads[:, None] * d + np.arange(d)[None, :]).reshape(-1)  # the kept heads' Q/K/V columns
        src, dst = _layer_scope(old), _layer_scope(new)
        for name in google_checkpoint.encoder_variable_shapes(config):
            if not name.startswith(src + "/"):
                continue
            value, rest = source.weights[name], name[len(src) + 1:]
            role, part = rest.rsplit("/", 1)
            if role in _QKV:
                value = value[:, columns] if part == "kernel" else value[columns]
            elif role == _ATTENTION_OUTPUT and part == "kernel":
                value = value[columns, :]
            elif role == _INTERMEDIATE:
                value = value[:, neurons] if part == "kernel" else value[neurons]
            elif role == _OUTPUT and part == "kernel":
                value = value[neurons, :]
            weights[f"{dst}/{rest}"] = np.ascontiguousarray(value)
        kept_heads.append(heads.tolist())
        removed_heads[f"layer_{new}"] = sorted(set(range(n_heads)) - set(heads.tolist()))
        kept_intermediate.append(len(neurons))
        kept_neurons.append(neurons.tolist())

    new_config = dataclasses.replace(config, num_layers=len(kept_layers),
                                     layer_heads=tuple(len(heads) for heads in kept_heads),
                                     layer_intermediate_sizes=tuple(kept_intermediate))
    record = {
        "step": "structured-pruning",
        "importance": IMPORTANCE_METHOD,
        "examples": int(scores.examples),
        "heads_fraction": float(heads_fraction),
        "ffn_fraction": float(ffn_fraction),
        "drop_layers": int(drop_layers),
        "removed_layers": removed_layers,
        "kept_layers": kept_layers,
        "removed_heads": removed_heads,
        "kept_heads": kept_heads,
        "kept_intermediate": kept_intermediate,
        "parameters_before": count_parameters(config, source.num_labels),
        "parameters_after": count_parameters(new_config, source.num_labels),
        "encoder_dense_macs_per_token_before": encoder_dense_macs_per_token(config),
        "encoder_dense_macs_per_token_after": encoder_dense_macs_per_token(new_config),
    }
    digest = hashlib.sha256(f"{source.sha256}\0structured-pruning\0".encode())
    digest.update(json.dumps({"layers": kept_layers, "heads": kept_heads, "neurons": kept_neurons}).encode())
    pruned = dataclasses.replace(source, config=new_config, weights=weights, kind=f"{source.kind}+structured",
                                 sha256=digest.hexdigest(), history=[*source.history, record])
    check_weights_match(new_config, weights, source.path)  # every variable the new config implies, in shape
    return pruned, record


def write_pruned(source: Source, out_dir: str | Path, force: bool = False,
                 output: hf_checkpoint.CheckpointOutput | None = None) -> Path:
    """Write a pruned source, in its source's format, as a checkpoint directory that `edgebert convert`,
    `edgebert finetune` and `load_source` read, with its labels, lower-casing, word-length limit and
    history. `output`: the plan `hf_checkpoint.prepare_output` made before the work (else made now)."""
    output = output or hf_checkpoint.prepare_output(source, out_dir, force=force)
    record = {"lowercase": source.lowercase, "labels": source.labels, "random_init": source.random_weights,
              "max_word_chars": source.max_word_chars, "history": source.history}
    return output.write(source.config, source.weights, record)


def prune_to_directory(source_path: str | Path, task_path: str | Path, out_dir: str | Path, *,
                       heads_fraction: float, ffn_fraction: float, drop_layers: int = 0,
                       max_examples: int = 2048, seq_len: int | None = None, force: bool = False,
                       log: Callable[[str], None] = lambda message: None) -> tuple[Source, dict]:
    """The whole `edgebert prune`: read the source and the task, score, prune, write. Cheap checks (the
    options, the output directory, the task's labels against the classifier) come before the scoring.
    seq_len None: 128, or the model's positions when it has fewer."""
    from converters.sources import load_source
    from edgebert.tasks import load_task

    from edgebert.bundle import check_output_dir

    out_dir = Path(out_dir)
    check_options(None, heads_fraction, ffn_fraction, drop_layers)
    _positive_int(max_examples, "--examples")
    check_output_dir(out_dir, force)
    log(f"reading {source_path}")
    source = load_source(source_path)
    check_options(source.config, heads_fraction, ffn_fraction, drop_layers)
    seq_len = min(128, source.config.max_positions) if seq_len is None else seq_len
    _check_seq_len(source.config, seq_len)
    output = hf_checkpoint.prepare_output(source, out_dir, force=force)  # what could fail, before the scoring
    log(f"reading {task_path}")
    task_data = load_task(task_path)
    check_task(source, task_data)
    examples = min(len(task_data), max_examples)
    log(f"scoring heads and FFN neurons of {source.config.num_layers} layers on {examples} examples "
        "(first-order Taylor)")
    scores = importance_scores(source, task_data, max_examples=max_examples, seq_len=seq_len)
    pruned, record = prune_structure(source, scores, heads_fraction=heads_fraction, ffn_fraction=ffn_fraction,
                                     drop_layers=drop_layers)
    log(f"writing {out_dir}")
    write_pruned(pruned, out_dir, force=force, output=output)
    return pruned, record
