"""`python -m benchmarks.peer` runs end to end on a tiny non-grid BERT (hidden 32, 4 heads of 8) and writes a
well-formed peer.json / peer.md: every engine present, finite figures, ONNX Runtime's int8 export agreeing
with the float Keras model, the weight-cache engine loading a warm cache that lives under OUT/work. No
timing is asserted (benchmarks are not tests).

Needs the [bench] extra (onnxruntime, onnx, torch, transformers<5) on top of [convert]; skipped without it.
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
    for name in ("torch", "transformers"):
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
    from benchmarks.peer import ENGINES, ORT_INT8, PEER_SCHEMA

    out, _ = peer_run
    results = json.loads((out / "peer.json").read_text())
    assert results["schema"] == PEER_SCHEMA and results["complete"] is True
    assert {"cpu_model", "cores", "machine"} <= set(results["device"])
    assert set(results["engines"]) == set(ENGINES)
    [variant] = results["variants"]
    assert variant["config"]["hidden_size"] == 32 and variant["config"]["num_heads"] == 4
    assert variant["macs"]["total"] == variant["macs"]["dense"] + variant["macs"]["attention"] > 0
    rows = {row["engine"]: row for row in variant["rows"]}
    assert set(rows) == set(ENGINES)
    for engine, row in rows.items():
        assert "error" not in row, row.get("error")
        assert row["threads"] == 1
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
    assert rows[ORT_INT8]["agreement"]["pooled_min_cosine"] > 0.9
    assert rows["edgebert-dynamic-int8"]["facts"]["xnnpack_partitions"] >= 1


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
    assert "with weight cache: peak growth / model bytes" in markdown
    assert f"{EDGEBERT_INT8_CACHED} t1: weight cache " in markdown and ", warm; load + first call" in markdown
