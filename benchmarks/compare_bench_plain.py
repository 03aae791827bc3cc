"""Does `edgebert bench` agree with a plain interpreter loop timed independently?

For each bundle, alternately (so that drift in the machine's speed hits both alike) runs `edgebert.bench`
in a fresh worker process (`bench_in_fresh_process`) and `benchmarks/plain_loop.py` in another fresh
process, `--rounds` times each, with the same runs, warm-up and threads, and prints each round's p50 /
median and the ratio of the medians across rounds (bench / plain; 1.00 = perfect agreement; the bench's
figure includes edgebert's Python call path, reported separately as python_overhead_ms).

    python benchmarks/compare_bench_plain.py BUNDLE... [--rounds 3] [--runs 50] [--warmup 5] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from edgebert.bench import bench_in_fresh_process  # noqa: E402


def plain(bundle: Path, runs: int, warmup: int, threads: int) -> dict:
    done = subprocess.run([sys.executable, str(HERE / "plain_loop.py"), str(bundle), "--runs", str(runs),
                           "--warmup", str(warmup), "--threads", str(threads), "--json"],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(bundle: Path, rounds: int, runs: int, warmup: int, threads: int) -> dict:
    bench_p50, plain_p50, overheads, peaks, growths = [], [], [], [], []
    for round_ in range(1, rounds + 1):
        result = bench_in_fresh_process(bundle, runs=runs, warmup=warmup, threads=threads)
        if "error" in result:
            raise SystemExit(f"{bundle}: {result['error']}")
        loop = plain(bundle, runs, warmup, threads)
        bench_p50.append(result["latency_ms"]["p50"])
        plain_p50.append(loop["median_ms"])
        overheads.append(result["python_overhead_ms"])
        peaks.append(result["memory"]["peak_rss_mb"])
        growths.append(result["memory"]["growth_mb"])
        print(f"  round {round_}: bench p50 {bench_p50[-1]:.4f} ms (overhead {overheads[-1]:.4f} ms, "
              f"peak RSS {peaks[-1]:.1f} MB, growth {growths[-1]:.1f} MB, xnnpack {result['xnnpack_applied']})"
              f" | plain loop median {plain_p50[-1]:.4f} ms (peak RSS {loop['peak_rss_mb']:.1f} MB)", flush=True)
    summary = {"bundle": str(bundle), "bench_p50_ms": statistics.median(bench_p50),
               "plain_median_ms": statistics.median(plain_p50),
               "python_overhead_ms": statistics.median(overheads), "peak_rss_mb": max(peaks),
               "growth_mb": statistics.median(growths)}
    summary["ratio"] = summary["bench_p50_ms"] / summary["plain_median_ms"]
    return summary


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundles", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    summaries = []
    for bundle in args.bundles:
        print(f"{bundle}:", flush=True)
        summaries.append(compare(bundle, args.rounds, args.runs, args.warmup, args.threads))
    print()
    print(f"{'bundle':<40}{'bench p50 ms':>14}{'plain ms':>10}{'ratio':>8}{'overhead ms':>13}{'peak MB':>9}")
    for s in summaries:
        print(f"{Path(s['bundle']).name:<40}{s['bench_p50_ms']:>14.4f}{s['plain_median_ms']:>10.4f}"
              f"{s['ratio']:>8.3f}{s['python_overhead_ms']:>13.4f}{s['peak_rss_mb']:>9.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
