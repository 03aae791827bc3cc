"""The Keras BERT against an independent numpy BERT, and Google's checkpoint layout."""
import numpy as np
import pytest

from conftest import MINI_INDEX, needs_shared
from reference_bert import bert_forward


def _inputs():
    ids = np.array([[101, 7, 9, 11, 102, 13, 102, 0, 0]], np.int32)
    return {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int32),
            "token_type_ids": np.array([[0, 0, 0, 0, 0, 1, 1, 0, 0]], np.int32)}


@pytest.mark.parametrize("activation", ["gelu_tanh", "gelu_erf", "relu"])
@pytest.mark.parametrize("num_labels", [0, 3])
def test_keras_bert_matches_numpy_reference(tiny_config, activation, num_labels):
    from dataclasses import replace

    from converters.google_checkpoint import random_weights
    from converters.model import build_bert, set_google_weights

    config = replace(tiny_config, activation=activation)
    weights = random_weights(config, seed=3, num_labels=num_labels)
    # Larger weights than the initializer's so that a mis-wired graph cannot hide in tiny activations.
    weights = {k: v * 20 if k.endswith(("kernel", "embeddings")) else v for k, v in weights.items()}
    model = build_bert(config, seq_len=None, num_labels=num_labels)
    unused = set_google_weights(model, config, weights, num_labels)
    assert all(name.startswith("cls/") for name in unused)
    inputs = _inputs()
    got = model(inputs)
    want = bert_forward(weights, inputs["input_ids"][0], inputs["attention_mask"][0], inputs["token_type_ids"][0],
                        config.num_heads, approximate_gelu=(activation == "gelu_tanh"), num_labels=num_labels,
                        relu=(activation == "relu"))
    assert sorted(got) == (["logits"] if num_labels else ["pooled_output", "sequence_output"])
    for name, value in got.items():
        np.testing.assert_allclose(value.numpy()[0], want[name], atol=2e-5, rtol=1e-4)


def test_every_weight_is_loaded_and_shapes_are_checked(tiny_config):
    from converters.google_checkpoint import random_weights
    from converters.model import build_bert, set_google_weights
    from edgebert.errors import ConfigError

    weights = random_weights(tiny_config)
    model = build_bert(tiny_config, seq_len=16)
    set_google_weights(model, tiny_config, weights)
    loaded = {w.name for w in model.weights}
    assert len(loaded) == len(model.weights) == sum(len(v) for v in __import__(
        "converters.model", fromlist=["google_names"]).google_names(tiny_config).values())

    bad = dict(weights)
    bad["bert/encoder/layer_1/intermediate/dense/kernel"] = np.zeros((32, 65), np.float32)
    with pytest.raises(ConfigError, match=r"layer_1/intermediate/dense/kernel' has shape \[32, 65\] but the "
                                          r"config implies \[32, 64\]"):
        set_google_weights(model, tiny_config, bad)
    del bad["bert/encoder/layer_1/intermediate/dense/kernel"]
    with pytest.raises(ConfigError, match="checkpoint has no variable 'bert/encoder/layer_1/intermediate"):
        set_google_weights(model, tiny_config, bad)


@needs_shared(MINI_INDEX)
def test_random_checkpoint_has_the_real_bert_mini_layout(tmp_path):
    """Names, shapes and dtypes equal those of Google's released BERT-Mini index."""
    from converters.config import BertConfig
    from converters.google_checkpoint import write_random_checkpoint
    from converters.tf_import import tf
    from edgebert.variants import parse_variant

    config = BertConfig.from_variant(parse_variant("bert-mini"))
    out = write_random_checkpoint(config, tmp_path / "mini", ["[PAD]"] * config.vocab_size)
    ours = tf.train.load_checkpoint(str(out / "bert_model.ckpt"))
    real = tf.train.load_checkpoint(str(MINI_INDEX))
    assert ours.get_variable_to_shape_map() == real.get_variable_to_shape_map()
    assert ours.get_variable_to_dtype_map() == real.get_variable_to_dtype_map()
    assert len(real.get_variable_to_shape_map()) == 78
    assert BertConfig.from_json_file(out / "bert_config.json", "google") == \
        BertConfig.from_json_file(MINI_INDEX.parent / "bert_config.json", "google")


def test_config_reads_both_flavours_of_gelu(tmp_path):
    import json

    from converters.config import Activation, BertConfig
    from edgebert.errors import ConfigError

    raw = {"vocab_size": 10, "hidden_size": 12, "num_hidden_layers": 1, "num_attention_heads": 3,
           "intermediate_size": 20, "hidden_act": "gelu"}
    (tmp_path / "c.json").write_text(json.dumps(raw))
    assert BertConfig.from_json_file(tmp_path / "c.json", "google").activation is Activation.GELU_TANH
    assert BertConfig.from_json_file(tmp_path / "c.json", "hf").activation is Activation.GELU_ERF
    (tmp_path / "c.json").write_text(json.dumps({**raw, "hidden_act": "gelu_new"}))
    assert BertConfig.from_json_file(tmp_path / "c.json", "hf").activation is Activation.GELU_TANH
    assert BertConfig.from_json_file(tmp_path / "c.json", "hf").head_size == 4
    (tmp_path / "c.json").write_text(json.dumps({**raw, "hidden_act": "swish"}))
    with pytest.raises(ConfigError, match=r"c.json: unsupported hidden_act 'swish'"):
        BertConfig.from_json_file(tmp_path / "c.json", "hf")
    (tmp_path / "c.json").write_text(json.dumps({**raw, "num_attention_heads": 5}))
    with pytest.raises(ConfigError, match=r"c.json: hidden_size 12 is not divisible by num_heads 5"):
        BertConfig.from_json_file(tmp_path / "c.json", "google")
    (tmp_path / "c.json").write_text("{not json")
    with pytest.raises(ConfigError, match=r"c.json: not a readable JSON config"):
        BertConfig.from_json_file(tmp_path / "c.json", "google")
