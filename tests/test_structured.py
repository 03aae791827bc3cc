"""Structured pruning: per-layer shapes in the config, importance scores, exact removal of heads,
neurons and layers, the written checkpoint converting into a smaller bundle, and the CLI's errors."""
import json

import numpy as np
import pytest
from cli_helpers import error_line, invoke

from converters.config import BertConfig
from converters.structured import (StructureScores, importance_scores, kept_heads_count, kept_neurons_count,
                                   prune_structure)
from edgebert import samples
from edgebert.errors import ConfigError, UsageError

NUM_EXAMPLES = 30
SEQ_LEN = 16
ENCODER_ROLES = ("attention/self/query", "attention/self/key", "attention/self/value", "attention/output/dense",
                 "intermediate/dense", "output/dense")


def _write_task(path, num_labels=3, count=NUM_EXAMPLES):
    """A single-sentence TSV of sample sentences (every word is in the synthetic vocab), labels 0..n-1.
    The header is `text label`: `sentence label` is SST-2's, which has two labels."""
    header = "sentence\tlabel" if num_labels == 2 else "text\tlabel"
    lines = [header] + [f"{text}\t{i % num_labels}"
                                   for i, text in enumerate(samples.load_sentences(limit=count))]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def task_file(tmp_path_factory):
    return _write_task(tmp_path_factory.mktemp("task") / "train.tsv")


@pytest.fixture(scope="module")
def source(tiny_classifier_checkpoint):
    from converters.sources import load_source
    return load_source(tiny_classifier_checkpoint)


@pytest.fixture(scope="module")
def task_data(task_file):
    from edgebert.tasks import load_task
    return load_task(task_file)


@pytest.fixture(scope="module")
def scores(source, task_data):
    return importance_scores(source, task_data, seq_len=SEQ_LEN)


def _encoder_outputs(config, weights, inputs):
    from converters.model import build_bert, set_google_weights

    model = build_bert(config, SEQ_LEN)
    set_google_weights(model, config, weights)
    return {name: value.numpy() for name, value in model(inputs).items()}


def _inputs(source):
    from converters.pipeline import bundle_tokenizer
    from edgebert import tokenizer as tokenization

    texts = samples.load_sentences()[-6:] + ["short", "a b"]  # unseen by scoring; some padding
    return tokenization.encode(bundle_tokenizer(source, SEQ_LEN), texts, SEQ_LEN)


# --- the config --------------------------------------------------------------------------------------------

def test_per_layer_config_round_trips_through_bert_config_json(tmp_path, tiny_config):
    import dataclasses

    config = dataclasses.replace(tiny_config, layer_heads=[2, 3], layer_intermediate_sizes=[16, 64])
    assert config.layer_heads == (2, 3) and config.layer_intermediate_sizes == (16, 64)  # lists become tuples
    assert [config.heads_in(n) for n in range(2)] == [2, 3] and config.head_size == 8  # head size unchanged
    assert [config.attention_width(n) for n in range(2)] == [16, 24]
    assert [config.intermediate_in(n) for n in range(2)] == [16, 64]
    google = config.to_google_json()
    assert google["edgebert_layer_heads"] == [2, 3] and google["edgebert_layer_intermediate_sizes"] == [16, 64]
    assert google["num_attention_heads"] == 4 and google["intermediate_size"] == 64
    (tmp_path / "bert_config.json").write_text(json.dumps(google))
    assert BertConfig.from_json_file(tmp_path / "bert_config.json", "google") == config
    hf = {**google, "hidden_act": "gelu_new", "model_type": "bert"}
    (tmp_path / "config.json").write_text(json.dumps(hf))
    assert BertConfig.from_json_file(tmp_path / "config.json", "hf") == config
    assert config.to_dict()["layer_heads"] == [2, 3]
    assert config.to_dict()["layer_intermediate_sizes"] == [16, 64]


def test_uniform_config_serializes_as_before(tiny_config):
    assert tiny_config.layer_heads == () and tiny_config.heads_in(1) == 4 and tiny_config.intermediate_in(0) == 64
    assert tiny_config.to_google_json() == {
        "attention_probs_dropout_prob": 0.1, "hidden_act": "gelu", "hidden_dropout_prob": 0.1, "hidden_size": 32,
        "initializer_range": 0.02, "intermediate_size": 64, "max_position_embeddings": 64,
        "num_attention_heads": 4, "num_hidden_layers": 2, "type_vocab_size": 2,
        "vocab_size": tiny_config.vocab_size}
    # per-layer values equal to the uniform shape are the uniform config
    import dataclasses
    same = dataclasses.replace(tiny_config, layer_heads=(4, 4), layer_intermediate_sizes=[64, 64])
    assert same == tiny_config and same.layer_heads == () and "edgebert_layer_heads" not in same.to_google_json()


@pytest.mark.parametrize("changes, message", [
    ({"layer_heads": (2,)}, "layer_heads has 1 entries but num_layers is 2"),
    ({"layer_heads": (2, 0)}, "layer_heads must hold positive integers, got 0 in [2, 0]"),
    ({"layer_intermediate_sizes": (16, True)},
     "layer_intermediate_sizes must hold positive integers, got True in [16, True]"),
    ({"layer_intermediate_sizes": "16,16"},
     "layer_intermediate_sizes must be a list of 2 positive integers, got '16,16'"),
])
def test_bad_per_layer_config(tiny_config, changes, message):
    import dataclasses
    with pytest.raises(ConfigError) as caught:
        dataclasses.replace(tiny_config, **changes)
    assert str(caught.value) == message


def test_bad_per_layer_key_in_json_names_the_file(tmp_path, tiny_config):
    path = tmp_path / "bert_config.json"
    path.write_text(json.dumps({**tiny_config.to_google_json(), "edgebert_layer_heads": [4, 4, 4]}))
    with pytest.raises(ConfigError) as caught:
        BertConfig.from_json_file(path, "google")
    assert str(caught.value) == f"{path}: layer_heads has 3 entries but num_layers is 2"


# --- pruning -----------------------------------------------------------------------------------------------

def test_kept_counts():
    assert [kept_heads_count(4, f) for f in (0.0, 0.25, 0.5, 0.75, 0.9)] == [4, 3, 2, 1, 1]
    assert kept_heads_count(12, 0.5) == 6 and kept_heads_count(5, 0.5) == 3  # round half up
    assert [kept_neurons_count(64, f) for f in (0.0, 0.5, 0.6, 0.9, 0.99)] == [64, 32, 32, 8, 8]
    assert kept_neurons_count(3072, 0.5) == 1536 and kept_neurons_count(100, 0.5) == 56  # up to a multiple of 8
    assert kept_neurons_count(6, 0.5) == 6  # never more than there were


def test_pruned_model_equals_original_with_removed_rows_zeroed(source, scores):
    pruned, record = prune_structure(source, scores, heads_fraction=0.5, ffn_fraction=0.5)
    config = pruned.config
    assert config.layer_heads == (2, 2) and config.layer_intermediate_sizes == (32, 32) and config.num_layers == 2
    for n in range(2):
        g = f"bert/encoder/layer_{n}"
        assert pruned.weights[f"{g}/attention/self/query/kernel"].shape == (32, 16)
        assert pruned.weights[f"{g}/attention/self/value/bias"].shape == (16,)
        assert pruned.weights[f"{g}/attention/output/dense/kernel"].shape == (16, 32)
        assert pruned.weights[f"{g}/intermediate/dense/kernel"].shape == (32, 32)
        assert pruned.weights[f"{g}/output/dense/kernel"].shape == (32, 32)
        assert len(record["kept_heads"][n]) == 2 and len(record["removed_heads"][f"layer_{n}"]) == 2
    # the original with the removed heads' attention-output rows and the removed neurons' output rows zeroed
    zeroed = dict(source.weights)
    d = source.config.head_size
    for n in range(2):
        g = f"bert/encoder/layer_{n}"
        kernel = zeroed[f"{g}/attention/output/dense/kernel"].copy()
        for head in record["removed_heads"][f"layer_{n}"]:
            kernel[head * d:(head + 1) * d] = 0.0
        zeroed[f"{g}/attention/output/dense/kernel"] = kernel
        kept = np.isin(np.arange(64), _kept_neurons(source, pruned, n))
        zeroed[f"{g}/output/dense/kernel"] = np.where(kept[:, None], zeroed[f"{g}/output/dense/kernel"], 0.0)
    inputs = _inputs(source)
    expected = _encoder_outputs(source.config, zeroed, inputs)
    actual = _encoder_outputs(config, pruned.weights, inputs)
    for name in ("sequence_output", "pooled_output"):
        np.testing.assert_allclose(actual[name], expected[name], atol=1e-5, rtol=0)
    unpruned = _encoder_outputs(source.config, source.weights, inputs)  # the check can tell the difference
    assert np.abs(unpruned["sequence_output"] - actual["sequence_output"]).max() > 1e-2


def _kept_neurons(source, pruned, n):
    """Which original neurons survived, found from the weights themselves (columns are unique)."""
    original = source.weights[f"bert/encoder/layer_{n}/intermediate/dense/kernel"]
    kept = pruned.weights[f"bert/encoder/layer_{n}/intermediate/dense/kernel"]
    indices = [int(np.flatnonzero((original == kept[:, [j]]).all(axis=0))[0]) for j in range(kept.shape[1])]
    assert indices == sorted(indices)  # original order kept
    return indices


def test_pruning_keeps_the_most_important_and_records_it(source, scores):
    pruned, record = prune_structure(source, scores, heads_fraction=0.5, ffn_fraction=0.5)
    for n in range(2):
        kept = record["kept_heads"][n]
        removed = record["removed_heads"][f"layer_{n}"]
        assert sorted(kept + removed) == [0, 1, 2, 3]
        assert min(scores.heads[n][kept]) >= max(scores.heads[n][removed])
        neurons = _kept_neurons(source, pruned, n)
        others = sorted(set(range(64)) - set(neurons))
        assert min(scores.neurons[n][neurons]) >= max(scores.neurons[n][others])
    assert record["step"] == "structured-pruning" and record["examples"] == NUM_EXAMPLES
    assert record["importance"].startswith("first-order Taylor")
    assert record["kept_intermediate"] == [32, 32] and record["removed_layers"] == []
    assert record["parameters_after"] < record["parameters_before"]
    h = 32
    assert record["encoder_dense_macs_per_token_before"] == 2 * (4 * h * 32 + 2 * h * 64)
    assert record["encoder_dense_macs_per_token_after"] == 2 * (4 * h * 16 + 2 * h * 32)
    assert pruned.history == [*source.history, record] and pruned.kind == "google-checkpoint+structured"
    assert pruned.sha256 != source.sha256 and len(pruned.sha256) == 64
    assert source.config.layer_heads == () and source.weights[  # the source is untouched
        "bert/encoder/layer_0/attention/self/query/kernel"].shape == (32, 32)


def test_a_zeroed_head_and_neuron_get_zero_importance(source, task_data, scores):
    assert [h.shape for h in scores.heads] == [(4,), (4,)] and [i.shape for i in scores.neurons] == [(64,), (64,)]
    assert all((h > 0).all() for h in scores.heads) and all((i > 0).all() for i in scores.neurons)
    np.testing.assert_allclose(scores.layers, [h.sum() + i.sum() for h, i in zip(scores.heads, scores.neurons)])
    import dataclasses

    weights, d, g = dict(source.weights), source.config.head_size, "bert/encoder/layer_0"
    columns = slice(1 * d, 2 * d)  # head 1 of layer 0
    for role in ("query", "key", "value"):
        weights[f"{g}/attention/self/{role}/kernel"] = _zero(weights[f"{g}/attention/self/{role}/kernel"],
                                                             (slice(None), columns))
        weights[f"{g}/attention/self/{role}/bias"] = _zero(weights[f"{g}/attention/self/{role}/bias"], columns)
    weights[f"{g}/attention/output/dense/kernel"] = _zero(weights[f"{g}/attention/output/dense/kernel"], columns)
    weights[f"{g}/intermediate/dense/kernel"] = _zero(weights[f"{g}/intermediate/dense/kernel"], (slice(None), 5))
    weights[f"{g}/intermediate/dense/bias"] = _zero(weights[f"{g}/intermediate/dense/bias"], 5)
    weights[f"{g}/output/dense/kernel"] = _zero(weights[f"{g}/output/dense/kernel"], 5)
    dead = dataclasses.replace(source, weights=weights)
    dead_scores = importance_scores(dead, task_data, seq_len=SEQ_LEN, batch_size=8)
    assert dead_scores.heads[0][1] == 0.0 and dead_scores.neurons[0][5] == 0.0
    assert min(np.delete(dead_scores.heads[0], 1)) > 0 and min(np.delete(dead_scores.neurons[0], 5)) > 0
    _, record = prune_structure(dead, dead_scores, heads_fraction=0.25, ffn_fraction=0.0)
    assert record["removed_heads"]["layer_0"] == [1]


def _zero(array, index):
    array = array.copy()
    array[index] = 0.0
    return array


def test_drop_layers_removes_the_least_important_and_renumbers(source):
    heads = [np.arange(4, dtype=float)] * 2
    neurons = [np.arange(64, dtype=float)] * 2
    for layer_scores, removed, kept in (([1.0, 5.0], 0, 1), ([5.0, 1.0], 1, 0)):
        scores = StructureScores(heads=heads, neurons=neurons, layers=np.array(layer_scores), examples=1)
        pruned, record = prune_structure(source, scores, heads_fraction=0.5, ffn_fraction=0.0, drop_layers=1)
        assert record["removed_layers"] == [removed] and record["kept_layers"] == [kept]
        assert pruned.config.num_layers == 1 and pruned.config.layer_heads == (2,)
        assert pruned.config.layer_intermediate_sizes == ()  # 64 of 64 neurons: uniform
        assert not any(name.startswith("bert/encoder/layer_1/") for name in pruned.weights)
        old, new = f"bert/encoder/layer_{kept}", "bert/encoder/layer_0"
        assert np.array_equal(pruned.weights[f"{new}/output/LayerNorm/gamma"],
                              source.weights[f"{old}/output/LayerNorm/gamma"])
        assert np.array_equal(pruned.weights[f"{new}/attention/self/key/kernel"],
                              source.weights[f"{old}/attention/self/key/kernel"][:, 16:])  # heads 2 and 3
        assert np.array_equal(pruned.weights[f"{new}/output/dense/kernel"],
                              source.weights[f"{old}/output/dense/kernel"])
        assert record["removed_heads"] == {"layer_0": [0, 1]} and record["kept_heads"] == [[2, 3]]
    from converters.sources import check_weights_match
    check_weights_match(pruned.config, pruned.weights, source.path)  # every variable the config implies


@pytest.mark.parametrize("options, message", [
    ({"heads_fraction": 1.0, "ffn_fraction": 0.0},
     "--heads is the fraction of each layer's heads to remove and must be in [0, 1), got 1.0"),
    ({"heads_fraction": 0.0, "ffn_fraction": -0.1},
     "--ffn is the fraction of each layer's FFN neurons to remove and must be in [0, 1), got -0.1"),
    ({"heads_fraction": 0.5, "ffn_fraction": 0.5, "drop_layers": 2},
     "--drop-layers 2 would leave no layer (the model has 2)"),
])
def test_prune_structure_bad_options(source, options, message):
    scores = StructureScores([np.ones(4)] * 2, [np.ones(64)] * 2, np.ones(2), 1)
    with pytest.raises(UsageError) as caught:
        prune_structure(source, scores, **options)
    assert str(caught.value) == message


def test_scores_of_another_shape_are_refused(source):
    scores = StructureScores([np.ones(2)] * 2, [np.ones(64)] * 2, np.ones(2), 1)
    with pytest.raises(UsageError, match="measured on a model of another shape"):
        prune_structure(source, scores, heads_fraction=0.5, ffn_fraction=0.5)


# --- the command, and converting its output ----------------------------------------------------------------

def test_prune_command_writes_a_checkpoint_that_converts_smaller(tmp_path, tiny_classifier_checkpoint, task_file):
    from converters.pipeline import ConvertOptions, convert
    from converters.sources import load_source

    out = tmp_path / "pruned"
    result = invoke("prune", tiny_classifier_checkpoint, "--task", task_file, "--heads", "0.5", "--ffn", "0.5",
                    "--seq-len", SEQ_LEN, "--out", out)
    assert result.exit_code == 0, result.output
    before = json.loads(json.dumps(load_source(tiny_classifier_checkpoint).config.to_dict()))
    assert result.stderr.splitlines() == [
        f"reading {tiny_classifier_checkpoint}", f"reading {task_file}",
        f"scoring heads and FFN neurons of 2 layers on {NUM_EXAMPLES} examples (first-order Taylor)",
        f"writing {out}"]
    pruned = load_source(out)
    record = pruned.history[-1]
    assert result.stdout == (f"{out}: heads per layer 2,2, FFN neurons per layer 32,32, parameters "
                             f"{record['parameters_before']:,} -> {record['parameters_after']:,}\n")
    assert pruned.config.layer_heads == (2, 2) and pruned.config.layer_intermediate_sizes == (32, 32)
    assert pruned.num_labels == 3 and record["step"] == "structured-pruning"
    assert json.loads((out / "bert_config.json").read_text())["edgebert_layer_heads"] == [2, 2]
    assert json.loads((out / "edgebert_source.json").read_text())["max_word_chars"] == pruned.max_word_chars == 200

    bundle = tmp_path / "bundle"
    manifest = convert(out, bundle, ConvertOptions(seq_len=SEQ_LEN, validation_size=4)).manifest
    assert manifest["model"]["layer_heads"] == [2, 2] and manifest["model"]["layer_intermediate_sizes"] == [32, 32]
    assert manifest["model"]["num_heads"] == before["num_heads"] == 4 and manifest["model"]["head_size"] == 8
    assert manifest["head"] == "classifier" and manifest["source"]["history"][-1] == record
    assert manifest["sizes"]["parameters"] == record["parameters_after"]


def test_prune_command_refuses_bad_fractions(tmp_path, tiny_classifier_checkpoint, task_file):
    common = (tiny_classifier_checkpoint, "--task", task_file, "--out", tmp_path / "out")
    for options, message in (
        (("--heads", "1"), "--heads must be a fraction in [0, 1) such as 0.5, got '1'"),
        (("--ffn", "-0.5"), "--ffn must be a fraction in [0, 1) such as 0.5, got '-0.5'"),
        (("--heads", "half"), "--heads must be a fraction in [0, 1) such as 0.5, got 'half'"),
        ((), "nothing to prune: give --heads, --ffn or --drop-layers"),
    ):
        assert error_line(invoke("prune", *common, *options), 2) == f"error: {message}"
    assert not (tmp_path / "out").exists()


def test_prune_command_needs_a_classifier_for_the_task(tmp_path, tiny_checkpoint, tiny_classifier_checkpoint,
                                                       task_file):
    out = tmp_path / "out"

    def read(source, task):
        return (f"reading {source}", f"reading {task}")

    line = error_line(invoke("prune", tiny_checkpoint, "--task", task_file, "--heads", "0.5", "--out", out), 2,
                      read(tiny_checkpoint, task_file))
    assert line == (f"error: {tiny_checkpoint}: has no classifier head, so there is no task loss to measure "
                    "importance with; fine-tune it on the task first (edgebert finetune SOURCE --task "
                    "TRAIN.tsv), then prune that")
    two_labels = _write_task(tmp_path / "two.tsv", num_labels=2)
    line = error_line(invoke("prune", tiny_classifier_checkpoint, "--task", two_labels, "--ffn", "0.5",
                             "--out", out), 2, read(tiny_classifier_checkpoint, two_labels))
    assert line == (f"error: {two_labels}: the task has 2 labels but the classifier in {tiny_classifier_checkpoint} "
                    "has 3; fine-tune it on the task first (edgebert finetune SOURCE --task TRAIN.tsv), then "
                    "prune that")
    line = error_line(invoke("prune", tiny_classifier_checkpoint, "--task", task_file, "--drop-layers", "2",
                             "--out", out), 2, (f"reading {tiny_classifier_checkpoint}",))
    assert line == "error: --drop-layers 2 would leave no layer (the model has 2)"
    assert not out.exists()


def test_prune_command_will_not_replace_without_force(tmp_path, tiny_classifier_checkpoint, task_file):
    out = tmp_path / "out"
    out.mkdir()
    line = error_line(invoke("prune", tiny_classifier_checkpoint, "--task", task_file, "--heads", "0.5",
                             "--out", out), 1)
    assert line == f"error: {out}: already exists (pass --force to replace it)"


def test_prune_module_does_not_import_tensorflow():
    import subprocess
    import sys

    code = "import sys, converters.commands.shrink, edgebert.cli; print('tensorflow' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"
