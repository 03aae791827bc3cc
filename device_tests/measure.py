"""Measure one bundle's warm latency percentiles and peak RSS, in a process of its own.

    python measure.py BUNDLE_DIR [--runs N] [--threads N]

Prints one JSON object: {"p50_ms", "p90_ms", "p99_ms", "peak_mb", "runs", "threads", "measured_by"}.
The device suite runs it as a fresh subprocess: the peak resident memory of the pytest process would
include pytest itself and every bundle loaded before (the kernel's high-water mark never goes down).

It uses the project's benchmark runner, `edgebert.bench.bench_bundle`, when this edgebert has one, and
otherwise a small timing loop of its own over the bundle's first golden example (real text's ids).
"""
from __future__ import annotations

import argparse
import inspect
import json
import sys
import time


def _peak_rss_mb() -> float:
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux and Android, bytes on macOS
    return peak / 1e6 if sys.platform == "darwin" else peak * 1024 / 1e6


def _as_dict(result):
    if isinstance(result, dict):
        return result
    for method in ("to_dict", "as_dict"):
        if callable(getattr(result, method, None)):
            return getattr(result, method)()
    try:
        import dataclasses
        return dataclasses.asdict(result)
    except TypeError:
        return None


def with_project_runner(bundle_dir: str, runs: int, threads: int | None):
    """edgebert.bench.bench_bundle's figures, or None when this edgebert has no usable runner."""
    try:
        from edgebert.bench import bench_bundle
    except ImportError:
        return None
    try:
        parameters = inspect.signature(bench_bundle).parameters
    except (TypeError, ValueError):
        parameters = {}
    offered = {"runs": runs, "threads": threads, "num_threads": threads}
    kwargs = {key: value for key, value in offered.items() if key in parameters and value is not None}
    try:
        result = _as_dict(bench_bundle(bundle_dir, **kwargs))
    except Exception as error:  # e.g. an installed edgebert without the samples/ it feeds: time it here
        print(f"note: edgebert.bench.bench_bundle failed ({error}); using the local timing loop", file=sys.stderr)
        return None
    if not isinstance(result, dict):
        return None
    if result.get("error"):
        raise SystemExit(f"error: {bundle_dir}: the benchmark failed: {result['error']}")
    latency, memory = result.get("latency_ms") or {}, result.get("memory") or {}
    if "p90" not in latency or "peak_rss_mb" not in memory:
        return None
    return {"p50_ms": latency.get("p50"), "p90_ms": latency["p90"], "p99_ms": latency.get("p99"),
            "peak_mb": memory["peak_rss_mb"], "runs": (result.get("settings") or {}).get("runs", runs),
            "threads": (result.get("settings") or {}).get("threads", threads),
            "measured_by": "edgebert.bench.bench_bundle"}


def with_local_loop(bundle_dir: str, runs: int, threads: int | None) -> dict:
    import numpy as np

    from edgebert.bundle import read_bundle
    from edgebert.interpreter import TFLiteModel

    bundle = read_bundle(bundle_dir)
    examples = bundle.golden.get("examples") or []
    if examples:
        inputs = {name: np.asarray([examples[0][name]], np.int32)
                  for name in ("input_ids", "attention_mask", "token_type_ids")}
    else:  # no golden text: [CLS] [SEP] and padding
        length = bundle.seq_len or 16
        ids = np.zeros((1, length), np.int32)
        inputs = {"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": ids}
    model = TFLiteModel(bundle.model_path, num_threads=threads)
    for _ in range(min(5, runs)):  # warm-up: the first call applies the delegate, caches warm
        model(**inputs)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        model(**inputs)
        times.append((time.perf_counter() - started) * 1000.0)
    p50, p90, p99 = (float(np.percentile(times, q)) for q in (50, 90, 99))
    return {"p50_ms": p50, "p90_ms": p90, "p99_ms": p99, "peak_mb": _peak_rss_mb(), "runs": runs,
            "threads": threads, "measured_by": "device_tests/measure.py timing loop"}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    figures = with_project_runner(args.bundle, args.runs, args.threads)
    if figures is None:
        figures = with_local_loop(args.bundle, args.runs, args.threads)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
