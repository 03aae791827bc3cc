"""The fine-tuning grid for a random BERT-Tiny on SST-2, sequential and on a local 2-node Ray cluster (a head
and a worker started with `ray start` on 127.0.0.1): wall time and best dev accuracy of each.

    python -m benchmarks.grid --data ../shared/data/glue --out /tmp/grid-bench --max-train-examples 2000

`--model all-MiniLM-L6-v2` (fetched as converters.real_weights does) or `--model PATH` runs the same grid on a
real pretrained model instead (`edgebert grid --models`); `--only ray` or `--only sequential` runs one of the two.

The data is read where it is, never copied. Every process started here is stopped by its PID: each `ray start`
process, everything under it (GCS, raylet, Ray's worker processes; read from /proc before any is killed) and
its own process group (benchmarks.local_ray, which tests/test_distributed.py uses too); nothing else on the
machine is touched."""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from benchmarks.local_ray import Cluster, ray_env
from converters.real_weights import MINILM, fetch_real_model


def _grid(args, out: Path, extra: list[str]) -> dict:
    which = ["--models", str(args.model)] if args.model else ["--variants", "tiny"]
    command = [sys.executable, "-m", "edgebert", "grid", *which, "--tasks", "SST-2", "--data",
               str(args.data), "--out", str(out), "--runs", "10", *extra]
    if args.max_train_examples:
        command += ["--max-train-examples", str(args.max_train_examples)]
    started = time.perf_counter()
    subprocess.run(command, check=True, env=ray_env())
    cell = json.loads((out / "grid.json").read_text())["cells"][0]
    return {"wall_s": round(time.perf_counter() - started, 1), "best": cell.get("best"),
            "tflite_dev": (cell.get("tflite") or {}).get("dev_metrics"), "status": cell["status"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--data", type=Path, required=True, help="GLUE's layout: DATA/SST-2/train.tsv, dev.tsv")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-train-examples", type=int, default=None)
    parser.add_argument("--cpus", type=int, default=1, help="CPUs of each of the two nodes")
    parser.add_argument("--model", default=None, help="all-MiniLM-L6-v2 or a checkpoint's path (default: random Tiny)")
    parser.add_argument("--only", choices=("sequential", "ray"), default=None, help="run one of the two")
    args = parser.parse_args()
    if args.model == MINILM.name:
        args.model = fetch_real_model(MINILM)
    figures = {}
    if args.only != "ray":
        figures["sequential"] = _grid(args, args.out / "sequential", [])
    if args.only != "sequential":
        cluster = Cluster(args.cpus)
        try:
            figures["ray_2_nodes"] = _grid(args, args.out / "ray", ["--ray", cluster.address])
        finally:
            cluster.stop()
    print(json.dumps({"model": str(args.model or "random BERT-Tiny"), "max_train_examples": args.max_train_examples,
                      **figures}, indent=2))


if __name__ == "__main__":
    main()
