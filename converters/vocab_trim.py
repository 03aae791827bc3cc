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

The new vocab keeps the original order (so the special tokens come first, in their original relative
order, once the `[unused*]` rows are gone), and the rows of `bert/embeddings/word_embeddings` (and of
the masked-LM bias `cls/predictions/output_bias`, when present) are taken in that order. Nothing else in
the model depends on the vocabulary.

Why the corpus's tokenization cannot change (with `keep_min_count=1`): BERT's WordPiece is greedy
longest-match-first. At each position of a word it takes the longest prefix of the rest that is in the
vocab. The trimmed vocab is a subset of the original, so the longest match in it is never longer than
the original's; and the original's choice is kept (the corpus used it), so it is still the longest.
By induction over the positions every corpus word gets the same pieces, and a word that was [UNK]
(no segmentation, or over 100 characters) still is. `trim_vocabulary` checks this anyway: it
re-tokenizes the corpus with the trimmed vocab and raises `ValidationError` if any text's pieces differ.
With `keep_min_count > 1` rare pieces go, the texts that used them are re-segmented, and the report
says how many.
"""
from __future__ import annotations

import dataclasses
import hashlib
from collections import Counter
from collections.abc import Iterable, Sequence
from enum import Enum

import numpy as np

from converters.sources import Source
from edgebert import tokenizer as tokenization
from edgebert.errors import SourceError, UsageError, ValidationError

WORD_EMBEDDINGS = "bert/embeddings/word_embeddings"
# Every variable with a vocabulary-sized first axis in Google's layout.
VOCAB_AXIS_VARIABLES = (WORD_EMBEDDINGS, "cls/predictions/output_bias")


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


def word_piece_ids(vocab: list[str], lowercase: bool, texts: Sequence) -> list[list[int]]:
    """The word-piece ids of every text segment (a pair counts as its two segments), untruncated."""
    tokenizer = tokenization.build_tokenizer(vocab, lowercase=lowercase, seq_len=None)
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
                    keep_characters: KeepCharacters | str = KeepCharacters.ALL) -> tuple[Source, dict]:
    """A new Source with the trimmed vocab and embedding rows, and a report of what was kept.

    The source is not modified; the new one shares its other weight arrays. Its sha256 is a digest of
    the original's and of the new vocab, its path is the original's."""
    if isinstance(keep_min_count, bool) or not isinstance(keep_min_count, int) or keep_min_count < 1:
        raise UsageError(f"keep_min_count must be a positive integer, got {keep_min_count!r}")
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

    pieces = word_piece_ids(vocab, source.lowercase, corpus_texts)
    counts = Counter(i for ids in pieces for i in ids)
    used = {i for i, n in counts.items() if n >= keep_min_count}

    reasons: dict[int, str] = {}  # first reason wins, in this order
    for token in tokenization.SPECIAL_TOKENS:
        reasons.setdefault(ids_of[token], "special")
    for i in sorted(used):
        reasons.setdefault(i, "corpus")
    if keep_characters is not KeepCharacters.NONE:
        for i, token in enumerate(vocab):
            if _is_character(token) and (keep_characters is KeepCharacters.ALL or token.isascii()):
                reasons.setdefault(i, "character")
    for token in extra_tokens:
        reasons.setdefault(ids_of[token], "extra")
    kept_ids = np.array(sorted(reasons), dtype=np.int64)
    new_vocab = [vocab[i] for i in kept_ids]

    weights = dict(source.weights)
    for name in VOCAB_AXIS_VARIABLES:
        if name in weights:
            weights[name] = np.ascontiguousarray(weights[name][kept_ids])
    config = dataclasses.replace(source.config, vocab_size=len(new_vocab))
    digest = hashlib.sha256(f"{source.sha256}\0vocab-trim\0".encode())
    digest.update("\n".join(new_vocab).encode("utf-8"))
    trimmed = dataclasses.replace(source, config=config, weights=weights, vocab=new_vocab, tokenizer_json=None,
                                  sha256=digest.hexdigest(), kind=f"{source.kind}+trimmed-vocab")

    # Re-tokenize the corpus with the trimmed vocab: with keep_min_count=1 it must be identical, piece
    # for piece (see the module docstring); otherwise count the texts whose pieces changed.
    original_id = kept_ids.tolist()  # new id -> original id
    retokenized = word_piece_ids(new_vocab, source.lowercase, corpus_texts)
    changed = sum(old != [original_id[i] for i in new] for old, new in zip(pieces, retokenized))
    if keep_min_count == 1 and changed:
        raise ValidationError("corpus segments re-tokenized differently after trimming", changed, 0,
                              "every piece the corpus uses was kept, so none may differ")

    total = sum(counts.values())
    hidden, itemsize = table.shape[1], table.dtype.itemsize
    kept_by_reason = Counter(reasons.values())
    report = {
        "original_vocab_size": len(vocab),
        "vocab_size": len(new_vocab),
        "removed_tokens": len(vocab) - len(new_vocab),
        "keep_min_count": keep_min_count,
        "keep_characters": keep_characters.value,
        "kept_by_reason": {reason: kept_by_reason.get(reason, 0)
                           for reason in ("special", "corpus", "character", "extra")},
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
            "coverage": (sum(n for i, n in counts.items() if i in reasons) / total) if total else 1.0,
            "segments_retokenized_differently": changed,
        },
    }
    return trimmed, report


def id_mapping(original_vocab: Sequence[str], trimmed_vocab: Sequence[str]) -> np.ndarray:
    """original id of each trimmed id (int64 [len(trimmed_vocab)]), e.g. to map MLM logits back."""
    ids_of = {token: index for index, token in enumerate(original_vocab)}
    missing = [token for token in trimmed_vocab if token not in ids_of]
    if missing:
        raise UsageError(f"the trimmed vocab has token(s) the original lacks: {', '.join(map(repr, missing[:5]))}")
    return np.array([ids_of[token] for token in trimmed_vocab], dtype=np.int64)
