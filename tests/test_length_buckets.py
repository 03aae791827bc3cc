"""Length buckets (one signature per length in one model.tflite, sharing the weights) and the [CLS]-only
last layer: each text runs at the shortest length that holds it, padding changes nothing, and the last
layer's shortcut gives the float model's answer."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import error_line, invoke

LABELS = ("negative", "neutral", "positive")
SHORT, MEDIUM_TEXT = "a fine film.", "the plot wanders for an hour before anything happens, and then it ends."


@pytest.fixture(scope="module")
def bucketed(tiny_classifier_checkpoint, tmp_path_factory) -> Path:
    """The tiny classifier at 8, 16 and 32 tokens, dynamic int8, through the command line."""
    out = tmp_path_factory.mktemp("buckets") / "tiny-cls.b"
    result = invoke("convert", tiny_classifier_checkpoint, "--out", out, "--seq-len", "16,8,32",
                    "--labels", ",".join(LABELS))
    assert result.exit_code == 0, result.output
    assert "exporting dynamic-int8 (seq len 8,16,32, last layer [CLS] only)" in result.stderr
    return out


def _manifest(bundle: Path) -> dict:
    return json.loads((bundle / "manifest.json").read_text())


def test_one_model_holds_a_signature_per_length_and_the_manifest_says_which(bucketed):
    from edgebert.interpreter import TFLiteModel

    manifest = _manifest(bucketed)
    assert manifest["recipe"]["seq_len"] == 32 and manifest["recipe"]["seq_lens"] == [8, 16, 32]
    assert manifest["io"]["signatures"] == {"seq_8": 8, "seq_16": 16, "serving_default": 32}
    assert sorted(manifest["validation"]["lengths"]) == ["16", "32", "8"]
    assert TFLiteModel(bucketed / "model.tflite").lengths == (8, 16, 32)
    widths = {len(example["input_ids"]) for example in json.loads((bucketed / "golden.json").read_text())["examples"]}
    assert widths == {8, 16, 32}  # golden vectors at every length


def test_every_signature_gives_probabilities_and_the_model_carries_no_metadata(bucketed):
    """Each length's subgraph has its own SOFTMAX after the logits; MediaPipe runs one subgraph, so the
    bucketed model.tflite has no metadata and the manifest says how to export the longest length."""
    from ai_edge_litert.interpreter import Interpreter

    from edgebert.model_info import read_tflite
    from test_convert import ends_in_softmax

    signatures = Interpreter(model_path=str(bucketed / "model.tflite")).get_signature_list()
    assert {name: signature["outputs"] for name, signature in signatures.items()} == \
        {"seq_8": ["probabilities"], "seq_16": ["probabilities"], "serving_default": ["probabilities"]}
    assert ends_in_softmax(bucketed / "model.tflite")  # each subgraph's own SOFTMAX
    info = read_tflite((bucketed / "model.tflite").read_bytes(), bucketed)
    assert info["metadata"] is None and [len(graph["outputs"]) for graph in info["subgraphs"]] == [1, 1, 1]
    assert _manifest(bucketed)["mediapipe"]["file"] is None
    assert _manifest(bucketed)["io"]["outputs"] == [{"name": "probabilities", "dtype": "float32", "shape": [1, 3]}]


def test_each_text_runs_at_the_shortest_length_that_holds_it_and_padding_changes_nothing(bucketed):
    from edgebert import tokenizer as tokenization
    from edgebert.interpreter import TFLiteModel
    from edgebert.predict import predict

    model = TFLiteModel(bucketed / "model.tflite")
    tokenizer = tokenization.load_tokenizer(bucketed / "tokenizer.json")
    for text, width in ((SHORT, 8), (MEDIUM_TEXT, 32)):
        encoded = tokenization.encode(tokenizer, [text], 32, buckets=model.lengths)
        assert encoded["input_ids"].shape == (1, width)
        assert model.runner_for(encoded) is model._by_length[width]
        padded = tokenization.encode(tokenizer, [text], 32)  # the longest signature, serving_default
        want = model(**padded)["probabilities"][0]
        got = predict(bucketed, [text])[0]["probabilities"]
        assert max(abs(got[label] - p) for label, p in zip(LABELS, want)) < 1e-4


def test_device_tests_pass_on_every_length(bucketed):
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "device_tests",
                           "--bundles", str(bucketed)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]
    assert "failed" not in done.stdout


def test_bench_per_text_times_each_text_at_its_own_length(bucketed, tmp_path):
    from edgebert.bench import bench_bundle, format_table

    texts = tmp_path / "texts.txt"
    texts.write_text(f"{SHORT}\n{MEDIUM_TEXT}\n{SHORT} {SHORT}\n")
    result = bench_bundle(bucketed, runs=3, warmup=0, inputs_file=texts, per_text=True)
    per_text = result["per_text"]
    assert per_text["texts"] == 3 and per_text["passes"] == 3
    assert per_text["lengths"] == {"8": 1, "16": 1, "32": 1}
    assert 0 < per_text["latency_ms"]["p50"] <= per_text["latency_ms"]["p90"]
    line = format_table({"results": [result]}).splitlines()[-1]
    assert line.startswith("per text tiny-cls.b: 3 texts (") and "1 at 8, 1 at 16, 1 at 32" in line


def test_int8_calibrates_each_length_and_validates_it(tiny_classifier_checkpoint, tmp_path):
    from converters.pipeline import ConvertOptions, convert
    from edgebert.interpreter import TFLiteModel

    out = tmp_path / "int8"
    result = convert(tiny_classifier_checkpoint, out, ConvertOptions(quantize="int8", seq_len=32, buckets=(16,),
                                                                     validation_size=8))
    assert sorted(result.manifest["validation"]["lengths"]) == ["16", "32"]
    assert TFLiteModel(out / "model.tflite").lengths == (16, 32)


@pytest.mark.parametrize("args, message", [
    (("--seq-len", "8,dynamic"), "length buckets need fixed lengths; 'dynamic' cannot be one of them"),
    (("--seq-len", "8,8,32"), "--seq-len lists a length twice: 8,8,32"),
    (("--seq-len", "2,32"), "--seq-len lengths must be at least 3, got 2, 32"),
    (("--seq-len", "16,32", "--compat", "tflite-runtime-2.14"),
     "--compat tflite-runtime-2.14 takes one length: tflite-runtime 2.14 crashes on Arm on the short lengths "
     "that buckets add (README: Raspberry Pi)"),
    (("--seq-len", "8,x"), "--seq-len must be a number, comma-separated numbers or 'dynamic', got 'x'"),
])
def test_bad_lengths_are_one_line(tiny_classifier_checkpoint, tmp_path, args, message):
    result = invoke("convert", tiny_classifier_checkpoint, "--out", tmp_path / "b", *args)
    assert error_line(result, 2) == f"error: {message}"
    assert not (tmp_path / "b").exists()


def test_cls_only_is_refused_where_an_output_reads_every_row(tiny_checkpoint, tmp_path):
    result = invoke("convert", tiny_checkpoint, "--out", tmp_path / "b", "--seq-len", "32", "--last-layer", "cls")
    assert error_line(result, 2, ("reading " + str(tiny_checkpoint),)) == (
        "error: --last-layer cls needs outputs that read only [CLS] (a classifier, or a sentence embedding with CLS "
        "pooling); this export's sequence_output needs every row")
    assert not (tmp_path / "b").exists()


# --- the [CLS]-only last layer ----------------------------------------------------------------------------

@pytest.mark.parametrize("seq_len", [16, None])
def test_cls_only_last_layer_gives_the_full_models_outputs(tiny_config, seq_len):
    from converters.model import build_bert
    from converters.sentence_embedding import PoolingMode, SentencePooling

    rng = np.random.default_rng(0)
    ids = rng.integers(5, tiny_config.vocab_size, size=(2, 16)).astype(np.int32)
    mask = np.ones_like(ids)
    mask[1, 9:] = 0
    feed = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    for kwargs in ({"num_labels": 3}, {"pooling": SentencePooling(PoolingMode.CLS, normalize=True, dimension=tiny_config.hidden_size)}):
        full = build_bert(tiny_config, seq_len, **kwargs)
        short = build_bert(tiny_config, seq_len, cls_only_last_layer=True, **kwargs)
        short.set_weights(full.get_weights())
        name = "logits" if "num_labels" in kwargs else "sentence_embedding"
        want, got = full(feed)[name].numpy(), short(feed)[name].numpy()
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        assert not np.allclose(want[0], want[1])  # the two rows are different texts
    with pytest.raises(ValueError, match="needs a model whose outputs read only"):
        build_bert(tiny_config, seq_len, pooling=SentencePooling(PoolingMode.MEAN, normalize=False, dimension=tiny_config.hidden_size),
                   cls_only_last_layer=True)


def test_cls_only_is_the_default_for_classifiers_and_full_stays_available(tiny_classifier_checkpoint, tmp_path):
    from converters.pipeline import ConvertOptions, convert

    auto = convert(tiny_classifier_checkpoint, tmp_path / "auto", ConvertOptions(seq_len=16, validation_size=8))
    full = convert(tiny_classifier_checkpoint, tmp_path / "full",
                   ConvertOptions(seq_len=16, validation_size=8, last_layer="full"))
    assert auto.manifest["recipe"]["last_layer"] == "cls" and full.manifest["recipe"]["last_layer"] == "full"
    # The same answer: both are checked against the same float model, and agree with each other.
    golden = [json.loads((tmp_path / name / "golden.json").read_text())["examples"] for name in ("auto", "full")]
    for a, b in zip(*golden):
        np.testing.assert_allclose(a["outputs"]["probabilities"], b["outputs"]["probabilities"], rtol=0, atol=1e-4)


def test_a_compat_export_keeps_the_full_last_layer_unless_asked(tiny_classifier_checkpoint, tmp_path):
    from converters.export import Compat
    from converters.pipeline import ConvertOptions, convert

    compat = dict(seq_len=16, validation_size=8, compat=Compat.TFLITE_RUNTIME_2_14)
    auto = convert(tiny_classifier_checkpoint, tmp_path / "auto", ConvertOptions(**compat))
    asked = convert(tiny_classifier_checkpoint, tmp_path / "cls", ConvertOptions(**compat, last_layer="cls"))
    assert auto.manifest["recipe"]["last_layer"] == "full" and asked.manifest["recipe"]["last_layer"] == "cls"


# --- real-sized: bytes ----------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.parametrize("mode", ["dynamic-int8", "dynamic-int4"])
def test_buckets_cost_at_most_five_percent_of_bytes(tmp_path, mode):
    """BERT-Tiny's shape (random weights): four lengths in one model are at most 1.05x one length's bytes,
    through the TensorFlow converter (dynamic int8) and through ai-edge-quantizer (int4), which quantizes
    each subgraph's copy of a weight apart until the copies are merged again."""
    checkpoint = tmp_path / "bert-tiny"
    assert invoke("random-checkpoint", "bert-tiny", "--out", checkpoint, "--num-labels", "2").exit_code == 0
    sizes = {}
    for name, lengths in (("one", "128"), ("buckets", "16,32,64,128")):
        result = invoke("convert", checkpoint, "--out", tmp_path / name, "--quantize", mode, "--seq-len", lengths)
        assert result.exit_code == 0, result.output
        sizes[name] = (tmp_path / name / "model.tflite").stat().st_size
    assert sizes["buckets"] <= 1.05 * sizes["one"], sizes
