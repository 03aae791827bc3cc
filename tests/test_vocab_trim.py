"""Vocabulary trimming: same pieces and same outputs on the corpus, a smaller table, a smaller bundle."""
import json
import time

import numpy as np
import pytest
from conftest import REAL_VOCAB, SHARED_DATA, needs_shared

from converters.vocab_trim import id_mapping, trim_vocabulary, word_piece_ids
from edgebert import samples
from edgebert import tokenizer as tokenization
from edgebert.errors import SourceError, UsageError, ValidationError

SPECIALS = list(tokenization.SPECIAL_TOKENS)
CORPUS_SIZE = 20


@pytest.fixture(scope="module")
def tiny_source(tiny_checkpoint):
    from converters.sources import load_source
    return load_source(tiny_checkpoint)


@pytest.fixture(scope="module")
def corpus():
    """Some sample sentences and pairs; the rest of samples/ is text the trim never saw."""
    return samples.load_sentences(limit=CORPUS_SIZE) + samples.load_pairs(limit=3)


@pytest.fixture(scope="module")
def trimmed(tiny_source, corpus):
    return trim_vocabulary(tiny_source, corpus)


def _segments(texts):
    return [s for text in texts for s in (text if isinstance(text, tuple) else (text,))]


def _pieces(source, texts):
    return [[source.vocab[i] for i in ids] for ids in word_piece_ids(source.vocab, source.lowercase, texts)]


def test_trimmed_source_is_smaller_and_consistent(tiny_source, trimmed):
    new, report = trimmed
    assert new.config.vocab_size == len(new.vocab) == report["vocab_size"] < len(tiny_source.vocab)
    assert new.vocab[:5] == SPECIALS  # the [unused*] rows between them are gone, the order stays
    assert not any(token.startswith("[unused") for token in new.vocab)
    original_ids = id_mapping(tiny_source.vocab, new.vocab)
    assert list(original_ids) == sorted(original_ids)  # original order
    table, new_table = (s.weights["bert/embeddings/word_embeddings"] for s in (tiny_source, new))
    assert new_table.shape == (len(new.vocab), tiny_source.config.hidden_size)
    assert np.array_equal(new_table, table[original_ids])
    assert np.array_equal(new.weights["cls/predictions/output_bias"],
                          tiny_source.weights["cls/predictions/output_bias"][original_ids])
    others = set(tiny_source.weights) - {"bert/embeddings/word_embeddings", "cls/predictions/output_bias"}
    assert all(new.weights[name] is tiny_source.weights[name] for name in others)
    # the original is untouched, the new one says it is different
    assert tiny_source.weights["bert/embeddings/word_embeddings"].shape[0] == tiny_source.config.vocab_size
    assert new.path == tiny_source.path and new.sha256 != tiny_source.sha256 and len(new.sha256) == 64
    assert new.kind == "google-checkpoint+trimmed-vocab" and new.lowercase == tiny_source.lowercase
    assert report["original_vocab_size"] == len(tiny_source.vocab)
    assert report["embedding_bytes_after"] == len(new.vocab) * tiny_source.config.hidden_size * 4
    assert report["embedding_int8_bytes_before"] == len(tiny_source.vocab) * tiny_source.config.hidden_size
    assert sum(report["kept_by_reason"].values()) == len(new.vocab)
    assert report["kept_by_reason"]["special"] == 5 and report["kept_by_reason"]["corpus"] > 0
    assert report["corpus"]["coverage"] == 1.0 and report["corpus"]["segments_retokenized_differently"] == 0
    json.dumps(report)  # fit for a manifest


def test_corpus_gets_the_same_pieces_and_exactly_the_same_outputs(tiny_source, trimmed, corpus):
    from reference_bert import bert_forward

    new, _ = trimmed
    assert _pieces(new, corpus) == _pieces(tiny_source, corpus)
    before = tokenization.build_tokenizer(tiny_source.vocab, tiny_source.lowercase, 32)
    after = tokenization.build_tokenizer(new.vocab, new.lowercase, 32)
    original_ids = id_mapping(tiny_source.vocab, new.vocab)
    for text in corpus:
        a, b = tokenization.encode(before, [text], 32), tokenization.encode(after, [text], 32)
        assert np.array_equal(original_ids[b["input_ids"][0]], a["input_ids"][0])
        assert np.array_equal(a["attention_mask"], b["attention_mask"])
        assert np.array_equal(a["token_type_ids"], b["token_type_ids"])
        outputs = [bert_forward(source.weights, e["input_ids"][0], e["attention_mask"][0], e["token_type_ids"][0],
                                source.config.num_heads) for source, e in ((tiny_source, a), (new, b))]
        for name in ("pooled_output", "sequence_output"):
            assert np.array_equal(outputs[0][name], outputs[1][name]), (name, text)


def test_unseen_text_splits_into_characters_not_unk(tiny_source, trimmed, corpus):
    new, _ = trimmed
    unseen = samples.load_sentences()[CORPUS_SIZE:]
    new_words = [w for pieces in _pieces(tiny_source, unseen) for w in pieces if w not in new.vocab]
    assert new_words, "the unseen sentences should use pieces the trim removed"
    unknowns = [pieces.count("[UNK]") for pieces in _pieces(tiny_source, unseen)]  # words outside ASCII
    assert [pieces.count("[UNK]") for pieces in _pieces(new, unseen)] == unknowns  # no new [UNK]
    bare, _ = trim_vocabulary(tiny_source, corpus, keep_characters="none")
    assert len(bare.vocab) < len(new.vocab)
    assert sum(pieces.count("[UNK]") for pieces in _pieces(bare, unseen)) > sum(unknowns)  # what they prevent
    assert _pieces(bare, corpus) == _pieces(tiny_source, corpus)


def test_greedy_longest_match_keeps_the_corpus_segmentation_on_a_vocab_literal():
    vocab = SPECIALS + ["un", "##want", "##ed", "unwanted", "runn", "##ing", "run", "##n",
                        "u", "n", "w", "a", "t", "e", "d", "r", "i", "g",
                        "##u", "##n", "##w", "##a", "##t", "##e", "##d", "##r", "##i", "##g"]
    vocab = list(dict.fromkeys(vocab))

    def pieces(v, text):
        return [v[i] for i in word_piece_ids(v, True, [text])[0]]

    assert pieces(vocab, "unwanted running") == ["unwanted", "runn", "##ing"]
    assert pieces(vocab, "unwant") == ["un", "##want"]
    kept = [t for t in vocab if t not in ("un", "##want", "##ed", "run")]  # all of the corpus's pieces stay
    assert pieces(kept, "unwanted running") == ["unwanted", "runn", "##ing"]
    assert pieces(kept, "unwant") == ["u", "##n", "##w", "##a", "##n", "##t"]  # unseen: characters
    without_used = [t for t in vocab if t != "runn"]  # drop one used piece and the corpus re-segments
    assert pieces(without_used, "running") == ["run", "##n", "##ing"]


def test_any_subset_that_keeps_the_used_pieces_gives_the_same_segmentation(tiny_source):
    """Greedy longest-match over a sub-vocabulary: random extra removals never change the corpus."""
    texts = samples.load_sentences(limit=40)
    vocab = tiny_source.vocab
    original = word_piece_ids(vocab, True, texts)
    needed = {i for ids in original for i in ids} | {vocab.index(t) for t in SPECIALS}
    rng = np.random.default_rng(0)
    for _ in range(5):
        keep = sorted(needed | {i for i in range(len(vocab)) if rng.random() < 0.3})
        sub = [vocab[i] for i in keep]
        assert [[sub[i] for i in ids] for ids in word_piece_ids(sub, True, texts)] == \
               [[vocab[i] for i in ids] for ids in original]


def test_min_count_and_extra_tokens(tiny_source, corpus):
    rare, report = trim_vocabulary(tiny_source, corpus, keep_min_count=2, extra_tokens=["[unused5]", "pharmacy"])
    assert "[unused5]" in rare.vocab and "pharmacy" in rare.vocab
    assert report["kept_by_reason"]["extra"] >= 1
    assert report["corpus"]["coverage"] < 1.0 and report["corpus"]["segments_retokenized_differently"] > 0
    # rare words are re-segmented into characters, never [UNK] ('€18' was [UNK] already)
    assert [p.count("[UNK]") for p in _pieces(rare, corpus)] == [p.count("[UNK]") for p in _pieces(tiny_source, corpus)]


def test_bad_arguments(tiny_source, corpus):
    with pytest.raises(UsageError, match="extra token\\(s\\) not in the vocabulary: 'zzzq'"):
        trim_vocabulary(tiny_source, corpus, extra_tokens=["zzzq"])
    with pytest.raises(UsageError, match="keep_min_count must be a positive integer"):
        trim_vocabulary(tiny_source, corpus, keep_min_count=0)
    with pytest.raises(UsageError, match="keep_characters must be one of all, ascii, none"):
        trim_vocabulary(tiny_source, corpus, keep_characters="some")
    with pytest.raises(UsageError, match="the corpus is empty"):
        trim_vocabulary(tiny_source, [])
    with pytest.raises(UsageError, match="not one string"):
        trim_vocabulary(tiny_source, "a sentence")
    with pytest.raises(UsageError, match="corpus text 1 must be a str or a \\(str, str\\) pair"):
        trim_vocabulary(tiny_source, ["fine", ("a", "b", "c")])


def test_mismatched_source_is_refused(tiny_source, corpus):
    import dataclasses

    short = dataclasses.replace(tiny_source, vocab=tiny_source.vocab[:-1])
    with pytest.raises(SourceError, match="vocab has 1347 tokens but the config says 1348"):
        trim_vocabulary(short, corpus)


def test_a_changed_segmentation_fails_the_trim(tiny_source, corpus, monkeypatch):
    from converters import vocab_trim

    real, calls = vocab_trim.word_piece_ids, []

    def second_call_differs(vocab, lowercase, texts):
        calls.append(1)
        ids = real(vocab, lowercase, texts)
        return ids if len(calls) == 1 else [ids[0][:-1]] + ids[1:]
    monkeypatch.setattr(vocab_trim, "word_piece_ids", second_call_differs)
    with pytest.raises(ValidationError, match="re-tokenized differently after trimming = 1, threshold 0"):
        trim_vocabulary(tiny_source, corpus)


def test_trimmed_source_converts_to_a_smaller_bundle_with_the_same_outputs(trimmed, corpus, tiny_bundle, tmp_path):
    from converters.pipeline import ConvertOptions, convert
    from edgebert.bundle import read_bundle
    from edgebert.interpreter import TFLiteModel

    new, report = trimmed
    result = convert(new.path, tmp_path / "trimmed", ConvertOptions(seq_len=32, validation_size=8), source=new)
    small, full = read_bundle(result.bundle_dir), read_bundle(tiny_bundle)
    assert small.manifest["tokenizer"]["vocab_size"] == len(new.vocab) == small.manifest["model"]["vocab_size"]
    assert small.manifest["source"]["sha256"] == new.sha256
    small_bytes, full_bytes = small.model_path.stat().st_size, full.model_path.stat().st_size
    saved_rows = report["original_vocab_size"] - report["vocab_size"]
    assert small_bytes < full_bytes - saved_rows * new.config.hidden_size * 0.9  # ~1 byte per int8 weight
    print(f"\ntiny dynamic-int8: {full_bytes:,} -> {small_bytes:,} bytes, vocab "
          f"{report['original_vocab_size']} -> {report['vocab_size']}")

    runners = [(TFLiteModel(b.model_path), tokenization.load_tokenizer(b.tokenizer_path)) for b in (full, small)]
    for text in corpus:
        (a_model, a_tok), (b_model, b_tok) = runners
        a_in, b_in = tokenization.encode(a_tok, [text], 32), tokenization.encode(b_tok, [text], 32)
        assert [a_tok.id_to_token(i) for i in a_in["input_ids"][0]] == \
               [b_tok.id_to_token(i) for i in b_in["input_ids"][0]]
        a_out, b_out = a_model(**a_in)["pooled_output"][0], b_model(**b_in)["pooled_output"][0]
        assert float(a_out @ b_out / np.linalg.norm(a_out) / np.linalg.norm(b_out)) > 0.9999
        assert np.abs(a_out - b_out).max() < 1e-2


# --- the real vocabulary -------------------------------------------------------------------------------

GLUE_SST2 = SHARED_DATA / "glue" / "SST-2"


def _sst2_texts(split):
    from converters.tasks import load_task
    return load_task(GLUE_SST2 / f"{split}.tsv").texts


@needs_shared(REAL_VOCAB)
@needs_shared(GLUE_SST2 / "train.tsv")
def test_real_vocab_trimmed_to_sst2(capsys):
    """How far SST-2's text shrinks the real uncased vocab (no model: a source with only an embedding
    table is enough for the trim)."""
    from converters.config import BertConfig
    from converters.sources import Source
    from edgebert.variants import parse_variant

    vocab = tokenization.read_vocab(REAL_VOCAB)
    config = BertConfig.from_variant(parse_variant("tiny"), vocab_size=len(vocab))
    table = np.zeros((len(vocab), config.hidden_size), np.float32)
    table[:, 0] = np.arange(len(vocab))
    source = Source(path=REAL_VOCAB, kind="test", config=config, lowercase=True, vocab=vocab,
                    weights={"bert/embeddings/word_embeddings": table}, sha256="0" * 64)
    corpus = _sst2_texts("train") + _sst2_texts("dev")
    new, report = trim_vocabulary(source, corpus)
    assert 10_000 < report["vocab_size"] < 16_000 and report["corpus"]["unk_tokens"] == 0
    assert new.vocab[:5] == SPECIALS
    ids = new.weights["bert/embeddings/word_embeddings"][:, 0].astype(int)
    assert [vocab[i] for i in ids] == new.vocab
    with capsys.disabled():
        print(f"\nSST-2 train+dev: vocab {report['original_vocab_size']} -> {report['vocab_size']} "
              f"(kept {report['kept_by_reason']}); "
              f"int8 embedding bytes {report['embedding_int8_bytes_before']:,} -> "
              f"{report['embedding_int8_bytes_after']:,}")


@pytest.mark.slow
@needs_shared(REAL_VOCAB)
@needs_shared(GLUE_SST2 / "train.tsv")
def test_bert_tiny_trimmed_to_sst2_bundle_size_and_dev_outputs(tmp_path, capsys):
    """The issue's target: a BERT-Tiny dynamic-int8 bundle 2.5x smaller, same outputs on SST-2 dev."""
    from converters.config import BertConfig
    from converters.google_checkpoint import write_random_checkpoint
    from converters.pipeline import ConvertOptions, convert
    from converters.sources import load_source
    from edgebert.bundle import read_bundle
    from edgebert.interpreter import TFLiteModel
    from edgebert.variants import parse_variant

    started = time.perf_counter()
    vocab = tokenization.read_vocab(REAL_VOCAB)
    config = BertConfig.from_variant(parse_variant("tiny"), vocab_size=len(vocab))
    source = load_source(write_random_checkpoint(config, tmp_path / "tiny", vocab, seed=3))
    dev = _sst2_texts("dev")
    trimmed, report = trim_vocabulary(source, _sst2_texts("train") + dev)
    options = ConvertOptions(seq_len=128, validation_size=8)
    bundles = [read_bundle(convert(s.path, tmp_path / name, options, source=s).bundle_dir)
               for name, s in (("full", source), ("trimmed", trimmed))]
    sizes = [b.model_path.stat().st_size for b in bundles]
    totals = [sum(f.stat().st_size for f in b.path.iterdir()) for b in bundles]  # + tokenizer.json etc.

    runners = [(TFLiteModel(b.model_path, num_threads=1), tokenization.load_tokenizer(b.tokenizer_path))
               for b in bundles]
    cosines, diffs = [], []
    for text in dev:
        pooled = []
        for model, tok in runners:
            pooled.append(model(**tokenization.encode(tok, [text], 128))["pooled_output"][0])
        cosines.append(float(pooled[0] @ pooled[1] / np.linalg.norm(pooled[0]) / np.linalg.norm(pooled[1])))
        diffs.append(float(np.abs(pooled[0] - pooled[1]).max()))
    ratio = sizes[0] / sizes[1]
    rest = sizes[0] - report["embedding_int8_bytes_before"]
    rows_for_target = int((sizes[0] / 2.5 - rest) // config.hidden_size)
    with capsys.disabled():
        print(f"\nBERT-Tiny dynamic-int8, SST-2 train+dev vocab: {sizes[0]:,} -> {sizes[1]:,} bytes "
              f"({ratio:.2f}x smaller; whole bundle {totals[0]:,} -> {totals[1]:,}, "
              f"{totals[0] / totals[1]:.2f}x); vocab {report['original_vocab_size']} -> {report['vocab_size']}; "
              f"non-embedding part ~{rest:,} bytes; 2.5x needs <= {rows_for_target:,} rows; "
              f"dev pooled cosine min {min(cosines):.6f}, max |diff| {max(diffs):.3g}; "
              f"{time.perf_counter() - started:.0f} s")
    assert ratio > 1.5
    assert min(cosines) > 0.9999
