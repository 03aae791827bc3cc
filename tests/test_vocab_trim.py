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

    def second_call_differs(vocab, lowercase, texts, *limit):
        calls.append(1)
        ids = real(vocab, lowercase, texts, *limit)
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


# --- a size budget ------------------------------------------------------------------------------------

def _required_rows(vocab):
    characters = [t for t in vocab if len(t) == 1 or (len(t) == 3 and t.startswith("##"))]
    return len(SPECIALS) + len(characters)


def test_budget_keeps_the_most_frequent_pieces_and_resegments_the_rest(tiny_source, corpus):
    from collections import Counter

    full, full_report = trim_vocabulary(tiny_source, corpus)
    required = _required_rows(tiny_source.vocab)
    budget = required + (len(full.vocab) - required) // 2
    new, report = trim_vocabulary(tiny_source, corpus, max_tokens=budget)
    assert len(new.vocab) == new.config.vocab_size == report["vocab_size"] == budget
    assert report["max_tokens"] == budget and report["dropped_for_budget"] == len(full.vocab) - budget
    assert set(new.vocab) < set(full.vocab) and new.vocab[:5] == SPECIALS
    assert all(t in new.vocab for t in tiny_source.vocab if len(t) == 1 or (len(t) == 3 and t.startswith("##")))
    # every corpus piece kept is at least as frequent as every one dropped
    counts = Counter(i for ids in word_piece_ids(tiny_source.vocab, True, corpus) for i in ids)
    kept = {tiny_source.vocab.index(t) for t in new.vocab}
    dropped = [counts[i] for i in counts if i not in kept]
    kept_words = [counts[i] for i in counts if i in kept and len(tiny_source.vocab[i].removeprefix("##")) > 1]
    assert dropped and min(kept_words) >= max(dropped)
    # dropped pieces re-segment into kept ones, never [UNK]; the report counts what changed
    before, after = _pieces(tiny_source, corpus), _pieces(new, corpus)
    assert all(piece in new.vocab for pieces in after for piece in pieces)
    assert [p.count("[UNK]") for p in after] == [p.count("[UNK]") for p in before]
    changed_segments = sum(a != b for a, b in zip(_pieces(tiny_source, _segments(corpus)),
                                                   _pieces(new, _segments(corpus))))
    c = report["corpus"]
    assert c["segments_retokenized_differently"] == changed_segments > 0
    assert 0 < c["texts_retokenized_differently"] <= changed_segments
    assert c["tokens_after"] == sum(map(len, after)) > c["tokens"] == sum(map(len, before))
    assert c["coverage"] == pytest.approx(sum(n for i, n in counts.items() if i in kept) / sum(counts.values()))
    assert 0 < c["coverage"] < full_report["corpus"]["coverage"] == 1.0
    # fewer characters leave more of the same budget to corpus pieces (but rare words may become [UNK])
    _, bare_report = trim_vocabulary(tiny_source, corpus, max_tokens=budget, keep_characters="none")
    assert bare_report["corpus"]["coverage"] > c["coverage"]
    # a budget larger than needed changes nothing, and the identical-segmentation check applies
    roomy, roomy_report = trim_vocabulary(tiny_source, corpus, max_tokens=len(full.vocab) + 10)
    assert roomy.vocab == full.vocab and roomy_report["dropped_for_budget"] == 0
    assert roomy_report["corpus"]["segments_retokenized_differently"] == 0


def test_budget_too_small_says_how_many_rows_are_needed(tiny_source, corpus):
    required = _required_rows(tiny_source.vocab)
    with pytest.raises(UsageError, match=rf"--max-tokens {required} is too small: the special tokens, "
                                         rf"characters \(keep_characters=all\) and extra tokens need {required + 1} "
                                         rf"rows \(5 special, {required - 5} character, 1 extra\)"):
        trim_vocabulary(tiny_source, corpus, max_tokens=required, extra_tokens=["[unused5]"])
    exact, report = trim_vocabulary(tiny_source, corpus, max_tokens=required + 1, extra_tokens=["[unused5]"])
    kept = report["kept_by_reason"]  # characters the corpus uses count as "corpus"
    assert len(exact.vocab) == required + 1 and kept["corpus"] + kept["character"] == required - 5
    assert report["dropped_for_budget"] > 0 and kept["extra"] == 1
    for bad in (0, -3, True, 2.5):
        with pytest.raises(UsageError, match="--max-tokens must be a positive integer"):
            trim_vocabulary(tiny_source, corpus, max_tokens=bad)
    bare, report = trim_vocabulary(tiny_source, corpus, max_tokens=5, keep_characters="none")
    assert bare.vocab == SPECIALS and report["corpus"]["unk_tokens_after"] > 0  # allowed, and reported


def test_trim_appends_its_record_to_the_history(tiny_source, trimmed, tmp_path):
    from converters.vocab_trim import write_trimmed

    new, report = trimmed
    assert tiny_source.history == [] and new.history == [{"step": "vocab-trim", **report}]
    again, again_report = trim_vocabulary(new, ["the film"])
    assert [h["step"] for h in again.history] == ["vocab-trim", "vocab-trim"]
    assert again.history[-1]["original_vocab_size"] == len(new.vocab)
    with pytest.raises(UsageError, match="write_trimmed takes the Source that trim_vocabulary returned"):
        write_trimmed(tiny_source, report, tmp_path / "x")
    with pytest.raises(UsageError, match="write_trimmed takes the Source"):
        write_trimmed(new, again_report, tmp_path / "x")
    assert not (tmp_path / "x").exists()


# --- the trim-vocab command ----------------------------------------------------------------------------

def _words():
    from converters.vocab import synthetic_vocab
    return [t for t in synthetic_vocab(None) if t.isalpha() and len(t) > 1]


@pytest.fixture(scope="module")
def corpus_files(tmp_path_factory):
    """A .txt and a GLUE-style TSV of sentences made of the synthetic vocab's words (and some digits)."""
    rng = np.random.default_rng(7)
    words = _words()
    sentences = [" ".join(rng.choice(words[:60], size=int(rng.integers(3, 9)))) + f" {i}." for i in range(24)]
    root = tmp_path_factory.mktemp("corpus")
    (root / "corpus.txt").write_text("\n".join(sentences[:12]) + "\n\n", encoding="utf-8")
    (root / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n" for i, s in enumerate(sentences[12:])),
                                    encoding="utf-8")
    return root / "corpus.txt", root / "train.tsv", sentences


@pytest.fixture(scope="module")
def cli_trim(tiny_checkpoint, corpus_files, tmp_path_factory):
    from cli_helpers import invoke

    txt, tsv, _ = corpus_files
    out = tmp_path_factory.mktemp("trim-cli") / "tiny-trimmed"
    return invoke("trim-vocab", tiny_checkpoint, "--corpus", txt, "--corpus", tsv, "--out", out), out


SUMMARY = (r"(?P<out>\S+)  vocab 1,348 -> (?P<after>[\d,]+) tokens; int8 embedding (?P<before_bytes>[\d,]+) -> "
           r"(?P<after_bytes>[\d,]+) bytes; corpus coverage (?P<coverage>[\d.]+)%; (?P<changed>[\d,]+) of 24 texts "
           r"re-segmented(?P<kept>; every label kept)?\n")


def test_cli_writes_a_checkpoint_that_converts_with_the_trim_in_its_history(cli_trim, tiny_checkpoint, corpus_files,
                                                                           tiny_source, seq16_bundles):
    import re

    from converters.sources import load_source
    from edgebert.bundle import read_bundle

    result, out = cli_trim
    assert result.exit_code == 0, result.output
    match = re.fullmatch(SUMMARY, result.stdout)
    assert match and match["out"] == str(out), result.stdout
    assert result.stderr.splitlines() == ["read 24 texts from 2 corpus file(s)", f"reading {tiny_checkpoint}",
                                          "trimming the vocabulary of 1,348 tokens", f"writing {out}"]
    source = load_source(out)
    expected, report = trim_vocabulary(tiny_source, corpus_files[2])  # the same texts, given directly
    assert source.vocab == expected.vocab and source.history == [{"step": "vocab-trim", **report}]
    assert source.vocab == expected.vocab and int(match["after"].replace(",", "")) == len(source.vocab)
    assert match["coverage"] == "100.00" and match["changed"] == "0"
    assert int(match["after_bytes"].replace(",", "")) == len(source.vocab) * source.config.hidden_size
    assert source.config.vocab_size == len(source.vocab) < 1348 and source.kind == "google-checkpoint"
    assert source.random_weights and source.lowercase and source.labels == []
    assert [h["step"] for h in source.history] == ["vocab-trim"]
    assert source.history[0]["vocab_size"] == len(source.vocab) and source.history[0]["max_tokens"] is None
    assert np.array_equal(source.weights["bert/embeddings/word_embeddings"],
                          expected.weights["bert/embeddings/word_embeddings"])

    bundle = read_bundle(seq16_bundles[1])  # convert(out, ..., ConvertOptions(seq_len=16, validation_size=4))
    assert bundle.manifest["source"]["path"] == str(out)
    assert bundle.manifest["source"]["history"] == source.history
    assert bundle.manifest["tokenizer"]["vocab_size"] == len(source.vocab)


@pytest.fixture(scope="module")
def seq16_bundles(cli_trim, tiny_checkpoint, tmp_path_factory):
    from converters.pipeline import ConvertOptions, convert

    _, trimmed_dir = cli_trim
    root = tmp_path_factory.mktemp("seq16")
    options = ConvertOptions(seq_len=16, validation_size=4)
    return [convert(source, root / name, options).bundle_dir
            for name, source in (("full", tiny_checkpoint), ("trimmed", trimmed_dir))]


def test_without_a_budget_the_trimmed_bundle_gives_identical_outputs_on_the_corpus(seq16_bundles, corpus_files):
    from edgebert.bundle import read_bundle
    from edgebert.interpreter import TFLiteModel

    full, small = (read_bundle(path) for path in seq16_bundles)
    assert small.model_path.stat().st_size < full.model_path.stat().st_size
    runners = [(TFLiteModel(b.model_path), tokenization.load_tokenizer(b.tokenizer_path)) for b in (full, small)]
    for text in corpus_files[2]:
        (a_model, a_tok), (b_model, b_tok) = runners
        a_in, b_in = tokenization.encode(a_tok, [text], 16), tokenization.encode(b_tok, [text], 16)
        assert [a_tok.id_to_token(i) for i in a_in["input_ids"][0]] == \
               [b_tok.id_to_token(i) for i in b_in["input_ids"][0]]
        a_out, b_out = a_model(**a_in), b_model(**b_in)
        for name in ("sequence_output", "pooled_output"):
            assert np.array_equal(a_out[name], b_out[name]), (name, text)


def test_cli_budget_and_character_options(tiny_checkpoint, corpus_files, tmp_path):
    import re

    from cli_helpers import invoke
    from converters.sources import load_source

    txt, tsv, _ = corpus_files
    result = invoke("trim-vocab", tiny_checkpoint, "--corpus", txt, "--corpus", tsv, "--out", tmp_path / "t",
                    "--max-tokens", 60, "--keep-characters", "none", "--min-count", 1)
    assert result.exit_code == 0, result.output
    match = re.fullmatch(SUMMARY, result.stdout)
    assert match and match["after"] == "60" and float(match["coverage"]) < 100 and int(match["changed"]) > 0
    source = load_source(tmp_path / "t")
    assert len(source.vocab) == 60 and source.history[-1]["max_tokens"] == 60
    assert source.history[-1]["keep_characters"] == "none"


def test_cli_keep_predictions_on_a_classifier(tiny_classifier_checkpoint, corpus_files, tmp_path):
    import re

    from cli_helpers import invoke
    from converters.finetune import predict_labels
    from converters.sources import load_source

    txt, tsv, texts = corpus_files
    result = invoke("trim-vocab", tiny_classifier_checkpoint, "--corpus", txt, "--corpus", tsv, "--out",
                    tmp_path / "t", "--max-tokens", 170, "--keep-predictions", "--seq-len", 32)
    assert result.exit_code == 0, result.output
    match = re.fullmatch(SUMMARY, result.stdout)
    assert match and match["after"] == "170" and int(match["changed"]) > 0 and match["kept"]
    assert re.search(r"^round 1: [\d,]+ texts re-segmented, [\d,]+ changed label$", result.stderr, re.M)
    source, original = load_source(tmp_path / "t"), load_source(tiny_classifier_checkpoint)
    assert source.history[-1]["kept_predictions"]["labels_changed"] == 0 and source.num_labels == 3
    assert (predict_labels(source, texts, 32) == predict_labels(original, texts, 32)).all()


def test_cli_errors_are_one_line(tiny_checkpoint, corpus_files, tmp_path):
    from cli_helpers import error_line, invoke

    txt = corpus_files[0]
    out = tmp_path / "out"

    def refused(*corpus, exit_code=1, progress=(), extra=()):
        args = [a for c in corpus for a in ("--corpus", c)]
        line = error_line(invoke("trim-vocab", tiny_checkpoint, *args, "--out", out, *extra), exit_code, progress)
        assert not out.exists() and [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
        return line

    missing = tmp_path / "nope.txt"
    assert refused(txt, missing) == f"error: {missing}: corpus file not found"
    binary = tmp_path / "latin1.txt"
    binary.write_bytes("good line\ncaf\xe9\n".encode("latin-1"))
    assert refused(binary) == f"error: {binary}: not UTF-8 (bad byte 0xe9 at offset 13, line 2)"
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    assert refused(empty) == f"error: {empty}: corpus file is empty"
    empty_tsv = tmp_path / "empty.tsv"
    empty_tsv.write_text("", encoding="utf-8")
    assert refused(empty_tsv) == f"error: {empty_tsv}: task file is empty"
    progress = ("read 12 texts from 1 corpus file(s)", f"reading {tiny_checkpoint}",
                "trimming the vocabulary of 1,348 tokens")
    assert refused(txt, exit_code=2, progress=progress, extra=("--max-tokens", "10")).startswith(
        "error: --max-tokens 10 is too small: the special tokens, characters (keep_characters=all) and extra "
        "tokens need 141 rows")
    assert refused(txt, exit_code=2, progress=progress, extra=("--min-count", "0")) == \
        "error: keep_min_count must be a positive integer, got 0"
    assert refused(txt, exit_code=2, progress=progress, extra=("--keep-predictions",)) == \
        f"error: {tiny_checkpoint}: has no classifier head: --keep-predictions needs a fine-tuned classifier " \
        "(edgebert finetune makes one)"
    out.mkdir()
    assert error_line(invoke("trim-vocab", tiny_checkpoint, "--corpus", txt, "--out", out), 1) == \
        f"error: {out}: already exists (pass --force to replace it)"


# --- the real vocabulary -------------------------------------------------------------------------------

GLUE_SST2 = SHARED_DATA / "glue" / "SST-2"


def _sst2_texts(split):
    from edgebert.tasks import load_task
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


@pytest.fixture(scope="module")
def bert_tiny_sst2(tmp_path_factory):
    """A random-weight BERT-Tiny with the real vocab, its dynamic-int8 s128 bundle, and SST-2's texts."""
    if not (REAL_VOCAB.is_file() and (GLUE_SST2 / "train.tsv").is_file()):
        pytest.skip(f"reference data not present at {REAL_VOCAB} and {GLUE_SST2}")
    from converters.config import BertConfig
    from converters.google_checkpoint import write_random_checkpoint
    from converters.pipeline import ConvertOptions, convert
    from converters.sources import load_source
    from edgebert.bundle import read_bundle
    from edgebert.variants import parse_variant

    root = tmp_path_factory.mktemp("bert-tiny-sst2")
    vocab = tokenization.read_vocab(REAL_VOCAB)
    config = BertConfig.from_variant(parse_variant("tiny"), vocab_size=len(vocab))
    checkpoint = write_random_checkpoint(config, root / "tiny", vocab, seed=3)
    source = load_source(checkpoint)
    options = ConvertOptions(seq_len=128, validation_size=8)
    full = read_bundle(convert(checkpoint, root / "full", options, source=source).bundle_dir)
    return {"root": root, "checkpoint": checkpoint, "source": source, "options": options, "full": full,
            "train": _sst2_texts("train"), "dev": _sst2_texts("dev")}


def _bundle_bytes(bundle):
    return bundle.model_path.stat().st_size, sum(f.stat().st_size for f in bundle.path.iterdir())


def _pooled_outputs(bundle, texts):
    from edgebert.interpreter import TFLiteModel

    model, tok = TFLiteModel(bundle.model_path, num_threads=1), tokenization.load_tokenizer(bundle.tokenizer_path)
    return [model(**tokenization.encode(tok, [text], 128))["pooled_output"][0] for text in texts]


@pytest.mark.slow
@needs_shared(REAL_VOCAB)
@needs_shared(GLUE_SST2 / "train.tsv")
def test_bert_tiny_trimmed_to_sst2_bundle_size_and_dev_outputs(bert_tiny_sst2, capsys):
    """Every piece SST-2 uses: a smaller bundle with the same outputs on SST-2 dev."""
    from converters.pipeline import convert
    from edgebert.bundle import read_bundle

    started = time.perf_counter()
    data, config = bert_tiny_sst2, bert_tiny_sst2["source"].config
    dev = data["dev"]
    trimmed, report = trim_vocabulary(data["source"], data["train"] + dev)
    bundles = [data["full"], read_bundle(convert(trimmed.path, data["root"] / "trimmed", data["options"],
                                                 source=trimmed).bundle_dir)]
    (sizes, totals) = zip(*map(_bundle_bytes, bundles))

    full_out, small_out = (_pooled_outputs(b, dev) for b in bundles)
    cosines = [float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(full_out, small_out)]
    diffs = [float(np.abs(a - b).max()) for a, b in zip(full_out, small_out)]
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


@pytest.mark.slow
@needs_shared(REAL_VOCAB)
@needs_shared(GLUE_SST2 / "train.tsv")
def test_bert_tiny_trimmed_to_a_budget_is_2_5x_smaller(bert_tiny_sst2, capsys):
    """The issue's target, through the command: `edgebert trim-vocab --max-tokens N --keep-characters ascii`
    with N the most rows a 2.5x smaller model.tflite allows; the dev texts whose segmentation did not
    change give exactly the full model's outputs."""
    from cli_helpers import invoke
    from converters.pipeline import convert
    from converters.sources import load_source
    from edgebert.bundle import read_bundle

    started = time.perf_counter()
    data = bert_tiny_sst2
    full, hidden = data["full"], data["source"].config.hidden_size
    full_size = _bundle_bytes(full)[0]
    rest = full_size - len(data["source"].vocab) * hidden  # everything but the int8 word embeddings
    budget = int((full_size / 2.5 - rest) // hidden) - 16  # a little room for the file's own overhead
    corpus = data["root"] / "sst2.txt"
    corpus.write_text("\n".join(data["dev"]) + "\n", encoding="utf-8")
    lines = {}
    for characters in ("ascii", "all"):
        out = data["root"] / f"trimmed-{characters}"
        result = invoke("trim-vocab", data["checkpoint"], "--corpus", GLUE_SST2 / "train.tsv", "--corpus", corpus,
                        "--out", out, "--max-tokens", budget, "--keep-characters", characters)
        assert result.exit_code == 0, result.output
        lines[characters] = result.stdout.strip()
    trimmed = load_source(data["root"] / "trimmed-ascii")
    report = trimmed.history[-1]
    assert report["step"] == "vocab-trim" and len(trimmed.vocab) == budget
    small = read_bundle(convert(trimmed.path, data["root"] / "budget", data["options"]).bundle_dir)
    assert small.manifest["source"]["history"][-1] == report
    (sizes, totals) = zip(*map(_bundle_bytes, (full, small)))
    ratio = sizes[0] / sizes[1]

    dev = data["dev"]
    full_tok, small_tok = (tokenization.load_tokenizer(b.tokenizer_path) for b in (full, small))
    same = [text for text in dev
            if [full_tok.id_to_token(i) for i in tokenization.encode(full_tok, [text], 128)["input_ids"][0]] ==
               [small_tok.id_to_token(i) for i in tokenization.encode(small_tok, [text], 128)["input_ids"][0]]]
    changed = [text for text in dev if text not in set(same)]
    assert all(np.array_equal(a, b) for a, b in zip(_pooled_outputs(full, same), _pooled_outputs(small, same)))
    changed_full, changed_small = _pooled_outputs(full, changed), _pooled_outputs(small, changed)
    cosines = [float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) for a, b in zip(changed_full, changed_small)]
    corpus_report = report["corpus"]
    with capsys.disabled():
        print(f"\nBERT-Tiny dynamic-int8, SST-2 train+dev, --max-tokens {budget}: model.tflite {sizes[0]:,} -> "
              f"{sizes[1]:,} bytes ({ratio:.2f}x smaller; whole bundle {totals[0]:,} -> {totals[1]:,}, "
              f"{totals[0] / totals[1]:.2f}x); coverage {corpus_report['coverage']:.2%}, "
              f"{corpus_report['texts_retokenized_differently']:,} of {corpus_report['texts']:,} texts re-segmented, "
              f"pieces {corpus_report['tokens']:,} -> {corpus_report['tokens_after']:,}, [UNK] "
              f"{corpus_report['unk_tokens']} -> {corpus_report['unk_tokens_after']}; dev: {len(changed)} of "
              f"{len(dev)} texts re-segmented (pooled cosine to the full model: min "
              f"{min(cosines, default=1):.4f}, mean {np.mean(cosines) if cosines else 1:.4f}), the rest identical; "
              f"{time.perf_counter() - started:.0f} s")
        for characters, line in lines.items():
            print(f"  --keep-characters {characters}: {line.split('  ', 1)[1]}")
    assert ratio >= 2.5
    assert corpus_report["unk_tokens_after"] == 0 and corpus_report["coverage"] > 0.98


def _parity_of_pieces(source, texts):
    """A stand-in classifier whose label flips with the parity of a text's piece count: most
    re-segmentations change it, so a budget trim changes many labels."""
    counts = {}
    for index, ids in zip([i for i, t in enumerate(texts) for _ in (t if isinstance(t, tuple) else (t,))],
                          word_piece_ids(source.vocab, source.lowercase, texts)):
        counts[index] = counts.get(index, 0) + len(ids)
    return np.array([counts[i] % 2 for i in range(len(texts))])


def test_budget_trim_keeping_predictions_keeps_every_corpus_label(tiny_source, corpus):
    from converters.vocab_trim import trim_keeping_predictions

    full, _ = trim_vocabulary(tiny_source, corpus, keep_characters="ascii")
    budget = full.config.vocab_size - 25
    plain, _ = trim_vocabulary(tiny_source, corpus, keep_characters="ascii", max_tokens=budget)
    before = _parity_of_pieces(tiny_source, corpus)
    assert (_parity_of_pieces(plain, corpus) != before).any(), "the plain budget trim should change labels"

    rounds = []
    kept, report = trim_keeping_predictions(tiny_source, corpus, _parity_of_pieces, max_tokens=budget,
                                            keep_characters="ascii", log=rounds.append)
    assert (_parity_of_pieces(kept, corpus) == before).all()
    assert kept.config.vocab_size == budget
    summary = report["kept_predictions"]
    assert summary["rounds"] == len(rounds) >= 2 and summary["labels_changed"] == 0
    assert summary["tokens_given_back"] > 0 and summary["texts_resegmented"] > 0
    assert rounds[-1].endswith(" 0 changed label")
    assert kept.history[-1] == {"step": "vocab-trim", **report}


def test_keeping_predictions_fails_clearly_when_the_budget_cannot(tiny_source, corpus):
    from converters.vocab_trim import trim_keeping_predictions

    full, _ = trim_vocabulary(tiny_source, corpus, keep_characters="ascii")
    # The specials and the ASCII characters, the rows every budget must hold, and room for 5 more.
    required = trim_vocabulary(tiny_source, ["x"], keep_characters="ascii")[0].config.vocab_size
    with pytest.raises(UsageError, match="cannot keep every corpus prediction: the [0-9]+ pieces"):
        trim_keeping_predictions(tiny_source, corpus, _parity_of_pieces, keep_characters="ascii",
                                 max_tokens=required + 5)
    with pytest.raises(UsageError, match="still changed labels after 1 rounds"):
        trim_keeping_predictions(tiny_source, corpus, _parity_of_pieces, keep_characters="ascii",
                                 max_tokens=full.config.vocab_size - 25, max_rounds=1)
