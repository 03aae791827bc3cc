"""`edgebert.predict` and `edgebert predict`: classifier probabilities and encoder embeddings from tiny
bundles built here, texts from arguments, stdin and sentence pairs, and one-line errors for bad text."""
from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest

from edgebert.errors import BundleError, UsageError
from cli_helpers import error_line, invoke

LABELS = ["neg", "neutral", "pos"]


def _convert(source, out, **options):
    from converters.pipeline import ConvertOptions, convert
    return convert(source, out, ConvertOptions(seq_len=options.pop("seq_len", 32), validation_size=8, **options))


@pytest.fixture(scope="module")
def classifier(tmp_path_factory, tiny_classifier_checkpoint) -> Path:
    out = tmp_path_factory.mktemp("predict") / "cls.s32"
    _convert(tiny_classifier_checkpoint, out, labels=tuple(LABELS))
    return out


@pytest.fixture(scope="module")
def encoder(tmp_path_factory, tiny_checkpoint) -> Path:
    out = tmp_path_factory.mktemp("predict") / "enc.dynamic"
    _convert(tiny_checkpoint, out, seq_len=None, quantize="float32")
    return out






# --- the library ---------------------------------------------------------------------------------------

def test_classifier_probabilities_sum_to_one_with_the_manifest_labels(classifier):
    from edgebert import tokenizer as tokenization
    from edgebert.interpreter import TFLiteModel
    from edgebert.predict import predict

    texts = ["The film was a delight from start to finish.", "I would not go back there."]
    results = predict(classifier, texts)
    assert [r["text"] for r in results] == texts
    model = TFLiteModel(classifier / "model.tflite")
    assert model.output_names == ("probabilities",)  # the softmax is in the graph: no logits to report
    tokenizer = tokenization.load_tokenizer(classifier / "tokenizer.json")
    for text, result in zip(texts, results):
        probabilities = result["probabilities"]
        assert sorted(probabilities) == sorted(LABELS) and "logits" not in result
        assert math.isclose(sum(probabilities.values()), 1.0, abs_tol=1e-6)  # a float32 softmax
        values = list(probabilities.values())
        assert values == sorted(values, reverse=True)  # highest first
        own = model(**tokenization.encode(tokenizer, [text], 32))["probabilities"][0]
        assert [probabilities[label] for label in LABELS] == own.astype(np.float64).tolist()  # the model's own
        assert result["label"] == LABELS[int(np.argmax(own))] == next(iter(probabilities))
        assert result["probability"] == values[0]


def test_an_older_bundle_whose_model_gives_logits_still_runs(classifier, tmp_path):
    """Bundles converted before the softmax went into the graph: predict, evaluate and the device suite
    read their logits, and give the probabilities a current bundle gives."""
    import subprocess
    import sys

    from edgebert.evaluate import evaluate_bundle
    from edgebert.predict import predict, softmax
    from edgebert.tasks import load_task
    from legacy_bundles import logits_bundle

    old = logits_bundle(classifier, tmp_path / "old")
    texts = ["The film was a delight from start to finish.", "I would not go back there."]
    pairs = [("Is it open?", "Yes."), ("a b c " * 8, "d e " * 12)]
    for now, before in zip(predict(classifier, texts) + predict(classifier, pairs),
                           predict(old, texts) + predict(old, pairs)):
        assert before["label"] == now["label"]
        np.testing.assert_allclose(softmax(np.array(before["logits"])), [before["probabilities"][k] for k in LABELS],
                                   rtol=0, atol=1e-12)
        assert max(abs(before["probabilities"][k] - p) for k, p in now["probabilities"].items()) <= 1e-6
    tsv = tmp_path / "dev.tsv"
    tsv.write_text("sentence\tlabel\n" + "".join(f"{t}\t{i % 3}\n" for i, t in enumerate(texts * 3)))
    task = load_task(tsv, text_columns=("sentence",), label_column="label")
    assert evaluate_bundle(old, task)["predictions"] == evaluate_bundle(classifier, task)["predictions"]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "device_tests",
                           "--bundles", str(old)], capture_output=True, text=True,
                          cwd=Path(__file__).resolve().parent.parent, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:]


def test_classifier_pairs(classifier, tiny_classifier_checkpoint):
    from converters.sources import load_source
    from edgebert.interpreter import TFLiteModel
    from edgebert.predict import predict, softmax
    from reference_bert import bert_forward
    from reference_tokenization import FullTokenizer, reference_encode

    pairs = [("Is it open?", "The shop opens at nine."), ("Yes.", "No."), ("a b c " * 8, "d e " * 12)]
    results = predict(classifier, pairs, threads=1)
    assert [result["text"] for result in results] == [list(pair) for pair in pairs]
    source = load_source(tiny_classifier_checkpoint)
    reference = FullTokenizer(source.vocab, lowercase=True)  # google-research/bert's pair framing
    model = TFLiteModel(classifier / "model.tflite", num_threads=1)
    for pair, result in zip(pairs, results):
        encoded = reference_encode(reference, [pair], 32)
        assert encoded["token_type_ids"].any()  # the second segment is there
        # What predict gave is the bundle's model run on BERT's ids for the pair...
        got = np.array([result["probabilities"][label] for label in LABELS])
        np.testing.assert_allclose(got, model(**encoded)["probabilities"][0], rtol=0, atol=1e-6)
        # ... and it agrees with the float numpy BERT on those ids within dynamic int8's probability budget.
        want = bert_forward(source.weights, encoded["input_ids"][0], encoded["attention_mask"][0],
                            encoded["token_type_ids"][0], source.config.num_heads, num_labels=len(LABELS))
        assert np.abs(got - softmax(want["logits"])).max() <= 0.05


def test_encoder_embeddings(encoder):
    from edgebert import tokenizer as tokenization
    from edgebert.bundle import read_bundle
    from edgebert.interpreter import TFLiteModel
    from edgebert.predict import predict

    text = "A noticeably longer sentence with quite a few more words in it."
    [result] = predict(encoder, [text])
    assert result["dim"] == 32 and len(result["pooled_output"]) == 32 and len(result["mean_sequence_output"]) == 32
    assert result["norm"] == pytest.approx(np.linalg.norm(result["pooled_output"]))
    assert result["head"] == result["pooled_output"][:4]
    bundle = read_bundle(encoder)  # the same vector as running the model directly
    encoded = tokenization.encode(tokenization.load_tokenizer(bundle.tokenizer_path), [text], None)
    direct = TFLiteModel(bundle.model_path)(**encoded)
    assert np.allclose(result["pooled_output"], direct["pooled_output"][0], atol=1e-6)
    assert result["tokens"] == encoded["input_ids"].shape[1]  # dynamic: no padding


def test_bad_texts_and_bundles(classifier, tmp_path):
    from edgebert.predict import predict

    for texts, message in [([], "no text to predict"), (["fine", "  "], "text 2 is empty"),
                           ([("a", "")], "text 1 is empty"), (["a", ("b", "c")], "text 2 must be a str"),
                           ("a string", "texts must be a list")]:
        with pytest.raises(UsageError, match=message):
            predict(classifier, texts)
    with pytest.raises(UsageError, match="--threads must be"):
        predict(classifier, ["x"], threads=0)
    broken = tmp_path / "broken"
    shutil.copytree(classifier, broken)
    (broken / "manifest.json").write_text("[]")
    with pytest.raises(BundleError, match="is not a JSON object"):
        predict(broken, ["x"])


# --- the command ---------------------------------------------------------------------------------------

def test_predict_command_classifier_lines(classifier):
    result = invoke("predict", classifier, "I loved every minute of this film.", "It rained.")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    for line, text in zip(lines, ["I loved every minute of this film.", "It rained."]):
        label, probability, shown = line.split(" ", 2)
        assert label in LABELS and shown == " " + text
        assert probability.startswith("(p=") and 1 / 3 <= float(probability[3:-1]) + 0.005 <= 1


def test_predict_command_reads_stdin_and_prints_json(classifier):
    result = invoke("predict", classifier, "--json", input="first line\n\nsecond line\r\n")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert [r["text"] for r in data] == ["first line", "second line"]
    assert all(math.isclose(sum(r["probabilities"].values()), 1.0, abs_tol=1e-9) for r in data)
    dash = invoke("predict", classifier, "-", input="only line\n")
    assert dash.exit_code == 0 and dash.stdout.endswith("  only line\n")


def test_predict_command_pairs(classifier):
    result = invoke("predict", classifier, "--pair", "--json", input="Is it open?\tIt opens at nine.\n")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["text"] == ["Is it open?", "It opens at nine."]
    assert error_line(invoke("predict", classifier, "--pair", "no tab here"), 2) == \
        "error: text 1 is not 'first<TAB>second': 'no tab here'"


def test_predict_command_encoder(encoder):
    result = invoke("predict", encoder, "hello world")
    assert result.exit_code == 0, result.output
    line = result.stdout.rstrip("\n")
    assert line.startswith("dim=32 |v|=") and line.endswith(" ...]  hello world")
    assert len(line[line.index("[") + 1: line.index(" ...]")].split(", ")) == 4
    data = json.loads(invoke("predict", encoder, "--json", "hello world").stdout)
    assert len(data[0]["pooled_output"]) == 32


def test_predict_command_errors(classifier, tmp_path):
    assert error_line(invoke("predict", classifier, input=b"caf\xe9\n"), 2) == \
        "error: stdin is not UTF-8 (bad byte at offset 3)"
    assert error_line(invoke("predict", classifier, input="\n \n"), 2) == \
        "error: no text on stdin (pass TEXT arguments, or one text per line on stdin)"
    assert error_line(invoke("predict", classifier, ""), 2) == "error: text 1 is empty"
    absent = tmp_path / "absent"
    assert error_line(invoke("predict", absent, "x"), 1) == \
        f"error: {absent}: not a bundle directory (no such directory)"


def test_predict_command_help():
    result = invoke("predict", "--help")
    assert result.exit_code == 0
    for option in ("--pair", "--json", "--threads"):
        assert option in result.stdout
