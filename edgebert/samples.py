"""Sample texts for int8 calibration and validation: the repo's `samples/`, or a user's own file.

A sentence file holds one sentence per line; a pair file holds `sentence_a<TAB>sentence_b` per line.
Blank lines are skipped and surrounding whitespace is dropped (the tokenizer ignores it anyway).
"""
from __future__ import annotations

import os
from pathlib import Path

from edgebert.errors import UsageError


def samples_dir() -> Path:
    """The top-level `samples/` folder of the checkout this package lives in."""
    return Path(__file__).resolve().parent.parent / "samples"


def load_sentences(path: str | os.PathLike | None = None, limit: int | None = None) -> list[str]:
    path = samples_dir() / "sentences.txt" if path is None else path
    return [line for _, line in _read_lines(path, limit)]


def load_pairs(path: str | os.PathLike | None = None, limit: int | None = None) -> list[tuple[str, str]]:
    path = samples_dir() / "pairs.tsv" if path is None else path
    pairs = []
    for number, line in _read_lines(path, limit):
        fields = [field.strip() for field in line.split("\t")]
        if len(fields) != 2 or not all(fields):
            raise UsageError(f"line {number} is not 'sentence_a<TAB>sentence_b': {line[:60]!r}", path)
        pairs.append((fields[0], fields[1]))
    return pairs


def _read_lines(path: str | os.PathLike, limit: int | None) -> list[tuple[int, str]]:
    """(line number, stripped text) of the first `limit` non-blank lines."""
    if limit is not None and (not isinstance(limit, int) or limit < 0):
        raise UsageError(f"limit must be a non-negative integer, got {limit!r}")
    try:
        data = Path(path).read_bytes()
    except FileNotFoundError:
        raise UsageError("sample file not found", path) from None
    except OSError as error:
        raise UsageError(f"cannot read sample file: {error.strerror}", path) from None
    try:
        text = data.decode("utf-8-sig")  # tolerate the BOM that Windows editors add
    except UnicodeDecodeError as error:
        raise UsageError(f"sample file is not UTF-8 (bad byte at offset {error.start})", path) from None
    # split("\n"), not splitlines(): the latter would also cut sentences at U+2028, \x0c and the like.
    lines = [(number, line.strip()) for number, line in enumerate(text.split("\n"), start=1) if line.strip()]
    if not lines:
        raise UsageError("sample file has no text", path)
    return lines if limit is None else lines[:limit]
