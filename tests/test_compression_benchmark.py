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


def test_compression_benchmark_on_a_hugging_face_source(tmp_path, capsys, monkeypatch):
    """--source NAME=PATH: a sentence-transformers folder (like all-MiniLM-L6-v2: Hugging Face names, erf
    GELU, the vocab only in tokenizer.json) is benchmarked under NAME with its config's shape, its models
    stay in Hugging Face format, --models and --base-modes pick the rows, the issue-11 targets apply, and
    an export that fails is a row with its one-line error that a rerun does not try again."""
    import converters.pipeline
    from benchmarks.compression.__main__ import main
    from edgebert.errors import ValidationError
    from test_sentence_embedding import write_st_folder

    source = write_st_folder(tmp_path / "st", tokenizer_json=True)
    data = tmp_path / "task"
    data.mkdir()
    _write_task(data / "train.tsv", 64, 0)
    _write_task(data / "dev.tsv", 16, 1)
    refusal = "validation failed: logits largest probability change vs float (int8) = 0.47, threshold 0.2"
    convert = converters.pipeline.convert
    attempts = []

    def refusing_full_int8(checkpoint, out, options, **kwargs):
        if options.quantize.value == "int8":
            attempts.append(out)
            raise ValidationError("logits largest probability change vs float (int8)", 0.47, 0.2)
        return convert(checkpoint, out, options, **kwargs)

    monkeypatch.setattr(converters.pipeline, "convert", refusing_full_int8)
    out = tmp_path / "out"
    args = ["--data", data, "--source", f"tinyst={source}", "--out", out, "--models", "structured-50,vocab-trimmed",
            "--base-modes", "float32,dynamic-int8,int8,dynamic-int4", "--epochs", 1, "--recover-epochs", 1,
            "--batch-size", 16, "--learning-rate", "1e-3", "--train-seq-len", 32, "--trim-max-tokens", 150,
            "--runs", 1, "--rounds", 1, "--seq-len", 16]
    assert main([str(a) for a in args]) == 0
    results = json.loads((out / "compression.json").read_text())
    (variant,) = results["variants"]
    assert variant["variant"] == "tinyst" and variant["random_weights"] is False
    assert variant["shape"] == {"layers": 2, "hidden": 32, "heads": 4, "intermediate": 64,
                                "vocab_size": variant["shape"]["vocab_size"], "source": str(source)}
    assert variant["settings"]["max_seq_len"] == 32
    rows = {(r["model"], r["mode"]): r for r in variant["rows"]}
    assert list(rows) == [("base", "float32"), ("base", "dynamic-int8"), ("base", "dynamic-int4"),
                          ("structured-50", "dynamic-int8"), ("vocab-trimmed", "dynamic-int8")]
    assert variant["failed"] == [{"model": "base", "mode": "int8", "error": refusal}]
    for row in rows.values():
        assert 0 <= row["accuracy"] <= 1 and row["p50_ms"] > 0 and row["model_bytes"] < row["bundle_bytes"]
    assert rows[("base", "dynamic-int4")]["quantization"]["tool"].startswith("ai-edge-quantizer")
    assert rows[("structured-50", "dynamic-int8")]["layer_heads"] == [2, 2]
    assert rows[("vocab-trimmed", "dynamic-int8")]["vocab_size"] == 150
    # Every model made from the Hugging Face source is a Hugging Face folder (config.json, no bert_config.json).
    for step in ("base/01-finetune", "structured-50/01-prune", "structured-50/02-finetune",
                 "vocab-trimmed/01-trim-vocab"):
        folder = out / "work" / "tinyst" / step
        assert (folder / "config.json").is_file() and not (folder / "bert_config.json").exists(), step
    targets = {t["target"]: t for t in variant["targets"]}
    assert list(targets)[0] == "dynamic int8 within 0.3 points of float32"
    assert targets["full int8 converts by default, within 1.0 point of float32"] == {
        "target": "full int8 converts by default, within 1.0 point of float32", "value": None, "met": False,
        "error": refusal}
    assert "structured-50 >= 1.6x faster than base dynamic int8" in targets
    report = (out / "compression.md").read_text()
    assert "## tinyst (pretrained, L=2 H=32 A=4 I=64" in report
    assert f"| base | int8 | failed: {refusal} |" in report and "| base | dynamic-int4 |" in report
    # The rerun trains, converts and evaluates nothing, and does not try the failed export again.
    cached = sorted((out / "work" / "tinyst" / "predictions").glob("*.json"))
    assert len(cached) == 5
    made = {path: path.stat().st_mtime_ns for path in [*out.rglob("model.tflite"), *cached]}
    capsys.readouterr()
    assert main([str(a) for a in args]) == 0
    rerun = capsys.readouterr().err
    assert "converting " not in rerun and "epoch 1/" not in rerun, rerun[-2000:]
    assert f"base.int8: failed before with the same inputs: {refusal}" in rerun and len(attempts) == 1
    assert {path: path.stat().st_mtime_ns for path in made} == made


def test_compression_benchmark_source_errors(tmp_path, capsys):
    from benchmarks.compression.__main__ import main

    data = tmp_path / "task"
    data.mkdir()
    _write_task(data / "train.tsv", 8, 0)
    _write_task(data / "dev.tsv", 8, 1)
    out = str(tmp_path / "o")
    assert main(["--data", str(data), "--source", "some-model", "--out", out]) == 1
    assert capsys.readouterr().err.strip() == ("error: --source takes NAME=PATH (or all-MiniLM-L6-v2, fetched "
                                               "from PyPI), got 'some-model'")
    assert main(["--data", str(data), "--source", f"x={tmp_path / 'none'}", "--out", out]) == 1
    assert capsys.readouterr().err.strip().startswith("error: ")
    assert main(["--data", str(data), "--custom", "2,32,4,64", "--models", "pruned", "--out", out]) == 1
    assert capsys.readouterr().err.strip().startswith("error: unknown model 'pruned' (choose from unstructured-50,")


def test_models_empty_benchmarks_base_alone(monkeypatch, tmp_path):
    # `--models ""` is base's modes and nothing made from it (a first run took it for the default: all).
    import benchmarks.compression.run
    from benchmarks.compression.__main__ import main

    data = tmp_path / "task"
    data.mkdir()
    _write_task(data / "train.tsv", 8, 0)
    _write_task(data / "dev.tsv", 8, 1)
    seen = []
    monkeypatch.setattr(benchmarks.compression.run, "run", lambda settings, *args, **kwargs: seen.append(settings))
    monkeypatch.setattr("benchmarks.compression.report.format_markdown", lambda results: "")
    for models, derived in (("", []), ("structured-50", ["structured-50"])):
        assert main(["--data", str(data), "--custom", "2,32,4,64", "--models", models, "--out", str(tmp_path / "o")]) == 0
        assert seen.pop().derived == derived
    main(["--data", str(data), "--custom", "2,32,4,64", "--out", str(tmp_path / "o")])
    assert len(seen.pop().derived) == 6
