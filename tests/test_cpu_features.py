"""edgebert.cpu_features names the int8 kernel family XNNPACK picks, from literal /proc/cpuinfo texts of the
CPUs the project's figures come from (flags lines shortened to the first processor, as the kernel prints)."""
from __future__ import annotations

import json

import pytest

from edgebert import cpu_features as cf

ZEN4 = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 17
model name\t: AMD EPYC 9R14 96-Core Processor
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ht \
syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl nonstop_tsc cpuid extd_apicid aperfmperf \
tsc_known_freq pni pclmulqdq ssse3 fma cx16 pcid sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand \
hypervisor lahf_lm cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch topoext perfctr_core invpcid_single \
ssbd ibrs ibpb stibp vmmcall fsgsbase bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq rdseed adx smap \
avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx512_bf16 clzero \
xsaveerptr rdpru wbnoinvd arat avx512vbmi pku ospke avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg \
avx512_vpopcntdq rdpid flush_l1d
bugs\t\t: sysret_ss_attrs spectre_v1 spectre_v2 spec_store_bypass srso

processor\t: 1
flags\t\t: fpu sse sse2
"""

SAPPHIRE_RAPIDS = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Intel(R) Xeon(R) Platinum 8488C
flags\t\t: fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr sse sse2 ss ht \
syscall nx pdpe1gb rdtscp lm constant_tsc arch_perfmon rep_good nopl xtopology nonstop_tsc cpuid aperfmperf \
tsc_known_freq pni pclmulqdq monitor ssse3 fma cx16 pdcm pcid sse4_1 sse4_2 x2apic movbe popcnt \
tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm abm 3dnowprefetch invpcid_single ssbd ibrs ibpb \
stibp ibrs_enhanced fsgsbase tsc_adjust bmi1 avx2 smep bmi2 erms invpcid avx512f avx512dq rdseed adx smap \
avx512ifma clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx_vnni avx512_bf16 \
wbnoinvd ida arat avx512vbmi umip pku ospke waitpkg avx512_vbmi2 gfni vaes vpclmulqdq avx512_vnni avx512_bitalg \
tme avx512_vpopcntdq rdpid cldemote movdiri movdir64b md_clear serialize amx_bf16 avx512_fp16 amx_tile amx_int8 \
flush_l1d arch_capabilities
"""

# Raspberry Pi 5 (Cortex-A76): dot product (asimddp) yes, i8mm no.
CORTEX_A76 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x4
CPU part\t: 0xd0b
CPU revision\t: 1

Revision\t: d04170
Model\t\t: Raspberry Pi 5 Model B Rev 1.0
"""

# Raspberry Pi 4 (Cortex-A72): plain NEON, no dot product.
CORTEX_A72 = """processor\t: 0
BogoMIPS\t: 108.00
Features\t: fp asimd evtstrm crc32 cpuid
CPU implementer\t: 0x41
CPU architecture: 8
CPU variant\t: 0x0
CPU part\t: 0xd08
CPU revision\t: 3

Hardware\t: BCM2835
Model\t\t: Raspberry Pi 4 Model B Rev 1.4
"""

# A phone core with i8mm (Cortex-X3 / A715 class, Armv9).
ARMV9_PHONE = "processor\t: 0\nFeatures\t: fp asimd aes asimddp sve sve2 i8mm bf16 sveebf16\n"


@pytest.mark.parametrize("cpuinfo, machine, family, features", [
    (ZEN4, "x86_64", cf.AVX512_VNNI, "avx2 avx512f avx512bw avx512_vnni"),
    (SAPPHIRE_RAPIDS, "x86_64", cf.AMX, "avx2 avx512f avx512bw avx512_vnni avx_vnni amx_tile amx_int8"),
    (CORTEX_A76, "aarch64", cf.NEON_DOT, "asimd asimddp"),
    (CORTEX_A72, "aarch64", cf.NEON, "asimd"),
    (ARMV9_PHONE, "aarch64", cf.NEON_I8MM, "asimd asimddp i8mm sve sve2"),
])
def test_kernel_family_of_known_cpus(cpuinfo, machine, family, features):
    assert cf.describe(cpuinfo, machine) == {"cpu_features": features, "int8_kernels": family}


def test_first_processor_block_only():
    assert "avx512_vnni" in cf.parse_flags(ZEN4)  # not the second block's short list
    assert cf.parse_flags(CORTEX_A76) >= {"asimddp", "asimd"} and "i8mm" not in cf.parse_flags(CORTEX_A76)
    assert "asimddp" not in cf.parse_flags(CORTEX_A72)


def test_other_x86_families():
    assert cf.int8_kernel_family({"avx2", "avx_vnni"}, "x86_64") == cf.AVX_VNNI  # Alder Lake: no AVX512
    assert cf.int8_kernel_family({"avx2", "avx512f", "avx512bw", "avx512dq", "avx512vl"}, "x86_64") == cf.AVX512
    assert cf.int8_kernel_family({"sse2", "avx", "avx2"}, "AMD64") == cf.AVX2
    assert cf.int8_kernel_family({"sse2"}, "x86_64") == cf.SSE
    # AMX tiles without the int8 instructions (only bf16) do not run int8 GEMMs on AMX
    assert cf.int8_kernel_family({"amx_tile", "amx_bf16", "avx512f", "avx512bw", "avx512dq", "avx512vl",
                                  "avx512_vnni"}, "x86_64") == cf.AVX512_VNNI


def test_unknown_when_nothing_can_be_read():
    assert cf.describe("", "x86_64") == {"cpu_features": cf.UNKNOWN, "int8_kernels": cf.UNKNOWN}
    assert cf.describe("", "arm64") == {"cpu_features": cf.UNKNOWN, "int8_kernels": cf.UNKNOWN}
    assert cf.describe(ZEN4, "riscv64")["int8_kernels"] == cf.UNKNOWN
    assert cf.describe("processor : 0\nFeatures : fp\n", "aarch64") == {"cpu_features": "none",
                                                                          "int8_kernels": cf.NEON}
    # 32-bit Raspberry Pi OS on a Pi 4: "neon" rather than "asimd"
    assert cf.describe("Features\t: half thumb fastmult vfp edsp neon vfpv3 tls vfpv4 idiva idivt vfpd32 lpae evtstrm "
                       "crc32\n", "armv7l")["int8_kernels"] == cf.NEON


def test_this_machine_never_fails(tmp_path):
    facts = cf.device_facts()
    assert set(facts) == {"cpu_features", "int8_kernels"} and all(facts.values())
    json.dumps(facts)
    assert cf.device_facts(str(tmp_path / "absent"))["cpu_features"] == cf.UNKNOWN
