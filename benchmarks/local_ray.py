"""A Ray cluster of separate processes on 127.0.0.1 (a head and a worker started with `ray start --block`), for
benchmarks.grid and tests/test_distributed.py, and the means to stop exactly the processes started here.

Every process is stopped by its PID: each `ray start` process, everything under it (GCS, raylet, Ray's worker
processes; read from /proc before any is killed, so that none is reparented out of sight) and its own process
group; nothing else on the machine is touched."""
from __future__ import annotations

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


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def ray_env() -> dict:
    """The environment for `ray start` and drivers. Token auth off: a ~/.ray/auth_token left by some other
    `ray.init()` would turn it on for `ray start` only."""
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0", "TF_CPP_MIN_LOG_LEVEL": "3",
           "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    return env


def descendants(pid: int) -> list[int]:
    """The process tree under pid (from /proc), children first found first."""
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


def kill_tree(process: subprocess.Popen) -> None:
    """SIGKILL a process started here, everything under it, and its own process group."""
    for pid in [process.pid, *descendants(process.pid)]:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        os.killpg(process.pid, signal.SIGKILL)  # started with start_new_session: its group is its own
    except (ProcessLookupError, PermissionError):
        pass
    process.wait(timeout=30)


class Cluster:
    """A head and a worker of `num_cpus` CPUs each; `stop()` ends every process started here."""

    def __init__(self, num_cpus: int = 1):
        self.num_cpus = num_cpus
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        # Ray's socket paths must stay short: not under a long temporary path such as pytest's.
        self.temp = Path(tempfile.mkdtemp(prefix="ebray", dir="/tmp"))
        self.head = self.worker = None
        try:
            self.head = self._start("--head", "--port", str(self.port), "--temp-dir", str(self.temp),
                                    "--include-dashboard=false")
            self._wait_for_nodes(1)
            self.worker = self.start_worker()
        except BaseException:
            self.stop()
            raise

    def _start(self, *args) -> subprocess.Popen:
        log = open(self.temp / f"start-{time.monotonic_ns()}.log", "w")
        return subprocess.Popen([str(RAY), "start", "--block", "--num-cpus", str(self.num_cpus),
                                 "--disable-usage-stats", *args],
                                stdout=log, stderr=subprocess.STDOUT, env=ray_env(), start_new_session=True)

    def start_worker(self) -> subprocess.Popen:
        self.worker = self._start("--address", self.address)
        self._wait_for_nodes(2)
        return self.worker

    def _wait_for_nodes(self, count: int, timeout: float = 90) -> None:
        code = ("import ray, sys; ray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False); "
                "print('alive nodes:', sum(1 for n in ray.nodes() if n['Alive']))")
        deadline, error = time.monotonic() + timeout, ""
        while time.monotonic() < deadline:
            done = subprocess.run([sys.executable, "-c", code, self.address], capture_output=True, text=True,
                                  env=ray_env(), timeout=60)
            # Ray may print warnings of its own to stdout (e.g. "raylet has lagging heartbeats" on a busy
            # machine): read only the line this code printed.
            alive = [int(line.split(":")[1]) for line in done.stdout.splitlines() if line.startswith("alive nodes:")]
            if done.returncode == 0 and alive and alive[-1] >= count:
                return
            error = done.stderr[-2000:]
            time.sleep(1)
        raise RuntimeError(f"the Ray cluster at {self.address} did not reach {count} nodes in {timeout:.0f} s: {error}")

    def stop(self) -> None:
        for process in (self.worker, self.head):
            if process is not None:  # even one that has ended: its group may hold processes it left
                kill_tree(process)
        shutil.rmtree(self.temp, ignore_errors=True)
