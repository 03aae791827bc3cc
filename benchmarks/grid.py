"""The fine-tuning grid for a random BERT-Tiny on SST-2, sequential and on a local 2-node Ray cluster (a head
and a worker started with `ray start` on 127.0.0.1): wall time and best dev accuracy of each.

    python -m benchmarks.grid --data ../shared/data/glue --out /tmp/grid-bench --max-train-examples 2000

The data is read where it is, never copied. Every process started here is stopped by its PID: each `ray start`
process, everything under it (GCS, raylet, Ray's worker processes; read from /proc before any is killed) and
its own process group, as tests/test_distributed.py does; nothing else on the machine is touched."""
from __future__ import annotations

import argparse
import json
import os
import shutil
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


def _descendants(pid: int) -> list[int]:
    """The process tree under pid (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, queue = [], [pid]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child)
    return found


def _kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a process started here, everything under it (listed before the first kill, so that none is
    reparented out of sight) and its own process group."""
    for pid in [process.pid, *_descendants(process.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # started with start_new_session: its group is its own
    except (ProcessLookupError, PermissionError):
        pass
    process.wait(timeout=30)


def _wait_for_nodes(address: str, count: int, timeout: float = 120) -> None:
    code = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
            "print(sum(1 for n in ray.nodes() if n['Alive']))")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = subprocess.run([sys.executable, "-c", code, address], check=False, capture_output=True, text=True, env=_env(),
                              timeout=60)
        lines = done.stdout.strip().splitlines()
        if done.returncode == 0 and lines and int(lines[-1]) >= count:
            return
        time.sleep(1)
    raise SystemExit(f"the Ray cluster at {address} did not reach {count} nodes in {timeout:.0f} s")


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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("--data", type=Path, required=True, help="GLUE's layout: DATA/SST-2/train.tsv, dev.tsv")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--max-train-examples", type=int, default=None)
    parser.add_argument("--cpus", type=int, default=1, help="CPUs of each of the two nodes")
    args = parser.parse_args()
    figures = {"sequential": _grid(args, args.out / "sequential", [])}
    port, temp = _port(), tempfile.mkdtemp(prefix="ebgrid", dir="/tmp")  # Ray's socket paths must stay short
    address = f"127.0.0.1:{port}"
    head = worker = None
    try:
        head = _start("--head", "--port", str(port), "--num-cpus", str(args.cpus), "--temp-dir", temp,
                      "--include-dashboard=false")
        _wait_for_nodes(address, 1)
        worker = _start("--address", address, "--num-cpus", str(args.cpus))
        _wait_for_nodes(address, 2)
        figures["ray_2_nodes"] = _grid(args, args.out / "ray", ["--ray", address])
    finally:
        for process in (worker, head):
            if process is not None:  # even one that has ended: its group may hold processes it left
                _kill_tree(process)
        shutil.rmtree(temp, ignore_errors=True)
    print(json.dumps({"max_train_examples": args.max_train_examples, **figures}, indent=2))


if __name__ == "__main__":
    main()
