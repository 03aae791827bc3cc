"""The benchmark result format, shared by `bench`, `sweep`, `report` and `deploy`.

A results file is JSON: {"schema": BENCH_SCHEMA, "device": {...}, "results": [result, ...]}.
One result (one bundle measured in one fresh process) has these keys:

    bundle     {"path", "name", "model_bytes", "model_sha256", "quantize", "seq_len", "head",
                "variant" (Google name or null), "layers", "hidden", "heads", "parameters", "random_weights"}
    settings   {"threads", "runs", "warmup", "xnnpack" (asked for), "seq_len", "inputs" (where the text came from);
               "seq_lens" for a bundle with length buckets, whose texts each ran at their own bucket}
    runtime    {"name", "version"}
    xnnpack_applied   whether the XNNPACK delegate actually took the graph
    load_ms, first_inference_ms
    latency_ms {"mean", "std", "min", "p50", "p90", "p99", "max"}  warm runs, warm-up excluded, outliers kept
    throughput_per_s  inferences per second at the mean latency
    python_overhead_ms  median cost of the Python call path (a full call minus a bare native invoke on
                        the same model and inputs), for context
    memory     {"baseline_rss_mb" (process before loading), "peak_rss_mb", "growth_mb" (peak - baseline),
               "anon_growth_mb", "file_growth_mb" (RssAnon and RssFile after the timed runs - baseline)}
    timestamp  ISO 8601 UTC
    per_text   (only with `bench --per-text`) {"texts", "passes", "tokens_mean", "lengths" ({length: texts}),
               "latency_ms" {"mean", "p50", "p90"} over the texts, each the median of its passes}
    soak       (only with `bench --soak N`) {"calls", "samples", "settle_calls", "method", "start_mb",
               "growth_mb", "max_growth_mb", "slope_kb_per_1000" (each {"rss", "anon", "file"}: VmRSS, RssAnon,
               RssFile over the last 90 % of the calls), "series", "p50_first_ms", "p50_last_ms", and with length
               buckets "lengths" ({length: calls}) and "length_changes"}; see edgebert.bench
A failed measurement is {"bundle": {"path", "name"}, "error": "<one line>"} instead.

The device facts: {"cpu_model", "cores", "machine", "system", "release", "python", "numpy", "hostname"}.
"""
from __future__ import annotations

import json
from pathlib import Path

from edgebert.errors import BundleError

BENCH_SCHEMA = "edgebert.bench/1"
RESULT_KEYS = ("bundle", "settings", "runtime", "xnnpack_applied", "load_ms", "first_inference_ms", "latency_ms",
               "throughput_per_s", "python_overhead_ms", "memory", "timestamp")
LATENCY_KEYS = ("mean", "std", "min", "p50", "p90", "p99", "max")


def check_result(result: dict) -> dict:
    """Raise ValueError naming the first missing key; return the result unchanged."""
    if not isinstance(result, dict):
        raise ValueError(f"a result is not an object (got {type(result).__name__})")
    if "error" in result:
        if "bundle" not in result:
            raise ValueError("failed result lacks 'bundle'")
        return result
    for key in RESULT_KEYS:
        if key not in result:
            raise ValueError(f"result lacks {key!r}")
    if not isinstance(result["latency_ms"], dict):
        raise ValueError("result latency_ms is not an object")
    for key in LATENCY_KEYS:
        if key not in result["latency_ms"]:
            raise ValueError(f"result latency_ms lacks {key!r}")
    return result


def read_results(path: str | Path) -> dict:
    """Read and check a results file; a bad one is a one-line BundleError naming the file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError("results file not found", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"unreadable results JSON ({error})", path) from None
    if not isinstance(data, dict) or data.get("schema") != BENCH_SCHEMA:
        raise BundleError(f"not an edgebert results file (schema {data.get('schema') if isinstance(data, dict) else None!r}, "
                          f"expected {BENCH_SCHEMA!r})", path)
    if not isinstance(data.get("results", []), list):
        raise BundleError("'results' is not a list", path)
    try:
        for result in data.get("results", []):
            check_result(result)
    except ValueError as error:
        raise BundleError(str(error), path) from None
    return data
