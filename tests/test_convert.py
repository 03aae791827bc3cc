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
    # The product's own floors (converters/validate.py), here against the independent reference.
    pooled_floor = {"float32": 0.99999, "float16": 0.999, "dynamic-int8": 0.999, "int8": 0.98}[mode]
    sequence_floor = {"float32": 0.99999, "float16": 0.999, "dynamic-int8": 0.99, "int8": 0.95}[mode]
    assert _cosine(out["pooled_output"], want["pooled_output"]) >= pooled_floor
    real = encoded["attention_mask"][0].astype(bool)
    assert _cosine(out["sequence_output"][0][real], want["sequence_output"][real]) >= sequence_floor
    # golden.json reproduces with the model it ships with
    example = bundle.golden["examples"][0]
    ids = {name: np.array([example[name]], np.int32) for name in ("input_ids", "attention_mask", "token_type_ids")}
    np.testing.assert_allclose(runner(**ids)["pooled_output"][0], example["outputs"]["pooled_output"], atol=1e-6)


def test_float32_matches_reference_closely_and_sizes_shrink(tiny_checkpoint, tmp_path):
    from edgebert import tokenizer as tokenization
    from edgebert.bundle import read_bundle
    from edgebert.interpreter import TFLiteModel

    sizes = {}
    for mode in ("float32", "dynamic-int8"):
        sizes[mode] = _convert(tiny_checkpoint, tmp_path / mode, quantize=mode).manifest["sizes"]["model_bytes"]

    # float32 is the same arithmetic as the independent numpy BERT, up to float32 rounding.
    bundle = read_bundle(tmp_path / "float32")
    model, tokenizer = TFLiteModel(bundle.model_path), tokenization.load_tokenizer(bundle.tokenizer_path)
    for text in ["The film was a delight from start to finish.", ("Is it open?", "The shop opens at nine."), "a"]:
        encoded = tokenization.encode(tokenizer, [text], 32)
        out, want = model(**encoded), _reference_outputs(tiny_checkpoint, encoded)
        real = encoded["attention_mask"][0].astype(bool)
        np.testing.assert_allclose(out["pooled_output"][0], want["pooled_output"], atol=1e-5, rtol=0)
        np.testing.assert_allclose(out["sequence_output"][0][real], want["sequence_output"][real], atol=1e-4, rtol=0)
        assert _cosine(out["pooled_output"], want["pooled_output"]) >= 0.999999
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


def test_classifier_bundle_gives_probabilities_and_labels(tiny_classifier_checkpoint, tmp_path):
    from edgebert.bundle import read_bundle

    result = _convert(tiny_classifier_checkpoint, tmp_path / "b", labels=("neg", "neutral", "pos"))
    bundle = read_bundle(tmp_path / "b")
    assert bundle.manifest["head"] == "classifier" and bundle.labels == ["neg", "neutral", "pos"]
    assert bundle.output_names == ["probabilities"]
    assert "argmax_agreement" in result.manifest["validation"]["outputs"]["probabilities"]
    assert list(bundle.golden["examples"][0]["outputs"]) == ["probabilities"]
    encoder = _convert(tiny_classifier_checkpoint, tmp_path / "enc", head="encoder")
    assert encoder.manifest["head"] == "encoder"
    assert "output_weights" in encoder.manifest["source"]["unused_variables"]


def ends_in_softmax(model_path) -> bool:
    """Every subgraph's one output is made by a SOFTMAX, its graph's last operator, reading float32."""
    from pathlib import Path

    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(Path(model_path).read_bytes()))
    for graph in model.subgraphs:
        last = graph.operators[-1]
        code = flatbuffer_utils.get_builtin_code_from_operator_code(model.operatorCodes[last.opcodeIndex])
        if (code != schema.BuiltinOperator.SOFTMAX or list(graph.outputs) != list(last.outputs)
                or graph.tensors[last.inputs[0]].type != schema.TensorType.FLOAT32):
            return False
    return True


CLASSIFIER_EXPORTS = {  # every way a classifier's graph is made: the SOFTMAX goes after each
    "float32": {"quantize": "float32"}, "float16": {"quantize": "float16"},
    "dynamic-int8": {"quantize": "dynamic-int8"}, "int8": {"quantize": "int8"},
    "dynamic-int4": {"quantize": "dynamic-int4"},
    "compat": {"quantize": "dynamic-int8", "compat": "tflite-runtime-2.14"},
    "dynamic": {"quantize": "dynamic-int8", "seq_len": None},
}


@pytest.mark.parametrize("export", list(CLASSIFIER_EXPORTS))
def test_every_classifier_export_gives_the_softmax_of_its_logits(tiny_classifier_checkpoint, tmp_path, export):
    """model.tflite's one output is `probabilities`: a float32 SOFTMAX after the graph's last layer, equal
    to the softmax of the independent numpy BERT's logits within the mode's probability threshold."""
    from converters.export import Compat, QuantizeMode
    from converters.validate import THRESHOLDS
    from edgebert import tokenizer as tokenization
    from edgebert.bundle import read_bundle
    from edgebert.interpreter import TFLiteModel
    from edgebert.model_info import read_tflite
    from edgebert.predict import softmax

    options = dict(CLASSIFIER_EXPORTS[export])
    if "compat" in options:
        options["compat"] = Compat(options["compat"])
    _convert(tiny_classifier_checkpoint, tmp_path / "b", **options)
    bundle = read_bundle(tmp_path / "b")
    model = TFLiteModel(bundle.model_path)
    assert model.output_names == ("probabilities",) and ends_in_softmax(bundle.model_path)
    [graph] = read_tflite(bundle.model_path.read_bytes(), bundle.model_path)["subgraphs"]
    assert [(t["name"], t["dtype"]) for t in graph["outputs"]] == [("probabilities", "float32")]
    assert bundle.manifest["io"]["outputs"] == [{"name": "probabilities", "dtype": "float32", "shape": [1, 3]}]
    tokenizer = tokenization.load_tokenizer(bundle.tokenizer_path)
    limit = THRESHOLDS[QuantizeMode(options["quantize"])].max_probability_diff
    for text in ["The film was a delight from start to finish.", ("Is it open?", "The shop opens at nine.")]:
        encoded = tokenization.encode(tokenizer, [text], bundle.seq_len)
        got = model(**encoded)["probabilities"][0].astype(np.float64)
        assert abs(got.sum() - 1) <= 1e-6 and (got >= 0).all()
        want = softmax(_reference_outputs(tiny_classifier_checkpoint, encoded, num_labels=3)["logits"])
        assert np.abs(got - want).max() <= limit


def test_classifier_head_requested_on_an_encoder_checkpoint(tiny_checkpoint, tmp_path):
    with pytest.raises(UsageError, match="has no classifier head"):
        _convert(tiny_checkpoint, tmp_path / "b", head="classifier")
    assert not (tmp_path / "b").exists()


def _op_versions(model_path, op_name: str) -> set[int]:
    """The versions of every op of that builtin type in a .tflite, read from its flatbuffer."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_path.read_bytes()))
    wanted = getattr(schema.BuiltinOperator, op_name)
    codes = [model.operatorCodes[op.opcodeIndex] for graph in model.subgraphs for op in graph.operators]
    return {code.version for code in codes if max(code.builtinCode, code.deprecatedBuiltinCode) == wanted}


def test_tflite_runtime_2_14_compat_changes_the_fully_connected_version(tiny_checkpoint, tmp_path):
    default = _convert(tiny_checkpoint, tmp_path / "new")
    compat = _convert(tiny_checkpoint, tmp_path / "old", compat=__import__(
        "converters.export", fromlist=["Compat"]).Compat.TFLITE_RUNTIME_2_14)
    assert compat.manifest["recipe"]["compat"] == "tflite-runtime-2.14"
    # Per-channel dynamic int8 gives FULLY_CONNECTED version 12, which tflite-runtime 2.14 refuses; the
    # compat model's per-tensor dense layers need an older version (test_legacy_runtime loads it in 2.14).
    assert _op_versions(tmp_path / "new" / "model.tflite", "FULLY_CONNECTED") == {12}
    old_versions = _op_versions(tmp_path / "old" / "model.tflite", "FULLY_CONNECTED")
    assert old_versions and max(old_versions) < 12, old_versions
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
    from edgebert.predict import softmax

    # Nine texts the classifier is sure of, and one it cannot decide on whose logits flip sign (their cosine
    # is -1) while its probabilities move by 0.025. The float model gives logits; the export gives
    # probabilities (or logits, before the SOFTMAX is appended): both are compared as probabilities.
    confident = np.tile(np.array([[2.0, -2.0]], np.float32), (9, 1))
    expected = np.vstack([confident, [[0.02, -0.02]]])
    actual = np.vstack([confident, [[-0.03, 0.03]]])
    mask = np.ones((10, 4), np.int32)
    report = compare_outputs({"logits": expected}, {"probabilities": np.stack([softmax(row) for row in actual])}, mask)
    from_logits = compare_outputs({"logits": expected}, {"logits": actual}, mask)
    assert list(from_logits) == ["probabilities"]
    assert report["probabilities"] == pytest.approx(from_logits["probabilities"], rel=1e-9, abs=1e-12)
    assert list(report) == ["probabilities"] and report["probabilities"]["min_cosine"] > 0.99
    assert report["probabilities"]["max_probability_diff"] == pytest.approx(0.025, abs=1e-3)
    assert report["probabilities"]["max_abs_diff"] == report["probabilities"]["max_probability_diff"]
    assert check_thresholds(report, QuantizeMode.INT8)["probabilities"] == {"max_probability_diff": 0.2,
                                                                             "argmax_agreement": 0.8}
    confident = compare_outputs({"logits": np.array([[3.0, -3.0]])}, {"logits": np.array([[-3.0, 3.0]])},
                                np.ones((1, 4), np.int32))
    with pytest.raises(ValidationError, match="probabilities max probability difference vs float"):
        check_thresholds(confident, QuantizeMode.DYNAMIC_INT8)


# --- options that README promises, through the command ---------------------------------------------------


def _cased_checkpoint(directory, config):
    """A tiny checkpoint whose vocab has capitals (so its casing is inferred as cased)."""
    from converters.google_checkpoint import write_random_checkpoint
    from converters.vocab import synthetic_vocab

    vocab = synthetic_vocab(None)
    spare = [i for i, token in enumerate(vocab) if token.startswith("[unused")]
    for index, token in zip(spare, ["Hello", "World", "##A"]):
        vocab[index] = token
    return write_random_checkpoint(config, directory, vocab, seed=2)


@pytest.mark.parametrize("vocab_kind, flag, lowercase", [
    ("uncased", None, True), ("uncased", "--cased", False), ("cased", None, False), ("cased", "--uncased", True)])
def test_cased_and_uncased_set_the_bundle_lower_casing(tiny_checkpoint, tiny_config, tmp_path, vocab_kind, flag,
                                                       lowercase):
    """README: `--uncased/--cased` override the casing inferred from the checkpoint. The bundle's manifest,
    its tokenizer.json and its ids follow the flag (ids checked against the reference tokenizer)."""
    from cli_helpers import invoke
    from edgebert import tokenizer as tokenization
    from reference_tokenization import FullTokenizer, reference_encode

    source = tiny_checkpoint if vocab_kind == "uncased" else _cased_checkpoint(tmp_path / "cased", tiny_config)
    out = tmp_path / "bundle"
    result = invoke("convert", source, "--out", out, "--quantize", "float32", "--seq-len", 16,
                    *([flag] if flag else []))
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tokenizer"]["lowercase"] is lowercase
    saved = json.loads((out / "tokenizer.json").read_text())["normalizer"]
    assert (saved["lowercase"], saved["strip_accents"]) == (lowercase, lowercase)  # BERT: both or neither

    text = "Hello World, HELLO world. Café"
    vocab = tokenization.read_vocab(source / "vocab.txt")
    assert FullTokenizer(vocab, lowercase=True).tokenize(text) != FullTokenizer(vocab, lowercase=False).tokenize(text)
    got = tokenization.encode(tokenization.load_tokenizer(out / "tokenizer.json"), [text], 16)
    want = reference_encode(FullTokenizer(vocab, lowercase=lowercase), [text], 16)
    np.testing.assert_array_equal(got["input_ids"], want["input_ids"])


def test_int8_with_a_calibration_file(tiny_checkpoint, tmp_path):
    """README: `--calibration FILE` calibrates full int8 on that file's sentences (one per line): the
    bundle validates, the manifest names the file, and the file decides the quantization ranges."""
    from cli_helpers import invoke

    texts = {"short": "yes\nno\nok\nfine\n" * 5,
             "long": "\n".join(["The film was a delight from start to finish, and I would see it again.",
                                "A noticeably longer sentence with quite a few more words in it than the others.",
                                "Rain fell on the city all night while the trains kept running on time."] * 4)}
    models = {}
    for name, content in texts.items():
        calibration = tmp_path / f"{name}.txt"
        calibration.write_text(content + "\n", encoding="utf-8")
        out = tmp_path / f"{name}.int8"
        result = invoke("convert", tiny_checkpoint, "--out", out, "--quantize", "int8", "--seq-len", 16,
                        "--calibration", calibration)
        assert result.exit_code == 0, result.output
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["recipe"]["quantize"] == "int8" and manifest["recipe"]["calibration"] == str(calibration)
        assert manifest["validation"]["passed"]
        assert manifest["validation"]["outputs"]["pooled_output"]["min_cosine"] >= 0.98  # int8's pooled floor
        models[name] = _activation_scales(out / "model.tflite")
    # The file's text, not a default, set the activation ranges. (Bytes would differ anyway: a few tensor
    # names are generated afresh each run, while the numbers are the same for the same calibration.)
    assert models["short"] != models["long"]


def test_validation_on_a_file_of_the_user_s_own_text(tiny_checkpoint, tmp_path):
    """README: `--validation FILE` validates on that file's texts (one per line), not samples/: the manifest
    names the file and counts its texts, and the figures are those texts' own."""
    from cli_helpers import invoke

    texts = {"queries": "cheap flights\nwhy?\nbest pizza near me\nwow\nrefund policy\n",
             "reviews": "\n".join(["The film was a delight from start to finish, and I would see it again.",
                                   "Rain fell on the city all night while the trains kept running on time.",
                                   "A noticeably longer sentence with quite a few more words in it than most."])}
    figures = {}
    for name, content in texts.items():
        validation = tmp_path / f"{name}.txt"
        validation.write_text(content + "\n", encoding="utf-8")
        out = tmp_path / name
        result = invoke("convert", tiny_checkpoint, "--out", out, "--seq-len", 16, "--validation", validation)
        assert result.exit_code == 0, result.output
        report = json.loads((out / "manifest.json").read_text())["validation"]
        assert report["texts"] == str(validation) and report["passed"]
        assert report["examples"] == len(content.strip().splitlines())
        figures[name] = report["outputs"]["pooled_output"]["mean_cosine"]
    assert figures["queries"] != figures["reviews"]


def _activation_scales(model_path) -> list[tuple[float, ...]]:
    """The quantization scales of every non-constant tensor (activations: what calibration measures)."""
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(model_path.read_bytes()))
    graph = model.subgraphs[0]
    return [tuple(np.asarray(t.quantization.scale).tolist()) for t in graph.tensors
            if t.quantization is not None and t.quantization.scale is not None
            and model.buffers[t.buffer].data is None]
