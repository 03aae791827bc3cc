"""`python -m benchmarks.peer` runs end to end on a tiny non-grid BERT (hidden 32, 4 heads of 8) and writes a
well-formed peer.json / peer.md: every engine present (PyTorch eager and quantize_dynamic, ExecuTorch with
XNNPACK included), finite figures, every int8 peer agreeing with the float Keras model, the weight-cache
engine loading a warm cache that lives under OUT/work, the CPU's int8 kernel family named; and on a
real-text set, every engine running each text at its own length. No timing is asserted (benchmarks are not
tests).

Needs the [bench] extra (onnxruntime, onnx, torch, transformers<5, executorch) on top of [convert]; skipped
without it.
The skip of the weight-cache engine on a runtime without one is checked without the extra.
"""
from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:  # benchmarks/ is not an installed package
    sys.path.insert(0, str(REPO))
BENCH_EXTRA = "needs the [bench] extra: pip install torch==2.13.0 && pip install -e '.[convert,bench]'"


def _require_bench_extra():
    pytest.importorskip("onnxruntime", reason=BENCH_EXTRA)
    pytest.importorskip("onnx", reason=BENCH_EXTRA)
    pytest.importorskip("tensorflow", reason="needs the [convert] extra (TensorFlow)")
    # torch and transformers are only looked up, not imported: the export runs in its own process.
    for name in ("torch", "transformers", "executorch"):
        if importlib.util.find_spec(name) is None:
            pytest.skip(f"{name} is not installed; {BENCH_EXTRA}")
    major = int(importlib.metadata.version("transformers").split(".")[0])
    if major >= 5:
        pytest.skip(f"transformers {importlib.metadata.version('transformers')} cannot load TF checkpoints; "
                    "the [bench] extra pins transformers<5")


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@pytest.fixture(scope="module")
def peer_run(tmp_path_factory):
    _require_bench_extra()
    out = tmp_path_factory.mktemp("peer")
    command = [sys.executable, "-m", "benchmarks.peer", "--custom", "2,32,4,64", "--threads", "1", "--runs", "2",
               "--rounds", "2", "--warmup", "1", "--agree-examples", "4", "--roofline-shapes", "128x256x256",
               "--roofline-runs", "3", "--out", str(out)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, done


def test_peer_json_is_well_formed(peer_run):
    from benchmarks.peer import ENGINES, EXECUTORCH_INT8, INT8_PEERS, PEER_SCHEMA, TORCH_FLOAT, TORCH_INT8
    from edgebert import cpu_features

    out, _ = peer_run
    results = json.loads((out / "peer.json").read_text())
    assert results["schema"] == PEER_SCHEMA and results["complete"] is True
    assert {"cpu_model", "cores", "machine"} <= set(results["device"])
    assert results["device"]["int8_kernels"] == cpu_features.device_facts()["int8_kernels"]
    assert results["roofline"]["int8_kernels"] == results["device"]["int8_kernels"]
    assert set(results["engines"]) == set(ENGINES)
    [variant] = results["variants"]
    assert variant["config"]["hidden_size"] == 32 and variant["config"]["num_heads"] == 4
    assert variant["macs"]["total"] == variant["macs"]["dense"] + variant["macs"]["attention"] > 0
    rows = {row["engine"]: row for row in variant["rows"]}
    assert set(rows) == set(ENGINES)
    for engine, row in rows.items():
        assert "error" not in row, row.get("error")
        assert row["threads"] == 1
        assert row["feed_lengths"] == [128, 128]  # padded to --seq-len, every engine alike
        latency = row["latency_ms"]
        assert latency["runs"] == 2
        assert 0 < latency["min"] <= latency["p50"] <= latency["p90"] <= latency["max"]
        assert len(row["round_p50_ms"]) == 2
        assert _finite(row["p50_over_edgebert_int8"]) and _finite(row["achieved_gmacs"])
        memory = row["memory"]
        assert _finite(memory["baseline_rss_mb"]) and _finite(memory["peak_rss_mb"]) and _finite(memory["growth_mb"])
        assert memory["peak_rss_mb"] >= memory["baseline_rss_mb"]
        assert row["model_bytes"] > 0
        agreement = row["agreement"]
        for key in ("pooled_min_cosine", "pooled_mean_cosine", "pooled_max_abs_diff", "sequence_min_cosine"):
            assert _finite(agreement[key]), (engine, key, agreement[key])
        assert agreement["examples"] == 4
    assert rows["edgebert-dynamic-int8"]["p50_over_edgebert_int8"] == 1.0
    for engine in INT8_PEERS:
        assert rows[engine]["agreement"]["pooled_min_cosine"] > 0.9, engine
    assert rows["edgebert-dynamic-int8"]["facts"]["xnnpack_partitions"] >= 1
    # the PyTorch engines: float is the same model as the reference, quantize_dynamic replaced every Linear
    assert rows[TORCH_FLOAT]["agreement"]["pooled_max_abs_diff"] < 1e-4
    assert rows[TORCH_INT8]["facts"]["dynamic_int8_linear_modules"] == 2 * 6 + 1  # 6 per layer + pooler
    assert rows[EXECUTORCH_INT8]["facts"]["threadpool_threads"] == 1
    executorch = variant["artifacts"]["torch"]["executorch"]
    assert executorch["xnnpack_delegates"] >= 1 and executorch["dynamic_seq"] == [2, 128]
    assert "linear" not in executorch["ops_outside_xnnpack"]  # every dense layer runs in XNNPACK


def test_cached_engine_maps_a_warm_weight_cache(peer_run):
    from benchmarks.peer import EDGEBERT_INT8, EDGEBERT_INT8_CACHED

    out, _ = peer_run
    [variant] = json.loads((out / "peer.json").read_text())["variants"]
    rows = {row["engine"]: row for row in variant["rows"]}
    cached, plain = rows[EDGEBERT_INT8_CACHED], rows[EDGEBERT_INT8]
    cache = cached["weight_cache"]
    assert cache["warm"] is True  # built by the throwaway worker, only mapped by the measured one
    path = Path(cache["file"])
    assert path.is_file() and path.stat().st_size == cache["bytes"] > 0
    assert path.is_relative_to(out / "work")
    assert _finite(cache["cold_load"]["load_to_first_output_ms"])
    assert _finite(cached["load_to_first_output_ms"]) and _finite(plain["load_to_first_output_ms"])
    assert cached["model_bytes"] == plain["model_bytes"]
    assert _finite(cached["growth_over_model_bytes"]) and _finite(cached["resident_growth_over_model_bytes"])
    assert cache["max_abs_diff_vs_uncached"] <= 1e-4  # same kernels on the same packed weights
    assert cached["agreement"]["pooled_min_cosine"] > 0.9
    if Path("/proc/self/smaps_rollup").exists():  # what the resident memory is made of (Linux)
        for row in (cached, plain):
            breakdown = row["memory"]["breakdown_at_end"]
            assert breakdown["RssAnon"] > 0 and breakdown["RssFile"] > 0 and breakdown["FilePmdMapped"] >= 0


def test_cached_engine_is_skipped_without_weight_cache(monkeypatch):
    from benchmarks.peer import EDGEBERT_INT8, EDGEBERT_INT8_CACHED
    from benchmarks.peer.report import format_markdown
    from benchmarks.peer.runner import skip_reason
    from edgebert import interpreter

    old = interpreter.Runtime("tflite-runtime", "2.14.0", None)
    monkeypatch.setattr(interpreter, "find_runtime", lambda preference="auto": old)
    assert skip_reason(EDGEBERT_INT8) is None
    reason = skip_reason(EDGEBERT_INT8_CACHED)
    assert "tflite-runtime 2.14.0" in reason and "weight cache" in reason
    config = {"num_layers": 2, "hidden_size": 32, "num_heads": 4, "intermediate_size": 64}
    results = {"settings": {"threads": [1]}, "variants": [{"variant": "custom", "config": config, "rows": [
        {"engine": EDGEBERT_INT8_CACHED, "threads": 1, "skipped": reason}]}]}
    assert f"| {EDGEBERT_INT8_CACHED} | 1 | skipped: {reason} |" in format_markdown(results)


def test_onnx_fusions_and_roofline_are_reported(peer_run):
    out, _ = peer_run
    results = json.loads((out / "peer.json").read_text())
    [variant] = results["variants"]
    onnx = variant["artifacts"]["onnx"]
    assert set(onnx["fusions"]) <= {"EmbedLayerNormalization", "Attention", "MultiHeadAttention",
                                    "SkipLayerNormalization", "LayerNormalization", "FastGelu", "Gelu", "BiasGelu"}
    assert onnx["fusions"], "optimize_model fused nothing"
    assert onnx["bytes"]["int8"] < onnx["bytes"]["float"]
    best = results["roofline"]["best"]["dynamic-int8/t1"]
    assert best["shape"] == [128, 256, 256] and _finite(best["gmacs"]) and best["gmacs"] > 0
    assert _finite(variant["rows"][-1]["roofline_fraction_int8"])


def test_peer_markdown_and_printed_table(peer_run):
    from benchmarks.peer import EDGEBERT_INT8_CACHED, ENGINES

    out, done = peer_run
    markdown = (out / "peer.md").read_text()
    for engine in ENGINES:
        assert f"| {engine} | 1 |" in markdown
        assert f"| {engine} | 1 |" in done.stdout
    assert "Roofline" in markdown and "Against the issue's targets" in markdown
    kernels = json.loads((out / "peer.json").read_text())["device"]["int8_kernels"]
    assert f"int8 kernels measured: XNNPACK's {kernels} family" in markdown
    assert "best int8 peer / edgebert" in markdown and "ExecuTorch: torch.export (dynamic seq)" in markdown
    assert "with weight cache: peak growth / model bytes" in markdown
    assert f"{EDGEBERT_INT8_CACHED} t1: weight cache " in markdown and ", warm; load + first call" in markdown


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """The real-text set: a few SST-2-style sentences of different lengths, each run at its own length (edgebert's
    weight-cache engine: at its length bucket)."""
    _require_bench_extra()
    out = tmp_path_factory.mktemp("peer-text")
    texts = out / "dev.tsv"
    texts.write_text("sentence\tlabel\nit is a charming and often affecting journey .\t1\nbleak\t0\n"
                     "the film is strictly routine , and the acting never rises above it .\t0\n")
    engines = "tf-float,ort-dynamic-int8,torch-dynamic-int8,executorch-xnnpack-int8,edgebert-dynamic-int8," \
              "edgebert-dynamic-int8-cached"
    command = [sys.executable, "-m", "benchmarks.peer", "--custom", "2,32,4,64", "--threads", "1", "--runs", "3",
               "--rounds", "1", "--warmup", "0", "--agree-examples", "3", "--roofline-shapes", "128x64x64",
               "--roofline-runs", "2", "--engines", engines, "--text", str(texts), "--out", str(out / "run")]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return out / "run", done


def test_real_text_set_runs_each_text_at_its_own_length(text_run):
    from benchmarks.peer import EDGEBERT_INT8, EDGEBERT_INT8_CACHED, EXECUTORCH_INT8, INT8_PEERS

    out, done = text_run
    results = json.loads((out / "peer.json").read_text())
    assert results["settings"]["text"].endswith("dev.tsv")
    [variant] = results["variants"]
    inputs = variant["artifacts"]["inputs"]
    assert inputs["per_text_length"] is True and inputs["sentences"] == 3 and inputs["tokens_max"] < 128
    assert 0 < inputs["macs_mean"] < variant["macs"]["total"]  # MACs at the texts' lengths, not at 128
    bundle = json.loads((Path(variant["artifacts"]["bundles"][EDGEBERT_INT8]) / "manifest.json").read_text())
    assert bundle["recipe"]["seq_len"] == "dynamic"  # edgebert's fastest on real text from Mini up (README)
    cached = json.loads((Path(variant["artifacts"]["bundles"][EDGEBERT_INT8_CACHED]) / "manifest.json").read_text())
    assert cached["recipe"]["seq_lens"] == [16, 32, 64, 128]  # the weight cache needs fixed shapes: buckets
    rows = {row["engine"]: row for row in variant["rows"]}
    shortest = inputs["tokens_min"]  # "bleak" (with [CLS] and [SEP]; the synthetic vocab spells it out)
    for engine in (*INT8_PEERS, EDGEBERT_INT8, EDGEBERT_INT8_CACHED):
        row = rows[engine]
        assert "error" not in row, row.get("error")
        # against TF float run at the same lengths: padding is gone, so a wrong cut would show here
        assert row["agreement"]["pooled_min_cosine"] > 0.9 and row["agreement"]["sequence_min_cosine"] > 0.9
        assert _finite(row["mean_over_edgebert_int8"]) and _finite(row["achieved_gmacs"])
        assert row["feed_lengths"] == [shortest, inputs["tokens_max"]] and shortest < inputs["tokens_max"], engine
    assert rows[EXECUTORCH_INT8]["latency_ms"]["runs"] == 3
    markdown = (out / "peer.md").read_text()
    assert "Each text at its own length" in markdown and "x edgebert int8 (mean)" in markdown
