"""Which int8 kernels XNNPACK runs on this CPU: the features that decide it, and the family they give.

The same bundle runs different XNNPACK matrix kernels on different CPUs, and their speed differs several
times over, so every benchmark figure is recorded with them. XNNPACK picks, for dynamic-int8
FULLY_CONNECTED (qd8-f32-qc8w GEMMs), the first family the CPU has, in this order:

    x86:  AMX int8 tiles (amx_int8 + amx_tile; XNNPACK asks Linux for the AMX state itself)
          > AVX512-VNNI (avx512_vnni with AVX512 F/BW/DQ/VL) > AVX-VNNI (avx_vnni)
          > AVX512 without VNNI (Skylake-X) > AVX2 > SSE
    Arm:  NEON i8mm (SMMLA; i8mm) > NEON dot-product (SDOT; asimddp) > plain NEON

The features come from /proc/cpuinfo (x86 `flags`, Arm `Features`; Linux, Raspberry Pi OS and Android
alike) and the architecture from platform.machine(). Standard library only; nothing here may fail: off
Linux the family is "unknown".
"""
from __future__ import annotations

import platform

UNKNOWN = "unknown"
# The features that decide the kernel family (and SVE/SME, recorded because newer XNNPACK/KleidiAI builds
# use them), in the order they are listed.
X86_FEATURES = ("avx2", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_tile", "amx_int8")
ARM_FEATURES = ("asimd", "asimddp", "i8mm", "sve", "sve2", "sme")

AMX = "AMX int8 tiles"
AVX512_VNNI = "AVX512-VNNI"
AVX_VNNI = "AVX-VNNI"
AVX512 = "AVX512 (no VNNI)"
AVX2 = "AVX2"
SSE = "SSE"
NEON_I8MM = "NEON i8mm"
NEON_DOT = "NEON dot-product"
NEON = "plain NEON"


def parse_flags(cpuinfo: str) -> set[str]:
    """The feature names of the first processor block: the x86 `flags` line or the Arm `Features` line
    (lower-cased). An empty set when there is neither."""
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return set(value.lower().split())
    return set()


def architecture(machine: str) -> str:
    """'x86' (x86_64, AMD64, i686), 'arm' (aarch64, arm64, armv7l, armv8l) or 'unknown'."""
    name = machine.lower()
    if name in ("x86_64", "amd64", "i386", "i686", "x86"):
        return "x86"
    if name.startswith(("aarch64", "arm")):
        return "arm"
    return UNKNOWN


def int8_kernel_family(flags: set[str], machine: str) -> str:
    """The family of int8 GEMM kernels XNNPACK picks for dynamic-int8 FULLY_CONNECTED on this CPU."""
    arch = architecture(machine)
    if arch == "x86":
        if {"amx_int8", "amx_tile"} <= flags:
            return AMX
        avx512 = {"avx512f", "avx512bw", "avx512dq", "avx512vl"} <= flags
        if avx512 and "avx512_vnni" in flags:
            return AVX512_VNNI
        if "avx_vnni" in flags:
            return AVX_VNNI
        if avx512:
            return AVX512
        if "avx2" in flags:
            return AVX2
        return SSE if flags else UNKNOWN
    if arch == "arm":
        if not flags:
            return UNKNOWN
        if "i8mm" in flags:
            return NEON_I8MM
        if "asimddp" in flags:
            return NEON_DOT
        return NEON if flags & {"asimd", "neon"} or machine.lower().startswith("aarch64") else UNKNOWN
    return UNKNOWN


def describe(cpuinfo: str, machine: str) -> dict:
    """{"cpu_features": the deciding features present, space-separated ("none" if none), "int8_kernels":
    the family}. Flat strings, so that every report's device table shows them as they are."""
    flags = parse_flags(cpuinfo)
    arch = architecture(machine)
    relevant = X86_FEATURES if arch == "x86" else ARM_FEATURES if arch == "arm" else ()
    present = [name for name in relevant if name in flags]
    return {"cpu_features": " ".join(present) if present else ("none" if flags else UNKNOWN),
            "int8_kernels": int8_kernel_family(flags, machine)}


def device_facts(path: str = "/proc/cpuinfo") -> dict:
    """describe() of this machine; "unknown" values where /proc/cpuinfo cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            cpuinfo = handle.read()
    except OSError:
        cpuinfo = ""
    try:
        machine = platform.machine()
    except Exception:  # noqa: BLE001 - a device fact must never stop a benchmark
        machine = ""
    return describe(cpuinfo, machine)
