"""The on-device runner: `bench_bundle` in process, the fresh-process worker, `bench_many`, the table, the
`edgebert bench` command and its errors. Tiny bundles are built here; no timing is ever asserted, only
that results are well-formed (benchmarks/ holds the timing comparisons)."""
from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from edgebert.errors import BundleError, UsageError
from edgebert.results import BENCH_SCHEMA, LATENCY_KEYS, check_result, read_results
from cli_helpers import error_line, invoke

REPO = Path(__file__).resolve().parent.parent
NO_TENSORFLOW = ("import sys; assert not any(m == 'tensorflow' or m.startswith('tensorflow.') or m == 'tf_keras' "
                 "for m in sys.modules), sorted(m for m in sys.modules if 'tensorflow' in m or m == 'tf_keras')[:5]")
DEVICE_KEYS = {"cpu_model", "cores", "machine", "system", "release", "python", "numpy", "hostname"}


def _convert(source, out, **options):
    from converters.pipeline import ConvertOptions, convert
    return convert(source, out, ConvertOptions(seq_len=options.pop("seq_len", 32), validation_size=8, **options))


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, tiny_checkpoint) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bench-bundles")
    _convert(tiny_checkpoint, root / "tiny.s32")
    _convert(tiny_checkpoint, root / "tiny.dynamic", seq_len=None)
    return {"fixed": root / "tiny.s32", "dynamic": root / "tiny.dynamic"}


@pytest.fixture
def damaged(tmp_path, bundles):
    """A copy of the fixed bundle, for tests that break it."""
    target = tmp_path / "damaged"
    shutil.copytree(bundles["fixed"], target)
    return target


def _fake_python(tmp_path: Path, body: str) -> str:
    """An executable standing in for the worker's Python, to make the worker fail on purpose."""
    script = tmp_path / "fake-python"
    script.write_text("#!/bin/sh\n" + body + "\n")
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return str(script)


def assert_well_formed(result: dict, runs: int):
    check_result(result)
    assert "error" not in result
    latency = result["latency_ms"]
    assert set(LATENCY_KEYS) <= set(latency)
    assert latency["min"] <= latency["p50"] <= latency["p90"] <= latency["p99"] <= latency["max"]
    assert latency["min"] <= latency["mean"] <= latency["max"] and latency["std"] >= 0
    assert result["throughput_per_s"] > 0 and result["load_ms"] > 0 and result["first_inference_ms"] > 0
    assert result["python_overhead_ms"] >= 0
    assert result["settings"]["runs"] == runs
    assert result["runtime"]["name"] == "ai-edge-litert" and result["runtime"]["version"]
    memory = result["memory"]
    assert memory["growth_mb"] > 0
    assert memory["peak_rss_mb"] == pytest.approx(memory["baseline_rss_mb"] + memory["growth_mb"], abs=0.02)
    assert result["bundle"]["head"] == "encoder" and result["bundle"]["hidden"] == 32
    json.dumps(result)  # plain JSON types only


# --- in process ----------------------------------------------------------------------------------------

def test_bench_bundle_in_process_gives_a_well_formed_result(bundles):
    from edgebert.bench import bench_bundle

    result = bench_bundle(bundles["fixed"], runs=2, warmup=1)
    assert_well_formed(result, runs=2)
    assert result["bundle"]["name"] == "tiny.s32" and result["bundle"]["seq_len"] == 32
    assert result["bundle"]["quantize"] == "dynamic-int8" and result["bundle"]["random_weights"] is True
    assert result["settings"]["seq_len"] == 32 and result["settings"]["inputs"] == "samples/sentences.txt"
    assert result["settings"]["distinct_inputs"] == 4  # first + warm-up + runs, each a different sentence
    assert result["xnnpack_applied"] is True and result["xnnpack_partitions"] >= 1


def test_no_xnnpack_runs_on_the_builtin_kernels(bundles):
    from edgebert.bench import bench_bundle

    result = bench_bundle(bundles["fixed"], runs=2, warmup=0, xnnpack=False)
    assert result["settings"]["xnnpack"] is False
    assert result["xnnpack_applied"] is False and result["xnnpack_partitions"] == 0


def test_user_inputs_and_dynamic_lengths(bundles, tmp_path):
    from edgebert.bench import bench_bundle

    text = tmp_path / "mine.txt"
    text.write_text("One short line.\n\nA second, somewhat longer line of ordinary English text.\n")
    natural = bench_bundle(bundles["dynamic"], runs=3, warmup=0, inputs_file=text)
    assert natural["settings"]["seq_len"] == "dynamic" and natural["settings"]["inputs"] == str(text)
    assert natural["settings"]["distinct_inputs"] == 2 and natural["bundle"]["seq_len"] == "dynamic"
    padded = bench_bundle(bundles["dynamic"], runs=2, warmup=0, seq_len=48, inputs_file=text)
    assert padded["settings"]["seq_len"] == 48


def test_options_and_bundles_are_checked(bundles, damaged):
    from edgebert.bench import bench_bundle

    for options, message in [({"runs": 0}, "--runs must be an integer of at least 1, got 0"),
                             ({"threads": 0}, "--threads must be an integer of at least 1, got 0"),
                             ({"warmup": -1}, "--warmup must be an integer of at least 0, got -1"),
                             ({"runtime": "onnx"}, "unknown runtime 'onnx'")]:
        with pytest.raises(UsageError, match=message):
            bench_bundle(bundles["fixed"], **options)
    with pytest.raises(UsageError) as error:
        bench_bundle(bundles["fixed"], seq_len=64)
    assert str(error.value) == (f"{bundles['fixed']}: bundle has a fixed sequence length of 32; --seq-len 64 needs "
                                "a bundle converted with --seq-len dynamic")
    with pytest.raises(UsageError, match=r"--seq-len 100 is outside 3\.\.64"):
        bench_bundle(bundles["dynamic"], seq_len=100)
    (damaged / "model.tflite").write_bytes((damaged / "model.tflite").read_bytes()[:1000])
    with pytest.raises(BundleError, match="truncated or replaced"):
        bench_bundle(damaged)


# --- in a fresh process --------------------------------------------------------------------------------

def test_worker_measures_in_a_fresh_process_without_tensorflow(bundles):
    from edgebert.bench import bench_in_fresh_process

    assert "tensorflow" in sys.modules  # the converter ran here; the worker must not inherit that
    result = bench_in_fresh_process(bundles["fixed"], runs=2, warmup=1)
    assert_well_formed(result, runs=2)
    assert result["pid"] != os.getpid()
    assert result["tensorflow_imported"] is False
    assert result["xnnpack_applied"] is True


def test_device_side_modules_do_not_import_tensorflow():
    code = "import edgebert.bench, edgebert.predict, edgebert.cli.inference, edgebert.device_info; " + NO_TENSORFLOW
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert done.returncode == 0, done.stderr


@pytest.mark.parametrize("body, expected", [
    ("kill -9 $$", "benchmark worker killed by SIGKILL (out of memory?)"),
    ("echo 'MemoryError: out of memory' >&2; exit 1",
     "benchmark worker exited with code 1 without a result: MemoryError: out of memory"),
    ("echo '{not json'; exit 0", "benchmark worker exited with code 0 without a result: {not json"),
    ('echo \'{"bundle": {"path": "x", "name": "x"}, "error": "x: bad things"}\'; exit 3', "x: bad things"),
])
def test_a_failing_worker_gives_a_failed_result(bundles, tmp_path, body, expected):
    from edgebert.bench import bench_in_fresh_process

    result = bench_in_fresh_process(bundles["fixed"], runs=1, python=_fake_python(tmp_path, body))
    check_result(result)
    assert result == {"bundle": {"path": str(bundles["fixed"].resolve()), "name": "tiny.s32"}, "error": expected}


def test_a_worker_that_hangs_is_stopped(bundles, tmp_path):
    from edgebert.bench import bench_in_fresh_process

    result = bench_in_fresh_process(bundles["fixed"], python=_fake_python(tmp_path, "exec sleep 30"), timeout=0.5)
    assert result["error"] == "benchmark worker timed out after 0.5 s"


def test_bad_bundles_fail_before_any_worker_starts(bundles, damaged, tmp_path):
    from edgebert.bench import bench_in_fresh_process, bench_many

    marker = tmp_path / "spawned"
    python = _fake_python(tmp_path, f"touch {marker}; exit 1")
    with pytest.raises(BundleError, match="no such directory"):
        bench_in_fresh_process(tmp_path / "absent", python=python)
    with pytest.raises(UsageError, match="fixed sequence length of 32"):
        bench_in_fresh_process(bundles["fixed"], seq_len=64, python=python)
    (damaged / "manifest.json").write_text("{ not json")
    with pytest.raises(BundleError, match="unreadable JSON"):
        bench_many([bundles["fixed"], damaged], python=python)  # the good one is not measured either
    assert not marker.exists()


def test_bench_many_and_the_table(bundles, tmp_path):
    from edgebert.bench import bench_many, failed_result, format_table

    seen = []
    results = bench_many([bundles["fixed"]], progress=lambda *args: seen.append(args), runs=2, warmup=0)
    assert seen == [(0, 1, "tiny.s32"), (1, 1, None)]
    assert results["schema"] == BENCH_SCHEMA and DEVICE_KEYS <= set(results["device"])
    assert results["device"]["int8_kernels"] and results["device"]["cpu_features"]  # edgebert.cpu_features
    assert [r["bundle"]["name"] for r in results["results"]] == ["tiny.s32"]
    results["results"].append(failed_result(tmp_path / "broken", "benchmark worker killed by SIGKILL"))
    table = format_table(results).splitlines()
    assert table[0].split()[:4] == ["bundle", "mode", "seq", "thr"]
    assert table[1].split()[:4] == ["tiny.s32", "dynamic-int8", "32", "1"]
    assert table[1].split()[-3:] == ["yes", "ai-edge-litert", results["results"][0]["runtime"]["version"]]
    assert table[2].split() == ["broken", "FAILED:", "benchmark", "worker", "killed", "by", "SIGKILL"]
    assert table[-1].startswith("device: ")


def test_device_facts_never_fail():
    from edgebert.device_info import device_facts

    facts = device_facts()
    assert DEVICE_KEYS <= set(facts)
    assert all(value not in (None, "") for value in facts.values())
    assert isinstance(facts["cores"], int) and facts["cores"] >= 1
    json.dumps(facts)


# --- the command ---------------------------------------------------------------------------------------





def test_bench_command_prints_a_table_and_writes_the_results_file(bundles, tmp_path):
    out = tmp_path / "results.json"
    result = invoke("bench", bundles["fixed"], bundles["dynamic"], "--runs", 2, "--warmup", 0, "--json", out)
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.stderr and "error" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].split()[0] == "bundle"
    assert [line.split()[0] for line in lines[1:3]] == ["tiny.s32", "tiny.dynamic"]
    assert lines[2].split()[2] == "dynamic"
    data = read_results(out)
    assert [r["bundle"]["name"] for r in data["results"]] == ["tiny.s32", "tiny.dynamic"]
    assert all(r["tensorflow_imported"] is False and r["settings"]["runs"] == 2 for r in data["results"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temporary file left


def test_bench_command_no_xnnpack(bundles):
    result = invoke("bench", bundles["fixed"], "--runs", 1, "--no-xnnpack", "--threads", 2)
    assert result.exit_code == 0, result.output
    row = result.stdout.splitlines()[1].split()
    assert row[3] == "2" and row[-3] == "no"


def test_bench_command_errors_are_one_line(bundles, damaged, tmp_path):
    absent = tmp_path / "absent"
    assert error_line(invoke("bench", absent), 1) == \
        f"error: {absent}: not a bundle directory (no such directory)"
    assert error_line(invoke("bench", bundles["fixed"], "--runs", 0), 2) == \
        "error: --runs must be an integer of at least 1, got 0"
    assert error_line(invoke("bench", bundles["fixed"], "--warmup", -1), 2) == \
        "error: --warmup must be an integer of at least 0, got -1"
    assert error_line(invoke("bench", bundles["fixed"], "--threads", 0), 2) == \
        "error: --threads must be an integer of at least 1, got 0"
    assert error_line(invoke("bench", bundles["fixed"], "--seq-len", 64), 2) == (
        f"error: {bundles['fixed']}: bundle has a fixed sequence length of 32; --seq-len 64 needs a bundle "
        "converted with --seq-len dynamic")
    assert error_line(invoke("bench", bundles["fixed"], "--json", tmp_path / "no" / "r.json"), 1).startswith(
        f"error: {tmp_path / 'no' / 'r.json'}: cannot write here")

    model = damaged / "model.tflite"
    size = model.stat().st_size
    model.write_bytes(model.read_bytes()[: size // 2])
    assert error_line(invoke("bench", bundles["fixed"], damaged), 1) == (
        f"error: {model}: is {size // 2} bytes but the manifest says {size} (truncated or replaced?)")
    (damaged / "manifest.json").write_text('{"schema_version": 1, ')
    line = error_line(invoke("bench", damaged), 1)
    assert line.startswith(f"error: {damaged / 'manifest.json'}: unreadable JSON (")


def test_bench_command_help():
    result = invoke("bench", "--help")
    assert result.exit_code == 0
    for option in ("--threads", "--runs", "--warmup", "--seq-len", "--no-xnnpack", "--runtime", "--inputs",
                   "--json", "--timeout"):
        assert option in result.stdout
