"""BERT WordPiece tokenization with Hugging Face `tokenizers`, giving the ids of google-research/bert.

`build_tokenizer` assembles the same pipeline as BERT's `FullTokenizer`: clean text (control characters
removed, whitespace unified), one token per CJK ideograph, lower-casing with accent stripping for uncased
checkpoints, punctuation split, greedy longest-match WordPiece with `[UNK]` for unknown words and for
words longer than `max_word_chars` characters. That limit follows the checkpoint's own tokenizer: 200 for
Google's (google-research/bert's `WordpieceTokenizer`); for Hugging Face sources their tokenizer.json's
`max_input_chars_per_word`, else 100 (`transformers`' BertTokenizer). The result is saved as the bundle's
`tokenizer.json` (which carries the limit), so apps can use it as is.

`encode` is what edgebert itself calls. It takes only the word pieces from `tokenizers` and frames them
([CLS] A [SEP] B [SEP], truncation, padding) itself, because `tokenizers`' `longest_first` truncation
splits an odd budget the other way from BERT's `_truncate_seq_pair` when both segments are too long
and A is not longer than B (A keeps one token fewer); and it keeps `[CLS] A [SEP] [SEP]` for an empty B
where BERT's `run_classifier` drops B altogether.

Known differences left in `tokenizers` (exotic text only; the tests pin them):
- private-use characters (U+E000-U+F8FF, planes 15-16) are removed, where BERT keeps them (-> [UNK]);
- CJK Extension E's first 256 code points (U+2B820-U+2B91F) are not split into single characters;
- capital sigma at the end of a word lowercases to σ, where Python's str.lower() gives ς;
- characters assigned after the Unicode version compiled into `tokenizers` (Python's `unicodedata` may
  be newer) can be classified differently.
"""
from __future__ import annotations

import os
import reprlib
from typing import Sequence

import numpy as np
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

from edgebert.errors import UsageError, VocabError

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
# Longer words become [UNK]. google-research/bert's WordpieceTokenizer allows 200 characters; Hugging
# Face's BertTokenizer allows 100 (a tokenizer.json states its own `max_input_chars_per_word`).
GOOGLE_MAX_WORD_CHARS = 200
HF_MAX_WORD_CHARS = 100
MAX_LENGTH = 512  # BERT's position embeddings; the truncation length when seq_len is None
OUTPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
MAX_TOKENIZER_BYTES = 64 << 20  # BERT's 30,522-piece tokenizer.json is ~0.9 MB; 250k pieces ~8 MB


def read_vocab(path: str | os.PathLike) -> list[str]:
    """One token per line, exactly as written (only the line break is removed); index = line - 1."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        raise VocabError("vocabulary file not found", path) from None
    except OSError as error:
        raise VocabError(f"cannot read vocabulary: {error.strerror}", path) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise VocabError(f"vocabulary is not UTF-8 (bad byte at offset {error.start})", path) from None
    if not text.strip():
        raise VocabError("vocabulary file is empty", path)
    lines = text.split("\n")  # not splitlines(): it would also break tokens at \x0b, \x85, U+2028...
    if lines[-1] == "":
        lines.pop()
    tokens = [line[:-1] if line.endswith("\r") else line for line in lines]
    _check_vocab(tokens, path)
    return tokens


def _check_vocab(tokens: list[str], path: str | os.PathLike | None = None) -> None:
    first_line: dict[str, int] = {}
    for line, token in enumerate(tokens, start=1):
        if token in first_line:
            raise VocabError(f"duplicate token {token!r} on line {line} (first on line {first_line[token]})", path)
        first_line[token] = line
    missing = [token for token in SPECIAL_TOKENS if token not in first_line]
    if missing:
        raise VocabError(f"vocabulary lacks special token(s) {' '.join(missing)}", path)


def vocab_is_cased(tokens: list[str]) -> bool:
    """Whether ordinary tokens carry capitals (Google's checkpoints do not say if they are cased).

    Bracketed tokens ([CLS], [unused0]) do not count, and neither do capitals without a lower-case form
    (the uncased vocabulary holds 'ℝ')."""
    return any(token.lower() != token for token in tokens if not (token.startswith("[") and token.endswith("]")))


def build_tokenizer(vocab: list[str], lowercase: bool, seq_len: int | None,
                    max_word_chars: int = GOOGLE_MAX_WORD_CHARS) -> Tokenizer:
    """BERT's tokenizer; with an int seq_len it truncates and pads to seq_len, else truncates at 512.
    Words of more than `max_word_chars` characters become [UNK] (200: google-research/bert's rule)."""
    _check_vocab(vocab)
    _check_seq_len(seq_len)
    if isinstance(max_word_chars, bool) or not isinstance(max_word_chars, int) or max_word_chars < 1:
        raise UsageError(f"max_word_chars must be a positive integer, got {max_word_chars!r}")
    ids = {token: index for index, token in enumerate(vocab)}
    tokenizer = Tokenizer(models.WordPiece(ids, unk_token="[UNK]", max_input_chars_per_word=max_word_chars))
    # BERT strips accents exactly when it lower-cases (`do_lower_case`).
    tokenizer.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=lowercase, lowercase=lowercase
    )
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    # The special tokens are deliberately not registered as added tokens: BERT splits a literal "[MASK]"
    # in the input text into "[", "mask", "]", and so must we.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", ids["[CLS]"]), ("[SEP]", ids["[SEP]"])],
    )
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    tokenizer.enable_truncation(max_length=seq_len or MAX_LENGTH, strategy="longest_first")
    if seq_len is not None:
        tokenizer.enable_padding(length=seq_len, pad_id=ids["[PAD]"], pad_token="[PAD]", pad_type_id=0)
    return tokenizer


def load_tokenizer(path: str | os.PathLike) -> Tokenizer:
    """A tokenizer.json written by `build_tokenizer(...).save(path)`."""
    if not os.path.isfile(path):
        raise VocabError("tokenizer file not found", path)
    if os.path.getsize(path) > MAX_TOKENIZER_BYTES:  # a bundle is untrusted input: no unbounded parse
        raise VocabError(f"is larger than {MAX_TOKENIZER_BYTES >> 20} MiB, the limit for a tokenizer.json", path)
    try:
        tokenizer = Tokenizer.from_file(os.fspath(path))
    except Exception as error:  # tokenizers raises a bare Exception with serde's message
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise VocabError(f"not a valid tokenizer.json ({reason})", path) from None
    missing = [token for token in SPECIAL_TOKENS if tokenizer.token_to_id(token) is None]
    if missing:
        raise VocabError(f"tokenizer lacks special token(s) {' '.join(missing)}", path)
    return tokenizer


def max_word_chars(tokenizer: Tokenizer, path: str | os.PathLike | None = None) -> int:
    """The WordPiece model's word-length limit (longer words become [UNK]), as a tokenizer.json sets it;
    `path` names the file in the error for a tokenizer that is not WordPiece."""
    value = getattr(tokenizer.model, "max_input_chars_per_word", None)
    if not isinstance(value, int):
        raise VocabError(f"not a WordPiece tokenizer (its model is {type(tokenizer.model).__name__})", path)
    return value


def encode(
    tokenizer: Tokenizer, texts: list[str] | list[tuple[str, str]], seq_len: int | None,
    buckets: Sequence[int] = (),
) -> dict[str, np.ndarray]:
    """int32 `input_ids`, `attention_mask`, `token_type_ids`, each [N, S]: S = seq_len, or the longest
    row when seq_len is None (rows then truncated at 512). Texts are all str, or all (str, str) pairs.
    `buckets`, the lengths of a model with length buckets (seq_len the longest), pads to the shortest
    of them that holds the longest row instead of to seq_len."""
    _check_seq_len(seq_len)
    firsts, seconds = _split_texts(texts)
    max_length = seq_len or MAX_LENGTH
    truncation = tokenizer.truncation  # it applies to the word pieces too, so it must not cut them short
    if truncation and truncation["max_length"] < max_length:
        wanted = seq_len or f"None (up to {MAX_LENGTH})"
        raise UsageError(f"the tokenizer truncates at {truncation['max_length']} tokens, short of seq_len {wanted}")
    cls, sep, pad = (tokenizer.token_to_id(token) for token in ("[CLS]", "[SEP]", "[PAD]"))

    rows = []
    for a, b in zip(_word_pieces(tokenizer, firsts), _word_pieces(tokenizer, seconds)):
        if b:
            a, b = _truncate_pair(a, b, max_length - 3)
            rows.append(([cls, *a, sep, *b, sep], len(a) + 2))
        else:  # single text, or a pair whose B has no tokens (BERT then drops B and its [SEP])
            rows.append(([cls, *a[: max_length - 2], sep], None))

    longest = max((len(ids) for ids, _ in rows), default=0)
    width = bucket_for(longest, buckets, seq_len) if seq_len else longest
    out = {name: np.zeros((len(rows), width), np.int32) for name in OUTPUT_NAMES}
    out["input_ids"][:] = pad
    for row, (ids, b_start) in enumerate(rows):
        out["input_ids"][row, : len(ids)] = ids
        out["attention_mask"][row, : len(ids)] = 1
        if b_start is not None:
            out["token_type_ids"][row, b_start : len(ids)] = 1
    return out


def bucket_for(length: int, buckets: Sequence[int], seq_len: int) -> int:
    """The shortest of `buckets` that holds `length` tokens; seq_len (the longest) when none does."""
    return min((b for b in buckets if length <= b <= seq_len), default=seq_len)


def _check_seq_len(seq_len) -> None:
    if seq_len is not None and not (isinstance(seq_len, int) and 3 <= seq_len <= MAX_LENGTH):
        raise UsageError(f"seq_len must be an integer from 3 to {MAX_LENGTH}, or None; got {seq_len!r}")


def _split_texts(texts) -> tuple[list[str], list[str | None]]:
    """(first segments, second segments or None per text), with a UsageError for anything else."""
    if isinstance(texts, (str, bytes)) or not hasattr(texts, "__iter__"):
        raise UsageError(f"texts must be a list of str or of (str, str) pairs, got {reprlib.repr(texts)}")
    texts = list(texts)
    if texts and isinstance(texts[0], tuple):
        for index, pair in enumerate(texts):
            if not (isinstance(pair, tuple) and len(pair) == 2 and all(isinstance(s, str) for s in pair)):
                raise UsageError(f"text {index} must be a (str, str) pair like text 0, got {reprlib.repr(pair)}")
        return [a for a, _ in texts], [b for _, b in texts]
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise UsageError(f"text {index} must be a str, got {type(text).__name__} {reprlib.repr(text)}")
    return texts, [None] * len(texts)


def _word_pieces(tokenizer: Tokenizer, texts: list[str | None]) -> list[list[int]]:
    """Word-piece ids of each text without [CLS]/[SEP]; [] for None or ''."""
    todo = [index for index, text in enumerate(texts) if text]
    pieces: list[list[int]] = [[] for _ in texts]
    for index, encoding in zip(todo, tokenizer.encode_batch([texts[i] for i in todo], add_special_tokens=False)):
        # Drop the tokenizer's own padding, if it pads: the mask marks the real pieces.
        pieces[index] = [i for i, real in zip(encoding.ids, encoding.attention_mask) if real]
    return pieces


def _truncate_pair(a: list[int], b: list[int], budget: int) -> tuple[list[int], list[int]]:
    """google-research/bert's `_truncate_seq_pair`: trim the longer segment, B when they tie."""
    len_a, len_b = len(a), len(b)
    while len_a + len_b > budget:
        if len_a > len_b:
            len_a -= 1
        else:
            len_b -= 1
    return a[:len_a], b[:len_b]
