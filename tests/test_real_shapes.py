"""Real-sized models end to end: BERT-Tiny with the real vocab, and the BERT-Mini acceptance check."""
import numpy as np
import pytest

from conftest import REAL_VOCAB, SHARED_DATA, needs_shared

pytestmark = pytest.mark.slow


def _cosine(a, b):
    a, b = np.ravel(a).astype(np.float64), np.ravel(b).astype(np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


def _sst2_sentences(limit):
    lines = (SHARED_DATA / "glue" / "SST-2" / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0] for line in lines[:limit]]


@needs_shared(REAL_VOCAB)
def test_bert_tiny_with_the_real_vocab_end_to_end(tmp_path):
    """Google layout + real vocab -> dynamic-int8 bundle whose ids match BERT's reference tokenizer and
    whose pooled output matches an independent numpy BERT."""
    from click.testing import CliRunner

    from converters.sources import load_source
    from edgebert import tokenizer as tokenization
    from edgebert.bundle import read_bundle
    from edgebert.cli import cli
    from edgebert.interpreter import TFLiteModel
    from reference_bert import bert_forward
    from reference_tokenization import FullTokenizer, reference_encode

    runner = CliRunner()
    made = runner.invoke(cli, ["random-checkpoint", "tiny", "--out", str(tmp_path / "ckpt"), "--vocab",
                               str(REAL_VOCAB)], catch_exceptions=False)
    assert made.exit_code == 0, made.stderr
    converted = runner.invoke(cli, ["convert", str(tmp_path / "ckpt"), "--out", str(tmp_path / "bundle")],
                              catch_exceptions=False)
    assert converted.exit_code == 0, converted.stderr
    bundle = read_bundle(tmp_path / "bundle")
    assert bundle.manifest["source"]["variant"] == "uncased_L-2_H-128_A-2"
    assert bundle.manifest["validation"]["outputs"]["pooled_output"]["min_cosine"] >= 0.999

    tokenizer = tokenization.load_tokenizer(bundle.tokenizer_path)
    reference = FullTokenizer(tokenization.read_vocab(REAL_VOCAB), lowercase=True)
    source = load_source(tmp_path / "ckpt")
    model = TFLiteModel(bundle.model_path)
    for sentence in _sst2_sentences(5):
        encoded = tokenization.encode(tokenizer, [sentence], 128)
        want_ids = reference_encode(reference, [sentence], 128)
        assert all(np.array_equal(encoded[name], want_ids[name]) for name in want_ids)
        want = bert_forward(source.weights, encoded["input_ids"][0], encoded["attention_mask"][0],
                            encoded["token_type_ids"][0], num_heads=2)
        assert _cosine(model(**encoded)["pooled_output"], want["pooled_output"]) >= 0.999


def test_bert_mini_dynamic_int8_acceptance(tmp_path):
    """The converter issue's done-when: random BERT-Mini in Google layout -> dynamic-int8 bundle, pooled
    cosine >= 0.999 against the float model, builtin ops only, loadable by LiteRT by signature; and its
    outputs checked against the independent numpy BERT (tests/reference_bert.py), not only against the
    converter's own validation."""
    from ai_edge_litert.interpreter import Interpreter

    from converters.config import BertConfig
    from converters.google_checkpoint import write_random_checkpoint
    from converters.pipeline import ConvertOptions, convert
    from converters.sources import load_source
    from converters.vocab import synthetic_vocab
    from edgebert import samples, tokenizer as tokenization
    from edgebert.bundle import read_bundle
    from edgebert.variants import parse_variant

    config = BertConfig.from_variant(parse_variant("bert-mini"))
    checkpoint = write_random_checkpoint(config, tmp_path / "mini", synthetic_vocab(config.vocab_size), seed=7)
    result = convert(checkpoint, tmp_path / "bundle", ConvertOptions())
    pooled = result.manifest["validation"]["outputs"]["pooled_output"]
    assert pooled["min_cosine"] >= 0.999
    assert result.manifest["recipe"] == {"name": None, "quantize": "dynamic-int8", "seq_len": 128,
                                         "last_layer": "full", "compat": None,
                                         "calibration": None, "overrides": []}
    assert all(not op.startswith("Flex") and op != "CUSTOM" for op in result.manifest["ops"])
    assert "FULLY_CONNECTED" in result.manifest["ops"]

    bundle = read_bundle(tmp_path / "bundle")
    runner = Interpreter(model_path=str(bundle.model_path)).get_signature_runner("serving_default")
    tokenizer = tokenization.load_tokenizer(bundle.tokenizer_path)
    encoded = tokenization.encode(tokenizer, samples.load_sentences(limit=2), 128)
    first = {name: values[:1] for name, values in encoded.items()}
    assert runner(**first)["pooled_output"].shape == (1, 256)

    # The exported model against the independent numpy BERT on the same weights, at the product's
    # dynamic-int8 floors (pooled 0.999, sequence 0.99 over the real tokens).
    from reference_bert import bert_forward

    weights = load_source(checkpoint).weights
    texts = samples.load_sentences(limit=4) + samples.load_pairs(limit=2)
    for text in texts:
        ids = tokenization.encode(tokenizer, [text], 128)
        out, want = runner(**ids), bert_forward(weights, ids["input_ids"][0], ids["attention_mask"][0],
                                                ids["token_type_ids"][0], num_heads=4)
        real = ids["attention_mask"][0].astype(bool)
        assert _cosine(out["pooled_output"], want["pooled_output"]) >= 0.999, text
        assert _cosine(out["sequence_output"][0][real], want["sequence_output"][real]) >= 0.99, text
    assert 10e6 < bundle.manifest["sizes"]["model_bytes"] < 12.5e6  # ~1 byte per weight
