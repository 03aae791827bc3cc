"""The compression benchmark runs end to end on a tiny model and task (no figure is asserted)."""
from __future__ import annotations

import json

from test_finetune import _write_task


def test_compression_benchmark_smoke(tmp_path, capsys):
    from benchmarks.compression.__main__ import main

    data = tmp_path / "task"
    data.mkdir()
    _write_task(data / "train.tsv", 64, 0)
    _write_task(data / "dev.tsv", 16, 1)
    out = tmp_path / "out"
    args = ["--data", data, "--custom", "2,32,4,64", "--out", out, "--epochs", 1, "--recover-epochs", 1,
            "--batch-size", 16, "--learning-rate", "1e-3", "--trim-max-tokens", 150, "--runs", 1, "--rounds", 1,
            "--seq-len", 16]
    assert main([str(a) for a in args]) == 0
    results = json.loads((out / "compression.json").read_text())
    assert results["schema"] == "edgebert.compression/1"
    (variant,) = results["variants"]
    rows = {(r["model"], r["mode"]): r for r in variant["rows"]}
    assert len(rows) == 9 and variant["random_weights"] is True
    for row in rows.values():
        assert 0 <= row["accuracy"] <= 1 and row["p50_ms"] > 0 and 0 < row["zipped_bytes"]
        assert row["model_bytes"] < row["bundle_bytes"]
    assert abs(rows[("unstructured-80", "dynamic-int8")]["sparsity"] - 0.8) < 0.01
    assert rows[("structured-50", "dynamic-int8")]["layer_heads"] == [2, 2]
    for name, corpus in (("vocab-trimmed", ["train.tsv", "dev.tsv"]), ("vocab-trimmed-heldout", ["train.tsv"])):
        trim = rows[(name, "dynamic-int8")]["trim"]
        assert rows[(name, "dynamic-int8")]["vocab_size"] == 150 and trim["corpus_files"] == corpus
        assert trim["kept_predictions"]["labels_changed"] == 0
    assert rows[("structured-50", "dynamic-int8")]["steps"] == ["finetune", "structured-pruning", "finetune"]
    assert [t["target"] for t in variant["targets"]][0] == "dynamic int8 within 0.5 points of float32"
    report = (out / "compression.md").read_text()
    assert "| structured-50 | dynamic-int8 |" in report and "- vocab-trimmed: " in report
    # A rerun resumes: every step and bundle is reused (same files, untouched), only latency is measured again.
    made = {path: path.stat().st_mtime_ns for path in out.rglob("*")
            if path.is_file() and path.name in ("model.tflite", "manifest.json", "bert_model.ckpt.index")}
    assert len(made) >= 9 * 2
    capsys.readouterr()
    assert main([str(a) for a in args]) == 0
    rerun = capsys.readouterr().err
    assert "converting " not in rerun and "epoch 1/" not in rerun, rerun[-2000:]
    assert {path: path.stat().st_mtime_ns for path in made} == made
    again = {(r["model"], r["mode"]): r for r in json.loads((out / "compression.json").read_text())["variants"][0]["rows"]}
    assert {key: row["accuracy"] for key, row in again.items()} == {key: row["accuracy"] for key, row in rows.items()}


def test_compression_benchmark_needs_a_task_folder(tmp_path, capsys):
    from benchmarks.compression.__main__ import main

    assert main(["--data", str(tmp_path), "--custom", "2,32,4,64", "--out", str(tmp_path / "o")]) == 1
    assert capsys.readouterr().err.strip() == f"error: {tmp_path / 'train.tsv'}: not found (--data is a GLUE task folder)"
