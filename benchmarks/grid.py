"""The fine-tuning grid for a random BERT-Tiny on SST-2, sequential and on a local 2-node Ray cluster (a head
and a worker started with `ray start` on 127.0.0.1): wall time and best dev accuracy of each.

    python -m benchmarks.grid --data ../shared/data/glue --out /tmp/grid-bench --max-train-examples 2000

The data is read where it is, never copied. Every process started here is stopped by its PID."""
from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

RAY = Path(sys.executable).parent / "ray"


def _port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _env() -> dict:
    return {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}


def _start(*args) -> subprocess.Popen:
    return subprocess.Popen([str(RAY), "start", "--block", "--disable-usage-stats", *args], env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)


def _grid(args, out: Path, extra: list[str]) -> dict:
    command = [sys.executable, "-m", "edgebert", "grid", "--variants", "tiny", "--tasks", "SST-2", "--data",
               str(args.data), "--out", str(out), "--runs", "10", *extra]
    if args.max_train_examples:
        command += ["--max-train-examples", str(args.max_train_examples)]
    started = time.perf_counter()
    subprocess.run(command, check=True, env=_env())
    cell = json.loads((out / "grid.json").read_text())["cells"][0]
    return {"wall_s": round(time.perf_counter() - started, 1), "best": cell.get("best"),
            "tflite_dev": (cell.get("tflite") or {}).get("dev_metrics"), "status": cell["status"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="GLUE's layout: DATA/SST-2/train.tsv, dev.tsv")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-train-examples", type=int, default=None)
    parser.add_argument("--cpus", type=int, default=1, help="CPUs of each of the two nodes")
    args = parser.parse_args()
    figures = {"sequential": _grid(args, args.out / "sequential", [])}
    port, temp = _port(), tempfile.mkdtemp(prefix="ebgrid", dir="/tmp")
    head = _start("--head", "--port", str(port), "--num-cpus", str(args.cpus), "--temp-dir", temp,
                  "--include-dashboard=false")
    worker = None
    try:
        time.sleep(10)
        worker = _start("--address", f"127.0.0.1:{port}", "--num-cpus", str(args.cpus))
        time.sleep(10)
        figures["ray_2_nodes"] = _grid(args, args.out / "ray", ["--ray", f"127.0.0.1:{port}"])
    finally:
        for process in (worker, head):
            if process is not None:
                os.killpg(process.pid, signal.SIGKILL)
    print(json.dumps({"max_train_examples": args.max_train_examples, **figures}, indent=2))


if __name__ == "__main__":
    main()
