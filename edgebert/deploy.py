"""`edgebert deploy`: copy bundles to a device over ssh or adb, benchmark them there, run the device tests
there, and bring the results back.

    deploy("ssh://pi@raspberrypi.local", ["bert-mini.dynamic-int8.s128"], python="python3")

Steps, each one remote command (so each failure is one line that says which step and why):

1. check the device: the remote Python exists and has numpy, tokenizers, click, pytest and an
   interpreter (ai-edge-litert, tflite-runtime or, last, tensorflow), without importing any of them;
2. prepare the remote directory: it must be new, empty or one this command made before (marker file
   `.edgebert-deploy`); its `code/`, `bundles/` and `results/` from an earlier run are replaced;
3. copy, as one tar stream: `code/edgebert/`, `code/device_tests/`, `code/samples/` (this checkout's
   source, put first on the remote PYTHONPATH, so the device runs this very version) and
   `bundles/<name>/` for each bundle (plus the budget file, if any);
4. `python -m edgebert bench <bundles> --json results/bench.json` on the device; the JSON comes back to
   `<results dir>/<host>-<UTC timestamp>.json` (with a `deploy` block added: target, remote directory,
   the device's architecture and CPU from step 1, device test outcome);
5. `python -m pytest device_tests --bundles <bundles> [--budget ...]` on the device.

Faults: the copy lands in `.incoming` and is renamed into place only when whole, so a full disk or a
connection lost mid-copy installs nothing (the next run clears the staging). Each remote command ends by
printing its exit status on a tagged stderr line, which tells a command killed on the device (status
128 + N; its leftover processes are stopped too) from a dropped connection (ssh's 255 with no status
line); either is one line naming the host and the step.

Nothing goes through a local shell: ssh, scp-less tar streaming and adb are run with argument lists.
What the remote shell sees is built here from fixed text plus values quoted one by one with
shlex.quote (bundle names, paths, the Python command), so a name such as `a b;$(touch x)'"` arrives as
that name and runs nothing. The remote login shell must be a POSIX shell (sh, bash, dash, zsh, ash).
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import tarfile
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from edgebert.errors import EdgebertError, UsageError

DEFAULT_REMOTE_DIR = {"ssh": "~/edgebert-deploy", "adb": "/data/local/tmp/edgebert-deploy"}
MARKER = ".edgebert-deploy"
STAGING = ".incoming"  # the copy lands here, and is renamed to code/ and bundles/ only once it is whole
_DIR_TAG = "@edgebert-remote-dir@"
_STATUS_TAG = "@edgebert-exit-status@"
CONNECT_TIMEOUT_S = 10
REQUIRED_MODULES = {"numpy": "numpy", "tokenizers": "tokenizers", "click": "click", "pytest": "pytest"}
RUNTIME_MODULES = {"ai_edge_litert": "ai-edge-litert", "tflite_runtime": "tflite-runtime",
                   "tensorflow": "tensorflow"}
TARGET_HINT = "--host must be ssh://user@host[:port] or adb://SERIAL"

_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*\Z")
_HOST = re.compile(r"(?:[A-Za-z0-9_][A-Za-z0-9._-]*|\[[0-9A-Fa-f:.]+(?:%[A-Za-z0-9_.-]+)?\])\Z")
_SERIAL = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._:-]*\Z")

# Arm's CPU part numbers (MIDR, "CPU part" in /proc/cpuinfo, implementer 0x41) of the cores in Raspberry
# Pis, phones and Arm servers.
ARM_CPU_PARTS = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
                 "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
                 "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77", "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78",
                 "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710", "0xd48": "Cortex-X2",
                 "0xd49": "Neoverse-N2", "0xd4d": "Cortex-A715", "0xd4e": "Cortex-X3", "0xd4f": "Neoverse-V2",
                 "0xd80": "Cortex-A520", "0xd81": "Cortex-A720", "0xd82": "Cortex-X4", "0xd87": "Cortex-A725"}

# Run by the remote Python (never imports the modules it looks for: TensorFlow's import alone is slow).
# It also reports the device's architecture and its first CPU's /proc/cpuinfo fields (where readable).
_CHECK_SCRIPT = f"""
import importlib.util, json, platform, sys
def has(name):
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False
cpu = {{}}
try:
    with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as lines:
        for line in lines:
            key, sep, value = line.partition(":")
            if sep and key.strip() and key.strip() not in cpu:
                cpu[key.strip()] = value.strip()
except OSError:
    pass
print(json.dumps({{"python": sys.version.split()[0], "ok_version": sys.version_info >= (3, 9),
                  "missing": [m for m in {sorted(REQUIRED_MODULES)!r} if not has(m)],
                  "runtime": next((m for m in {list(RUNTIME_MODULES)!r} if has(m)), None),
                  "machine": platform.machine(),
                  "cpuinfo": {{k: cpu[k] for k in ("model name", "Hardware", "Model", "CPU implementer",
                                                  "CPU part", "Features") if k in cpu}}}}))
"""


class DeployError(EdgebertError):
    """A deployment that could not be done or whose device tests failed (one line, exit 1)."""


class ConnectionFailed(DeployError):
    """The transport itself failed: the host cannot be reached, refused the login, or the connection dropped
    while a command ran. `reason` is the transport's own words (ssh's last line)."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


# --- the target ----------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    scheme: str  # "ssh" or "adb"
    host: str = ""  # ssh: host name or address (IPv6 without brackets)
    user: Optional[str] = None
    port: Optional[int] = None
    serial: str = ""  # adb

    def __str__(self) -> str:
        if self.scheme == "adb":
            return f"adb://{self.serial}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ssh://{self.user + '@' if self.user else ''}{host}{f':{self.port}' if self.port else ''}"

    @property
    def slug(self) -> str:
        """The host (or serial) as a safe file-name part."""
        return re.sub(r"[^A-Za-z0-9._-]+", "_", self.serial if self.scheme == "adb" else self.host).strip("._") \
            or "device"


def parse_target(text: str) -> Target:
    """ssh://[user@]host[:port] or adb://SERIAL; anything else is a one-line UsageError (exit 2)."""
    raw = str(text)
    scheme, sep, rest = raw.partition("://")
    if not sep or scheme not in ("ssh", "adb"):
        raise UsageError(f"{TARGET_HINT}, got {raw!r}")
    if scheme == "adb":
        if not _SERIAL.match(rest):
            raise UsageError(f"{TARGET_HINT}, got {raw!r} (a serial is letters, digits and . _ : -, as "
                             "`adb devices` lists it)")
        return Target("adb", serial=rest)
    rest = rest[:-1] if rest.endswith("/") else rest
    user, at, hostport = rest.rpartition("@")
    if at and not _USER.match(user):
        raise UsageError(f"{TARGET_HINT}, got {raw!r} (bad user name {user!r})")
    match = re.fullmatch(r"(\[[^\]]*\]|[^:\[\]]*)(?::([^:]*))?", hostport)
    if not match or not match.group(1) or not _HOST.match(match.group(1)):
        raise UsageError(f"{TARGET_HINT}, got {raw!r} (bad host name)")
    port = None
    if match.group(2) is not None:
        if not match.group(2).isdigit() or not 1 <= int(match.group(2)) <= 65535:
            raise UsageError(f"{TARGET_HINT}, got {raw!r} (the port must be a number from 1 to 65535)")
        port = int(match.group(2))
    return Target("ssh", host=match.group(1).strip("[]"), user=user or None, port=port)


# --- remote shell text ---------------------------------------------------------------------------------

def remote_path(path: str) -> str:
    """A remote path as shell text: quoted, except a leading ~ or ~/ which becomes "$HOME"."""
    path = str(path)
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:]) if path[2:] else '"$HOME"'
    return shlex.quote(path)


def _ssh_option_path(path: Path) -> str:
    """A local path for ssh's -i / -o ...File=: absolute, '%' escaped (ssh expands %-tokens there),
    double-quoted when it has whitespace (ssh splits -o values on it)."""
    text = str(Path(path).expanduser().resolve())
    if "${" in text or '"' in text:
        raise UsageError(f"ssh cannot take a file path containing '${{' or '\"': {text!r}")
    text = text.replace("%", "%%")
    return f'"{text}"' if re.search(r"\s", text) else text


# --- transports ----------------------------------------------------------------------------------------

def _tar_error(stderr: bytes, returncode: int) -> str:
    """tar's first real complaint (not its closing 'Exiting with failure status' line)."""
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = [line.strip() for line in text.splitlines() if line.strip() and "Exiting with failure" not in line]
    lines = [line for line in lines if "No space left" in line] or lines  # the cause, before its symptoms
    return lines[0] if lines else f"exit status {returncode}"


def _last_line(data) -> str:
    text = data.decode("utf-8", "replace") if isinstance(data, bytes) else (data or "")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _with_status(command: str) -> str:
    """The remote shell text that runs `command` and then reports how it ended, as a tagged last line on
    stderr. The shell stays in charge: left alone, it would exec the command's last program, and a program
    killed by a signal then reaches ssh as no exit status at all, which ssh reports as 255, the same as a
    lost connection. After a death by signal, the rest of the command's process group (a benchmark's
    worker, say) is sent SIGTERM, but only where the shell leads that group (sshd starts every command in
    a session of its own), so nothing else on the device is touched."""
    return "\n".join([
        command,
        "s=$?",
        'if [ "$s" -gt 128 ] && [ "$(ps -o pgid= -p $$ 2>/dev/null | tr -d \' \')" = "$$" ]; then',
        "  trap '' TERM; kill -s TERM -- -$$ 2>/dev/null",
        "fi",
        f"printf '\\n{_STATUS_TAG}%d\\n' \"$s\" >&2",
        'exit "$s"',
    ])


def _completed(done: subprocess.CompletedProcess) -> tuple[subprocess.CompletedProcess, bool]:
    """The command's own exit status and stderr (the status line taken out), and whether the status line
    arrived, i.e. whether the remote command ran to its end (or was killed) with the connection alive."""
    head, tag, tail = done.stderr.rpartition(f"\n{_STATUS_TAG}".encode())
    status = tail.strip()
    if not tag or not status.isdigit():
        return done, False
    return subprocess.CompletedProcess(done.args, int(status), done.stdout, head), True


def killed_by(returncode: int) -> str | None:
    """'SIGKILL' for a remote status of 137 (a shell's 128 + the signal's number), None for an exit."""
    if not 128 < returncode < 128 + 65:
        return None
    try:
        return signal.Signals(returncode - 128).name
    except ValueError:
        return f"signal {returncode - 128}"


class SSHTransport:
    def __init__(self, target: Target, identity: Path | None, known_hosts: Path,
                 connect_timeout: float = CONNECT_TIMEOUT_S):
        if shutil.which("ssh") is None:
            raise DeployError("ssh is not installed here (install OpenSSH's client, e.g. apt-get install "
                              "openssh-client)")
        self.target, self.known_hosts = target, known_hosts
        known_hosts.parent.mkdir(parents=True, exist_ok=True)
        self.args = ["ssh", "-T", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new",
                     "-o", f"UserKnownHostsFile={_ssh_option_path(known_hosts)}",
                     "-o", f"ConnectTimeout={int(max(1, connect_timeout))}",
                     "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4", "-o", "LogLevel=ERROR"]
        if identity is not None:
            self.args += ["-o", "IdentitiesOnly=yes", "-i", _ssh_option_path(identity)]
        if target.port:
            self.args += ["-p", str(target.port)]
        self.args.append(f"{target.user}@{target.host}" if target.user else target.host)

    def connect(self) -> None:
        """Nothing to do: the first command fails with 255 when the host cannot be reached."""

    def run(self, command: str, *, stdin=None) -> subprocess.CompletedProcess:
        """Run shell text on the device; stdout and stderr captured as bytes; the remote command's own exit
        status (128 + N when a signal killed it). ConnectionFailed when ssh itself failed: 255 without the
        command's status line (the host was unreachable, or the connection dropped mid-command)."""
        done = subprocess.run([*self.args, _with_status(command)],
                              stdin=stdin if stdin is not None else subprocess.DEVNULL, capture_output=True)
        done, ended = _completed(done)
        if not ended and done.returncode == 255:
            reason = _last_line(done.stderr) or "ssh exited with status 255"
            reason = reason[5:] if reason.startswith("ssh: ") else reason
            if "Host key verification failed" in reason or "REMOTE HOST IDENTIFICATION HAS CHANGED" in \
                    done.stderr.decode("utf-8", "replace"):
                raise ConnectionFailed(f"cannot reach {self.target} (its host key is not the one recorded in "
                                       f"{self.known_hosts}; if the device was reinstalled, remove its line "
                                       "there)", "host key mismatch")
            verb = "log in to" if "Permission denied" in reason else "reach"
            raise ConnectionFailed(f"cannot {verb} {self.target} ({reason})", reason)
        return done

    def upload(self, tar_path: Path, remote_dir: str) -> subprocess.CompletedProcess:
        with open(tar_path, "rb") as stream:
            return self.run(f"tar -xf - -C {shlex.quote(remote_dir)}", stdin=stream)

    def read_file(self, remote_file: str) -> bytes | None:
        done = self.run(f"cat -- {shlex.quote(remote_file)}")
        return done.stdout if done.returncode == 0 else None


class ADBTransport:
    def __init__(self, target: Target):
        if shutil.which("adb") is None:
            raise DeployError(f"cannot deploy to {target}: adb is not installed here (install Android's "
                              "platform tools, e.g. apt-get install adb, and put adb on PATH)")
        self.target = target
        self.args = ["adb", "-s", target.serial]

    def connect(self) -> None:
        done = subprocess.run([*self.args, "get-state"], stdin=subprocess.DEVNULL, capture_output=True)
        state = _last_line(done.stdout)
        if done.returncode != 0 or state != "device":
            reason = _last_line(done.stderr) or state or f"adb exited with status {done.returncode}"
            raise DeployError(f"cannot reach {self.target} ({reason})")

    def run(self, command: str, *, stdin=None) -> subprocess.CompletedProcess:
        # `adb shell` hands its (single) argument to the device's /system/bin/sh, like ssh does; the status
        # line also gives the command's exit status where an old adb (before Android 7) always exits 0.
        done = subprocess.run([*self.args, "shell", _with_status(command)],
                              stdin=stdin if stdin is not None else subprocess.DEVNULL, capture_output=True)
        return _completed(done)[0]

    def upload(self, tar_path: Path, remote_dir: str) -> subprocess.CompletedProcess:
        remote_tar = f"{remote_dir}/.upload.tar"  # adb push takes the path as is (no shell)
        pushed = subprocess.run([*self.args, "push", str(tar_path), remote_tar], stdin=subprocess.DEVNULL,
                                capture_output=True)
        if pushed.returncode != 0:
            return pushed
        tar = shlex.quote(remote_tar)
        return self.run(f"tar -xf {tar} -C {shlex.quote(remote_dir)}; status=$?; rm -f {tar}; (exit $status)")

    def read_file(self, remote_file: str) -> bytes | None:
        with tempfile.TemporaryDirectory(prefix="edgebert-pull-") as scratch:
            local = Path(scratch) / "file"
            done = subprocess.run([*self.args, "pull", remote_file, str(local)], stdin=subprocess.DEVNULL,
                                  capture_output=True)
            return local.read_bytes() if done.returncode == 0 and local.is_file() else None


# --- what is copied ------------------------------------------------------------------------------------

def _source_root() -> Path:
    """The checkout this edgebert runs from: edgebert/, device_tests/ and samples/ side by side."""
    root = Path(__file__).resolve().parent.parent
    missing = [name for name in ("edgebert", "device_tests", "samples") if not (root / name).is_dir()]
    if missing:
        raise DeployError(f"edgebert deploy ships this checkout's source, but {root} has no "
                          f"{', '.join(missing)}/ (run it from a source checkout: pip install -e .)")
    return root


def _skip(path: Path) -> bool:
    return any(part in ("__pycache__", ".pytest_cache") for part in path.parts) or path.suffix in (".pyc", ".pyo")


def _tidy(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mode = 0o755 if info.isdir() else 0o644
    return info


def build_payload(tar_path: Path, bundles: list, budget: Path | None) -> int:
    """Write the tar that is unpacked in the remote directory; return its size in bytes."""
    root = _source_root()
    with tarfile.open(tar_path, "w") as tar:
        for name in ("edgebert", "device_tests", "samples"):
            for path in sorted((root / name).rglob("*")):
                if path.is_file() and not _skip(path.relative_to(root)):
                    tar.add(path, arcname=f"code/{path.relative_to(root).as_posix()}", filter=_tidy)
        for bundle in bundles:
            for path in sorted(Path(bundle.path).iterdir()):
                if path.is_file():
                    tar.add(path, arcname=f"bundles/{Path(bundle.path).name}/{path.name}", filter=_tidy)
        if budget is not None:
            tar.add(budget, arcname=f"code/{_budget_name(budget)}", filter=_tidy)
    return tar_path.stat().st_size


def _budget_name(budget: Path) -> str:
    return "budget.toml" if Path(budget).suffix.lower() == ".toml" else "budget.json"


# --- the deployment ------------------------------------------------------------------------------------

@dataclass
class DeployOutcome:
    target: Target
    remote_dir: str
    results_path: Path | None  # None when the benchmark wrote no results
    results: dict | None
    bench_output: str  # the device's bench table (its stdout)
    bench_error: str | None  # one line when the benchmark failed
    tests_output: str  # pytest's output on the device
    tests_exit_code: int
    python: dict = field(default_factory=dict)  # the remote check: python version, runtime
    device: dict = field(default_factory=dict)  # device_summary: architecture, cpu (cpu_id, features)

    @property
    def tests_summary(self) -> str:
        killer = killed_by(self.tests_exit_code)
        if killer is not None:
            return f"killed by {killer} on the device"
        return _last_line(self.tests_output).strip("= ") or f"pytest exited with code {self.tests_exit_code}"

    @property
    def ok(self) -> bool:
        return self.tests_exit_code == 0 and self.bench_error is None


def _open_bundles(paths) -> list:
    from edgebert.bundle import read_bundle

    if not paths:
        raise UsageError("name at least one bundle directory to deploy")
    bundles, names = [], {}
    for path in paths:
        bundle = read_bundle(Path(path))
        name = Path(path).resolve().name
        if name in names:
            raise UsageError(f"two bundles are named {name!r} ({names[name]} and {path}); the device keeps "
                             "them side by side by name")
        names[name] = path
        bundles.append(bundle)
    return bundles


def check_budget_file(path: Path) -> None:
    """Check the budget file here with the device suite's own reader, before anything is copied."""
    import importlib.util

    module_path = _source_root() / "device_tests" / "device_checks.py"
    spec = importlib.util.spec_from_file_location("_edgebert_device_checks", module_path)
    checks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(checks)
    try:
        checks.load_budget(path)
    except checks.BudgetError as error:
        raise UsageError(str(error), path) from None


def _known_hosts_file() -> Path:
    from edgebert.fetch import default_cache_dir

    return default_cache_dir() / "deploy" / "known_hosts"


def _results_file(results_dir: Path, target: Target) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    path = results_dir / f"{target.slug}-{stamp}.json"
    counter = 1
    while path.exists():
        counter += 1
        path = results_dir / f"{target.slug}-{stamp}-{counter}.json"
    return path


def _write_json_atomically(path: Path, data: dict) -> None:
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=2)
            file.write("\n")
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def device_summary(facts: dict) -> dict:
    """{"architecture", "cpu", ...} from the remote check: the CPU named by its Arm part number where
    /proc/cpuinfo gives one (Cortex-A72 on a Pi 4, Cortex-A76 on a Pi 5, and the CPU that qemu emulates),
    else by its model name; plus the raw ids and feature flags (asimddp: the dot-product extension)."""
    cpuinfo = facts.get("cpuinfo") or {}
    implementer, part = cpuinfo.get("CPU implementer", "").lower(), cpuinfo.get("CPU part", "").lower()
    if implementer == "0x41" and part in ARM_CPU_PARTS:
        cpu = ARM_CPU_PARTS[part]
    else:
        cpu = next((cpuinfo[key] for key in ("model name", "Hardware", "Model") if cpuinfo.get(key)), None)
        if cpu is None and part:
            cpu = f"CPU implementer {implementer or '?'} part {part}"
    summary = {"architecture": facts.get("machine") or "unknown", "cpu": cpu or "unknown"}
    if part:
        summary["cpu_id"] = f"{implementer or '?'}:{part}"
    if "Features" in cpuinfo:
        summary["features"] = cpuinfo["Features"].split()
    return summary


def _check_device(transport, target: Target, python: str) -> dict:
    done = transport.run(f"{remote_path(python)} -c {shlex.quote(_CHECK_SCRIPT)}")
    if done.returncode == 127:
        raise DeployError(f"{target}: {python} not found on the device (pass --python with the device's "
                          "Python 3, e.g. --python python3 or a virtual environment's bin/python)")
    try:
        facts = json.loads(_last_line(done.stdout)) if done.returncode == 0 else None
    except ValueError:
        facts = None
    if not isinstance(facts, dict):
        why = _last_line(done.stderr) or _last_line(done.stdout) or f"exit status {done.returncode}"
        raise DeployError(f"{target}: cannot run {python} on the device ({why})")
    if not facts.get("ok_version"):
        raise DeployError(f"{target}: the device's {python} is Python {facts.get('python')}; edgebert needs 3.9 "
                          "or newer (pass --python)")
    missing = [REQUIRED_MODULES[name] for name in facts.get("missing", [])]
    if facts.get("runtime") is None:
        missing.append("ai-edge-litert (or tflite-runtime)")
    if missing:
        pip = [name.split()[0] for name in missing]
        raise DeployError(f"{target}: the device's {python} (Python {facts.get('python')}) lacks "
                          f"{', '.join(missing)}; install them there: {python} -m pip install {' '.join(pip)}")
    return facts


def _prepare_remote_dir(transport, target: Target, remote_dir: str) -> str:
    """Create (or reclaim) the remote directory; return its absolute path on the device."""
    if remote_dir.startswith("-"):  # never an option to mkdir, ls or cd
        remote_dir = "./" + remote_dir
    script = "\n".join([
        f"d={remote_path(remote_dir)}",
        'if [ -e "$d" ] && [ ! -d "$d" ]; then',
        "  printf 'edgebert-deploy: %s exists and is not a directory\\n' \"$d\" >&2; exit 3",
        "fi",
        f'if [ -d "$d" ] && [ ! -e "$d/{MARKER}" ] && [ -n "$(ls -A -- "$d" 2>/dev/null)" ]; then',
        "  printf 'edgebert-deploy: %s is not empty and was not made by edgebert deploy; pass another "
        "--remote-dir\\n' \"$d\" >&2",
        "  exit 3",
        "fi",
        'mkdir -p -- "$d" && cd -- "$d" || exit 3',
        f": > {MARKER} && rm -rf {STAGING} && mkdir {STAGING} || exit 3",  # the last run's files stay until the copy is whole
        "printf '%s%s' " + shlex.quote(_DIR_TAG) + ' "$PWD"',  # tagged: a chatty login script may print too
    ])
    done = transport.run(script)
    if done.returncode != 0:
        why = _last_line(done.stderr) or f"exit status {done.returncode}"
        raise DeployError(f"{target}: cannot prepare the remote directory {remote_dir} "
                          f"({why.removeprefix('edgebert-deploy: ')})")
    absolute = done.stdout.decode("utf-8", "surrogateescape").rpartition(_DIR_TAG)[2]
    if not absolute.startswith("/"):
        raise DeployError(f"{target}: the remote directory {remote_dir} has no absolute path (pwd said "
                          f"{absolute!r})")
    return absolute


def _python_command(python: str, code_dir: str, args: list[str]) -> str:
    """`cd CODE && PYTHONPATH=CODE[:old] PYTHON ARGS...`, every value quoted."""
    code = shlex.quote(code_dir)
    return (f"cd {code} && PYTHONPATH={code}\"${{PYTHONPATH:+:$PYTHONPATH}}\" "
            f"{remote_path(python)} {' '.join(shlex.quote(str(arg)) for arg in args)}")


def _step(transport, target: Target, step: str, command: str) -> subprocess.CompletedProcess:
    """One remote command after the copy; a connection that drops meanwhile is one line naming the step."""
    try:
        return transport.run(command)
    except ConnectionFailed as error:
        raise DeployError(f"{target}: the connection was lost while {step} ({error.reason})") from None


def deploy(host: str, bundle_paths, *, identity: Path | None = None, remote_dir: str | None = None,
           python: str = "python3", runs: int | None = None, threads: int | None = None,
           budget: Path | None = None, results_dir: Path = Path("results"),
           connect_timeout: float = CONNECT_TIMEOUT_S,
           log: Callable[[str], None] = lambda message: None) -> DeployOutcome:
    """Copy bundles to the device, benchmark them there and run the device tests; see the module doc."""
    target = parse_target(host)
    for name, value in (("--runs", runs), ("--threads", threads)):
        if value is not None and value < 1:
            raise UsageError(f"{name} must be at least 1, got {value}")
    if not python or "\n" in python:
        raise UsageError(f"--python must name the device's Python command, got {python!r}")
    if identity is not None and target.scheme != "ssh":
        raise UsageError("--identity applies to ssh:// targets only")
    if identity is not None and not Path(identity).expanduser().is_file():
        raise UsageError("identity file not found", identity)
    if target.scheme == "ssh":
        transport = SSHTransport(target, identity, _known_hosts_file(), connect_timeout)
    else:
        transport = ADBTransport(target)
    bundles = _open_bundles(bundle_paths)
    if budget is not None:
        check_budget_file(Path(budget))
    results_dir = Path(results_dir)  # made only when there are results to write
    if results_dir.exists() and not results_dir.is_dir():
        raise UsageError("--results must be a directory", results_dir)
    remote_dir = remote_dir or DEFAULT_REMOTE_DIR[target.scheme]

    transport.connect()
    facts = _check_device(transport, target, python)
    device = device_summary(facts)
    log(f"connected to {target}: Python {facts['python']}, {RUNTIME_MODULES[facts['runtime']]}, "
        f"{device['architecture']}, {device['cpu']}")

    root = _prepare_remote_dir(transport, target, remote_dir)
    code_dir, bundles_dir, remote_results = f"{root}/code", f"{root}/bundles", f"{root}/results"
    with tempfile.TemporaryDirectory(prefix="edgebert-deploy-") as scratch:
        payload = Path(scratch) / "payload.tar"
        size = build_payload(payload, bundles, budget)
        log(f"copying {len(bundles)} bundle{'s' if len(bundles) != 1 else ''} and edgebert's source "
            f"({size / 1e6:.1f} MB) to {root}")
        try:
            done = transport.upload(payload, f"{root}/{STAGING}")
        except ConnectionFailed as error:  # the connection dropped mid-copy: the staging stays until the next run
            raise DeployError(f"{target}: copying to {root} failed ({error.reason}); nothing was installed, "
                              "rerun to finish") from None
    if done.returncode != 0:
        transport.run(f"rm -rf {shlex.quote(f'{root}/{STAGING}')}")  # a full disk: give the space back
        raise DeployError(f"{target}: copying to {root} failed ({_tar_error(done.stderr, done.returncode)}); "
                          "nothing was installed")
    staged = shlex.quote(f"{root}/{STAGING}")
    installed = _step(transport, target, "installing the copy",
                      f"cd {shlex.quote(root)} && rm -rf code bundles results && mv {staged}/code code && "
                      f"mv {staged}/bundles bundles && rmdir {staged} && mkdir results")
    if installed.returncode != 0:
        raise DeployError(f"{target}: installing the copy in {root} failed "
                          f"({_last_line(installed.stderr) or f'exit status {installed.returncode}'})")

    remote_bundles = [f"{bundles_dir}/{Path(bundle.path).name}" for bundle in bundles]
    options = [*(["--runs", str(runs)] if runs else []), *(["--threads", str(threads)] if threads else [])]
    log(f"benchmarking on {target}")
    bench_json = f"{remote_results}/bench.json"
    bench = _step(transport, target, "benchmarking",
                  _python_command(python, code_dir, ["-m", "edgebert", "bench", *remote_bundles, "--json", bench_json,
                                                     *options]))
    bench_output = bench.stdout.decode("utf-8", "replace")
    bench_error = None
    if killed_by(bench.returncode) is not None:
        bench_error = f"killed by {killed_by(bench.returncode)} on the device"
    elif bench.returncode != 0:
        why = _last_line(bench.stderr) or f"exit status {bench.returncode}"
        if "No such command" in why:
            why = f"the edgebert shipped to the device has no bench command ({why})"
        bench_error = why.removeprefix("error: ")
    try:
        data = transport.read_file(bench_json)
    except ConnectionFailed as error:
        raise DeployError(f"{target}: the connection was lost while reading {bench_json} ({error.reason})") from None

    results_path, results = None, None
    if data is not None:
        try:
            results = json.loads(data.decode("utf-8"))
        except ValueError:
            results = None
        if not isinstance(results, dict):
            results = None
            bench_error = bench_error or f"the device wrote an unreadable {bench_json}"
    elif bench_error is None:
        bench_error = f"the benchmark wrote no {bench_json}"

    log(f"running the device tests on {target}")
    test_args = ["-m", "pytest", "device_tests", "-q", "-p", "no:cacheprovider", "--bundles", *remote_bundles]
    if budget is not None:
        test_args += ["--budget", f"{code_dir}/{_budget_name(budget)}"]
    test_args += options
    tests = _step(transport, target, "running the device tests", _python_command(python, code_dir, test_args))
    tests_output = (tests.stdout + tests.stderr).decode("utf-8", "replace")

    outcome = DeployOutcome(target=target, remote_dir=root, results_path=None, results=results,
                            bench_output=bench_output, bench_error=bench_error, tests_output=tests_output,
                            tests_exit_code=tests.returncode, python=facts, device=device)
    if results is not None:
        results["deploy"] = {"target": str(target), "remote_dir": root, "python": facts.get("python"),
                             "device": device,
                             "device_tests": {"exit_code": tests.returncode, "passed": tests.returncode == 0,
                                              "summary": outcome.tests_summary}}
        try:
            results_dir.mkdir(parents=True, exist_ok=True)
        except OSError as error:
            raise DeployError(f"cannot create the results directory ({error.strerror}); the device tests "
                              f"{'passed' if tests.returncode == 0 else 'failed'}", results_dir) from None
        results_path = _results_file(results_dir, target)
        _write_json_atomically(results_path, results)
        outcome.results_path = results_path
    return outcome
