"""An independent, plain-Python BERT tokenizer: the ground truth for `edgebert.tokenizer`'s tests.

It follows google-research/bert `tokenization.py` (BasicTokenizer, WordpieceTokenizer, FullTokenizer)
and the input building of `run_classifier.py` (`_truncate_seq_pair`, `convert_single_example`) rule for
rule, written out again here so the tests compare two implementations rather than one with itself.
It is deliberately slow and literal: one character at a time, using only `unicodedata`. Nothing here
comes from edgebert, not even a constant: the word-length limit is google-research/bert's own default.
"""
from __future__ import annotations

import unicodedata

import numpy as np

# google-research/bert tokenization.py: `WordpieceTokenizer.__init__(self, vocab, unk_token="[UNK]",
# max_input_chars_per_word=200)`, and FullTokenizer leaves it at that default. (Hugging Face's
# transformers BertTokenizer passes 100; tests give that as `max_input_chars_per_word=100`.)
GOOGLE_MAX_INPUT_CHARS_PER_WORD = 200
DYNAMIC_MAX_LENGTH = 512

# The CJK Unified Ideographs blocks that BERT splits into one token per character (Hangul, kana and
# other scripts are not here: they are written with spaces and tokenized like any other language).
CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)


def is_whitespace(char: str) -> bool:
    # Tab, newline and carriage return are categorised Cc, but BERT counts them as whitespace.
    return char in " \t\n\r" or unicodedata.category(char) == "Zs"


def is_control(char: str) -> bool:
    if char in "\t\n\r":
        return False
    return unicodedata.category(char) in ("Cc", "Cf")


def is_punctuation(char: str) -> bool:
    # Every non-alphanumeric printable ASCII character counts, even `$`, `^` or "`", which Unicode
    # files under symbols rather than punctuation.
    cp = ord(char)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def is_cjk(cp: int) -> bool:
    return any(low <= cp <= high for low, high in CJK_RANGES)


def whitespace_split(text: str) -> list[str]:
    # Python's own str.split(), as in the original (it also splits on U+2028/U+2029 and friends).
    return text.strip().split()


class BasicTokenizer:
    """Cleaning, CJK splitting, lower-casing with accent stripping, punctuation splitting."""

    def __init__(self, lowercase: bool = True):
        self.lowercase = lowercase

    def tokenize(self, text: str) -> list[str]:
        text = self.clean(text)
        text = self.space_out_cjk(text)
        pieces = []
        for token in whitespace_split(text):
            if self.lowercase:
                token = self.strip_accents(token.lower())
            pieces.extend(self.split_punctuation(token))
        return whitespace_split(" ".join(pieces))

    @staticmethod
    def clean(text: str) -> str:
        out = []
        for char in text:
            cp = ord(char)
            if cp == 0 or cp == 0xFFFD or is_control(char):
                continue
            out.append(" " if is_whitespace(char) else char)
        return "".join(out)

    @staticmethod
    def space_out_cjk(text: str) -> str:
        return "".join(f" {char} " if is_cjk(ord(char)) else char for char in text)

    @staticmethod
    def strip_accents(text: str) -> str:
        return "".join(c for c in unicodedata.normalize("NFD", text) if unicodedata.category(c) != "Mn")

    @staticmethod
    def split_punctuation(text: str) -> list[str]:
        words: list[list[str]] = []
        new_word = True
        for char in text:
            if is_punctuation(char):
                words.append([char])
                new_word = True
            else:
                if new_word:
                    words.append([])
                words[-1].append(char)
                new_word = False
        return ["".join(word) for word in words]


class WordpieceTokenizer:
    """Greedy longest-match-first over the vocabulary; a word with any unmatched rest becomes [UNK]."""

    def __init__(self, vocab: dict[str, int], unk: str = "[UNK]",
                 max_input_chars_per_word: int = GOOGLE_MAX_INPUT_CHARS_PER_WORD):
        self.vocab, self.unk, self.max_input_chars_per_word = vocab, unk, max_input_chars_per_word

    def tokenize(self, text: str) -> list[str]:
        out = []
        for word in whitespace_split(text):
            if len(list(word)) > self.max_input_chars_per_word:  # characters (code points), not bytes
                out.append(self.unk)
                continue
            pieces, start = [], 0
            while start < len(word):
                end = len(word)
                while end > start:
                    piece = word[start:end] if start == 0 else "##" + word[start:end]
                    if piece in self.vocab:
                        break
                    end -= 1
                if end == start:  # nothing matched from `start`: the whole word is unknown
                    pieces = [self.unk]
                    break
                pieces.append(piece)
                start = end
            out.extend(pieces)
        return out


class FullTokenizer:
    def __init__(self, tokens: list[str], lowercase: bool = True,
                 max_input_chars_per_word: int = GOOGLE_MAX_INPUT_CHARS_PER_WORD):
        self.vocab = {token: index for index, token in enumerate(tokens)}
        self.basic = BasicTokenizer(lowercase)
        self.wordpiece = WordpieceTokenizer(self.vocab, max_input_chars_per_word=max_input_chars_per_word)

    def tokenize(self, text: str) -> list[str]:
        return [piece for token in self.basic.tokenize(text) for piece in self.wordpiece.tokenize(token)]

    def ids(self, tokens: list[str]) -> list[int]:
        return [self.vocab[token] for token in tokens]


def truncate_seq_pair(tokens_a: list[str], tokens_b: list[str], max_length: int) -> None:
    """In place: drop one token at a time from the end of the longer list (from B on a tie)."""
    while len(tokens_a) + len(tokens_b) > max_length:
        if len(tokens_a) > len(tokens_b):
            tokens_a.pop()
        else:
            tokens_b.pop()


def convert_example(tokenizer: FullTokenizer, text_a: str, text_b: str | None, max_length: int):
    """run_classifier's `convert_single_example`, unpadded: (input_ids, segment_ids)."""
    tokens_a = tokenizer.tokenize(text_a)
    # As in the original, an empty B (or one that tokenizes to nothing) makes a single-segment input.
    tokens_b = tokenizer.tokenize(text_b) if text_b else None
    if tokens_b:
        truncate_seq_pair(tokens_a, tokens_b, max_length - 3)
    else:
        tokens_a = tokens_a[: max_length - 2]
    tokens = ["[CLS]", *tokens_a, "[SEP]"]
    segments = [0] * len(tokens)
    if tokens_b:
        tokens += [*tokens_b, "[SEP]"]
        segments += [1] * (len(tokens_b) + 1)
    return tokenizer.ids(tokens), segments


def reference_encode(tokenizer: FullTokenizer, texts, seq_len: int | None) -> dict[str, np.ndarray]:
    """The same contract as `edgebert.tokenizer.encode`: padded with [PAD] to seq_len, or to the
    longest row when seq_len is None (then truncated at 512)."""
    rows = []
    for text in texts:
        text_a, text_b = (text, None) if isinstance(text, str) else text
        rows.append(convert_example(tokenizer, text_a, text_b, seq_len or DYNAMIC_MAX_LENGTH))
    width = seq_len or max(len(ids) for ids, _ in rows)
    pad = tokenizer.vocab["[PAD]"]
    out = {name: np.zeros((len(rows), width), np.int32) for name in ("input_ids", "attention_mask", "token_type_ids")}
    for row, (ids, segments) in enumerate(rows):
        out["input_ids"][row] = ids + [pad] * (width - len(ids))
        out["attention_mask"][row, : len(ids)] = 1
        out["token_type_ids"][row, : len(segments)] = segments
    return out
