"""benchmarks.real_text end to end on BERT-Tiny and a handful of texts, so that it cannot rot: every
export is built, measured per text, and reported; --buckets chooses the bucketed bundle's lengths."""
import json

import pytest


def test_real_text_runs_tiny_with_chosen_buckets(tmp_path, capsys):
    from benchmarks.real_text import main

    texts = tmp_path / "texts.txt"
    texts.write_text("a short one .\n" + "a somewhat longer sentence with more words in it " * 3 + "\n"
                     "three words here\n", encoding="utf-8")
    out = tmp_path / "out"
    assert main(["--out", str(out), "--variants", "tiny", "--texts", str(texts), "--rounds", "1",
                 "--buckets", "16,48,128"]) == 0
    (row,) = json.loads((out / "results.json").read_text())["rows"]
    assert row["variant"] == "tiny" and set(row["per_text_mean_ms"]) == {"128 full", "128", "dynamic", "buckets"}
    assert set(row["lengths"]) <= {"16", "48", "128"} and sum(row["lengths"].values()) == 3
    assert (out / "tiny.buckets-16-48-128" / "manifest.json").is_file()
    assert "| tiny |" in (out / "results.md").read_text()


def test_buckets_must_end_at_128(tmp_path):
    from benchmarks.real_text import main

    with pytest.raises(SystemExit, match="the longest length must be 128"):
        main(["--out", str(tmp_path), "--variants", "tiny", "--buckets", "16,32"])
