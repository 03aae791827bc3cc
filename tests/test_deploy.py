"""`edgebert deploy` for real, against an OpenSSH server started for these tests on 127.0.0.1.

The "device" is this machine: the remote Python is sys.executable, the remote directory is in
tmp_path. The server runs with throwaway host and client keys, its own config and its own pid file,
and only that process is stopped afterwards. The fault tests kill that server, or a command it runs,
and only processes found by ancestry from its pid. Skipped when OpenSSH (sshd, ssh, ssh-keygen) is
missing.
"""
from __future__ import annotations

import getpass
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from edgebert.deploy import Target, parse_target, remote_path
from edgebert.errors import UsageError
from ci import missing
from cli_helpers import error_line, invoke

REPO = Path(__file__).resolve().parent.parent
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
HAVE_OPENSSH = Path(SSHD).is_file() and shutil.which("ssh") is not None and shutil.which("ssh-keygen") is not None
WEIRD = "b 1;$(touch pwned)'\"`touch pwned2`x"  # spaces, ;, $(...), quotes, backticks


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _children() -> dict:
    """pid -> its children's pids, for every process in /proc."""
    tree = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path("/proc", entry, "stat").read_text()
            except OSError:  # gone meanwhile
                continue
            tree.setdefault(int(stat.rpartition(")")[2].split()[1]), []).append(int(entry))
    return tree


def _descendants(pid: int) -> list:
    tree, found, todo = _children(), [], [pid]
    while todo:
        for child in tree.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _argv(pid: int) -> list:
    try:
        return Path("/proc", str(pid), "cmdline").read_bytes().decode("utf-8", "replace").split("\0")[:-1]
    except OSError:  # gone meanwhile
        return []


def _alive(pid: int) -> bool:
    """Running (a zombie, exited and not yet reaped, is not)."""
    try:
        return Path("/proc", str(pid), "stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


def _kill(pids) -> None:
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class SSHServer:
    """OpenSSH's sshd on 127.0.0.1 with throwaway host and client keys, its own config and pid file; it
    can be killed with every process it started and started again on the same port."""

    def __init__(self, root: Path):
        self.root, self.process, self.log = root, None, None
        root.mkdir(parents=True, exist_ok=True)
        for key in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgebert-test", "-f",
                            str(root / key)], check=True, capture_output=True)
        (root / "authorized_keys").write_text((root / "client_key.pub").read_text())
        self.port, self.key, self.user = _free_port(), root / "client_key", getpass.getuser()
        self.host_key = (root / "host_key.pub").read_text().split()[1]
        self.host = f"ssh://{self.user}@127.0.0.1:{self.port}"
        self.config = root / "sshd_config"
        self.config.write_text("\n".join([
            "ListenAddress 127.0.0.1", f"Port {self.port}", f"HostKey {root / 'host_key'}",
            f"AuthorizedKeysFile {root / 'authorized_keys'}", f"PidFile {root / 'sshd.pid'}",
            "UsePAM no", "StrictModes no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", "Subsystem sftp internal-sftp", ""]))

    @property
    def pid(self) -> int:
        return self.process.pid

    def start(self) -> None:
        self.log = open(self.root / "sshd.log", "ab")
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdin=subprocess.DEVNULL,
                                        stdout=self.log, stderr=self.log)
        deadline = time.monotonic() + 15
        while True:
            if self.process.poll() is not None:
                pytest.fail(f"sshd exited with {self.process.returncode}: {self._log_tail()}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"sshd did not listen on {self.port}: {self._log_tail()}")
                time.sleep(0.05)

    def _log_tail(self) -> str:
        return (self.root / "sshd.log").read_text(errors="replace")[-2000:]

    def kill(self) -> None:
        """SIGKILL sshd and every process it started (one sshd per connection, and the commands they run),
        as a lost connection or a power cut would end them. They are frozen first (SIGSTOP), the tree read
        again until it stops growing, then killed: none escapes by being reparented meanwhile."""
        frozen = set()
        while True:
            tree = {self.pid, *_descendants(self.pid)} - frozen
            if not tree:
                break
            for pid in tree:
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    pass
            frozen |= tree
        _kill(frozen)
        self.process.wait()
        self.log.close()

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.terminate()
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self.log.close()


def _start_sshd(root: Path) -> SSHServer:
    if not HAVE_OPENSSH:
        missing("OpenSSH is not installed (apt-get install openssh-server openssh-client)")
    try:
        os.makedirs("/run/sshd", exist_ok=True)  # sshd's privilege-separation directory
    except OSError as error:
        missing(f"cannot create /run/sshd for sshd ({error.strerror})")
    server = SSHServer(root)
    server.start()
    return server


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    server = _start_sshd(tmp_path_factory.mktemp("sshd"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def env(tmp_path):
    """The cache (ssh's known_hosts for deploy) in tmp_path: nothing is written to the real one."""
    return {"EDGEBERT_CACHE": str(tmp_path / "cache")}


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _no_pwned(tmp_path: Path):
    """No file made by the injected `touch pwned`: under tmp_path (local and remote dirs), nor in the
    directories a shell would have run it in (this one, the remote home, the repository, /)."""
    names = ("pwned", "pwned2")
    found = [str(p) for p in tmp_path.rglob("pwned*") if p.name in names]
    found += [str(root / name) for root in {Path.cwd(), Path.home(), REPO, Path("/"), Path("/tmp")}
              for name in names if (root / name).exists()]
    assert found == []


def _deploy_args(sshd, *bundles, remote, results, extra=()):
    return ["deploy", "--host", sshd.host, "--identity", sshd.key, "--python", sys.executable,
            "--remote-dir", remote, "--results", results, "--runs", "3", *extra, *bundles]


# --- pure parts: the target and the remote quoting -----------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("ssh://pi@raspberrypi.local", Target("ssh", host="raspberrypi.local", user="pi")),
    ("ssh://root@127.0.0.1:2222", Target("ssh", host="127.0.0.1", user="root", port=2222)),
    ("ssh://host", Target("ssh", host="host")),
    ("ssh://me@[::1]:22/", Target("ssh", host="::1", user="me", port=22)),
    ("adb://emulator-5554", Target("adb", serial="emulator-5554")),
    ("adb://192.168.1.5:5555", Target("adb", serial="192.168.1.5:5555")),
])
def test_parse_target(text, expected):
    assert parse_target(text) == expected
    assert str(parse_target(text)) == text.rstrip("/")


@pytest.mark.parametrize("text", ["raspberrypi", "ssh://", "ssh://user@", "ssh://a@b:0", "ssh://a@b:x",
                                  "ssh://-oProxyCommand=touch@x", "ssh://user@-oProxyCommand=x",
                                  "ssh://a b@host", "ssh://a@ho;st", "http://host", "adb://", "adb://-s x",
                                  "adb://a;b"])
def test_parse_target_refuses(text):
    with pytest.raises(UsageError) as error:
        parse_target(text)
    assert str(error.value).startswith(f"--host must be ssh://user@host[:port] or adb://SERIAL, got {text!r}")


def test_remote_path_quotes_everything_but_a_leading_tilde():
    assert remote_path("/tmp/a b;$(x)") == "'/tmp/a b;$(x)'"
    assert remote_path("~/d $(x)") == "\"$HOME\"/'d $(x)'"
    assert remote_path("~") == '"$HOME"'
    out = subprocess.run(["sh", "-c", f"printf %s {remote_path(WEIRD)}"], capture_output=True, text=True)
    assert out.stdout == WEIRD


# --- the command line, no server needed ----------------------------------------------------------------

@pytest.mark.parametrize("host", ["raspberrypi.local", "ssh://pi@host:99999", "ftp://pi@host",
                                  "ssh://pi@host;touch pwned"])
def test_bad_host_is_one_line_and_exit_2(host, tmp_path, env):
    result = invoke("deploy", "--host", host, tmp_path, env=env)
    line = error_line(result, 2)
    assert line.startswith(f"error: --host must be ssh://user@host[:port] or adb://SERIAL, got {host!r}")


def test_adb_without_adb_is_one_line(tmp_path, env):
    result = invoke("deploy", "--host", "adb://emulator-5554", tmp_path, env={**env, "PATH": str(tmp_path)})
    assert error_line(result, 1) == ("error: cannot deploy to adb://emulator-5554: adb is not installed here "
                                     "(install Android's platform tools, e.g. apt-get install adb, and put adb "
                                     "on PATH)")


def test_a_bad_budget_is_refused_before_connecting(tiny_bundle, tmp_path, env):
    budget = tmp_path / "budget.json"
    budget.write_text('{"default": {"p90_ms": -1}}')
    result = invoke("deploy", "--host", f"ssh://root@127.0.0.1:{_free_port()}", "--budget", budget,
                    "--results", tmp_path / "results", tiny_bundle, env=env)
    assert error_line(result, 2) == f"error: {budget}: default.p90_ms must be a positive number, got -1"


def test_unreachable_host_fails_fast_in_one_line(tiny_bundle, tmp_path, env):
    if not HAVE_OPENSSH:
        missing("OpenSSH is not installed (apt-get install openssh-server openssh-client)")
    port = _free_port()  # nothing listens there
    started = time.monotonic()
    result = invoke("deploy", "--host", f"ssh://root@127.0.0.1:{port}", "--results", tmp_path / "results",
                    tiny_bundle, env=env)
    assert time.monotonic() - started < 15
    line = error_line(result, 1)
    assert line.startswith(f"error: cannot reach ssh://root@127.0.0.1:{port} (")
    assert "Connection refused" in line
    assert not (tmp_path / "results").exists()


# --- against the local sshd ----------------------------------------------------------------------------

def test_deploy_end_to_end(sshd, tiny_bundle, tmp_path, env):
    from edgebert.results import read_results

    remote, results_dir = tmp_path / "remote", tmp_path / "results"
    result = invoke(*_deploy_args(sshd, tiny_bundle, remote=remote, results=results_dir), env=env)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.stderr
    progress = result.stderr.splitlines()
    assert progress[0].startswith(f"connected to {sshd.host}: Python {sys.version.split()[0]}, ")
    assert any(line.startswith("copying 1 bundle and edgebert's source") for line in progress)

    # The bench table, the device tests' summary, and the results file, on stdout.
    out = result.stdout
    assert "p90 ms" in out and "tiny.s32" in out
    assert f"device tests on {sshd.host}:" in out and "3 passed, 1 skipped" in out
    saved = [p for p in results_dir.iterdir()]
    assert len(saved) == 1 and saved[0].name.startswith("127.0.0.1-") and saved[0].suffix == ".json"
    assert out.rstrip().endswith(f"results: {saved[0]}")
    data = read_results(saved[0])
    [measured] = data["results"]
    assert "error" not in measured, measured
    assert measured["bundle"]["name"] == "tiny.s32" and measured["settings"]["runs"] == 3
    assert measured["bundle"]["path"] == str(remote / "bundles" / "tiny.s32")
    assert data["deploy"]["target"] == sshd.host and data["deploy"]["remote_dir"] == str(remote)
    assert data["deploy"]["device_tests"]["passed"] is True

    # What arrived on the "device": the bundle byte for byte, the source, the marker.
    for file in tiny_bundle.iterdir():
        assert _sha(remote / "bundles" / "tiny.s32" / file.name) == _sha(file)
    assert (remote / ".edgebert-deploy").is_file()
    assert (remote / "code" / "edgebert" / "deploy.py").is_file()
    assert (remote / "code" / "device_tests" / "conftest.py").is_file()
    known_hosts = Path(env["EDGEBERT_CACHE"]) / "deploy" / "known_hosts"
    assert sshd.host_key in known_hosts.read_text()  # accepted on first use, in the cache, not ~/.ssh


def test_names_with_shell_syntax_arrive_intact_and_run_nothing(sshd, tiny_bundle, tmp_path, env, monkeypatch):
    local = tmp_path / f"local {WEIRD}"
    shutil.copytree(tiny_bundle, local / WEIRD)
    remote, results_dir = tmp_path / f"remote {WEIRD}", tmp_path / f"results {WEIRD}"
    monkeypatch.chdir(tmp_path)
    result = invoke(*_deploy_args(sshd, local / WEIRD, remote=remote, results=results_dir), env=env)
    assert result.exit_code == 0, result.output
    arrived = remote / "bundles" / WEIRD
    assert sorted(p.name for p in arrived.iterdir()) == sorted(p.name for p in tiny_bundle.iterdir())
    for file in tiny_bundle.iterdir():
        assert _sha(arrived / file.name) == _sha(file)
    assert "3 passed, 1 skipped" in result.stdout
    [saved] = results_dir.iterdir()
    assert json.loads(saved.read_text())["results"][0]["bundle"]["name"] == WEIRD
    _no_pwned(tmp_path)


def test_device_without_the_python_or_its_packages_is_one_line(sshd, tiny_bundle, tmp_path, env):
    remote = tmp_path / "remote"
    result = invoke("deploy", "--host", sshd.host, "--identity", sshd.key, "--python", "/nonexistent/python3",
                    "--remote-dir", remote, "--results", tmp_path / "r", tiny_bundle, env=env)
    assert error_line(result, 1) == (f"error: {sshd.host}: /nonexistent/python3 not found on the device (pass "
                                     "--python with the device's Python 3, e.g. --python python3 or a virtual "
                                     "environment's bin/python)")
    bare = tmp_path / "bare python"  # the same Python without site-packages: no numpy, no interpreter
    bare.write_text(f"#!/bin/sh\nexec {sys.executable} -S \"$@\"\n")
    bare.chmod(0o755)
    result = invoke("deploy", "--host", sshd.host, "--identity", sshd.key, "--python", bare,
                    "--remote-dir", remote, "--results", tmp_path / "r", tiny_bundle, env=env)
    line = error_line(result, 1)
    assert line.startswith(f"error: {sshd.host}: the device's {bare} (Python {sys.version.split()[0]}) lacks ")
    assert "numpy" in line and "ai-edge-litert (or tflite-runtime)" in line
    assert line.endswith(f"; install them there: {bare} -m pip install click numpy pytest tokenizers ai-edge-litert")
    assert not remote.exists()  # checked before anything was copied


def test_refuses_a_remote_dir_it_did_not_make(sshd, tiny_bundle, tmp_path, env):
    remote = tmp_path / "home"
    remote.mkdir()
    (remote / "precious.txt").write_text("mine")
    result = invoke(*_deploy_args(sshd, tiny_bundle, remote=remote, results=tmp_path / "r"), env=env)
    assert result.exit_code == 1
    assert result.stderr.splitlines()[-1] == (
        f"error: {sshd.host}: cannot prepare the remote directory {remote} ({remote} is not empty and was not "
        "made by edgebert deploy; pass another --remote-dir)")
    assert sorted(p.name for p in remote.iterdir()) == ["precious.txt"]


def test_failing_device_tests_fail_the_deploy_over_adb(tiny_bundle, tmp_path, env):
    """The adb flow, through a stand-in `adb` that runs on this machine, with a budget nobody meets."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "adb.log"
    (bin_dir / "adb").write_text(f"""#!/bin/sh
echo "$@" >> '{log}'
[ "$1" = -s ] && [ "$2" = test-serial ] || {{ echo "error: device '$2' not found" >&2; exit 1; }}
shift 2
case "$1" in
  get-state) echo device ;;
  push|pull) cp -- "$2" "$3" ;;
  shell) [ $# -eq 2 ] || exit 64; exec sh -c "$2" ;;
  *) exit 64 ;;
esac
""")
    (bin_dir / "adb").chmod(0o755)
    budget = tmp_path / "budget.json"
    budget.write_text(json.dumps({"default": {"p90_ms": 1e-6, "peak_mb": 1}}))
    local = tmp_path / "bundles" / WEIRD
    shutil.copytree(tiny_bundle, local)
    path = f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    remote, results_dir = tmp_path / "device dir", tmp_path / "results"
    result = invoke("deploy", "--host", "adb://test-serial", "--python", sys.executable, "--remote-dir", remote,
                    "--results", results_dir, "--budget", budget, "--runs", "3", local, env={**env, "PATH": path})
    assert result.exit_code == 1, result.output
    last = result.stderr.splitlines()[-1]
    assert last.startswith("error: adb://test-serial: the device tests failed (1 failed, 3 passed")
    assert "p90 latency" in result.stdout and "exceeds the budget p90_ms 1e-06 ms" in result.stdout
    assert "peak RSS" in result.stdout and "exceeds the budget peak_mb 1 MB" in result.stdout
    [saved] = results_dir.iterdir()
    data = json.loads(saved.read_text())
    assert saved.name.startswith("test-serial-") and data["deploy"]["device_tests"]["passed"] is False
    assert "push" in log.read_text() and "pull" in log.read_text()
    _no_pwned(tmp_path)


def test_deploy_and_the_device_suite_do_not_import_tensorflow():
    code = ("import sys\n"
            "import edgebert.deploy, edgebert.cli.deploy, device_tests.device_checks\n"
            "from edgebert.cli import cli\n"
            "print(sorted(m for m in ('tensorflow', 'tf_keras', 'converters') if m in sys.modules))\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"


# --- faults: a remote disk that fills mid-copy ------------------------------------------------------------

def test_a_full_remote_disk_is_one_line_installs_nothing_and_a_rerun_completes(sshd, tiny_bundle, tmp_path, env):
    """The remote directory on a 256 kB tmpfs (mounted here: root only): the copy, staged in .incoming,
    fails with one line naming the host and the step; nothing is left under bundles/ (the staging is
    removed, giving the space back); with room again, the same command completes."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(disk)], capture_output=True,
                             text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({mounted.stderr.strip() or 'not root'})")
    try:
        remote, results_dir = disk / "remote", tmp_path / "results"
        result = invoke(*_deploy_args(sshd, tiny_bundle, remote=remote, results=results_dir), env=env)
        assert result.exit_code == 1 and "Traceback" not in result.stderr, result.output
        errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
        assert len(errors) == 1 and result.stderr.rstrip().endswith(errors[0]), result.stderr
        assert errors[0].startswith(f"error: {sshd.host}: copying to {remote} failed (") and \
            "No space left on device" in errors[0] and errors[0].endswith("; nothing was installed"), errors[0]
        assert sorted(p.name for p in remote.iterdir()) == [".edgebert-deploy"]  # no bundles/, no staging
        assert not results_dir.exists()

        subprocess.run(["mount", "-o", "remount,size=64m", str(disk)], check=True)
        result = invoke(*_deploy_args(sshd, tiny_bundle, remote=remote, results=results_dir), env=env)
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in remote.iterdir()) == [".edgebert-deploy", "bundles", "code", "results"]
        for file in tiny_bundle.iterdir():
            assert _sha(remote / "bundles" / "tiny.s32" / file.name) == _sha(file)
    finally:
        subprocess.run(["umount", "-l", str(disk)], capture_output=True)


# --- faults: the connection drops mid-copy, a remote command is killed --------------------------------

class HoldingRelay:
    """A TCP relay on 127.0.0.1 in front of sshd. Armed with hold(after=N), the next connection that sends
    more than N bytes towards the server has its first N bytes forwarded and then no more: the ssh client's
    writes back up as over a stalled link, and `held` is set. A connection ends, both ways, when either side
    closes (when sshd is killed, its client sees the connection drop)."""

    def __init__(self, server_port: int):
        self.server_port, self.after, self.held = server_port, None, threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.sockets, self.lock = [], threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def hold(self, after: int) -> None:
        self.after = after

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:  # closed
                return
            try:
                server = socket.create_connection(("127.0.0.1", self.server_port))
            except OSError:
                client.close()
                continue
            ended = threading.Event()
            with self.lock:
                self.sockets += [client, server]
            threading.Thread(target=self._upstream, args=(client, server, ended), daemon=True).start()
            threading.Thread(target=self._downstream, args=(server, client, ended), daemon=True).start()

    @staticmethod
    def _end(*sockets) -> None:
        for sock in sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)  # wakes the other pump's recv
            except OSError:
                pass
            sock.close()

    def _upstream(self, client, server, ended) -> None:
        sent = 0
        try:
            while data := client.recv(65536):
                with self.lock:
                    take = None if self.after is None or sent + len(data) <= self.after else self.after - sent
                    if take is not None:
                        self.after = None  # one connection only
                if take is not None:
                    server.sendall(data[:take])
                    self.held.set()
                    ended.wait()  # forward nothing more until the server side closes
                    return
                server.sendall(data)
                sent += len(data)
        except OSError:
            pass
        finally:
            self._end(client, server)

    def _downstream(self, server, client, ended) -> None:
        try:
            while data := server.recv(65536):
                client.sendall(data)
        except OSError:
            pass
        finally:
            ended.set()
            self._end(server, client)

    def close(self) -> None:
        self.listener.close()
        with self.lock:
            self._end(*self.sockets)


def _tree_digest(root: Path) -> dict:
    return {str(p.relative_to(root)): _sha(p) for p in sorted(root.rglob("*")) if p.is_file()}


def _wait_for(condition, what: str, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.01)
    return found


def _deploy_process(args, env, stdout) -> subprocess.Popen:
    """`edgebert deploy` as a process of its own (the test acts on the device while it runs)."""
    return subprocess.Popen([sys.executable, "-m", "edgebert", *map(str, args)], cwd=REPO,
                            env={**os.environ, **env}, stdin=subprocess.DEVNULL, stdout=stdout,
                            stderr=subprocess.PIPE, text=True)


def _one_error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and stderr.rstrip().endswith(errors[0]), stderr
    return errors[0]


def test_a_connection_dropped_mid_copy_is_one_line_installs_nothing_and_a_rerun_completes(tiny_bundle, tmp_path,
                                                                                          env):
    """sshd, with every process it started, is killed while the copy streams, after a complete deploy of
    another bundle: one line naming the host and the step; the earlier code/ and bundles/ stay as they
    were, byte for byte; with sshd back, the same command completes and leaves neither the staging nor the
    earlier bundle behind. The copy is held part-way by a relay in front of sshd (so it is caught mid-way
    at any speed), and the kill waits for deploy's `copying` line, the relay's hold and files in the
    staging."""
    server = _start_sshd(tmp_path / "sshd")
    relay = HoldingRelay(server.port)
    try:
        host = f"ssh://{server.user}@127.0.0.1:{relay.port}"
        first, second = tmp_path / "local" / "first.s32", tmp_path / "local" / "second.s32"
        shutil.copytree(tiny_bundle, first)
        shutil.copytree(tiny_bundle, second)
        remote, results_dir = tmp_path / "remote", tmp_path / "results"

        def args(bundle):
            return ["deploy", "--host", host, "--identity", server.key, "--python", sys.executable,
                    "--remote-dir", remote, "--results", results_dir, "--runs", "3", bundle]

        result = invoke(*args(first), env=env)
        assert result.exit_code == 0, result.output
        # The first file in the copy's stream, changed on the device: a copy written over the installed
        # code, even of the same source, would show.
        init = remote / "code" / "edgebert" / "__init__.py"
        init.write_text(init.read_text() + "# the first deploy's\n")
        before = _tree_digest(remote / "code"), _tree_digest(remote / "bundles"), _tree_digest(remote / "results")
        assert list(before[1]) == [f"first.s32/{p.name}" for p in sorted(tiny_bundle.iterdir())]

        relay.hold(after=64 * 1024)  # the copy is more (edgebert's source alone is some 300 kB)
        with open(tmp_path / "stdout", "w") as stdout:
            process = _deploy_process(args(second), env, stdout)
            try:
                progress = []
                while not (progress and progress[-1].startswith("copying 1 bundle and edgebert's source")):
                    line = process.stderr.readline()
                    assert line, f"deploy ended before the copy: {''.join(progress)}"
                    progress.append(line)
                assert relay.held.wait(60), "the copy never passed 64 kB"
                _wait_for(lambda: any((remote / ".incoming").rglob("*")), "the copy to reach the staging")
                server.kill()
                stderr = "".join(progress) + process.stderr.read()
                assert process.wait(60) == 1, stderr
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
        assert (tmp_path / "stdout").read_text() == ""
        line = _one_error_line(stderr)
        assert line.startswith(f"error: {host}: copying to {remote} failed (") and \
            line.endswith("); nothing was installed, rerun to finish"), line
        assert (remote / ".incoming").is_dir()  # the part that arrived, where nothing runs it
        assert (_tree_digest(remote / "code"), _tree_digest(remote / "bundles"),
                _tree_digest(remote / "results")) == before

        server.start()
        result = invoke(*args(second), env=env)
        assert result.exit_code == 0, result.output
        assert sorted(p.name for p in remote.iterdir()) == [".edgebert-deploy", "bundles", "code", "results"]
        assert _tree_digest(remote / "bundles") == {f"second.s32/{p.name}": _sha(p)
                                                     for p in sorted(tiny_bundle.iterdir())}
        assert (remote / "code" / "edgebert" / "__init__.py").read_text() == \
            (REPO / "edgebert" / "__init__.py").read_text()
        assert len(list(results_dir.iterdir())) == 2  # the first deploy's and the rerun's
    finally:
        relay.close()
        server.stop()


@pytest.mark.parametrize("step", ["benchmark", "device tests"])
def test_a_remote_command_killed_mid_run_is_one_line(step, sshd, tiny_bundle, tmp_path, env):
    """The device's `python -m edgebert bench` (mid-run: its benchmark worker started) or `python -m pytest
    device_tests` is SIGKILLed on the device: one line naming the host and the step, exit 1, and nothing it
    started is left running there."""
    remote, results_dir = tmp_path / "remote", tmp_path / "results"
    runs = "100000" if step == "benchmark" else "3"  # a benchmark that runs until it is killed
    args = ["deploy", "--host", sshd.host, "--identity", sshd.key, "--python", sys.executable,
            "--remote-dir", remote, "--results", results_dir, "--runs", runs, tiny_bundle]
    marker = ["-m", "edgebert", "bench"] if step == "benchmark" else ["-m", "pytest", "device_tests"]

    def remote_command():
        for pid in _descendants(sshd.pid):  # the Python process itself, not the shell that started it
            argv = _argv(pid)
            if argv[1:4] == marker and any(str(remote) in arg for arg in argv):
                children = _descendants(pid)
                if step == "device tests" or children:  # the benchmark: once its worker runs
                    return pid, children
        return None

    started = []
    with open(tmp_path / "stdout", "w") as stdout:
        process = _deploy_process(args, env, stdout)
        try:
            pid, children = _wait_for(remote_command, f"the device's {step} command")
            started = [pid, *children]
            os.kill(pid, signal.SIGKILL)
            _, stderr = process.communicate(timeout=120)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            leftover = [p for p in started[1:] if _alive(p)]
            _kill(started)
    output = (tmp_path / "stdout").read_text()
    assert process.returncode == 1, stderr
    line = _one_error_line(stderr)
    assert line == f"error: {sshd.host}: the {step} failed (killed by SIGKILL on the device)", line
    assert leftover == [], [_argv(p) for p in leftover]
    if step == "benchmark":  # no results to bring back; the device tests ran all the same
        assert not results_dir.exists()
        assert "3 passed, 1 skipped" in output
    else:
        [saved] = results_dir.iterdir()
        tests = json.loads(saved.read_text())["deploy"]["device_tests"]
        assert tests == {"exit_code": 137, "passed": False, "summary": "killed by SIGKILL on the device"}
