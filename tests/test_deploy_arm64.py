"""`edgebert deploy` over SSH to an emulated Raspberry Pi 4 and Pi 5, end to end.

OpenSSH's sshd runs inside the arm64 rootfs of tests/test_arm64.py (chroot, qemu user-mode emulation
through binfmt_misc), listening on two 127.0.0.1 ports with a throwaway host key and an authorized key
for root. `Match LocalPort` gives each port's sessions its own QEMU_CPU (sshd's SetEnv), which every
program the session starts is emulated with: one port is a Pi 4 (Cortex-A72), the other a Pi 5
(Cortex-A76). `edgebert deploy` then copies a bundle there, benchmarks it and runs the device tests
in the rootfs's ai-edge-litert environment, and the results come back naming aarch64 and the emulated
CPU. Only the sshd started here is stopped, by its pid.

Needs the rootfs built by `.ci/arm64-rootfs.sh` (with openssh-server), root, and OpenSSH's client here;
without them this skips, except under CI=true, where it fails. Emulated timings mean nothing.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from ci import missing
from cli_helpers import invoke
from test_arm64 import CHROOT_PATH, ROOTFS, SCRIPT, VENVS, _privilege, _remove, _unavailable

pytestmark = pytest.mark.arm64

SSHD = "/usr/sbin/sshd"  # inside the rootfs
# The emulated CPU: its name as deploy reports it, its MIDR ids, and whether it has the dot-product extension.
PIS = {"cortex-a72": ("Cortex-A72", "0x41:0xd08", False), "cortex-a76": ("Cortex-A76", "0x41:0xd0b", True)}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        return True
    except OSError:
        return False


@pytest.fixture(scope="module")
def emulated_pis():
    """sshd in the arm64 rootfs: {QEMU_CPU: port}, the client key, the working directory (host path and
    the rootfs's path)."""
    reason = _unavailable()
    if reason:
        missing(reason)
    if not (ROOTFS / SSHD.lstrip("/")).is_file():
        missing(f"the arm64 rootfs at {ROOTFS} has no OpenSSH server: run {SCRIPT} as root (it adds it)")
    if not all(shutil.which(tool) for tool in ("ssh", "ssh-keygen")):
        missing("OpenSSH's client is not installed here (apt-get install openssh-client)")
    host = Path(tempfile.mkdtemp(prefix="edgebert-sshd-", dir=ROOTFS / "tmp"))
    host.chmod(0o755)
    inside = "/" + str(host.relative_to(ROOTFS))
    process = log = None
    try:
        for key in ("host_key", "client_key"):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgebert-test", "-f",
                            str(host / key)], check=True, capture_output=True)
        (host / "authorized_keys").write_text((host / "client_key.pub").read_text())
        (ROOTFS / "run" / "sshd").mkdir(parents=True, exist_ok=True)  # privilege-separation directory
        ports = {cpu: _free_port() for cpu in PIS}
        lines = ["ListenAddress 127.0.0.1", *(f"Port {port}" for port in ports.values()),
                 f"HostKey {inside}/host_key", f"AuthorizedKeysFile {inside}/authorized_keys",
                 f"PidFile {inside}/sshd.pid", "UsePAM no", "StrictModes no", "PasswordAuthentication no",
                 "KbdInteractiveAuthentication no", "PubkeyAuthentication yes",
                 "PermitRootLogin prohibit-password"]
        for cpu, port in ports.items():  # Match blocks last: they run to the end of the file
            lines += [f"Match LocalPort {port}", f"    SetEnv QEMU_CPU={cpu}"]
        (host / "sshd_config").write_text("\n".join(lines) + "\n")
        # unshare without --fork, sh's exec, chroot and env all keep one process: its pid is sshd's.
        mount_and_chroot = ('root=$1; shift; mount -t proc proc "$root/proc" && mount -t sysfs sysfs "$root/sys" '
                            '&& mount --rbind /dev "$root/dev" || exit 125; exec chroot "$root" "$@"')
        log = open(host / "sshd.log", "wb")
        process = subprocess.Popen(
            [*_privilege(), "unshare", "--mount", "--propagation", "private", "--", "sh", "-c", mount_and_chroot,
             "sh", str(ROOTFS), "/usr/bin/env", "-i", f"PATH={CHROOT_PATH}", "LANG=C.UTF-8",
             "QEMU_CPU=cortex-a72", SSHD, "-D", "-e", "-f", f"{inside}/sshd_config"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log,
            env={"PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")})
        deadline = time.monotonic() + 30
        while not all(_listening(port) for port in ports.values()):
            if process.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sshd in the arm64 rootfs did not start (exit {process.poll()}): "
                            f"{(host / 'sshd.log').read_text()[-2000:]}", pytrace=False)
            time.sleep(0.1)
        yield SimpleNamespace(ports=ports, key=host / "client_key", host_dir=host, inside=inside)
    finally:
        if process is not None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if log is not None:
            log.close()
        _remove(host)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("cpu", list(PIS), ids=["pi4-cortex-a72", "pi5-cortex-a76"])
def test_deploy_to_an_emulated_pi_over_ssh(emulated_pis, cpu, tmp_path, request):
    from edgebert.results import read_results

    tiny_bundle = request.getfixturevalue("tiny_bundle")  # after the checks: no conversion when skipping

    name, cpu_id, dotprod = PIS[cpu]
    target = f"ssh://root@127.0.0.1:{emulated_pis.ports[cpu]}"
    remote = f"{emulated_pis.inside}/deploy-{cpu}"
    results_dir = tmp_path / "results"
    started = time.monotonic()
    result = invoke("deploy", "--host", target, "--identity", emulated_pis.key,
                    "--python", f"{VENVS['ai-edge-litert']}/bin/python", "--remote-dir", remote,
                    "--results", results_dir, "--runs", "2", tiny_bundle,
                    env={"EDGEBERT_CACHE": str(tmp_path / "cache")})
    report = f"{time.monotonic() - started:.0f} s:\n{result.output[-4000:]}"
    assert result.exit_code == 0, report
    assert "Traceback" not in result.stderr, report

    # The device is the emulated Pi: its Python 3.11, ai-edge-litert, aarch64 and that CPU.
    progress = result.stderr.splitlines()
    assert progress[0].startswith(f"connected to {target}: Python 3.11."), report
    assert progress[0].endswith(f", ai-edge-litert, aarch64, {name}"), report
    assert "tiny.s32" in result.stdout and f"device tests on {target}:" in result.stdout, report
    assert "3 passed, 1 skipped" in result.stdout, report  # no --budget: the budget test skips

    [saved] = results_dir.iterdir()
    data = read_results(saved)
    device = data["deploy"]["device"]
    assert device["architecture"] == "aarch64" and device["cpu"] == name and device["cpu_id"] == cpu_id, device
    assert ("asimddp" in device["features"]) == dotprod, device
    assert data["deploy"]["device_tests"]["passed"] is True and data["deploy"]["python"].startswith("3.11")
    assert data["device"]["machine"] == "aarch64", data["device"]  # edgebert bench's own facts, on the device
    [measured] = data["results"]
    assert "error" not in measured and measured["runtime"]["name"] == "ai-edge-litert", measured
    assert measured["bundle"]["path"] == f"{remote}/bundles/tiny.s32"

    # What arrived in the rootfs: the bundle byte for byte, and the source deploy shipped.
    arrived = emulated_pis.host_dir / f"deploy-{cpu}"
    for file in tiny_bundle.iterdir():
        assert _sha(arrived / "bundles" / "tiny.s32" / file.name) == _sha(file)
    assert (arrived / ".edgebert-deploy").is_file() and (arrived / "code" / "edgebert" / "deploy.py").is_file()
