"""The soak (`edgebert bench --soak N`): many inferences of real text on one interpreter with RSS sampled
along the way. Anonymous RSS (the heap, where a leak shows) must stay flat over the last 90 % of the calls,
with ai-edge-litert, with XNNPACK's weight cache, and with tflite-runtime 2.14; and the measurement itself
must see a leak when there is one. The full 10,000-call soak of BERT-Mini is in the README."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from ci import missing
from cli_helpers import error_line, invoke

REPO = Path(__file__).resolve().parent.parent
LEGACY_PYTHON = Path(os.environ.get("EDGEBERT_LEGACY_PYTHON", REPO / ".venv-legacy" / "bin" / "python"))
CALLS = 1000
BOUND_MB = 1.0  # the README's promise for anonymous RSS over the last 90 % of a soak


def _soak(bundle: Path, **options) -> dict:
    from edgebert.bench import bench_in_fresh_process

    result = bench_in_fresh_process(bundle, runs=5, warmup=0, soak=CALLS, timeout=300, **options)
    assert "error" not in result, result
    soak = result["soak"]
    print(f"soak {bundle.name} ({result['runtime']['name']} {result['runtime']['version']}"
          f"{', weight cache' if options.get('weight_cache') else ''}): {CALLS} calls, growth over the last 90 % "
          f"{soak['growth_mb']} MB, max {soak['max_growth_mb']} MB, slope {soak['slope_kb_per_1000']} kB/1000 calls")
    assert soak["calls"] == CALLS and soak["samples"] >= 200 and soak["settle_calls"] == CALLS // 10
    assert result["settings"]["soak"] == CALLS
    return soak


def _assert_flat(soak: dict) -> None:
    assert soak["method"].startswith("/proc/self/status")
    assert abs(soak["growth_mb"]["anon"]) < BOUND_MB, soak
    assert soak["max_growth_mb"]["anon"] < BOUND_MB, soak
    assert soak["max_growth_mb"]["rss"] < 2 * BOUND_MB, soak  # file pages too: nothing mapped again and again


def test_a_1000_call_soak_keeps_anonymous_memory_flat(tiny_bundle):
    _assert_flat(_soak(tiny_bundle))


def test_a_soak_with_the_weight_cache_keeps_anonymous_memory_flat(tiny_bundle, tmp_path):
    from edgebert.interpreter import find_runtime, weight_cache_supported

    if not weight_cache_supported(find_runtime()):
        missing("needs ai-edge-litert with CompiledModel's weight cache")
    _assert_flat(_soak(tiny_bundle, weight_cache=tmp_path / "cache"))


@pytest.fixture(scope="module")
def compat_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    from converters.export import Compat
    from converters.pipeline import ConvertOptions, convert

    out = tmp_path_factory.mktemp("soak") / "tiny-compat.s32"
    return convert(tiny_checkpoint, out, ConvertOptions(seq_len=32, validation_size=8,
                                                        compat=Compat.TFLITE_RUNTIME_2_14)).bundle_dir


def test_a_soak_on_tflite_runtime_2_14_keeps_anonymous_memory_flat(compat_bundle):
    if not LEGACY_PYTHON.is_file():
        missing(f"no Python with tflite-runtime 2.14 at {LEGACY_PYTHON}")
    probe = subprocess.run([str(LEGACY_PYTHON), "-c", "import tflite_runtime, tokenizers"], capture_output=True,
                           text=True)
    if probe.returncode != 0:
        missing(f"{LEGACY_PYTHON} lacks tflite_runtime or tokenizers (the device side's install: "
                f"pip install 'tflite-runtime==2.14.0' 'numpy<2' tokenizers)")
    soak = _soak(compat_bundle, runtime="tflite-runtime", python=str(LEGACY_PYTHON))
    _assert_flat(soak)


# A model whose every call keeps 16 kB alive (what a leak in the call path looks like), soaked in a fresh
# process: in this one, the heap that earlier tests freed would absorb the leak without growing RSS.
LEAKING = """
import json
from edgebert.bench import run_soak

class LeakingModel:
    def __init__(self):
        self.kept = []

    def __call__(self, **feed):
        self.kept.append(b"\\x01" * (16 * 1024))  # written, so resident
        return {}

print(json.dumps(run_soak(LeakingModel(), [{}], %d)))
"""


def test_the_soak_sees_a_leak():
    import json
    import sys

    done = subprocess.run([sys.executable, "-c", LEAKING % CALLS], cwd=REPO, capture_output=True, text=True,
                          timeout=120, check=True)
    soak = json.loads(done.stdout.strip().splitlines()[-1])  # 16 MB kept over 1000 calls, 14.4 MB in the last 90 %
    assert soak["growth_mb"]["anon"] > 10, soak
    assert soak["slope_kb_per_1000"]["anon"] > 10_000, soak


def test_soak_figures_from_samples():
    from edgebert.bench import soak_summary

    # calls done, VmRSS, RssAnon, RssFile (kB): anon settles by call 100, then grows 1000 kB; file drops 100 kB
    samples = [[0, 5000, 1000, 4000], [50, 9000, 5000, 4000], [100, 9000, 5000, 4000], [500, 9500, 5600, 3900],
               [1000, 9900, 6000, 3900]]
    soak = soak_summary(samples, 1000)
    assert soak["growth_mb"] == {"rss": 0.922, "anon": 1.024, "file": -0.102}
    assert soak["max_growth_mb"] == {"rss": 0.922, "anon": 1.024, "file": 0.0}
    assert soak["start_mb"]["anon"] == pytest.approx(5000 * 1024 / 1e6, abs=1e-3)
    assert soak["slope_kb_per_1000"]["anon"] == pytest.approx(1098.36, abs=0.01)
    assert soak_summary([], 1000)["growth_mb"]["anon"] is None  # no /proc: nothing made up


def test_bench_soak_command(tiny_bundle, tmp_path):
    from edgebert.results import read_results

    result = invoke("bench", tiny_bundle, "--runs", "2", "--warmup", "0", "--soak", "100",
                    "--json", tmp_path / "r.json")
    assert result.exit_code == 0, result.output
    line = [line for line in result.stdout.splitlines() if line.startswith("soak ")]
    assert len(line) == 1 and "100 calls, anonymous RSS " in line[0] and "over the last 90 %" in line[0], line
    soak = read_results(tmp_path / "r.json")["results"][0]["soak"]
    assert soak["calls"] == 100 and soak["samples"] == 101


@pytest.mark.parametrize("value", ["5", "-1", "0"])
def test_bench_soak_option_errors(tiny_bundle, value):
    assert error_line(invoke("bench", tiny_bundle, "--soak", value), 2) == (
        f"error: --soak must be an integer of at least 10, got {value}")


# --- length buckets: the soak switches signatures on every call -----------------------------------------

@pytest.fixture(scope="module")
def bucketed_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    """The tiny encoder with a signature for each of 8, 16, 32 and 64 tokens in one model."""
    from converters.pipeline import ConvertOptions, convert

    out = tmp_path_factory.mktemp("soak") / "tiny.b8-64"
    return convert(tiny_checkpoint, out, ConvertOptions(seq_len=64, buckets=(8, 16, 32), validation_size=8)).bundle_dir


def test_a_soak_on_length_buckets_changes_length_on_every_call_and_stays_flat(bucketed_bundle):
    soak = _soak(bucketed_bundle)
    print(f"  lengths {soak['lengths']}, {soak['length_changes']} changes")
    assert set(soak["lengths"]) >= {"8", "16", "32"}, soak["lengths"]  # the sample texts reach three lengths at least
    assert sum(soak["lengths"].values()) == CALLS
    assert soak["length_changes"] == CALLS - 1  # every call on another signature than the one before
    from edgebert.bench import describe_soak
    assert f" calls (lengths {','.join(soak['lengths'])} in turn, 999 changes), " in describe_soak("b", soak)
    _assert_flat(soak)


def test_soak_order_alternates_widths_and_leaves_one_width_alone():
    import numpy as np

    from edgebert.bench import soak_order

    def feed(width):
        return {"input_ids": np.zeros((1, width), np.int32)}

    assert soak_order([feed(32)] * 3, 7) == [0, 1, 2, 0, 1, 2, 0]  # a single-length bundle: as before
    feeds = [feed(16), feed(16), feed(64), feed(16), feed(32)]
    order = soak_order(feeds, 9)
    assert order == [0, 4, 2, 1, 4, 2, 3, 4, 2]  # 16, 32, 64 in turn, each cycling through its own texts
    widths = [feeds[i]["input_ids"].shape[1] for i in order]
    assert all(a != b for a, b in zip(widths, widths[1:]))
