"""MediaPipe Tasks run edgebert's models with no app code: the metadata written by MediaPipe's own writers
(converters/mediapipe_metadata.py), read back on the device side by `edgebert inspect`
(edgebert/model_info.py), and checked with the real clients: MediaPipe's Python TextClassifier and
TextEmbedder (PyPI mediapipe 1.2.3, installed with --no-deps) against `edgebert predict`, and
@mediapipe/tasks-text from npm in headless Chromium, served from 127.0.0.1. A classifier's and a
sentence embedder's model.tflite, as `edgebert convert` writes it, is the file MediaPipe runs;
`edgebert export-mediapipe` writes an encoder's, a bucketed model's and an older (`logits`) bundle's.

MediaPipe's own token ids are read with an "echo" model: a .tflite whose one output is its three inputs
as floats, given MediaPipe's metadata, so that TextEmbedder returns the ids its tokenizer produced.
"""
from __future__ import annotations

import functools
import http.server
import json
import shutil
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import numpy as np
import pytest

from ci import missing
from cli_helpers import error_line, invoke
from conftest import REAL_VOCAB, SHARED_DATA, needs_shared

SST2 = SHARED_DATA / "glue" / "SST-2"
TASKS_TEXT = "@mediapipe/tasks-text@1.0.1"
LABELS = ("negative", "neutral", "positive")
TEXTS = ["I loved every minute of this film.", "The pasta arrived cold and the sauce tasted like it came from a jar.",
         "What time does the pharmacy on Elm Street close on Sundays?", "A delight from start to finish."]


# --- fixtures -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def writers():
    """MediaPipe's metadata writers (and its Python Tasks API, from the same wheel)."""
    from converters.mediapipe_metadata import INSTALL_HINT, writers_available

    if not writers_available():
        missing(f"MediaPipe's metadata writers are not installed ({INSTALL_HINT})")


@pytest.fixture(scope="module")
def tasks(writers):
    """MediaPipe's Python text tasks, imported without mediapipe/__init__ (cv2, matplotlib)."""
    from converters.mediapipe_metadata import import_mediapipe

    return (import_mediapipe("mediapipe.tasks.python.text.text_classifier"),
            import_mediapipe("mediapipe.tasks.python.text.text_embedder"),
            import_mediapipe("mediapipe.tasks.python.core.base_options"))


@pytest.fixture(scope="module")
def classifier_bundle(writers, tiny_classifier_checkpoint, tmp_path_factory) -> Path:
    """A classifier bundle whose model.tflite carries the metadata (`edgebert convert` wrote it)."""
    from converters.pipeline import ConvertOptions, convert

    out = tmp_path_factory.mktemp("mediapipe") / "tiny-cls.s32"
    convert(tiny_classifier_checkpoint, out, ConvertOptions(seq_len=32, validation_size=8, labels=LABELS))
    return out


@pytest.fixture(scope="module")
def classifier_file(classifier_bundle) -> Path:
    """The file MediaPipe runs: the classifier bundle's own model.tflite."""
    return classifier_bundle / "model.tflite"


@pytest.fixture(scope="module")
def older_classifier(classifier_bundle, tmp_path_factory) -> Path:
    """The same classifier as a bundle from before the softmax went into the graph: `logits`, no metadata."""
    from legacy_bundles import logits_bundle

    return logits_bundle(classifier_bundle, tmp_path_factory.mktemp("mediapipe") / "older")


@pytest.fixture(scope="module")
def embedder_bundle(writers, tmp_path_factory) -> Path:
    """A sentence-embedding bundle (mean pooling + Normalize), whose model.tflite carries the metadata."""
    from converters.pipeline import ConvertOptions, convert
    from test_sentence_embedding import write_st_folder

    root = tmp_path_factory.mktemp("mediapipe")
    out = root / "tiny-st.s48"
    convert(write_st_folder(root / "st"), out, ConvertOptions(seq_len=48, validation_size=8))
    return out


def _classifier(tasks, path: Path):
    text_classifier, _, base_options = tasks
    options = text_classifier.TextClassifierOptions(base_options=base_options.BaseOptions(model_asset_path=str(path)),
                                                    max_results=-1)
    return text_classifier.TextClassifier.create_from_options(options)


def _embedder(tasks, path: Path):
    _, text_embedder, base_options = tasks
    options = text_embedder.TextEmbedderOptions(base_options=base_options.BaseOptions(model_asset_path=str(path)),
                                                l2_normalize=False, quantize=False)
    return text_embedder.TextEmbedder.create_from_options(options)


def _scores(result) -> dict[str, float]:
    [head] = result.classifications  # one output tensor: one classification head
    return {category.category_name: category.score for category in head.categories}


def echo_model(tmp_path: Path, vocab: list[str], seq_len: int | None) -> Path:
    """A .tflite whose one output is [ids, mask, segment ids] as float32 [1, 3S], with MediaPipe's metadata
    and `vocab`: TextEmbedder then returns the ids MediaPipe's tokenizer gives a text."""
    from converters.mediapipe_metadata import mediapipe_model
    from converters.tf_import import tf

    specs = [tf.TensorSpec([1, seq_len], tf.int32, name=name) for name in ("input_ids", "attention_mask", "token_type_ids")]

    @tf.function(input_signature=specs)
    def serve(input_ids, attention_mask, token_type_ids):
        joined = tf.concat([input_ids, attention_mask, token_type_ids], axis=1)  # (1, 3S)
        return {"pooled_output": tf.cast(joined, tf.float32)}

    holder = tf.Module()
    holder.serve = serve
    model = tf.lite.TFLiteConverter.from_concrete_functions([serve.get_concrete_function()], holder).convert()
    path = tmp_path / f"echo-{seq_len or 'dynamic'}.tflite"
    path.write_bytes(mediapipe_model(model, head="encoder", vocab=vocab, name="echo"))
    return path


def mediapipe_ids(embedder, text: str, seq_len: int) -> dict[str, list[int]]:
    values = np.asarray(embedder.embed(text).embeddings[0].embedding).astype(np.int64)
    return {name: values[i * seq_len:(i + 1) * seq_len].tolist()
            for i, name in enumerate(("input_ids", "attention_mask", "token_type_ids"))}


def _vocab(bundle: Path) -> list[str]:
    from converters.mediapipe_metadata import bundle_vocab
    return bundle_vocab(bundle / "tokenizer.json")


# --- edgebert inspect (device side: no writers needed) --------------------------------------------------

def test_inspect_shows_a_plain_bundle_has_no_metadata_and_what_the_interpreter_sees(tiny_bundle):
    result = invoke("inspect", tiny_bundle)
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "metadata: none (MediaPipe Tasks cannot load this file)" in out
    assert "signature 'serving_default'" in out
    assert "attention_mask int32 [1, 32]; input_ids int32 [1, 32]; token_type_ids int32 [1, 32]" in out
    assert "outputs: pooled_output float32 [1, 32]; sequence_output float32 [1, 32, 32]" in out
    assert "FULLY_CONNECTED x" in out and "min runtime " in out
    # The manifest's record of what MediaPipe sees: an encoder's file is exported on request.
    assert "MediaPipe: TextEmbedder, output pooled_output, length 32, from the file " \
           "`edgebert export-mediapipe BUNDLE --out FILE` writes" in out
    info = json.loads(invoke("inspect", tiny_bundle, "--json").stdout)
    assert info["metadata"] is None and info["packed_files"] == []
    assert [e["name"] for e in info["metadata_entries"]] == ["min_runtime_version", "CONVERSION_METADATA"]
    assert sorted(info["signatures"]["serving_default"]["outputs"]) == ["pooled_output", "sequence_output"]
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert sorted(set(info["ops"]) - {"DELEGATE"}) == manifest["ops"]


def test_inspect_errors_are_one_line(tiny_bundle, tmp_path):
    line = error_line(invoke("inspect", tmp_path / "nothing.tflite"), 2)
    assert line == f"error: {tmp_path / 'nothing.tflite'}: no such file or bundle directory"
    line = error_line(invoke("inspect", tiny_bundle / "tokenizer.json"), 1)
    assert line.startswith(f"error: {tiny_bundle / 'tokenizer.json'}: not a readable TFLite model (file identifier is ")
    cut = tmp_path / "cut.tflite"
    cut.write_bytes((tiny_bundle / "model.tflite").read_bytes()[:5000])
    line = error_line(invoke("inspect", cut), 1)
    assert line.startswith(f"error: {cut}: not a readable TFLite model (")


# --- export-mediapipe and the metadata it writes --------------------------------------------------------

def test_export_without_mediapipe_says_how_to_install_it_in_one_line(tiny_bundle, tmp_path):
    code = ("import sys\nsys.modules['mediapipe'] = None\nfrom edgebert.cli import main\n"
            f"sys.argv = ['edgebert', 'export-mediapipe', {str(tiny_bundle)!r}, '--out', {str(tmp_path / 'x.tflite')!r}]\n"
            "main()\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == ("error: MediaPipe's metadata writers are not installed: "
                             "pip install --no-deps mediapipe==1.2.3\n")
    assert not (tmp_path / "x.tflite").exists()


def test_convert_puts_the_metadata_into_a_classifier_bundles_model(classifier_bundle, classifier_file, older_classifier,
                                                                    tasks):
    from converters.mediapipe_metadata import import_mediapipe

    manifest = json.loads((classifier_bundle / "manifest.json").read_text())
    record = manifest["mediapipe"]
    assert record["task"] == "TextClassifier" and record["file"] == "model.tflite" and "export" not in record
    assert record["output"] == "probabilities" and record["seq_len"] == 32 and "note" not in record
    assert 0 < record["metadata_bytes"] < manifest["sizes"]["model_bytes"]
    assert manifest["io"]["outputs"] == [{"name": "probabilities", "dtype": "float32", "shape": [1, 3]}]
    info = json.loads(invoke("inspect", classifier_bundle, "--json").stdout)
    assert info["bundle"]["mediapipe"] == record and info["file"] == str(classifier_file)
    metadata = info["metadata"]
    [graph] = metadata["subgraphs"]
    names = {m["name"]: t["name"] for m, t in zip(graph["inputs"], info["subgraphs"][0]["inputs"])}
    assert names == {"ids": "serving_default_input_ids:0", "mask": "serving_default_attention_mask:0",
                     "segment_ids": "serving_default_token_type_ids:0"}
    assert graph["input_process_units"] == [{"type": "BertTokenizerOptions", "files": [
        {"name": "vocab.txt", "type": "VOCABULARY",
         "description": "Vocabulary file to convert natural language words to embedding vectors."}]}]
    [output] = graph["outputs"]
    assert output["name"] == "probabilities" and output["range"] == [[0.0], [1.0]]
    assert [(f["name"], f["type"]) for f in output["files"]] == [("labels.txt", "TENSOR_AXIS_LABELS")]
    assert metadata["min_parser_version"] == "1.1.0"
    assert info["subgraphs"][0]["outputs"] == [{"name": "probabilities", "dtype": "float32", "shape": [1, 3]}]
    assert list(info["signatures"]["serving_default"]["outputs"]) == ["probabilities"]
    # The graph of the logits, in the same order, and one SOFTMAX at the end.
    assert info["ops"] == json.loads(invoke("inspect", older_classifier, "--json").stdout)["ops"] + ["SOFTMAX"]

    # The packed files are the bundle's own vocabulary (in id order) and labels.
    with zipfile.ZipFile(classifier_file) as archive:
        assert archive.read("vocab.txt").decode().split("\n")[:-1] == _vocab(classifier_bundle)
        assert archive.read("labels.txt").decode().split("\n") == list(LABELS)
    assert [f["name"] for f in info["packed_files"]] == ["vocab.txt", "labels.txt"]

    # The device-side reader agrees with MediaPipe's own reader of the same file.
    metadata_module = import_mediapipe("mediapipe.tasks.python.metadata.metadata")
    theirs = json.loads(metadata_module.MetadataDisplayer.with_model_buffer(classifier_file.read_bytes())
                        .get_metadata_json())
    assert theirs["name"] == metadata["name"] and theirs["min_parser_version"] == metadata["min_parser_version"]
    [their_graph] = theirs["subgraph_metadata"]
    assert [t["name"] for t in their_graph["input_tensor_metadata"]] == [t["name"] for t in graph["inputs"]]
    assert [t["name"] for t in their_graph["output_tensor_metadata"]] == ["probabilities"]
    assert their_graph["output_tensor_metadata"][0]["associated_files"][0]["type"] == "TENSOR_AXIS_LABELS"
    unit = their_graph["input_process_units"][0]
    assert unit["options_type"] == "BertTokenizerOptions" and unit["options"]["vocab_file"][0]["name"] == "vocab.txt"


def test_an_older_bundles_export_is_the_softmax_of_its_logits(classifier_bundle, older_classifier, tasks, tmp_path):
    """A bundle converted before the softmax went into the graph: export-mediapipe appends the SOFTMAX and
    writes the metadata, and the file gives what a current bundle's model.tflite gives."""
    from edgebert.interpreter import TFLiteModel
    from edgebert.predict import predict, softmax

    out = tmp_path / "older.tflite"
    result = invoke("export-mediapipe", older_classifier, "--out", out)
    assert result.exit_code == 0, result.output
    assert "TextClassifier, output probabilities [negative, neutral, positive], length 32" in result.stdout
    assert result.stderr == ""
    older, exported, current = (TFLiteModel(path) for path in (older_classifier / "model.tflite", out,
                                                                 classifier_bundle / "model.tflite"))
    assert older.output_names == ("logits",) and exported.output_names == ("probabilities",)
    golden = json.loads((older_classifier / "golden.json").read_text())
    for example in golden["examples"]:
        feed = {name: np.asarray([example[name]], np.int32) for name in ("input_ids", "attention_mask", "token_type_ids")}
        want = softmax(older(**feed)["logits"][0])
        np.testing.assert_allclose(exported(**feed)["probabilities"][0], want, rtol=0, atol=1e-6)
        np.testing.assert_allclose(current(**feed)["probabilities"][0], want, rtol=0, atol=1e-6)
    with _classifier(tasks, out) as classifier:
        for text, ours in zip(TEXTS, predict(older_classifier, TEXTS)):
            scores = _scores(classifier.classify(text))
            assert max(abs(scores[k] - p) for k, p in ours["probabilities"].items()) <= 1e-4


def test_export_of_a_bundle_that_carries_the_metadata_copies_its_model(classifier_bundle, embedder_bundle, tmp_path):
    for bundle in (classifier_bundle, embedder_bundle):
        out = tmp_path / f"{bundle.name}.tflite"
        result = invoke("export-mediapipe", bundle, "--out", out)
        assert result.exit_code == 0, result.output
        assert out.read_bytes() == (bundle / "model.tflite").read_bytes()
        assert "+0 bytes over the bundle's model.tflite" in result.stdout
        assert result.stderr == (f"note: {bundle / 'model.tflite'} already carries MediaPipe's metadata (edgebert "
                                 f"convert wrote it): MediaPipe runs it as it is, and {out} is a copy of it\n")


def test_export_refuses_cased_models_and_existing_files_in_one_line(classifier_bundle, tmp_path):
    existing = tmp_path / "existing.tflite"
    existing.write_bytes(b"")
    line = error_line(invoke("export-mediapipe", classifier_bundle, "--out", existing), 2)
    assert line == f"error: {existing}: already exists (pass --force to replace it)"
    cased = tmp_path / "cased"
    shutil.copytree(classifier_bundle, cased)
    manifest = json.loads((cased / "manifest.json").read_text())
    manifest["tokenizer"]["lowercase"] = False
    (cased / "manifest.json").write_text(json.dumps(manifest))
    line = error_line(invoke("export-mediapipe", cased, "--out", tmp_path / "x.tflite"), 2)
    assert line == (f"error: {cased}: is a cased model, and MediaPipe's BERT tokenizer lower-cases every text: "
                    "it would feed this model other ids than its own tokenizer")
    assert not (tmp_path / "x.tflite").exists()


def test_mediapipe_text_classifier_gives_the_runners_probabilities(classifier_bundle, classifier_file, tasks):
    from edgebert.predict import predict

    ours = predict(classifier_bundle, TEXTS)
    with _classifier(tasks, classifier_file) as classifier:
        for text, result in zip(TEXTS, ours):
            scores = _scores(classifier.classify(text))
            assert sorted(scores) == sorted(LABELS)
            assert max(scores, key=scores.get) == result["label"]
            assert max(abs(scores[k] - p) for k, p in result["probabilities"].items()) <= 1e-4


def test_a_dynamic_length_classifier_runs_in_mediapipe_and_the_limit_is_said(tiny_classifier_checkpoint, tasks,
                                                                             tmp_path):
    """MediaPipe feeds a dynamic model each text at its own length and truncates nothing: short texts
    agree with the runner, and the manifest and export say that long ones fail."""
    from converters.pipeline import ConvertOptions, convert
    from edgebert.predict import predict

    bundle = tmp_path / "dynamic"
    convert(tiny_classifier_checkpoint, bundle, ConvertOptions(seq_len=None, validation_size=8, labels=LABELS))
    record = json.loads((bundle / "manifest.json").read_text())["mediapipe"]
    assert record["file"] == "model.tflite" and record["seq_len"] == "dynamic"
    assert record["note"].startswith("dynamic length: MediaPipe feeds each text at its own length")
    result = invoke("export-mediapipe", bundle, "--out", tmp_path / "dynamic.tflite")
    assert result.exit_code == 0, result.output
    assert "length dynamic" in result.stdout
    assert result.stderr.splitlines()[-1].startswith("note: dynamic length: MediaPipe feeds each text at its own "
                                                     "length and does not truncate")
    model_file = bundle / "model.tflite"
    info = json.loads(invoke("inspect", model_file, "--json").stdout)
    assert all(t["shape"] == [1, -1] for t in info["subgraphs"][0]["inputs"])
    with _classifier(tasks, model_file) as classifier:
        for text, want in zip(TEXTS, predict(bundle, TEXTS)):
            scores = _scores(classifier.classify(text))
            assert max(abs(scores[k] - p) for k, p in want["probabilities"].items()) <= 1e-4


def test_an_encoder_exports_its_pooled_output_for_text_embedder(tiny_bundle, tasks, tmp_path):
    from edgebert.predict import predict

    out = tmp_path / "encoder.tflite"
    result = invoke("export-mediapipe", tiny_bundle, "--out", out)
    assert result.exit_code == 0, result.output
    assert "TextEmbedder, output pooled_output, length 32" in result.stdout
    with _embedder(tasks, out) as embedder:
        for text, want in zip(TEXTS, predict(tiny_bundle, TEXTS)):
            got = np.asarray(embedder.embed(text).embeddings[0].embedding)
            np.testing.assert_allclose(got, want["pooled_output"], rtol=0, atol=1e-5)


def test_convert_puts_the_metadata_into_a_sentence_embedding_bundles_model(embedder_bundle, tasks):
    from edgebert.predict import embed

    manifest = json.loads((embedder_bundle / "manifest.json").read_text())
    record = manifest["mediapipe"]
    assert record["task"] == "TextEmbedder" and record["file"] == "model.tflite"
    assert record["output"] == "sentence_embedding" and record["seq_len"] == 48
    assert 0 < record["metadata_bytes"] < manifest["sizes"]["model_bytes"]
    info = json.loads(invoke("inspect", embedder_bundle, "--json").stdout)
    assert [t["name"] for t in info["metadata"]["subgraphs"][0]["outputs"]] == ["sentence_embedding"]
    assert info["bundle"]["mediapipe"] == record
    # MediaPipe's vectors are the runner's (cosine >= 0.9999 required; they are the same computation).
    ours = embed(embedder_bundle, TEXTS)
    with _embedder(tasks, embedder_bundle / "model.tflite") as embedder:
        for text, want in zip(TEXTS, ours):
            got = np.asarray(embedder.embed(text).embeddings[0].embedding, dtype=np.float64)
            assert got @ want / (np.linalg.norm(got) * np.linalg.norm(want)) >= 0.9999


def test_the_metadata_changes_no_output_and_is_optional(embedder_bundle, tmp_path, monkeypatch):
    """Without MediaPipe's writers convert writes the same graph without metadata and says so; with them,
    the outputs are bit-identical and the file is larger by the metadata's bytes."""
    import converters.mediapipe_metadata as mediapipe_metadata
    from converters.pipeline import ConvertOptions, convert
    from edgebert.predict import embed
    from test_sentence_embedding import write_st_folder

    monkeypatch.setattr(mediapipe_metadata, "writers_available", lambda: False)
    plain = tmp_path / "plain"
    notes = []
    convert(write_st_folder(tmp_path / "st"), plain, ConvertOptions(seq_len=48, validation_size=8), log=notes.append)
    record = json.loads((plain / "manifest.json").read_text())["mediapipe"]
    assert record["file"] is None and "pip install --no-deps mediapipe==1.2.3" in record["note"]
    assert any(n.startswith("note: MediaPipe's metadata writers were not installed") for n in notes)
    np.testing.assert_array_equal(embed(plain, TEXTS), embed(embedder_bundle, TEXTS))
    with_metadata = json.loads((embedder_bundle / "manifest.json").read_text())
    grew = with_metadata["sizes"]["model_bytes"] - (plain / "model.tflite").stat().st_size
    assert grew == with_metadata["mediapipe"]["metadata_bytes"] > 0  # the record is the growth


def test_without_the_writers_a_classifier_still_gives_probabilities_and_export_adds_the_metadata(
        tiny_classifier_checkpoint, classifier_bundle, tasks, tmp_path, monkeypatch):
    """The SOFTMAX needs no MediaPipe: without the writers convert ships the same probabilities with no
    metadata and says so; export-mediapipe then packs the metadata around the same graph (no second
    SOFTMAX)."""
    import converters.mediapipe_metadata as mediapipe_metadata
    from converters.pipeline import ConvertOptions, convert
    from edgebert.predict import predict

    monkeypatch.setattr(mediapipe_metadata, "writers_available", lambda: False)
    plain = tmp_path / "plain"
    notes = []
    convert(tiny_classifier_checkpoint, plain, ConvertOptions(seq_len=32, validation_size=8, labels=LABELS),
            log=notes.append)
    manifest = json.loads((plain / "manifest.json").read_text())
    record = manifest["mediapipe"]
    assert record["file"] is None and record["export"] == "edgebert export-mediapipe BUNDLE --out FILE"
    assert "pip install --no-deps mediapipe==1.2.3" in record["note"]
    assert any(n.startswith("note: MediaPipe's metadata writers were not installed") for n in notes)
    assert [o["name"] for o in manifest["io"]["outputs"]] == ["probabilities"]
    assert predict(plain, TEXTS) == predict(classifier_bundle, TEXTS)
    monkeypatch.undo()
    out = tmp_path / "plain.tflite"
    result = invoke("export-mediapipe", plain, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    info = json.loads(invoke("inspect", out, "--json").stdout)
    assert info["metadata"] is not None
    assert info["ops"] == json.loads(invoke("inspect", plain, "--json").stdout)["ops"]  # no second SOFTMAX
    with _classifier(tasks, out) as classifier:
        for text, ours in zip(TEXTS, predict(plain, TEXTS)):
            scores = _scores(classifier.classify(text))
            assert max(abs(scores[k] - p) for k, p in ours["probabilities"].items()) <= 1e-4


def test_a_trimmed_vocabulary_is_the_one_packed_and_mediapipe_tokenizes_with_it(tiny_classifier_checkpoint, tasks,
                                                                                tmp_path):
    from converters.pipeline import ConvertOptions, convert
    from edgebert import tokenizer as tokenization
    from edgebert.predict import predict

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(TEXTS) + "\n")
    trimmed = tmp_path / "trimmed"
    result = invoke("trim-vocab", tiny_classifier_checkpoint, "--corpus", corpus, "--out", trimmed)
    assert result.exit_code == 0, result.output
    bundle = tmp_path / "trimmed.b"
    convert(trimmed, bundle, ConvertOptions(seq_len=32, validation_size=8, labels=LABELS))
    out = bundle / "model.tflite"  # the file MediaPipe runs
    vocab = _vocab(bundle)
    assert len(vocab) < len(_vocab_of_checkpoint(tiny_classifier_checkpoint))
    with zipfile.ZipFile(out) as archive:
        assert archive.read("vocab.txt").decode().split("\n")[:-1] == vocab
    # MediaPipe's ids with the packed (trimmed) vocabulary are the bundle tokenizer's own.
    tokenizer = tokenization.load_tokenizer(bundle / "tokenizer.json")
    with _embedder(tasks, echo_model(tmp_path, vocab, 32)) as embedder:
        for text in TEXTS:
            want = tokenization.encode(tokenizer, [text], 32)
            assert mediapipe_ids(embedder, text, 32) == {k: v[0].tolist() for k, v in want.items()}
    with _classifier(tasks, out) as classifier:
        for text, result in zip(TEXTS, predict(bundle, TEXTS)):
            scores = _scores(classifier.classify(text))
            assert max(abs(scores[k] - p) for k, p in result["probabilities"].items()) <= 1e-4


def _vocab_of_checkpoint(directory: Path) -> list[str]:
    from edgebert.tokenizer import read_vocab
    return read_vocab(directory / "vocab.txt")


# --- SST-2 with a fine-tuned classifier and the real vocabulary (slow) ---------------------------------

@pytest.fixture(scope="module")
def sst2_classifier(writers, tmp_path_factory):
    """A BERT-Tiny with the real uncased vocabulary, fine-tuned for one epoch on 8,000 SST-2 sentences
    (dev accuracy about 74 %: it reads the tokens) and converted: its model.tflite is what MediaPipe runs."""
    for path in (REAL_VOCAB, SST2 / "train.tsv", SST2 / "dev.tsv"):
        if not path.exists():
            pytest.skip(f"reference data not present at {path}")
    root = tmp_path_factory.mktemp("sst2")
    steps = [("random-checkpoint", "tiny", "--vocab", REAL_VOCAB, "--num-labels", "2", "--out", root / "random"),
             ("finetune", root / "random", "--task", SST2 / "train.tsv", "--out", root / "ft", "--epochs", "1",
              "--max-train-examples", "8000", "--max-seq-len", "64", "--batch-size", "64", "--learning-rate", "1e-3"),
             ("convert", root / "ft", "--out", root / "bundle", "--labels", "negative,positive")]
    for step in steps:
        result = invoke(*step)
        assert result.exit_code == 0, (step[0], result.output)
    assert json.loads((root / "bundle" / "manifest.json").read_text())["mediapipe"]["file"] == "model.tflite"
    return root


def _dev_sentences() -> list[str]:
    from edgebert.tasks import load_task
    return list(load_task(SST2 / "dev.tsv").texts)


def agreement(tasks, bundle: Path, mediapipe_file: Path, echo: Path, texts: list[str]) -> dict:
    """MediaPipe's TextClassifier vs `edgebert predict` on each text, and whether MediaPipe's token ids
    are the bundle tokenizer's."""
    from edgebert import tokenizer as tokenization
    from edgebert.predict import predict

    seq_len = json.loads((bundle / "manifest.json").read_text())["recipe"]["seq_len"]
    tokenizer = tokenization.load_tokenizer(bundle / "tokenizer.json")
    ours = predict(bundle, texts)
    same_label, same_ids, worst, differ = 0, 0, 0.0, []
    with _classifier(tasks, mediapipe_file) as classifier, _embedder(tasks, echo) as embedder:
        for text, result in zip(texts, ours):
            scores = _scores(classifier.classify(text))
            same_label += max(scores, key=scores.get) == result["label"]
            want = {k: v[0].tolist() for k, v in tokenization.encode(tokenizer, [text], seq_len).items()}
            if mediapipe_ids(embedder, text, seq_len) == want:
                same_ids += 1
                worst = max(worst, max(abs(scores[k] - p) for k, p in result["probabilities"].items()))
            else:
                differ.append(text)
    return {"texts": len(texts), "same_label": same_label, "same_ids": same_ids, "max_probability_diff": worst,
            "ids_differ": differ}


@pytest.mark.slow
@needs_shared(SST2 / "dev.tsv")
def test_sst2_dev_mediapipe_text_classifier_agrees_with_predict(sst2_classifier, tasks, tmp_path):
    texts = _dev_sentences()
    echo = echo_model(tmp_path, _vocab(sst2_classifier / "bundle"), 128)
    figures = agreement(tasks, sst2_classifier / "bundle", sst2_classifier / "bundle" / "model.tflite", echo, texts)
    print(f"\nSST-2 dev, fine-tuned BERT-Tiny: {figures['same_label']}/{figures['texts']} same top label, "
          f"{figures['same_ids']} same ids, max probability diff {figures['max_probability_diff']:.3g}; "
          f"ids differ on: {figures['ids_differ']}")
    assert figures["texts"] == 872
    assert figures["same_label"] / figures["texts"] >= 0.995
    assert figures["max_probability_diff"] <= 1e-4
    # Every difference is a word with an accent: BERT strips accents, MediaPipe's tokenizer does not.
    assert figures["same_ids"] >= 860
    assert all(any(ord(c) > 127 for c in text) for text in figures["ids_differ"])


@pytest.mark.slow
@needs_shared(SST2 / "dev.tsv")
def test_a_structured_pruned_classifier_still_agrees(sst2_classifier, tasks, tmp_path):
    root = sst2_classifier
    steps = [("prune", root / "ft", "--task", SST2 / "train.tsv", "--heads", "0.5", "--ffn", "0.5",
              "--examples", "256", "--seq-len", "64", "--out", tmp_path / "pruned"),
             ("convert", tmp_path / "pruned", "--out", tmp_path / "bundle", "--labels", "negative,positive")]
    for step in steps:
        result = invoke(*step)
        assert result.exit_code == 0, (step[0], result.output)
    texts = _dev_sentences()[:200]
    echo = echo_model(tmp_path, _vocab(tmp_path / "bundle"), 128)
    figures = agreement(tasks, tmp_path / "bundle", tmp_path / "bundle" / "model.tflite", echo, texts)
    print(f"\nSST-2 dev, structured-pruned BERT-Tiny: {figures['same_label']}/{figures['texts']} same top label, "
          f"{figures['same_ids']} same ids, max probability diff {figures['max_probability_diff']:.3g}")
    assert figures["same_label"] / figures["texts"] >= 0.995
    assert figures["max_probability_diff"] <= 1e-4


@pytest.mark.slow
def test_real_minilm_in_mediapipe_text_embedder(minilm_dir, tasks, tmp_path):
    """all-MiniLM-L6-v2 converted by `edgebert convert`: its model.tflite runs unchanged in TextEmbedder."""
    from edgebert import tokenizer as tokenization
    from edgebert.predict import embed
    from edgebert.samples import load_sentences

    bundle = tmp_path / "minilm"
    result = invoke("convert", minilm_dir, "--out", bundle, "--quantize", "float32", "--seq-len", "128")
    assert result.exit_code == 0, result.output
    record = json.loads((bundle / "manifest.json").read_text())["mediapipe"]
    assert record["file"] == "model.tflite" and record["metadata_bytes"] > 200_000  # the 30,522-token vocab
    texts = load_sentences(limit=40)
    ours = embed(bundle, texts)
    tokenizer = tokenization.load_tokenizer(bundle / "tokenizer.json")
    echo = echo_model(tmp_path, _vocab(bundle), 128)
    compared, worst = 0, 1.0
    with _embedder(tasks, bundle / "model.tflite") as embedder, _embedder(tasks, echo) as ids:
        for text, want in zip(texts, ours):
            if mediapipe_ids(ids, text, 128) != {k: v[0].tolist() for k, v in tokenization.encode(tokenizer, [text], 128).items()}:
                assert any(ord(c) > 127 for c in text), text  # an accent MediaPipe's tokenizer keeps
                continue
            got = np.asarray(embedder.embed(text).embeddings[0].embedding, dtype=np.float64)
            worst = min(worst, float(got @ want / (np.linalg.norm(got) * np.linalg.norm(want))))
            compared += 1
    print(f"\nall-MiniLM-L6-v2 float32: TextEmbedder vs edgebert on {compared}/{len(texts)} texts with the same ids: "
          f"min cosine {worst:.7f}; metadata {record['metadata_bytes']:,} bytes")
    assert compared >= len(texts) - 3 and worst >= 0.9999


# --- the web: @mediapipe/tasks-text in headless Chromium -----------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars", "--disable-extensions", "--disable-default-apps", "--no-pings",
                  "--disable-domain-reliability", "--disable-client-side-phishing-detection"]
# Hosts the page could reach for MediaPipe's files or models, or its usage metrics (sent on close()).
MEDIAPIPE_HOSTS = ("cdn.jsdelivr.net", "storage.googleapis.com", "odml.pa.googleapis.com", "unpkg.com")

PAGE = """<!doctype html><meta charset="utf-8"><title>edgebert in MediaPipe Tasks</title>
<script type="module">
const report = (data) => fetch("/result", {method: "POST", body: JSON.stringify(data)});
try {
  const {FilesetResolver, TextClassifier, TextEmbedder} = await import("./tasks-text/text_bundle.mjs");
  const params = await (await fetch("./params.json")).json();
  const fileset = await FilesetResolver.forTextTasks(new URL("./tasks-text/wasm", location.href).href);
  const classifier = await TextClassifier.createFromOptions(fileset,
      {baseOptions: {modelAssetPath: params.classifier}, maxResults: -1});
  const embedder = await TextEmbedder.createFromOptions(fileset,
      {baseOptions: {modelAssetPath: params.embedder}, l2Normalize: false, quantize: false});
  const classifications = params.texts.map(text => classifier.classify(text).classifications.map(head =>
      Object.fromEntries(head.categories.map(c => [c.categoryName, c.score]))));
  const embeddings = params.texts.map(text => Array.from(embedder.embed(text).embeddings[0].floatEmbedding));
  const resources = performance.getEntriesByType("resource").map(entry => entry.name);
  await report({ok: true, classifications, embeddings, resources, page: location.href});
} catch (error) {
  await report({ok: false, error: String((error && error.stack) || error)});
}
</script>
"""


def tasks_text_package() -> Path:
    """@mediapipe/tasks-text from npm, installed once into the cache (outside the repository)."""
    from edgebert.fetch import default_cache_dir

    name, version = TASKS_TEXT.rsplit("@", 1)
    root = default_cache_dir() / "npm" / f"mediapipe-tasks-text-{version}"
    package = root / "node_modules" / name
    if (package / "package.json").is_file() and json.loads((package / "package.json").read_text())["version"] == version:
        return package
    npm = shutil.which("npm")
    if npm is None:
        missing("npm is not installed (apt-get install npm): it brings @mediapipe/tasks-text")
    root.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([npm, "install", "--no-audit", "--no-fund", "--prefix", str(root), TASKS_TEXT],
                            capture_output=True, text=True, timeout=600)
    if result.returncode != 0 or not (package / "wasm").is_dir():
        missing(f"npm could not install {TASKS_TEXT}: {(result.stderr or result.stdout).strip()[-300:]}")
    return package


class _Site(http.server.SimpleHTTPRequestHandler):
    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map,
                      ".mjs": "text/javascript", ".wasm": "application/wasm", ".tflite": "application/octet-stream"}
    results: list

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.results.append(json.loads(body))
        self.send_response(204)
        self.end_headers()


class _Trap(http.server.BaseHTTPRequestHandler):
    """Chromium's proxy: every request not for 127.0.0.1 lands here, is recorded, and is refused."""
    seen: list

    def log_message(self, *args):
        pass

    def handle_one_request(self):
        line = self.rfile.readline(65537).decode("latin-1").strip()
        if line:
            self.seen.append(line)
        self.wfile.write(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        self.close_connection = True


def _serve(handler, **attributes):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(handler, **attributes)
                                             if "directory" in attributes else handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_the_browser_classifies_and_embeds_with_the_runners_results(classifier_bundle, classifier_file, embedder_bundle,
                                                                    tmp_path):
    from edgebert.predict import embed, predict

    package = tasks_text_package()
    site = tmp_path / "site"
    site.mkdir()
    (site / "tasks-text").symlink_to(package, target_is_directory=True)
    shutil.copy(classifier_file, site / "classifier.tflite")  # the bundle's own model.tflite
    shutil.copy(embedder_bundle / "model.tflite", site / "embedder.tflite")
    (site / "index.html").write_text(PAGE)
    (site / "params.json").write_text(json.dumps({"classifier": "./classifier.tflite", "embedder": "./embedder.tflite",
                                                  "texts": TEXTS}))
    results, seen = [], []
    _Site.results, _Trap.seen = results, seen
    server, trap = _serve(_Site, directory=str(site)), _serve(_Trap)
    url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
    command = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}",
               f"--proxy-server=http://127.0.0.1:{trap.server_address[1]}", "--remote-debugging-port=0", url]
    browser = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not results and time.monotonic() < deadline and browser.poll() is None:
            time.sleep(0.2)
    finally:
        browser.terminate()
        try:
            browser.wait(timeout=20)
        except subprocess.TimeoutExpired:
            browser.kill()
        server.shutdown()
        trap.shutdown()
    assert results, "the page reported nothing within 120 s"
    [page] = results
    assert page["ok"], page.get("error")

    for text, result, heads in zip(TEXTS, predict(classifier_bundle, TEXTS), page["classifications"]):
        [scores] = heads
        assert max(scores, key=scores.get) == result["label"], text
        assert max(abs(scores[k] - p) for k, p in result["probabilities"].items()) <= 1e-4, text
    for text, want, got in zip(TEXTS, embed(embedder_bundle, TEXTS), page["embeddings"]):
        got = np.asarray(got, dtype=np.float64)
        assert got @ want / (np.linalg.norm(got) * np.linalg.norm(want)) >= 0.9999, text

    # Everything the page loaded came from 127.0.0.1: the wasm files from the npm package, the models.
    origin = url.rsplit("/", 1)[0] + "/"
    assert page["resources"] and all(name.startswith(origin) for name in page["resources"]), page["resources"]
    assert any(name.endswith(".wasm") for name in page["resources"])
    # The proxy saw none of MediaPipe's hosts (only, if anything, Chromium's own background services).
    assert not [line for line in seen if any(host in line for host in MEDIAPIPE_HOSTS)], seen


def test_a_classifier_with_length_buckets_exports_its_longest_length(tiny_classifier_checkpoint, tasks, tmp_path):
    """MediaPipe runs one subgraph: a bucketed bundle's model.tflite has no metadata, the manifest says so, and
    export-mediapipe writes serving_default (the longest) alone, which agrees with the bucketed runner."""
    from converters.pipeline import ConvertOptions, convert
    from edgebert.predict import predict

    bundle = tmp_path / "buckets"
    convert(tiny_classifier_checkpoint, bundle, ConvertOptions(seq_len=32, buckets=(16,), validation_size=8,
                                                               labels=LABELS))
    record = json.loads((bundle / "manifest.json").read_text())["mediapipe"]
    assert record["file"] is None and record["note"].startswith(
        "length buckets: MediaPipe runs one subgraph, so model.tflite (one per length) carries no metadata; "
        "`edgebert export-mediapipe` writes the longest, 32")
    out = tmp_path / "buckets.tflite"
    result = invoke("export-mediapipe", bundle, "--out", out)
    assert result.exit_code == 0, result.output
    assert "length 32" in result.stdout
    info = json.loads(invoke("inspect", out, "--json").stdout)
    assert len(info["subgraphs"]) == 1 and all(t["shape"] == [1, 32] for t in info["subgraphs"][0]["inputs"])
    assert list(info["signatures"]["serving_default"]["outputs"]) == ["probabilities"]
    assert info["ops"] == json.loads(invoke("inspect", bundle, "--json").stdout)["ops"]  # no second SOFTMAX
    assert out.stat().st_size < (bundle / "model.tflite").stat().st_size + 300_000  # no second copy of anything
    with _classifier(tasks, out) as classifier:
        for text, want in zip(TEXTS, predict(bundle, TEXTS)):
            scores = _scores(classifier.classify(text))
            assert max(abs(scores[k] - p) for k, p in want["probabilities"].items()) <= 1e-4
