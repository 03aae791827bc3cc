"""The whole chain on tiny models: checkpoint -> bundle, in every mode, checked independently."""
import json
import os

import numpy as np
import pytest

from edgebert.errors import OutputError, UsageError, ValidationError


def _convert(source, out, **options):
    from converters.pipeline import ConvertOptions, convert
    return convert(source, out, ConvertOptions(seq_len=options.pop("seq_len", 32), validation_size=8, **options))


def _reference_outputs(checkpoint, encoded, num_labels=0):
    """Outputs of the independent numpy BERT on the bundle's own token ids."""
    from converters.sources import load_source
    from reference_bert import bert_forward

    source = load_source(checkpoint)
    return bert_forward(source.weights, encoded["input_ids"][0], encoded["attention_mask"][0],
                        encoded["token_type_ids"][0], source.config.num_heads, num_labels=num_labels)


def _cosine(a, b):
    a, b = np.ravel(a), np.ravel(b)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.mark.parametrize("mode", ["float32", "float16", "dynamic-int8", "int8"])
def test_every_mode_gives_a_validated_bundle_on_builtin_ops(tiny_checkpoint, tmp_path, mode):
    from ai_edge_litert.interpreter import Interpreter

    from edgebert import tokenizer as tokenization
    from edgebert.bundle import BUNDLE_FILES, read_bundle

    _convert(tiny_checkpoint, tmp_path / "b", quantize=mode)
    assert sorted(os.listdir(tmp_path)) == ["b"]  # nothing else left behind
    bundle = read_bundle(tmp_path / "b")
    assert sorted(os.listdir(bundle.path)) == sorted(BUNDLE_FILES)
    manifest = bundle.manifest
    assert manifest["recipe"]["quantize"] == mode and manifest["source"]["random_weights"] is True
    assert manifest["validation"]["passed"] and manifest["validation"]["examples"] == 8
    assert manifest["source"]["unused_variables"][0].startswith("cls/")
    assert not any(op.startswith("Flex") or op == "CUSTOM" for op in manifest["ops"])

    # The stock interpreter loads it by signature, with the promised contract.
    interpreter = Interpreter(model_path=str(bundle.model_path))
    runner = interpreter.get_signature_runner("serving_default")
    details = runner.get_input_details()
    assert {name: (tuple(d["shape"]), d["dtype"]) for name, d in details.items()} == {
        name: ((1, 32), np.int32) for name in ("input_ids", "attention_mask", "token_type_ids")}
    # ... and agrees with an independent numpy BERT on the bundle tokenizer's ids.
    tokenizer = tokenization.load_tokenizer(bundle.tokenizer_path)
    encoded = tokenization.encode(tokenizer, ["The film was a delight from start to finish."], 32)
    out = runner(**encoded)
    assert out["sequence_output"].shape == (1, 32, 32) and out["pooled_output"].shape == (1, 32)
    want = _reference_outputs(tiny_checkpoint, encoded)
    floor = {"float32": 0.99999, "float16": 0.999, "dynamic-int8": 0.99, "int8": 0.9}[mode]
    assert _cosine(out["pooled_output"], want["pooled_output"]) >= floor
    # golden.json reproduces with the model it ships with
    example = bundle.golden["examples"][0]
    ids = {name: np.array([example[name]], np.int32) for name in ("input_ids", "attention_mask", "token_type_ids")}
    np.testing.assert_allclose(runner(**ids)["pooled_output"][0], example["outputs"]["pooled_output"], atol=1e-6)


def test_float32_matches_reference_closely_and_sizes_shrink(tiny_checkpoint, tmp_path):
    sizes = {}
    for mode in ("float32", "dynamic-int8"):
        sizes[mode] = _convert(tiny_checkpoint, tmp_path / mode, quantize=mode).manifest["sizes"]["model_bytes"]
    assert sizes["dynamic-int8"] < 0.4 * sizes["float32"]


def test_dynamic_sequence_length(tiny_checkpoint, tmp_path):
    from edgebert import tokenizer as tokenization
    from edgebert.bundle import read_bundle
    from edgebert.interpreter import TFLiteModel

    _convert(tiny_checkpoint, tmp_path / "b", seq_len=None)
    bundle = read_bundle(tmp_path / "b")
    assert bundle.seq_len is None and bundle.manifest["io"]["inputs"][0]["shape"] == [1, -1]
    model = TFLiteModel(bundle.model_path)
    tokenizer = tokenization.load_tokenizer(bundle.tokenizer_path)
    for text in ["Short.", "A noticeably longer sentence with quite a few more words in it than the first."]:
        encoded = tokenization.encode(tokenizer, [text], None)
        out = model(**encoded)
        assert out["sequence_output"].shape[1] == encoded["input_ids"].shape[1]
        assert _cosine(out["pooled_output"], _reference_outputs(tiny_checkpoint, encoded)["pooled_output"]) > 0.999


def test_classifier_bundle_has_logits_and_labels(tiny_classifier_checkpoint, tmp_path):
    from edgebert.bundle import read_bundle

    result = _convert(tiny_classifier_checkpoint, tmp_path / "b", labels=("neg", "neutral", "pos"))
    bundle = read_bundle(tmp_path / "b")
    assert bundle.manifest["head"] == "classifier" and bundle.labels == ["neg", "neutral", "pos"]
    assert bundle.output_names == ["logits"]
    assert "argmax_agreement" in result.manifest["validation"]["outputs"]["logits"]
    encoder = _convert(tiny_classifier_checkpoint, tmp_path / "enc", head="encoder")
    assert encoder.manifest["head"] == "encoder"
    assert "output_weights" in encoder.manifest["source"]["unused_variables"]


def test_classifier_head_requested_on_an_encoder_checkpoint(tiny_checkpoint, tmp_path):
    with pytest.raises(UsageError, match="has no classifier head"):
        _convert(tiny_checkpoint, tmp_path / "b", head="classifier")
    assert not (tmp_path / "b").exists()


def test_tflite_runtime_2_14_compat_changes_the_fully_connected_version(tiny_checkpoint, tmp_path):
    default = _convert(tiny_checkpoint, tmp_path / "new")
    compat = _convert(tiny_checkpoint, tmp_path / "old", compat=__import__(
        "converters.export", fromlist=["Compat"]).Compat.TFLITE_RUNTIME_2_14)
    assert compat.manifest["recipe"]["compat"] == "tflite-runtime-2.14"
    assert (tmp_path / "new" / "model.tflite").read_bytes() != (tmp_path / "old" / "model.tflite").read_bytes()
    with pytest.raises(UsageError, match="only changes dynamic-int8 models"):
        _convert(tiny_checkpoint, tmp_path / "x", quantize="float32",
                 compat=__import__("converters.export", fromlist=["Compat"]).Compat.TFLITE_RUNTIME_2_14)
    assert default.manifest["validation"]["passed"]


def test_existing_output_is_refused_unless_forced(tiny_checkpoint, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError) as error:
        _convert(tiny_checkpoint, tmp_path / "b")
    assert str(error.value) == f"{tmp_path / 'b'}: already exists (pass --force to replace it)"
    _convert(tiny_checkpoint, tmp_path / "b", force=True)
    assert not (tmp_path / "b" / "keep.txt").exists()
    assert sorted(os.listdir(tmp_path)) == ["b"]


def test_unwritable_output(tiny_checkpoint, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OutputError, match="cannot write here"):
        _convert(tiny_checkpoint, blocker / "b")


def test_failed_validation_leaves_nothing_behind(tiny_checkpoint, tmp_path, monkeypatch):
    from converters import validate
    from converters.export import QuantizeMode

    monkeypatch.setitem(validate.POOLED_MIN_COSINE, QuantizeMode.DYNAMIC_INT8, 1.01)
    with pytest.raises(ValidationError) as error:
        _convert(tiny_checkpoint, tmp_path / "b")
    assert "pooled_output min cosine vs float (dynamic-int8)" in str(error.value)
    assert "threshold 1.01" in str(error.value)
    assert os.listdir(tmp_path) == []


def test_seq_len_beyond_positions(tiny_checkpoint, tmp_path):
    with pytest.raises(UsageError, match="--seq-len 100 exceeds the model's 64 positions"):
        _convert(tiny_checkpoint, tmp_path / "b", seq_len=100)


def test_manifest_records_the_contract(tiny_checkpoint, tmp_path):
    manifest = json.loads((_convert(tiny_checkpoint, tmp_path / "b").bundle_dir / "manifest.json").read_text())
    assert manifest["io"]["signature"] == "serving_default"
    assert [o["name"] for o in manifest["io"]["outputs"]] == ["sequence_output", "pooled_output"]
    assert manifest["model"]["head_size"] == 8 and manifest["tokenizer"]["lowercase"] is True
    assert set(manifest["tools"]) >= {"edgebert", "tensorflow", "tf_keras", "numpy", "tokenizers", "python"}
    assert len(manifest["source"]["sha256"]) == 64


def test_classifier_logits_are_checked_by_probability_not_cosine():
    from converters.export import QuantizeMode
    from converters.validate import check_thresholds, compare_outputs

    # Nine texts the classifier is sure of, and one it cannot decide on whose logits flip sign: cosine -1,
    # probabilities moved by 0.025.
    confident = np.tile(np.array([[2.0, -2.0]], np.float32), (9, 1))
    expected = np.vstack([confident, [[0.02, -0.02]]])
    actual = np.vstack([confident, [[-0.03, 0.03]]])
    report = compare_outputs({"logits": expected}, {"logits": actual}, np.ones((10, 4), np.int32))
    assert report["logits"]["min_cosine"] < -0.99
    assert report["logits"]["max_probability_diff"] == pytest.approx(0.025, abs=1e-3)
    assert check_thresholds(report, QuantizeMode.INT8)["logits"] == {"max_probability_diff": 0.2,
                                                                      "argmax_agreement": 0.8}
    confident = compare_outputs({"logits": np.array([[3.0, -3.0]])}, {"logits": np.array([[-3.0, 3.0]])},
                                np.ones((1, 4), np.int32))
    with pytest.raises(ValidationError, match="logits max probability difference vs float"):
        check_thresholds(confident, QuantizeMode.DYNAMIC_INT8)
