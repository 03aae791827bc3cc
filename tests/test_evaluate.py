"""Task metrics measured by running the exported model.tflite: in `convert --eval` (into the manifest) and
in `edgebert evaluate` (device side, no TensorFlow)."""
import hashlib
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cli_helpers import error_line, invoke
from edgebert import samples

REPO = Path(__file__).resolve().parent.parent
COLUMNS = ("--eval-text-columns", "sentence", "--eval-label-column", "label")  # convert's
EVAL_COLUMNS = ("--text-columns", "sentence", "--label-column", "label")  # evaluate's


def _write_tsv(path: Path, rows, header="sentence\tlabel") -> Path:
    path.write_text(header + "\n" + "".join("\t".join(map(str, row)) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def dev_tsv(tmp_path_factory) -> Path:
    """14 labelled sentences, classes 0..2 (a `sentence label` header, read with explicit columns: detected,
    it would be SST-2 with two labels)."""
    sentences = samples.load_sentences(limit=14)
    return _write_tsv(tmp_path_factory.mktemp("task") / "dev.tsv", [(s, i % 3) for i, s in enumerate(sentences)])


@pytest.fixture(scope="module")
def evaluated(tiny_classifier_checkpoint, dev_tsv, tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "cls.s16"
    result = invoke("convert", tiny_classifier_checkpoint, "--out", out, "--seq-len", "16", "--eval", dev_tsv, *COLUMNS)
    return result, out


def _own_predictions(bundle_dir: Path, texts) -> list[int]:
    """Argmax of the bundle's model.tflite, run with the stock interpreter and the bundle's tokenizer."""
    from ai_edge_litert.interpreter import Interpreter

    from edgebert import tokenizer as tokenization

    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    tokenizer = tokenization.load_tokenizer(bundle_dir / "tokenizer.json")
    runner = Interpreter(model_path=str(bundle_dir / "model.tflite")).get_signature_runner("serving_default")
    return [int(np.argmax(runner(**tokenization.encode(tokenizer, [text], manifest["recipe"]["seq_len"]))["probabilities"]))
            for text in texts]


def test_convert_eval_puts_the_exported_models_accuracy_in_the_manifest(evaluated, dev_tsv, tiny_classifier_checkpoint):
    result, out = evaluated
    assert result.exit_code == 0, result.output
    lines = result.stderr.splitlines()
    assert f"evaluating on {dev_tsv} (14 examples)" in lines
    assert lines.index(f"evaluating on {dev_tsv} (14 examples)") < lines.index(f"writing {out}")
    assert re.fullmatch(r"evaluated: dev\.tsv, 14 examples: accuracy ([\d.]+) \(model\.tflite, \S+ \S+\)", lines[-1])

    evaluation = json.loads((out / "manifest.json").read_text())["evaluation"]
    labels = [i % 3 for i in range(14)]
    predictions = _own_predictions(out, samples.load_sentences(limit=14))
    assert evaluation["metrics"] == {"accuracy": pytest.approx(np.mean(np.equal(predictions, labels)), abs=0)}
    assert f"accuracy {evaluation['metrics']['accuracy']:.4f} " in lines[-1]
    assert evaluation["predictions_sha256"] == hashlib.sha256(json.dumps(predictions).replace(" ", "").encode()).hexdigest()
    assert evaluation["file_sha256"] == hashlib.sha256(dev_tsv.read_bytes()).hexdigest()
    assert "predictions" not in evaluation
    assert {k: evaluation[k] for k in ("task", "kind", "file", "examples", "examples_in_file", "seq_len",
                                       "measured_with")} == {
        "task": None, "kind": "single", "file": str(dev_tsv), "examples": 14, "examples_in_file": 14, "seq_len": 16,
        "measured_with": "model.tflite"}


def test_evaluate_bundle_reproduces_the_manifest(evaluated, dev_tsv):
    from edgebert.evaluate import evaluate_bundle, load_eval_task, manifest_record

    _, out = evaluated
    calls = []
    task = load_eval_task(dev_tsv, text_columns=("sentence",), label_column="label")
    result = evaluate_bundle(out, task, progress=lambda done, total: calls.append((done, total)))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest_record(result) == manifest["evaluation"]
    assert result["predictions"] == _own_predictions(out, task.texts)
    assert calls[-1] == (14, 14) and all(total == 14 for _, total in calls)
    limited = evaluate_bundle(out, task, limit=5)
    assert limited["examples"] == 5 and limited["predictions"] == result["predictions"][:5]


def test_evaluate_command_prints_the_metrics(evaluated, dev_tsv):
    _, out = evaluated
    manifest = json.loads((out / "manifest.json").read_text())
    result = invoke("evaluate", out, "--task", dev_tsv, "--text-columns", "0", "--label-column", "label")
    assert result.exit_code == 0, result.output
    accuracy = manifest["evaluation"]["metrics"]["accuracy"]
    assert re.fullmatch(rf"dev\.tsv, 14 examples: accuracy {accuracy:.4f} \(model\.tflite, \S+ \S+\)\n", result.stdout)
    as_json = json.loads(invoke("evaluate", out, "--task", dev_tsv, "--text-columns", "sentence",
                                "--label-column", "1", "--json", "--limit", "4").stdout)
    assert as_json["examples"] == 4 and len(as_json["predictions"]) == 4
    assert as_json["metrics"]["accuracy"] == np.mean(np.equal(as_json["predictions"], [0, 1, 2, 0]))


def test_an_sst2_file_scores_a_two_label_classifier(tmp_path, tiny_config):
    """A detected GLUE task (header `sentence label` is SST-2) on a 2-label bundle: no column options needed."""
    from converters.google_checkpoint import write_random_checkpoint
    from converters.vocab import synthetic_vocab

    checkpoint = write_random_checkpoint(tiny_config, tmp_path / "two", synthetic_vocab(None), seed=2, num_labels=2)
    dev = _write_tsv(tmp_path / "dev.tsv", [(s, i % 2) for i, s in enumerate(samples.load_sentences(limit=6))])
    result = invoke("convert", checkpoint, "--out", tmp_path / "b", "--seq-len", "16", "--quantize", "float32",
                    "--eval", dev)
    assert result.exit_code == 0, result.output
    evaluation = json.loads((tmp_path / "b" / "manifest.json").read_text())["evaluation"]
    assert evaluation["task"] == "SST-2" and list(evaluation["metrics"]) == ["accuracy"]
    assert result.stderr.splitlines()[-1].startswith("evaluated: SST-2 dev.tsv, 6 examples: accuracy ")


# --- errors: one line each --------------------------------------------------------------------------------

def test_evaluate_errors(evaluated, tiny_bundle, dev_tsv, tmp_path):
    _, out = evaluated
    line = error_line(invoke("evaluate", tiny_bundle, "--task", dev_tsv, *EVAL_COLUMNS), 2)
    assert line == (f"error: {tiny_bundle}: is an encoder bundle with no classifier head (no labels to score); "
                    "evaluation needs a classifier bundle")
    sst2 = _write_tsv(tmp_path / "sst2.tsv", [("a fine film", 1), ("a dull film", 0)])
    assert error_line(invoke("evaluate", out, "--task", sst2), 2) == (
        f"error: {sst2}: is SST-2 with 2 labels (negative, positive) but the classifier of {out} has 3")
    too_high = _write_tsv(tmp_path / "high.tsv", [("a fine film", 1), ("a dull film", 3)])
    assert error_line(invoke("evaluate", out, "--task", too_high, "--text-columns", "sentence", "--label-column",
                             "label"), 2) == (
        f"error: {too_high}: line 3: label 3 is out of range for the classifier of {out}, which has 3 labels")
    unlabelled = _write_tsv(tmp_path / "test.tsv", [(0, "a fine film"), (1, "a dull film")], header="index\tsentence")
    assert error_line(invoke("evaluate", out, "--task", unlabelled), 2) == (
        f"error: {unlabelled}: has no label column (a GLUE test file?): evaluation needs a labelled file such as "
        "dev.tsv")
    ragged = tmp_path / "ragged.tsv"
    ragged.write_text("sentence\tlabel\na fine film\t1\nno label here\n", encoding="utf-8")
    assert error_line(invoke("evaluate", out, "--task", ragged), 1) == (
        f"error: {ragged}: line 3 has 1 tab-separated fields, expected 2 (like line 1)")
    missing = tmp_path / "missing.tsv"
    assert error_line(invoke("evaluate", out, "--task", missing), 1) == f"error: {missing}: task file not found"
    assert error_line(invoke("evaluate", out, "--task", dev_tsv, "--limit", "0"), 2) == (
        "error: --limit must be a positive integer, got 0")
    assert error_line(invoke("evaluate", tmp_path / "nobundle", "--task", dev_tsv, *EVAL_COLUMNS), 1) == (
        f"error: {tmp_path / 'nobundle'}: not a bundle directory (no such directory)")


def test_convert_eval_errors_fail_before_the_export(tiny_checkpoint, tiny_classifier_checkpoint, dev_tsv, tmp_path):
    out = tmp_path / "out"

    def refused(source, *options, exit_code=2):
        result = invoke("convert", source, "--out", out, "--seq-len", "16", *options)
        line = error_line(result, exit_code, progress=(f"reading {source}",))
        assert not out.exists() and list(tmp_path.glob(".out*")) == []
        return line

    assert refused(tiny_checkpoint, "--eval", dev_tsv) == (
        f"error: {tiny_checkpoint}: --eval scores a classifier, but this export is an encoder (no classifier head)")
    sst2 = _write_tsv(tmp_path / "sst2.tsv", [("a fine film", 1), ("a dull film", 0)])
    assert refused(tiny_classifier_checkpoint, "--eval", sst2) == (
        f"error: {sst2}: is SST-2 with 2 labels (negative, positive) but the classifier of "
        f"{tiny_classifier_checkpoint} has 3")
    unlabelled = _write_tsv(tmp_path / "test.tsv", [(0, "a fine film")], header="index\tsentence")
    assert refused(tiny_classifier_checkpoint, "--eval", unlabelled).startswith(f"error: {unlabelled}: has no label")
    bad = tmp_path / "bad.tsv"
    bad.write_bytes(b"sentence\tlabel\ncaf\xe9\t1\n")
    assert refused(tiny_classifier_checkpoint, "--eval", bad, exit_code=1) == (
        f"error: {bad}: not UTF-8 (bad byte 0xe9 at offset 18, line 2)")
    line = error_line(invoke("convert", tiny_classifier_checkpoint, "--out", out, "--eval-label-column", "label"), 2)
    assert line == "error: --eval-text-columns and --eval-label-column need --eval FILE"


def test_evaluation_runs_without_tensorflow(evaluated, dev_tsv):
    _, out = evaluated
    code = ("import sys\n"
            "import edgebert.cli, edgebert.cli.inference\n"
            "from edgebert.evaluate import evaluate_bundle, load_eval_task\n"
            f"task = load_eval_task({str(dev_tsv)!r}, text_columns=('sentence',), label_column='label')\n"
            f"result = evaluate_bundle({str(out)!r}, task)\n"
            "print(result['examples'], sorted(m for m in ('tensorflow', 'tf_keras') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "14 []"
