"""Sentence-embedding bundles from sentence-transformers folders: tiny random folders written here (HF
config.json + model.safetensors + vocab, modules.json, 1_Pooling/config.json) for each pooling mode, with
and without Normalize, checked against an independent numpy forward pass (tests/reference_bert.py);
padding changes nothing; the manifest, golden outputs, predict and rank; one-line errors for folders
edgebert cannot export; and the real all-MiniLM-L6-v2 (slow)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgebert.errors import SourceError, UsageError
from reference_bert import bert_forward, sentence_pooling

TEXTS = ["The film was a delight from start to finish.", "I would not go back there.",
         "A noticeably longer sentence, with quite a few more words in it than the others have."]
MODES = ("cls", "mean", "max")
NUM_HEADS = 4
POOLING_KEYS = {"cls": "pooling_mode_cls_token", "mean": "pooling_mode_mean_tokens", "max": "pooling_mode_max_tokens"}
_HF_LAYER = {"attention.self.query": "attention/self/query", "attention.self.key": "attention/self/key",
             "attention.self.value": "attention/self/value", "attention.output.dense": "attention/output/dense",
             "intermediate.dense": "intermediate/dense", "output.dense": "output/dense"}
_HF_NORMS = {"attention.output.LayerNorm": "attention/output/LayerNorm", "output.LayerNorm": "output/LayerNorm"}


def _tiny_weights(seed: int) -> tuple[dict, list[str]]:
    from converters.config import BertConfig
    from converters.google_checkpoint import random_weights
    from converters.vocab import synthetic_vocab

    vocab = synthetic_vocab(None)
    config = BertConfig(vocab_size=len(vocab), hidden_size=32, num_layers=2, num_heads=NUM_HEADS,
                        intermediate_size=64, max_positions=64)
    weights = {k: v for k, v in random_weights(config, seed).items() if k.startswith("bert/")}
    return weights, vocab


def write_st_folder(root: Path, mode: str = "mean", normalize: bool = True, seed: int = 0,
                    tokenizer_json: bool = False) -> Path:
    """A sentence-transformers folder in Hugging Face names and orientations, written without the loader."""
    from safetensors.numpy import save_file

    w, vocab = _tiny_weights(seed)
    tensors = {"embeddings.word_embeddings.weight": w["bert/embeddings/word_embeddings"],
               "embeddings.position_embeddings.weight": w["bert/embeddings/position_embeddings"],
               "embeddings.token_type_embeddings.weight": w["bert/embeddings/token_type_embeddings"],
               "embeddings.LayerNorm.weight": w["bert/embeddings/LayerNorm/gamma"],
               "embeddings.LayerNorm.bias": w["bert/embeddings/LayerNorm/beta"],
               "pooler.dense.weight": w["bert/pooler/dense/kernel"].T, "pooler.dense.bias": w["bert/pooler/dense/bias"]}
    for n in range(2):
        for hf, g in _HF_LAYER.items():
            tensors[f"encoder.layer.{n}.{hf}.weight"] = w[f"bert/encoder/layer_{n}/{g}/kernel"].T
            tensors[f"encoder.layer.{n}.{hf}.bias"] = w[f"bert/encoder/layer_{n}/{g}/bias"]
        for hf, g in _HF_NORMS.items():
            tensors[f"encoder.layer.{n}.{hf}.weight"] = w[f"bert/encoder/layer_{n}/{g}/gamma"]
            tensors[f"encoder.layer.{n}.{hf}.bias"] = w[f"bert/encoder/layer_{n}/{g}/beta"]
    root.mkdir(parents=True)
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(root / "model.safetensors"))
    (root / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": len(vocab), "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": NUM_HEADS, "intermediate_size": 64, "max_position_embeddings": 64,
        "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12}))
    if tokenizer_json:  # like all-MiniLM-L6-v2: the vocab only in tokenizer.json
        from edgebert.tokenizer import build_tokenizer
        build_tokenizer(vocab, lowercase=True, seq_len=None).save(str(root / "tokenizer.json"))
    else:
        (root / "vocab.txt").write_text("\n".join(vocab) + "\n")
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
               {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"}]
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (root / "modules.json").write_text(json.dumps(modules, indent=2))
    (root / "1_Pooling").mkdir()
    pooling = {"word_embedding_dimension": 32, **{key: name == mode for name, key in POOLING_KEYS.items()},
               "pooling_mode_mean_sqrt_len_tokens": False}
    (root / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    (root / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 48, "do_lower_case": False}))
    return root


def reference_embedding(text: str, mode: str, normalize: bool, max_tokens: int | None = None) -> np.ndarray:
    """What SentenceTransformer.encode computes for one text (truncated at max_tokens, no padding), in
    float64 numpy."""
    from converters.vocab import synthetic_vocab
    from edgebert.tokenizer import build_tokenizer, encode

    w, _ = _tiny_weights(0)
    encoded = encode(build_tokenizer(synthetic_vocab(None), lowercase=True, seq_len=max_tokens), [text], max_tokens)
    length = int(encoded["attention_mask"].sum())
    ids, mask, types = (encoded[name][0, :length] for name in ("input_ids", "attention_mask", "token_type_ids"))
    sequence = bert_forward(w, ids, mask, types, NUM_HEADS, approximate_gelu=False)["sequence_output"]
    return sentence_pooling(sequence, mask, mode, normalize)


def _convert(source, out, **options):
    from converters.pipeline import ConvertOptions, convert
    options.setdefault("validation_size", 8)
    return convert(source, out, ConvertOptions(**options))


def _cosine(a, b) -> float:
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def st_bundle(tmp_path_factory) -> Path:
    """A float32 seq-32 bundle of a tiny mean-pooling + Normalize folder (read-only for tests)."""
    root = tmp_path_factory.mktemp("st")
    _convert(write_st_folder(root / "st", tokenizer_json=True), root / "st.float32.s32", quantize="float32", seq_len=32)
    return root / "st.float32.s32"


# --- the exported embedding against the independent reference ------------------------------------------

@pytest.mark.parametrize("normalize", [True, False], ids=["normalize", "raw"])
@pytest.mark.parametrize("mode", MODES)
def test_float32_embedding_matches_numpy_and_padding_changes_nothing(tmp_path, mode, normalize):
    from edgebert.bundle import read_bundle
    from edgebert.interpreter import TFLiteModel
    from edgebert.tokenizer import encode, load_tokenizer

    out = tmp_path / "bundle"
    result = _convert(write_st_folder(tmp_path / "st", mode, normalize), out, quantize="float32", seq_len=None)
    assert result.manifest["sentence_embedding"] == {"pooling": mode, "normalize": normalize, "dimension": 32,
                                                     "max_seq_length": 48}
    bundle = read_bundle(out)
    model, tokenizer = TFLiteModel(bundle.model_path), load_tokenizer(bundle.tokenizer_path)
    for text in TEXTS:
        want = reference_embedding(text, mode, normalize)
        exact = encode(tokenizer, [text], None)  # the text's own length
        padded = encode(tokenizer, [text], 40)  # the same ids, then [PAD] with mask 0
        assert padded["attention_mask"][0].sum() == exact["attention_mask"].shape[1] < 40
        for inputs in (exact, padded):
            [got] = model(**inputs)["sentence_embedding"]
            assert got.shape == (32,)
            np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4, err_msg=f"{mode} {text!r}")
            assert _cosine(got, want) >= 0.99999
        if normalize:
            assert np.linalg.norm(got) == pytest.approx(1.0, abs=1e-5)


def test_fixed_length_bundle_matches_numpy(st_bundle):
    from edgebert.bundle import read_bundle
    from edgebert.interpreter import TFLiteModel
    from edgebert.tokenizer import encode, load_tokenizer

    bundle = read_bundle(st_bundle)
    model, tokenizer = TFLiteModel(bundle.model_path), load_tokenizer(bundle.tokenizer_path)
    for text in TEXTS:
        [got] = model(**encode(tokenizer, [text], 32))["sentence_embedding"]
        np.testing.assert_allclose(got, reference_embedding(text, "mean", True, max_tokens=32), atol=2e-5)


# --- the bundle: manifest, golden outputs, device checks, predict, rank ---------------------------------

def test_manifest_io_and_validation_are_on_the_sentence_embedding(st_bundle):
    from edgebert.bundle import read_bundle

    manifest = read_bundle(st_bundle).manifest
    assert manifest["head"] == "sentence-embedding"
    assert manifest["sentence_embedding"] == {"pooling": "mean", "normalize": True, "dimension": 32,
                                              "max_seq_length": 48}
    assert manifest["io"]["outputs"] == [{"name": "sentence_embedding", "dtype": "float32", "shape": [1, 32]}]
    assert list(manifest["validation"]["outputs"]) == ["sentence_embedding"]
    assert manifest["validation"]["thresholds"] == {"sentence_embedding": {"min_cosine": 0.99999}}
    assert manifest["validation"]["outputs"]["sentence_embedding"]["min_cosine"] >= 0.99999
    # No BERT pooler in a sentence embedder: its weights are reported unused.
    assert manifest["source"]["unused_variables"] == ["bert/pooler/dense/bias", "bert/pooler/dense/kernel"]
    assert "FLEX" not in " ".join(manifest["ops"])


def test_golden_outputs_carry_the_embedding_and_the_device_checks_use_it(st_bundle, tmp_path):
    import hashlib
    import importlib.util
    import shutil

    from edgebert.bundle import read_bundle
    from edgebert.interpreter import TFLiteModel

    path = Path(__file__).resolve().parent.parent / "device_tests" / "device_checks.py"
    spec = importlib.util.spec_from_file_location("device_checks_for_sentences", path)
    checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checks)
    bundle = read_bundle(st_bundle)
    for example in bundle.golden["examples"]:
        assert list(example["outputs"]) == ["sentence_embedding"]
        assert len(example["outputs"]["sentence_embedding"]) == 32
    assert checks.check_golden(bundle, TFLiteModel(bundle.model_path)) == []
    assert checks.check_tokenizer(bundle) == []
    # A recorded embedding that differs from what the model gives is caught (manifest re-sealed, as a
    # converter would have written it).
    broken = tmp_path / "broken"
    shutil.copytree(st_bundle, broken)
    golden = json.loads((broken / "golden.json").read_text())
    vector = golden["examples"][0]["outputs"]["sentence_embedding"]
    golden["examples"][0]["outputs"]["sentence_embedding"] = vector[1:] + vector[:1]
    data = json.dumps(golden).encode()
    (broken / "golden.json").write_bytes(data)
    manifest = json.loads((broken / "manifest.json").read_text())
    manifest["files"]["golden.json"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (broken / "manifest.json").write_text(json.dumps(manifest))
    problems = checks.check_golden(read_bundle(broken), TFLiteModel(broken / "model.tflite"))
    assert problems and all(problem.startswith("example 0 (") for problem in problems)
    assert "sentence_embedding cosine" in problems[0]


def test_predict_shows_the_sentence_embedding(st_bundle):
    from edgebert.predict import describe, embed, predict

    results = predict(st_bundle, TEXTS[:2])
    vectors = embed(st_bundle, TEXTS[:2])
    assert vectors.shape == (2, 32) and vectors.dtype == np.float32
    for result, vector, text in zip(results, vectors, TEXTS):
        assert result["text"] == text and result["dim"] == 32
        assert result["pooling"]["pooling"] == "mean" and result["pooling"]["normalize"] is True
        np.testing.assert_allclose(result["sentence_embedding"], vector, atol=1e-6)
        np.testing.assert_allclose(result["sentence_embedding"], reference_embedding(text, "mean", True, 32),
                                   atol=2e-5)
        assert result["norm"] == pytest.approx(1.0, abs=1e-5)
        line = describe(result)
        assert line.startswith("sentence_embedding dim=32 |v|=1.0000 [") and line.endswith(f" ...]  {text}")


def test_rank_orders_texts_by_cosine_to_the_query(st_bundle):
    from edgebert.predict import describe_ranking, embed, rank

    texts = ["I would not go back there.", "The film was a delight from start to finish.", "Stocks fell.",
             "The film was a delight!"]
    ranked = rank(st_bundle, "The film was a delight from start to finish.", texts, threads=1)
    assert sorted(text for _, text in ranked) == sorted(texts)
    assert ranked[0] == (pytest.approx(1.0, abs=1e-5), texts[1])  # the query itself
    scores = [score for score, _ in ranked]
    assert scores == sorted(scores, reverse=True)
    vectors = embed(st_bundle, texts)
    query = embed(st_bundle, [texts[1]])[0]
    for score, text in ranked:  # each score is the cosine of the two embeddings
        assert score == pytest.approx(_cosine(vectors[texts.index(text)], query), abs=1e-6)
    assert describe_ranking(*ranked[0]) == f"1.0000  {texts[1]}"


def test_rank_and_embed_refuse_other_bundles_and_bad_input(st_bundle, tiny_bundle):
    from edgebert.predict import embed, rank

    with pytest.raises(UsageError) as error:
        rank(tiny_bundle, "query", ["a text"])
    assert str(error.value) == (f"{tiny_bundle}: is an encoder bundle; sentence embeddings need a bundle "
                                "converted from a sentence-transformers model (head 'sentence-embedding')")
    with pytest.raises(UsageError, match="is an encoder bundle"):
        embed(tiny_bundle, ["a text"])
    with pytest.raises(UsageError, match="^the query is empty$"):
        rank(st_bundle, "  ", ["a text"])
    with pytest.raises(UsageError, match="^the query must be a str, got list"):
        rank(st_bundle, ["a", "b"], ["a text"])
    with pytest.raises(UsageError, match="^no text to predict$"):
        rank(st_bundle, "query", [])
    with pytest.raises(UsageError, match="not \\(str, str\\) pairs"):
        rank(st_bundle, "query", [("a", "b")])


# --- heads ---------------------------------------------------------------------------------------------

def test_head_choice(tmp_path, tiny_checkpoint):
    folder = write_st_folder(tmp_path / "st", "max", normalize=False)
    encoder = _convert(folder, tmp_path / "enc", quantize="float32", seq_len=16, head="encoder").manifest
    assert encoder["head"] == "encoder" and "sentence_embedding" not in encoder
    assert [o["name"] for o in encoder["io"]["outputs"]] == ["sequence_output", "pooled_output"]
    explicit = _convert(folder, tmp_path / "st-out", quantize="float32", seq_len=16, head="sentence-embedding")
    assert explicit.manifest["head"] == "sentence-embedding"
    with pytest.raises(UsageError) as error:
        _convert(tiny_checkpoint, tmp_path / "no", seq_len=16, head="sentence-embedding")
    assert str(error.value) == (f"{tiny_checkpoint}: is not a sentence-transformers model (no modules.json with a "
                                "Pooling module); use --head encoder")
    assert not (tmp_path / "no").exists()


def test_dynamic_int8_is_validated_on_the_embedding_at_the_pooled_threshold(tmp_path):
    result = _convert(write_st_folder(tmp_path / "st"), tmp_path / "int8", seq_len=32)
    validation = result.manifest["validation"]
    assert validation["thresholds"] == {"sentence_embedding": {"min_cosine": 0.999}}
    assert validation["outputs"]["sentence_embedding"]["min_cosine"] >= 0.999


def test_validation_threshold_for_the_sentence_embedding():
    from converters.export import QuantizeMode
    from converters.validate import check_thresholds
    from edgebert.errors import ValidationError

    entry = {"max_abs_diff": 0.01, "mean_abs_diff": 0.001, "min_cosine": 0.998, "mean_cosine": 0.9995}
    with pytest.raises(ValidationError) as error:
        check_thresholds({"sentence_embedding": entry}, QuantizeMode.DYNAMIC_INT8)
    assert str(error.value) == ("validation failed: sentence_embedding min cosine vs float (dynamic-int8) = 0.998, "
                                "threshold 0.999")


# --- folders edgebert cannot export: one line naming the file -------------------------------------------

def _edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    path.write_text(json.dumps(change(data)))


def _pooling(**settings):
    return lambda config: {**config, **settings}


BROKEN = {
    "unknown pooling mode": ("1_Pooling/config.json", _pooling(pooling_mode_mean_tokens=False,
                                                               pooling_mode_mean_sqrt_len_tokens=True),
                             ("pooling mode pooling_mode_mean_sqrt_len_tokens is not supported (edgebert exports "
                              "pooling_mode_cls_token, pooling_mode_mean_tokens, pooling_mode_max_tokens)")),
    "named unknown mode": ("1_Pooling/config.json", lambda config: {"pooling_mode": "lasttoken"},
                           "pooling_mode 'lasttoken' is not supported (edgebert exports cls, mean or max)"),
    "no mode": ("1_Pooling/config.json", _pooling(pooling_mode_mean_tokens=False),
                ("enables no pooling mode (set one of pooling_mode_cls_token, pooling_mode_mean_tokens, "
                 "pooling_mode_max_tokens to true)")),
    "two modes": ("1_Pooling/config.json", _pooling(pooling_mode_cls_token=True),
                  ("enables several pooling modes (pooling_mode_cls_token, pooling_mode_mean_tokens); their "
                   "concatenation is not supported, enable one")),
    "dimension": ("1_Pooling/config.json", _pooling(word_embedding_dimension=64),
                  "word_embedding_dimension 64 differs from the model's hidden_size 32"),
    "not an object": ("1_Pooling/config.json", lambda config: [config], "is not a JSON object"),
    "dense module": ("modules.json", lambda modules: modules[:2] + [
        {"idx": 2, "name": "2", "path": "2_Dense", "type": "sentence_transformers.models.Dense"}],
        ("module type 'sentence_transformers.models.Dense' is not supported (edgebert exports Transformer, then "
         "Pooling, then optionally Normalize)")),
    "no pooling": ("modules.json", lambda modules: modules[:1],
                   "lists Transformer; edgebert exports Transformer -> Pooling (-> Normalize)"),
    "pooling path escapes": ("modules.json", lambda modules: [modules[0], {**modules[1], "path": "../x"}],
                             "the Pooling module's path '../x' leaves the model folder"),
    "transformer elsewhere": ("modules.json", lambda modules: [{**modules[0], "path": "0_BERT"}, modules[1]],
                              ("the Transformer module lives in '0_BERT'; edgebert reads a BERT at the folder's "
                               "top level (path \"\")")),
    "empty modules": ("modules.json", lambda modules: [], "must be a non-empty JSON list of modules"),
    "untyped module": ("modules.json", lambda modules: [modules[0], {"path": "1_Pooling"}],
                       "module 1 has no \"type\" string"),
    "max_seq_length": ("sentence_bert_config.json", lambda settings: {"max_seq_length": "long"},
                       "max_seq_length must be a positive integer, got 'long'"),
}


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_folders_that_cannot_be_exported_name_the_file(tmp_path, case):
    from converters.sources import load_source

    name, change, problem = BROKEN[case]
    folder = write_st_folder(tmp_path / "st")
    _edit_json(folder / name, change)
    with pytest.raises(SourceError) as error:
        load_source(folder)
    assert str(error.value) == f"{folder / name}: {problem}"
    assert "\n" not in str(error.value)


def test_unreadable_or_missing_sentence_transformers_files(tmp_path):
    from converters.sources import load_source

    folder = write_st_folder(tmp_path / "st")
    (folder / "1_Pooling" / "config.json").unlink()
    with pytest.raises(SourceError) as error:
        load_source(folder)
    assert str(error.value) == f"{folder / '1_Pooling' / 'config.json'}: not found (modules.json lists it)"
    (folder / "modules.json").write_text("[{")
    with pytest.raises(SourceError, match=r"modules.json: unreadable JSON \("):
        load_source(folder)


def test_plain_hugging_face_folder_has_no_sentence_pooling(tmp_path):
    from converters.sources import load_source

    folder = write_st_folder(tmp_path / "st")
    with_pooling = load_source(folder)
    assert with_pooling.sentence_pooling.mode.value == "mean" and with_pooling.sentence_pooling.normalize
    for name in ("modules.json", "sentence_bert_config.json"):
        (folder / name).unlink()
    plain = load_source(folder)
    assert plain.sentence_pooling is None and plain.sha256 != with_pooling.sha256


# --- the real all-MiniLM-L6-v2 -------------------------------------------------------------------------

def _sst2_sentences(limit: int) -> list[str]:
    from conftest import SHARED_DATA

    path = SHARED_DATA / "glue" / "SST-2" / "dev.tsv"
    if not path.is_file():
        pytest.skip(f"SST-2 dev set not present at {path}")
    lines = path.read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0] for line in lines[:limit]]


@pytest.mark.slow
def test_real_minilm_float32_gives_what_sentence_transformers_computes(minilm_dir, tmp_path):
    from safetensors.numpy import load_file
    from tokenizers import Tokenizer

    from converters.sources import hf_to_google_name
    from edgebert.bundle import read_bundle
    from edgebert.interpreter import TFLiteModel
    from edgebert.tokenizer import encode, load_tokenizer

    result = _convert(minilm_dir, tmp_path / "minilm", quantize="float32", seq_len=128)
    manifest = result.manifest
    assert manifest["head"] == "sentence-embedding"
    assert manifest["sentence_embedding"] == {"pooling": "mean", "normalize": True, "dimension": 384,
                                              "max_seq_length": 256}
    assert manifest["validation"]["outputs"]["sentence_embedding"]["min_cosine"] >= 0.99999
    assert manifest["model"]["activation"] == "gelu_erf"

    raw = load_file(str(minilm_dir / "model.safetensors"))
    weights = {}
    for name, value in raw.items():  # the names only; orientation and the forward pass are the reference's
        google = hf_to_google_name(name)
        if google is not None:
            weights[google] = value.T if google.endswith("/kernel") else value
    bundle = read_bundle(tmp_path / "minilm")
    model, tokenizer = TFLiteModel(bundle.model_path), load_tokenizer(bundle.tokenizer_path)
    own = Tokenizer.from_file(str(minilm_dir / "tokenizer.json"))  # the model's own tokenizer
    own.no_padding()
    for text in _sst2_sentences(4):
        padded = encode(tokenizer, [text], 128)
        length = int(padded["attention_mask"].sum())
        ids = padded["input_ids"][0, :length]
        assert ids.tolist() == own.encode(text).ids
        [got] = model(**padded)["sentence_embedding"]
        sequence = bert_forward(weights, ids, np.ones(length, np.int64), np.zeros(length, np.int64), 12,
                                approximate_gelu=False)["sequence_output"]
        want = sentence_pooling(sequence, np.ones(length), "mean", True)
        assert _cosine(got, want) >= 0.99999, text
        # Measured: max |diff| ~1.3e-7. Cosine alone would not notice the tanh GELU in place of erf
        # (cosine 0.999999, max |diff| 2e-4); this does.
        np.testing.assert_allclose(got, want, atol=1e-6)


def test_rank_command_prints_the_library_ranking(st_bundle, tmp_path):
    from cli_helpers import error_line, invoke
    from edgebert.predict import rank

    texts = ["I would not go back there.", "The film was a delight from start to finish.", "Stocks fell."]
    texts_file = tmp_path / "texts.txt"
    texts_file.write_text("\n".join(texts) + "\n\n", encoding="utf-8")
    query = "A delightful film."
    expected = rank(st_bundle, query, texts, threads=1)
    result = invoke("rank", st_bundle, query, "--texts", texts_file, "--threads", "1")
    assert result.exit_code == 0, result.stderr
    assert result.stdout.splitlines() == [f"{score:.4f}  {text}" for score, text in expected]
    top = invoke("rank", st_bundle, query, "--texts", texts_file, "--top", "1", "--json")
    assert json.loads(top.stdout) == [{"score": pytest.approx(expected[0][0], abs=1e-6), "text": expected[0][1]}]
    assert error_line(invoke("rank", st_bundle, query, "--texts", tmp_path / "none.txt"), 1) == (
        f"error: {tmp_path / 'none.txt'}: not found (--texts takes a file with one text per line)")
    assert error_line(invoke("rank", st_bundle, query, "--texts", texts_file, "--top", "0"), 2) == (
        "error: --top must be at least 1, got 0")
