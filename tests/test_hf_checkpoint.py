"""A Hugging Face source stays a Hugging Face model: `edgebert finetune`, `prune` and `trim-vocab` write
config.json + model.safetensors + tokenizer files (converters/hf_checkpoint.py), keeping the erf GELU,
the casing, the vocab, the labels and the word-length limit; `edgebert convert` converts the result and
transformers loads it with logits whose softmax is the bundle's probabilities. A sentence-transformers
folder keeps its pooling through a vocabulary trim and drops it when fine-tuned into a classifier. An
output that cannot be written fails before any training. Tiny random models built here (hidden 32, 2
layers, 4 heads)."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from ci import missing
from cli_helpers import error_line, invoke
from test_finetune import _write_task
from test_sentence_embedding import reference_embedding, write_st_folder
from test_sources import _hf_directory, _hf_tokenizer_json

REPO = Path(__file__).resolve().parent.parent
BENCH_PYTHON = Path(os.environ.get("EDGEBERT_BENCH_PYTHON", REPO / ".venv-bench" / "bin" / "python"))
SEQ_LEN = 16
WORD_LIMIT = 37  # the source tokenizer.json's max_input_chars_per_word: neither Google's 200 nor HF's 100
HF_FILES = ["config.json", "edgebert_source.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
            "vocab.txt"]


def _hf_names(layers: int, prefix: str, classifier: bool) -> set[str]:
    """transformers' BertModel / BertForSequenceClassification tensor names, written out by hand."""
    names = {f"{prefix}embeddings.{n}.weight" for n in ("word_embeddings", "position_embeddings",
                                                         "token_type_embeddings", "LayerNorm")}
    names |= {f"{prefix}embeddings.LayerNorm.bias", f"{prefix}pooler.dense.weight", f"{prefix}pooler.dense.bias"}
    for n in range(layers):
        for module in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                       "attention.output.LayerNorm", "intermediate.dense", "output.dense", "output.LayerNorm"):
            names |= {f"{prefix}encoder.layer.{n}.{module}.weight", f"{prefix}encoder.layer.{n}.{module}.bias"}
    return names | ({"classifier.weight", "classifier.bias"} if classifier else set())


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-task")
    return _write_task(root / "train.tsv", 96, 0), _write_task(root / "dev.tsv", 32, 1)


@pytest.fixture(scope="module")
def texts(task):
    """A few of the task's sentences, and one with a word longer than the source's word-length limit."""
    from edgebert.tasks import load_task

    sentences = list(load_task(task[1]).texts[:3])
    return sentences + [sentences[0] + " " + "x" * (WORD_LIMIT + 1)]


@pytest.fixture(scope="module")
def hf_source(tiny_checkpoint, tmp_path_factory) -> Path:
    """A Hugging Face BERT folder with the erf GELU ("hidden_act": "gelu"), cased (tokenizer_config.json
    says so, though the vocab looks uncased), and a tokenizer.json whose word-length limit is 37."""
    from converters.sources import load_source

    google = load_source(tiny_checkpoint)
    directory = _hf_directory(tmp_path_factory.mktemp("hf"), google)
    (directory / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": False}))
    _hf_tokenizer_json(directory / "tokenizer.json", google.vocab, lowercase=False,
                       max_input_chars_per_word=WORD_LIMIT)
    return directory


@pytest.fixture(scope="module")
def finetuned(hf_source, task, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf-ft") / "finetuned"
    result = invoke("finetune", hf_source, "--task", task[0], "--dev", task[1], "--out", out, "--epochs", 1,
                    "--batch-size", 16, "--learning-rate", "1e-3")
    assert result.exit_code == 0, result.output
    return out


def _convert(source: Path, out: Path) -> Path:
    result = invoke("convert", source, "--out", out, "--quantize", "float32", "--seq-len", SEQ_LEN)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def finetuned_bundle(finetuned, tmp_path_factory) -> Path:
    return _convert(finetuned, tmp_path_factory.mktemp("hf-bundle") / "finetuned.float32")


@pytest.fixture(scope="module")
def trimmed(finetuned, task, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("hf-trim") / "trimmed"
    result = invoke("trim-vocab", finetuned, "--corpus", task[0], "--corpus", task[1], "--out", out)
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def trimmed_bundle(trimmed, tmp_path_factory) -> Path:
    return _convert(trimmed, tmp_path_factory.mktemp("hf-bundle") / "trimmed.float32")


def _bundle_run(bundle: Path, texts: list, output: str = "probabilities") -> tuple[np.ndarray, dict]:
    """The bundle's output for each text (one interpreter call each) and the encoded inputs [N, S]."""
    from edgebert.bundle import read_bundle
    from edgebert.interpreter import TFLiteModel
    from edgebert.tokenizer import encode, load_tokenizer

    loaded = read_bundle(bundle)
    encoded = encode(load_tokenizer(loaded.tokenizer_path), texts, loaded.seq_len)
    model = TFLiteModel(loaded.model_path)
    rows = [model(**{name: value[i:i + 1] for name, value in encoded.items()})[output] for i in range(len(texts))]
    return np.concatenate(rows).astype(np.float32), encoded


def _float_probabilities(checkpoint: Path, encoded: dict) -> np.ndarray:
    """The softmax of the float Keras classifier's logits for a checkpoint, as `load_source` reads it."""
    from converters.model import build_bert, set_google_weights
    from converters.sources import load_source

    source = load_source(checkpoint)
    model = build_bert(source.config, None, source.num_labels)
    set_google_weights(model, source.config, source.weights, source.num_labels)
    return _softmax(model(encoded, training=False)["logits"].numpy())


def _softmax(logits) -> np.ndarray:
    logits = np.asarray(logits, dtype=np.float64)
    exp = np.exp(logits - logits.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True)


# --- the format -------------------------------------------------------------------------------------------

def test_config_json_round_trips_every_activation(tiny_config, tmp_path):
    from converters.config import Activation, BertConfig

    for activation, name in ((Activation.GELU_ERF, "gelu"), (Activation.GELU_TANH, "gelu_new"),
                             (Activation.RELU, "relu")):
        for shapes in ({}, {"layer_heads": (2, 3), "layer_intermediate_sizes": (16, 64)}):
            config = dataclasses.replace(tiny_config, activation=activation, layer_norm_eps=1e-7, **shapes)
            written = config.to_hf_json()
            assert written["hidden_act"] == name and written["model_type"] == "bert"
            (tmp_path / "config.json").write_text(json.dumps(written))
            assert BertConfig.from_json_file(tmp_path / "config.json", "hf") == config


def test_every_variable_has_a_hugging_face_name_the_loader_maps_back(tiny_config):
    from converters.google_checkpoint import random_weights
    from converters.hf_checkpoint import hf_tensors
    from converters.sources import hf_to_google_name

    weights = {name: value for name, value in random_weights(tiny_config, num_labels=3).items()
               if not name.startswith("cls/")}
    for classifier, prefix in ((True, "bert."), (False, "")):
        chosen = weights if classifier else {k: v for k, v in weights.items() if k.startswith("bert/")}
        tensors = hf_tensors(tiny_config, chosen)
        assert set(tensors) == _hf_names(2, prefix, classifier)
        back = {hf_to_google_name(name): value for name, value in tensors.items()}
        assert set(back) == set(chosen)
        for name, value in back.items():  # Dense kernels are [out, in] in torch, [in, out] in Google's layout
            np.testing.assert_array_equal(value.T if name.endswith("/kernel") else value, chosen[name], err_msg=name)


# --- fine-tuning a Hugging Face model ------------------------------------------------------------------

def test_finetuning_an_erf_gelu_model_writes_hugging_face_format_and_loses_nothing(hf_source, finetuned):
    from safetensors.numpy import load_file

    from converters.config import Activation
    from converters.sources import load_source

    assert sorted(path.name for path in finetuned.iterdir()) == HF_FILES
    config = json.loads((finetuned / "config.json").read_text())
    assert config["model_type"] == "bert" and config["architectures"] == ["BertForSequenceClassification"]
    assert config["hidden_act"] == "gelu"  # Hugging Face's name for the erf GELU
    assert config["id2label"] == {"0": "negative", "1": "positive"}
    assert config["label2id"] == {"negative": 0, "positive": 1}
    tensors = load_file(str(finetuned / "model.safetensors"))
    assert set(tensors) == _hf_names(2, "bert.", classifier=True)
    assert tensors["bert.encoder.layer.0.intermediate.dense.weight"].shape == (64, 32)  # [out, in]
    assert tensors["classifier.weight"].shape == (2, 32)
    # The source's tokenizer.json, as it was; its casing and word-length limit also in the record.
    assert (finetuned / "tokenizer.json").read_bytes() == (hf_source / "tokenizer.json").read_bytes()
    assert json.loads((finetuned / "tokenizer_config.json").read_text())["do_lower_case"] is False
    record = json.loads((finetuned / "edgebert_source.json").read_text())
    assert record["lowercase"] is False and record["max_word_chars"] == WORD_LIMIT
    assert record["labels"] == ["negative", "positive"]

    original, written = load_source(hf_source), load_source(finetuned)
    assert written.kind == "hf-safetensors" and written.config == original.config
    assert written.config.activation is Activation.GELU_ERF
    assert written.lowercase is False and written.max_word_chars == WORD_LIMIT
    assert written.vocab == original.vocab and written.labels == ["negative", "positive"]
    assert [step["step"] for step in written.history] == ["finetune"]
    assert written.history[-1]["train_examples"] == 96


def test_the_finetuned_model_converts_and_the_bundle_gives_its_float_probabilities(finetuned, finetuned_bundle, texts):
    from converters.sources import load_source
    from edgebert.bundle import read_bundle

    manifest = read_bundle(finetuned_bundle).manifest
    assert manifest["head"] == "classifier" and manifest["labels"] == ["negative", "positive"]
    assert manifest["model"]["activation"] == "gelu_erf"
    assert manifest["source"]["history"][-1]["step"] == "finetune"
    probabilities, encoded = _bundle_run(finetuned_bundle, texts)
    unk = load_source(finetuned).vocab.index("[UNK]")
    assert encoded["input_ids"][3][encoded["attention_mask"][3] == 1][-2] == unk  # the long word: over the limit
    np.testing.assert_allclose(probabilities, _float_probabilities(finetuned, encoded), atol=1e-5)


# --- pruning and trimming a Hugging Face model -----------------------------------------------------------

def test_trim_vocab_of_a_hugging_face_model_writes_hugging_face_format_that_converts(
        finetuned, trimmed, trimmed_bundle, finetuned_bundle, texts):
    from converters.sources import load_source
    from edgebert.tokenizer import load_tokenizer, max_word_chars

    assert sorted(path.name for path in trimmed.iterdir()) == HF_FILES
    original, written = load_source(finetuned), load_source(trimmed)
    assert written.kind == "hf-safetensors" and written.config.vocab_size < original.config.vocab_size
    assert written.config.activation is original.config.activation and written.lowercase is False
    assert written.max_word_chars == WORD_LIMIT and written.labels == ["negative", "positive"]
    assert [step["step"] for step in written.history] == ["finetune", "vocab-trim"]
    # A new tokenizer.json for the new vocab, with the source's word-length limit and casing.
    tokenizer = load_tokenizer(trimmed / "tokenizer.json")
    assert sorted(tokenizer.get_vocab(), key=tokenizer.get_vocab().get) == written.vocab
    assert max_word_chars(tokenizer) == WORD_LIMIT and tokenizer.normalizer.lowercase is False
    # The corpus's texts: the same probabilities as before the trim.
    before, _ = _bundle_run(finetuned_bundle, texts)
    after, encoded = _bundle_run(trimmed_bundle, texts)
    np.testing.assert_allclose(after, before, atol=1e-5)
    np.testing.assert_allclose(after, _float_probabilities(trimmed, encoded), atol=1e-5)


def test_prune_of_a_hugging_face_classifier_writes_hugging_face_format_that_converts(finetuned, task, tmp_path,
                                                                                    texts):
    from safetensors.numpy import load_file

    from converters.sources import load_source

    out = tmp_path / "pruned"
    result = invoke("prune", finetuned, "--task", task[0], "--heads", "0.5", "--ffn", "0.5", "--seq-len", SEQ_LEN,
                    "--out", out)
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out.iterdir()) == HF_FILES
    config = json.loads((out / "config.json").read_text())
    assert config["hidden_act"] == "gelu" and config["architectures"] == ["BertForSequenceClassification"]
    assert config["edgebert_layer_heads"] == [2, 2] and config["edgebert_layer_intermediate_sizes"] == [32, 32]
    assert load_file(str(out / "model.safetensors"))["bert.encoder.layer.1.attention.self.query.weight"].shape == (16, 32)
    assert (out / "tokenizer.json").read_bytes() == (finetuned / "tokenizer.json").read_bytes()
    pruned = load_source(out)
    assert pruned.kind == "hf-safetensors" and pruned.config.layer_heads == (2, 2)
    assert pruned.lowercase is False and pruned.max_word_chars == WORD_LIMIT
    assert [step["step"] for step in pruned.history] == ["finetune", "structured-pruning"]
    bundle = _convert(out, tmp_path / "bundle")
    probabilities, encoded = _bundle_run(bundle, texts)
    np.testing.assert_allclose(probabilities, _float_probabilities(out, encoded), atol=1e-5)


# --- transformers reads what edgebert wrote ---------------------------------------------------------------

_TRANSFORMERS_SCRIPT = """
import json, sys
import numpy as np, torch
from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
results = []
for folder, inputs, texts in json.loads(sys.argv[1]):
    classifier, info = AutoModelForSequenceClassification.from_pretrained(folder, output_loading_info=True)
    encoder, encoder_info = AutoModel.from_pretrained(folder, output_loading_info=True)
    arrays = np.load(inputs)
    with torch.no_grad():
        logits = classifier.eval()(**{name: torch.from_numpy(arrays[name].astype(np.int64))
                                      for name in ("input_ids", "attention_mask", "token_type_ids")}).logits
    tokenizer = AutoTokenizer.from_pretrained(folder)
    results.append({"logits": logits.numpy().tolist(), "info": {k: list(v) for k, v in info.items()},
                    "encoder_info": {k: list(v) for k, v in encoder_info.items()},
                    "encoder": type(encoder).__name__, "hidden_act": classifier.config.hidden_act,
                    "id2label": classifier.config.id2label, "ids": [tokenizer(t)["input_ids"] for t in texts]})
print(json.dumps(results))
"""


def test_transformers_loads_what_finetune_and_trim_vocab_write_with_the_bundles_probabilities(
        finetuned, finetuned_bundle, trimmed, trimmed_bundle, texts, tmp_path):
    if not BENCH_PYTHON.is_file():
        missing(f"no Python with transformers at {BENCH_PYTHON} (python -m venv .venv-bench && "
                ".venv-bench/bin/pip install torch==2.13.0 && .venv-bench/bin/pip install -e '.[convert,bench,test]')")
    jobs, expected = [], []
    for folder, bundle in ((finetuned, finetuned_bundle), (trimmed, trimmed_bundle)):
        probabilities, encoded = _bundle_run(bundle, texts)
        np.savez(tmp_path / f"{folder.name}.npz", **encoded)
        jobs.append((str(folder), str(tmp_path / f"{folder.name}.npz"), texts))
        expected.append((probabilities, [list(ids[mask == 1]) for ids, mask in zip(encoded["input_ids"],
                                                                           encoded["attention_mask"])]))
    env = {**os.environ, "USE_TF": "0", "USE_FLAX": "0", "TRANSFORMERS_VERBOSITY": "error"}
    done = subprocess.run([str(BENCH_PYTHON), "-c", _TRANSFORMERS_SCRIPT, json.dumps(jobs)], capture_output=True,
                          text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    results = json.loads(done.stdout.strip().splitlines()[-1])
    for (probabilities, ids), result in zip(expected, results):
        assert result["info"] == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
        assert result["encoder"] == "BertModel" and result["encoder_info"]["missing_keys"] == []
        assert result["hidden_act"] == "gelu" and result["id2label"] == {"0": "negative", "1": "positive"}
        assert result["ids"] == ids  # transformers' tokenizer from the written files gives the bundle's ids
        np.testing.assert_allclose(_softmax(result["logits"]), probabilities, atol=1e-4)


# --- sentence-transformers folders -----------------------------------------------------------------------

def test_trim_vocab_keeps_a_sentence_transformers_models_pooling(tmp_path, task):
    from converters.sources import load_source
    from edgebert.bundle import read_bundle
    from edgebert.tasks import load_task

    from converters.vocab_trim import source_vocab

    source = write_st_folder(tmp_path / "st", tokenizer_json=True)  # mean pooling + Normalize, erf GELU
    vocab = source_vocab(load_source(source))
    # As transformers >= 4.34 saves them: the special tokens by id, in the source's vocab.
    added = {str(vocab.index(token)): {"content": token, "special": True} for token in ("[PAD]", "[UNK]", "[SEP]")}
    (source / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "added_tokens_decoder": added}))
    (source / "special_tokens_map.json").write_text(json.dumps({"unk_token": "[UNK]"}))
    out = tmp_path / "st-trimmed"
    result = invoke("trim-vocab", source, "--corpus", task[1], "--out", out)
    assert result.exit_code == 0, result.output
    for name in ("modules.json", "sentence_bert_config.json", "1_Pooling/config.json", "special_tokens_map.json"):
        assert (out / name).read_bytes() == (source / name).read_bytes(), name
    original, written = load_source(source), load_source(out)
    settings = json.loads((out / "tokenizer_config.json").read_text())  # the ids follow the trimmed vocab
    assert settings["added_tokens_decoder"] == {str(written.vocab.index(entry["content"])): entry
                                                for entry in added.values()}
    assert settings["added_tokens_decoder"] != added and settings["do_lower_case"] is True
    assert written.sentence_pooling == original.sentence_pooling and written.sentence_pooling.normalize
    assert written.config.vocab_size < original.config.vocab_size
    assert json.loads((out / "config.json").read_text())["architectures"] == ["BertModel"]
    bundle = _convert(out, tmp_path / "bundle")
    assert read_bundle(bundle).manifest["head"] == "sentence-embedding"
    sentences = list(load_task(task[1]).texts[:3])
    embeddings, _ = _bundle_run(bundle, sentences, "sentence_embedding")
    for text, embedding in zip(sentences, embeddings):
        np.testing.assert_allclose(embedding, reference_embedding(text, "mean", True, SEQ_LEN), atol=1e-5)


def test_a_finetuned_sentence_transformers_model_is_a_classifier_without_the_pooling(tmp_path, task):
    from converters.sources import load_source
    from converters.vocab_trim import source_vocab

    source = write_st_folder(tmp_path / "st", tokenizer_json=True)  # its vocab only in tokenizer.json
    out = tmp_path / "st-ft"
    result = invoke("finetune", source, "--task", task[0], "--out", out, "--epochs", 1, "--max-train-examples", 16)
    assert result.exit_code == 0, result.output
    assert sorted(path.name for path in out.iterdir()) == HF_FILES  # no modules.json, no 1_Pooling/
    written = load_source(out)
    assert written.sentence_pooling is None and written.num_labels == 2
    assert (out / "tokenizer.json").read_bytes() == (source / "tokenizer.json").read_bytes()
    assert (out / "vocab.txt").read_text().splitlines() == source_vocab(load_source(source)) == written.vocab


# --- Google sources stay in Google's layout ------------------------------------------------------------------

def test_a_google_source_is_still_written_in_googles_layout(tiny_classifier_checkpoint, tmp_path):
    from converters.hf_checkpoint import prepare_output
    from converters.sources import load_source

    source = load_source(tiny_classifier_checkpoint)
    written = prepare_output(source, tmp_path / "out").write(source.config, source.weights,
                                                             {"labels": source.labels, "history": []})
    assert (written / "bert_config.json").is_file() and not (written / "config.json").exists()
    np.testing.assert_array_equal(load_source(written).weights["output_weights"], source.weights["output_weights"])


# --- nothing trains when the output cannot be written ---------------------------------------------------------

def test_an_output_that_cannot_be_written_fails_before_training(hf_source, task, tmp_path):
    (tmp_path / "taken").mkdir()
    (tmp_path / "a-file").write_text("")
    cases = ((tmp_path / "taken", "already exists (pass --force to replace it)"),
             (tmp_path / "a-file" / "out", f"cannot write here ({tmp_path / 'a-file'} is not a writable directory)"))
    for out, problem in cases:
        for extra in ((), ("--learning-rate", "1e-3,1e-4")):  # one run, and a search
            started = time.perf_counter()
            result = invoke("finetune", hf_source, "--task", task[0], "--out", out, "--epochs", 1, *extra)
            assert error_line(result, 1) == f"error: {out}: {problem}"
            assert time.perf_counter() - started < 3
            assert not out.with_name(out.name + ".work").exists() and not out.with_name(out.name + ".search").exists()


def test_the_library_checks_the_output_and_its_format_before_training(hf_source, task, tmp_path):
    from converters.finetune import FinetuneOptions, Progress, finetune, search
    from converters.sources import load_source
    from converters.structured import prune_to_directory
    from edgebert.errors import ConfigError, OutputError
    from edgebert.tasks import load_task

    source, train = load_source(hf_source), load_task(task[0])
    logs = []
    options, progress = FinetuneOptions(epochs=1), Progress(log=logs.append)
    (tmp_path / "taken").mkdir()
    with pytest.raises(OutputError, match="taken: already exists"):
        finetune(source, train, None, tmp_path / "taken", options, progress=progress)
    with pytest.raises(OutputError, match="taken: already exists"):
        search(source, train, load_task(task[1]), tmp_path / "taken", options, [16], [1e-3, 1e-4], progress=progress)
    # A source in Google's layout with the erf GELU (bert_config.json cannot say it) is refused at once.
    as_google = dataclasses.replace(source, kind="google-checkpoint")
    started = time.perf_counter()
    with pytest.raises(ConfigError) as error:
        finetune(as_google, train, None, tmp_path / "out", options, progress=progress)
    assert time.perf_counter() - started < 3
    assert str(error.value) == (f"{hf_source}: cannot write this model in Google's layout: Google's "
                                "bert_config.json cannot express the erf GELU")
    assert logs == [] and sorted(path.name for path in tmp_path.iterdir()) == ["taken"]
    with pytest.raises(OutputError, match="taken: already exists"):  # prune: before reading and scoring
        prune_to_directory(hf_source, task[0], tmp_path / "taken", heads_fraction=0.5, ffn_fraction=0.0, log=logs.append)
    assert logs == []


def test_a_full_disk_while_writing_leaves_nothing_and_keeps_the_old_output(hf_source, tmp_path, monkeypatch):
    import errno

    from converters import hf_checkpoint
    from converters.sources import load_source
    from edgebert.errors import OutputError

    source = load_source(hf_source)
    record = {"labels": [], "history": []}
    old = hf_checkpoint.prepare_output(source, tmp_path / "out").write(source.config, source.weights, record)
    before = {path.name: path.read_bytes() for path in old.iterdir()}

    def full(descriptor):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    monkeypatch.setattr(hf_checkpoint.os, "fsync", full)
    for out, force in ((tmp_path / "new", False), (tmp_path / "out", True)):
        output = hf_checkpoint.prepare_output(source, out, force=force)
        with pytest.raises(OutputError) as error:
            output.write(source.config, source.weights, record)
        assert str(error.value) == f"{out}: cannot write: No space left on device (nothing was written)"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]  # no staging left, no "new"
    assert {path.name: path.read_bytes() for path in old.iterdir()} == before
