"""Vocabulary trimming: keep only the word pieces a task's text uses, and the embedding rows they need.

The word-embedding table is most of a small BERT (about 90 % of BERT-Tiny's dynamic-int8 bundle), and
a task uses a fraction of the 30,522 pieces. `trim_vocabulary(source, corpus)` tokenizes the corpus
with the source's own tokenizer and keeps:

- the special tokens [PAD] [UNK] [CLS] [SEP] [MASK];
- every piece the corpus uses (at least `keep_min_count` times);
- every single character and `##` + character in the vocab (`keep_characters="all"`, the default), so
  that words the corpus never showed still split into pieces instead of becoming [UNK]; `"ascii"` keeps
  only the ASCII ones, `"none"` none beyond what the corpus uses;
- any `extra_tokens`.

With a budget (`max_tokens=N`) the new vocab has at most N rows, filled in this order: the special
tokens, the characters (per `keep_characters`) and any `extra_tokens`, which must all fit (else a
`UsageError` says how many rows they need); then the corpus's pieces in order of decreasing corpus
frequency (ties by original id) until the budget is full. Pieces that do not fit are dropped, and the
texts that used them are re-segmented into smaller kept pieces (down to characters, which is why they
are kept first); the report counts those texts and how many pieces the corpus now takes. On BERT's
uncased vocab the characters are 1,994 rows (`"all"`) or 136 (`"ascii"`), so `"ascii"` leaves more of a
budget to whole-word pieces; non-ASCII characters then stay only if the corpus uses them often enough.

The new vocab keeps the original order (so the special tokens come first, in their original relative
order, once the `[unused*]` rows are gone), and the rows of `bert/embeddings/word_embeddings` (and of
the masked-LM bias `cls/predictions/output_bias`, when present) are taken in that order. Nothing else in
the model depends on the vocabulary. The returned Source's `history` ends with a `vocab-trim` record
(the report), which `write_trimmed` saves beside the checkpoint and `edgebert convert` carries into the
bundle's manifest.

Why the corpus's tokenization cannot change when every piece it uses is kept (`keep_min_count=1` and no
budget, or a budget large enough): BERT's WordPiece is greedy
longest-match-first. At each position of a word it takes the longest prefix of the rest that is in the
vocab. The trimmed vocab is a subset of the original, so the longest match in it is never longer than
the original's; and the original's choice is kept (the corpus used it), so it is still the longest.
By induction over the positions every corpus word gets the same pieces, and a word that was [UNK]
(no segmentation, or over 100 characters) still is. `trim_vocabulary` checks this anyway: it
re-tokenizes the corpus with the trimmed vocab and raises `ValidationError` if any text's pieces differ.
With `keep_min_count > 1` or a budget rare pieces go, the texts that used them are re-segmented, and
the report says how many.

`trim_keeping_predictions(source, corpus, predict, max_tokens=N)` is the budget trim for a classifier
that must keep its labels on the corpus: it gives back the dropped pieces of every text whose predicted
label changed and trims again, round by round, until none changes (see its docstring).

`load_corpus(paths)` reads corpus files (GLUE-style TSVs, or `.txt` with one sentence per line);
`write_trimmed(source, report, out_dir)` writes the trimmed source in its source's format (a Hugging Face
folder, with a tokenizer.json for the new vocab and a sentence-transformers model's pooling files, or a
Google checkpoint directory; converters/hf_checkpoint.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from enum import Enum
from pathlib import Path

import numpy as np

from converters import hf_checkpoint
from converters.sources import Source
from edgebert.tasks import load_task, read_utf8
from edgebert import tokenizer as tokenization
from edgebert.errors import SourceError, UsageError, ValidationError

WORD_EMBEDDINGS = "bert/embeddings/word_embeddings"
# Every variable with a vocabulary-sized first axis in Google's layout.
VOCAB_AXIS_VARIABLES = (WORD_EMBEDDINGS, "cls/predictions/output_bias")
TRIM_STEP = "vocab-trim"  # the history record's "step"


class KeepCharacters(str, Enum):
    ALL = "all"  # every single character and ##character in the vocab
    ASCII = "ascii"  # only ASCII ones
    NONE = "none"  # only those the corpus uses


def source_vocab(source: Source) -> list[str]:
    """The source's vocab as a list; from its tokenizer.json when it has no vocab.txt."""
    if source.vocab is not None:
        return list(source.vocab)
    if source.tokenizer_json is None:
        raise SourceError("has no vocabulary (neither vocab.txt nor tokenizer.json)", source.path)
    loaded = tokenization.load_tokenizer(source.tokenizer_json)
    by_id = sorted(loaded.get_vocab().items(), key=lambda item: item[1])
    if [i for _, i in by_id] != list(range(len(by_id))):
        raise SourceError("tokenizer vocabulary ids are not contiguous", source.tokenizer_json)
    return [token for token, _ in by_id]


def word_piece_ids(vocab: list[str], lowercase: bool, texts: Sequence,
                   max_word_chars: int = tokenization.GOOGLE_MAX_WORD_CHARS) -> list[list[int]]:
    """The word-piece ids of every text segment (a pair counts as its two segments), untruncated.
    `max_word_chars`: the source's word-length limit (`Source.max_word_chars`)."""
    tokenizer = tokenization.build_tokenizer(vocab, lowercase=lowercase, seq_len=None, max_word_chars=max_word_chars)
    tokenizer.no_truncation()  # a corpus text over 512 pieces must still count all of its pieces
    segments = _segments(texts)
    return [encoding.ids for encoding in tokenizer.encode_batch(segments, add_special_tokens=False)]


def _segments(texts: Iterable) -> list[str]:
    if isinstance(texts, (str, bytes)):
        raise UsageError("corpus_texts must be a list of str or of (str, str) pairs, not one string")
    segments = []
    for index, text in enumerate(texts):
        if isinstance(text, str):
            segments.append(text)
        elif isinstance(text, tuple) and len(text) == 2 and all(isinstance(s, str) for s in text):
            segments.extend(text)
        else:
            raise UsageError(f"corpus text {index} must be a str or a (str, str) pair, got {type(text).__name__}")
    return segments


def _is_character(token: str) -> bool:
    return len(token) == 1 or (len(token) == 3 and token.startswith("##"))


def trim_vocabulary(source: Source, corpus_texts: Sequence, *, keep_min_count: int = 1,
                    extra_tokens: Iterable[str] = (),
                    keep_characters: KeepCharacters | str = KeepCharacters.ALL,
                    max_tokens: int | None = None) -> tuple[Source, dict]:
    """A new Source with the trimmed vocab and embedding rows, and a report of what was kept.

    The source is not modified; the new one shares its other weight arrays. Its sha256 is a digest of
    the original's and of the new vocab, its path is the original's, and its `history` is the
    original's plus `{"step": "vocab-trim", **report}`. `max_tokens` caps the new vocab's size (see
    the module docstring)."""
    if isinstance(keep_min_count, bool) or not isinstance(keep_min_count, int) or keep_min_count < 1:
        raise UsageError(f"keep_min_count must be a positive integer, got {keep_min_count!r}")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int)
                                   or max_tokens < 1):
        raise UsageError(f"--max-tokens must be a positive integer, got {max_tokens!r}")
    try:
        keep_characters = KeepCharacters(keep_characters)
    except ValueError:
        raise UsageError(f"keep_characters must be one of {', '.join(k.value for k in KeepCharacters)}, "
                         f"got {keep_characters!r}") from None
    vocab = source_vocab(source)
    if len(vocab) != source.config.vocab_size:
        raise SourceError(f"vocab has {len(vocab)} tokens but the config says {source.config.vocab_size}", source.path)
    table = source.weights.get(WORD_EMBEDDINGS)
    if table is None or table.shape[0] != len(vocab):
        raise SourceError(f"{WORD_EMBEDDINGS} {None if table is None else list(table.shape)} does not match "
                          f"the vocab of {len(vocab)} tokens", source.path)
    ids_of = {token: index for index, token in enumerate(vocab)}
    extra_tokens = list(extra_tokens)
    missing = [token for token in extra_tokens if token not in ids_of]
    if missing:
        raise UsageError(f"extra token(s) not in the vocabulary: {', '.join(map(repr, missing[:10]))}")
    if not len(corpus_texts):
        raise UsageError("the corpus is empty: trimming to it would keep only the special tokens")

    # What must stay whatever the budget: specials, characters, extra tokens.
    required = {ids_of[token] for token in tokenization.SPECIAL_TOKENS}
    characters = set()
    if keep_characters is not KeepCharacters.NONE:
        characters = {i for i, token in enumerate(vocab)
                      if _is_character(token) and (keep_characters is KeepCharacters.ALL or token.isascii())}
    required |= characters | {ids_of[token] for token in extra_tokens}
    if max_tokens is not None and len(required) > max_tokens:
        extra = len(required - characters) - len(tokenization.SPECIAL_TOKENS)
        raise UsageError(f"--max-tokens {max_tokens} is too small: the special tokens, characters "
                         f"(keep_characters={keep_characters.value}) and extra tokens need {len(required)} rows "
                         f"({len(tokenization.SPECIAL_TOKENS)} special, {len(characters)} character, {extra} extra)")

    pieces = word_piece_ids(vocab, source.lowercase, corpus_texts, source.max_word_chars)
    counts = Counter(i for ids in pieces for i in ids)
    # Corpus pieces by decreasing frequency (ties by original id), as many as the budget leaves room for.
    candidates = sorted((i for i, n in counts.items() if n >= keep_min_count and i not in required),
                        key=lambda i: (-counts[i], i))
    room = len(candidates) if max_tokens is None else max_tokens - len(required)
    kept = required | set(candidates[:room])
    dropped_for_budget = len(candidates) - min(room, len(candidates))

    reasons: dict[int, str] = {}  # first reason wins, in this order
    for token in tokenization.SPECIAL_TOKENS:
        reasons.setdefault(ids_of[token], "special")
    for i in sorted(counts):
        if i in kept and counts[i] >= keep_min_count:
            reasons.setdefault(i, "corpus")
    for i in sorted(characters):
        reasons.setdefault(i, "character")
    for token in extra_tokens:
        reasons.setdefault(ids_of[token], "extra")
    assert set(reasons) == kept
    kept_ids = np.array(sorted(kept), dtype=np.int64)
    new_vocab = [vocab[i] for i in kept_ids]

    weights = dict(source.weights)
    for name in VOCAB_AXIS_VARIABLES:
        if name in weights:
            weights[name] = np.ascontiguousarray(weights[name][kept_ids])
    config = dataclasses.replace(source.config, vocab_size=len(new_vocab))
    digest = hashlib.sha256(f"{source.sha256}\0vocab-trim\0".encode())
    digest.update("\n".join(new_vocab).encode("utf-8"))

    # Re-tokenize the corpus with the trimmed vocab: when every piece it used was kept it must be
    # identical, piece for piece (see the module docstring); otherwise count what changed.
    original_id = kept_ids.tolist()  # new id -> original id
    retokenized = word_piece_ids(new_vocab, source.lowercase, corpus_texts, source.max_word_chars)
    differs = [old != [original_id[i] for i in new] for old, new in zip(pieces, retokenized)]
    changed = sum(differs)
    if set(counts) <= kept and changed:
        raise ValidationError("corpus segments re-tokenized differently after trimming", changed, 0,
                              "every piece the corpus uses was kept, so none may differ")
    segment_text = [index for index, text in enumerate(corpus_texts)
                    for _ in (text if isinstance(text, tuple) else (text,))]
    texts_changed = len({segment_text[k] for k, flag in enumerate(differs) if flag})

    total = sum(counts.values())
    unk_new = new_vocab.index("[UNK]")
    hidden, itemsize = table.shape[1], table.dtype.itemsize
    kept_by_reason = Counter(reasons.values())
    report = {
        "original_vocab_size": len(vocab),
        "vocab_size": len(new_vocab),
        "removed_tokens": len(vocab) - len(new_vocab),
        "keep_min_count": keep_min_count,
        "keep_characters": keep_characters.value,
        "max_tokens": max_tokens,
        "kept_by_reason": {reason: kept_by_reason.get(reason, 0)
                           for reason in ("special", "corpus", "character", "extra")},
        "dropped_for_budget": dropped_for_budget,  # corpus pieces (>= keep_min_count uses) that did not fit
        "embedding_rows_before": len(vocab),
        "embedding_rows_after": len(new_vocab),
        "embedding_bytes_before": len(vocab) * hidden * itemsize,
        "embedding_bytes_after": len(new_vocab) * hidden * itemsize,
        "embedding_int8_bytes_before": len(vocab) * hidden,  # what a dynamic-int8 export stores
        "embedding_int8_bytes_after": len(new_vocab) * hidden,
        "corpus": {
            "texts": len(corpus_texts),
            "segments": len(pieces),
            "tokens": total,
            "distinct_tokens": len(counts),
            "unk_tokens": counts.get(ids_of["[UNK]"], 0),
            # the share of the corpus's pieces that are still in the vocab
            "coverage": (sum(n for i, n in counts.items() if i in kept) / total) if total else 1.0,
            "segments_retokenized_differently": changed,
            "texts_retokenized_differently": texts_changed,
            "tokens_after": sum(len(ids) for ids in retokenized),  # re-segmented texts take more pieces
            "unk_tokens_after": sum(ids.count(unk_new) for ids in retokenized),
        },
    }
    trimmed = dataclasses.replace(source, config=config, weights=weights, vocab=new_vocab, tokenizer_json=None,
                                  sha256=digest.hexdigest(), kind=f"{source.kind}+trimmed-vocab",
                                  history=[*source.history, {"step": TRIM_STEP, **report}])
    return trimmed, report


Predictor = Callable[[Source, Sequence], np.ndarray]  # (source, texts) -> the label of each text


def trim_keeping_predictions(source: Source, corpus_texts: Sequence, predict: Predictor, *,
                             max_tokens: int | None, max_rounds: int = 20,
                             log: Callable[[str], None] = lambda message: None,
                             **options) -> tuple[Source, dict]:
    """`trim_vocabulary` within a budget, with every corpus text keeping its predicted label.

    A budget drops the rarest pieces and re-segments the texts that used them, and a few of those texts
    then change label. So each round predicts the re-segmented texts with the original and the trimmed
    source, gives back (as extra tokens) the dropped pieces of every text whose label changed, and trims
    again: the next rarest pieces go in their place. It stops when no corpus text changes label, and
    raises UsageError when the given-back pieces no longer fit the budget or after max_rounds.

    Only the corpus is checked: text outside it that uses a dropped piece may still change label, so
    the corpus should be the text the model will see (a task's training and evaluation sentences, as
    unlabelled text). `predict` is `converters.finetune.predict_labels` in the converter; the report
    gains "kept_predictions" with the rounds, the pieces given back and the texts compared."""
    vocab = source_vocab(source)
    original = word_piece_ids(vocab, source.lowercase, corpus_texts, source.max_word_chars)
    segment_text = [index for index, text in enumerate(corpus_texts)
                    for _ in (text if isinstance(text, tuple) else (text,))]
    given_back = set(options.pop("extra_tokens", ()))
    labels_before: dict[int, int] = {}  # corpus text index -> the original source's label
    for round_number in range(1, max_rounds + 1):
        try:
            trimmed, report = trim_vocabulary(source, corpus_texts, extra_tokens=sorted(given_back),
                                              max_tokens=max_tokens, **options)
        except UsageError:
            if round_number == 1:
                raise
            raise UsageError(f"--max-tokens {max_tokens} cannot keep every corpus prediction: the "
                             f"{len(given_back):,} pieces whose loss changes a label, with the special tokens "
                             f"and characters, do not fit") from None
        kept_original_ids = id_mapping(vocab, trimmed.vocab).tolist()
        retokenized = word_piece_ids(trimmed.vocab, source.lowercase, corpus_texts, source.max_word_chars)
        changed = sorted({segment_text[k] for k, (old, new) in enumerate(zip(original, retokenized))
                          if old != [kept_original_ids[i] for i in new]})
        unknown = [i for i in changed if i not in labels_before]
        if unknown:
            labels = predict(source, [corpus_texts[i] for i in unknown])
            labels_before.update(zip(unknown, np.asarray(labels).tolist()))
        labels_after = np.asarray(predict(trimmed, [corpus_texts[i] for i in changed])).tolist() if changed else []
        flipped = [i for i, label in zip(changed, labels_after) if label != labels_before[i]]
        log(f"round {round_number}: {len(changed):,} texts re-segmented, {len(flipped):,} changed label")
        if not flipped:
            report["kept_predictions"] = {"rounds": round_number, "tokens_given_back": len(given_back),
                                          "texts_compared": len(labels_before), "texts_resegmented": len(changed),
                                          "labels_changed": 0}
            history = [*source.history, {"step": TRIM_STEP, **report}]
            return dataclasses.replace(trimmed, history=history), report
        kept = set(trimmed.vocab)
        flipped_texts = set(flipped)
        # Every flipped text was re-segmented, so it lost at least one piece: the set grows each round.
        given_back |= {vocab[j] for k, ids in enumerate(original) if segment_text[k] in flipped_texts
                       for j in ids if vocab[j] not in kept}
    raise UsageError(f"the trim still changed labels after {max_rounds} rounds: raise --max-tokens")


def write_trimmed(source: Source, report: dict, out_dir: str | os.PathLike, force: bool = False) -> Path:
    """Write a trimmed Source (as `trim_vocabulary` returned it, with its report) in its source's format
    (Hugging Face's for a Hugging Face source, keeping a sentence-transformers model's pooling files, else
    Google's layout) as a directory that `load_source` and `edgebert convert` read; its record carries
    the source's history, whose last entry is the trim's report. Atomic; an existing out_dir needs force."""
    last = source.history[-1] if source.history else {}
    if last != {"step": TRIM_STEP, **report} or report.get("vocab_size") != source.config.vocab_size:
        raise UsageError("write_trimmed takes the Source that trim_vocabulary returned, with its report")
    output = hf_checkpoint.prepare_output(source, out_dir, force=force, keep_sentence_pooling=True)
    return output.write(source.config, source.weights,
                        {"lowercase": source.lowercase, "labels": source.labels, "random_init": source.random_weights,
                         "max_word_chars": source.max_word_chars, "history": source.history})


def read_corpus_file(path: str | os.PathLike) -> list:
    """The texts of one corpus file: a `.txt` is one sentence per line (UTF-8, blank lines skipped);
    anything else is a GLUE-style TSV read by `edgebert.tasks.load_task` (texts only, labels ignored;
    pairs as (a, b) tuples). A missing, non-UTF-8 or empty file is a one-line SourceError naming it."""
    path = Path(path)
    text = read_utf8(path, "corpus file", "a corpus file")
    if path.suffix.lower() != ".txt":
        return list(load_task(path).texts)
    lines = [line.strip() for line in text.split("\n")]  # not splitlines(): see edgebert.tasks
    lines = [line for line in lines if line]
    if not lines:
        raise SourceError("corpus file is empty", path)
    return lines


def load_corpus(paths: Iterable[str | os.PathLike]) -> list:
    """The texts of every corpus file, in order (see `read_corpus_file`)."""
    texts = []
    for path in paths:
        texts.extend(read_corpus_file(path))
    if not texts:
        raise UsageError("no corpus file given")
    return texts


def id_mapping(original_vocab: Sequence[str], trimmed_vocab: Sequence[str]) -> np.ndarray:
    """original id of each trimmed id (int64 [len(trimmed_vocab)]), e.g. to map MLM logits back."""
    ids_of = {token: index for index, token in enumerate(original_vocab)}
    missing = [token for token in trimmed_vocab if token not in ids_of]
    if missing:
        raise UsageError(f"the trimmed vocab has token(s) the original lacks: {', '.join(map(repr, missing[:5]))}")
    return np.array([ids_of[token] for token in trimmed_vocab], dtype=np.int64)
