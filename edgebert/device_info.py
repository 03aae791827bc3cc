"""What machine a benchmark ran on: the `device` block of a results file (see edgebert.results).

Works on Linux (x86 and ARM, Raspberry Pi OS included), macOS and Android (Termux). Nothing here may
fail: a fact that cannot be read is "unknown". Only the standard library and numpy are used.
"""
from __future__ import annotations

import os
import platform
import shutil
import socket
import subprocess
import sys

UNKNOWN = "unknown"


def _cpuinfo_fields(path: str = "/proc/cpuinfo") -> dict[str, str]:
    """The first value of each `key : value` line of /proc/cpuinfo (empty off Linux)."""
    fields: dict[str, str] = {}
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            for line in handle:
                key, sep, value = line.partition(":")
                if sep and key.strip() and value.strip():
                    fields.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    return fields


def _command_output(*argv: str) -> str | None:
    """stdout of a short system command (sysctl, getprop), or None when it is absent or fails."""
    if shutil.which(argv[0]) is None:
        return None
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=2, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    text = done.stdout.strip()
    return text if done.returncode == 0 and text else None


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as handle:
            text = handle.read().decode("utf-8", "replace").replace("\x00", "").strip()
    except OSError:
        return None
    return text or None


def _cpu_model(cpuinfo: dict[str, str]) -> str:
    # x86 Linux: "model name"; ARM Linux has "Hardware" (older kernels, Android) and/or "Model"
    # (Raspberry Pi OS) and a bare "model name" like "ARMv7 Processor rev 3 (v7l)" or none at all.
    for key in ("model name", "Hardware", "Model", "cpu model", "Processor"):
        if cpuinfo.get(key):
            return cpuinfo[key]
    if sys.platform == "darwin":
        brand = _command_output("sysctl", "-n", "machdep.cpu.brand_string")
        if brand:
            return brand
    return platform.processor() or UNKNOWN


def _board() -> str:
    """The board or phone model (Raspberry Pi 4 Model B, a phone's product name), where the OS says."""
    return (_read_text("/proc/device-tree/model") or _command_output("getprop", "ro.product.model")
            or (_command_output("sysctl", "-n", "hw.model") if sys.platform == "darwin" else None) or UNKNOWN)


def _safe(function, *args) -> str:
    try:
        value = function(*args)
    except Exception:  # noqa: BLE001 - a device fact must never stop a benchmark
        return UNKNOWN
    return str(value) if value not in (None, "") else UNKNOWN


def device_facts() -> dict:
    """{"cpu_model", "cores", "machine", "system", "release", "python", "numpy", "hostname", "board"}."""
    import numpy as np

    cpuinfo = _cpuinfo_fields()
    return {
        "cpu_model": _safe(_cpu_model, cpuinfo),
        "cores": os.cpu_count() or UNKNOWN,
        "machine": _safe(platform.machine),
        "system": _safe(platform.system),
        "release": _safe(platform.release),
        "python": _safe(platform.python_version),
        "numpy": _safe(lambda: np.__version__),
        "hostname": _safe(socket.gethostname),
        "board": _safe(_board),
    }
