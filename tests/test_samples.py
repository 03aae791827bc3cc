"""edgebert.samples: the shipped sample texts load cleanly, and user files fail with one-line errors."""
from __future__ import annotations

import pytest

from edgebert.errors import UsageError
from edgebert.samples import load_pairs, load_sentences, samples_dir


def test_shipped_samples():
    assert (samples_dir() / "README.md").is_file()
    sentences = load_sentences()
    assert 150 <= len(sentences) <= 300
    assert len(set(sentences)) == len(sentences)
    assert all(sentence and sentence == sentence.strip() and "\t" not in sentence for sentence in sentences)
    assert any(len(sentence.split()) > 100 for sentence in sentences)  # exercises truncation at 128
    assert any("é" in sentence or "ï" in sentence for sentence in sentences)

    pairs = load_pairs()
    assert 30 <= len(pairs) <= 60
    assert all(isinstance(pair, tuple) and len(pair) == 2 and all(pair) for pair in pairs)


def test_limit():
    assert load_sentences(limit=5) == load_sentences()[:5]
    assert load_pairs(limit=3) == load_pairs()[:3]
    assert load_sentences(limit=0) == []
    with pytest.raises(UsageError, match=r"^limit must be a non-negative integer, got -1$"):
        load_sentences(limit=-1)


def test_user_files(tmp_path):
    sentences = tmp_path / "mine.txt"
    sentences.write_bytes("\ufeffFirst one.\r\n\n   \nSecond, with a café.  \n".encode("utf-8"))
    assert load_sentences(sentences) == ["First one.", "Second, with a café."]
    assert load_sentences(str(sentences), limit=1) == ["First one."]

    pairs = tmp_path / "mine.tsv"
    pairs.write_text("a one\tb one\n\nA two \t B two\n", encoding="utf-8")
    assert load_pairs(pairs) == [("a one", "b one"), ("A two", "B two")]


@pytest.mark.parametrize(
    "content, problem",
    [
        (None, "sample file not found"),
        (b"", "sample file has no text"),
        (b"\n  \n\t\n", "sample file has no text"),
        (b"fine\n\xe9t\xe9\n", "sample file is not UTF-8 (bad byte at offset 5)"),
    ],
)
def test_user_file_errors(tmp_path, content, problem):
    path = tmp_path / "texts.txt"
    if content is not None:
        path.write_bytes(content)
    for load in (load_sentences, load_pairs):
        with pytest.raises(UsageError) as error:
            load(path)
        assert str(error.value) == f"{path}: {problem}"


@pytest.mark.parametrize("line", ["only one sentence", "a\tb\tc", "a\t ", "\tb"])
def test_malformed_pair_line(tmp_path, line):
    path = tmp_path / "pairs.tsv"
    path.write_text(f"a\tb\n\n{line}\n", encoding="utf-8")
    with pytest.raises(UsageError) as error:
        load_pairs(path)
    assert str(error.value) == f"{path}: line 3 is not 'sentence_a<TAB>sentence_b': {line.strip()!r}"
