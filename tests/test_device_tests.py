"""The on-device suite (device_tests/), run the way a device runs it: `python -m pytest device_tests
--bundles ...` in a subprocess, on a tiny bundle, then on damaged copies of it that it must catch,
each failure naming the figure and the limit."""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent



@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    target = tmp_path / "bundles" / tiny_bundle.name
    shutil.copytree(tiny_bundle, target)
    return target


def device_suite(*args) -> subprocess.CompletedProcess:
    """The suite as a device runs it (no third-party pytest plugins there: none are loaded here either)."""
    env = {**os.environ, "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    return subprocess.run([sys.executable, "-m", "pytest", "device_tests", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def _device_checks():
    """device_tests/device_checks.py, imported by path (device_tests/ is not a package)."""
    spec = importlib.util.spec_from_file_location("device_checks_under_test", REPO / "device_tests" / "device_checks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _edit_golden(bundle: Path, edit) -> None:
    """Change golden.json, then re-seal the manifest's record of it (size and sha256), as a converter
    would have written it: only the device checks may notice."""
    golden = json.loads((bundle / "golden.json").read_text())
    edit(golden)
    data = (json.dumps(golden, indent=2) + "\n").encode()
    (bundle / "golden.json").write_bytes(data)
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["files"]["golden.json"] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (bundle / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")


def _failed(result) -> list[str]:
    return [line.split("::")[1].split(" ")[0] for line in result.stdout.splitlines() if line.startswith("FAILED ")]


def test_passes_on_a_good_bundle_found_in_a_directory(tiny_bundle):
    result = device_suite("--bundles", tiny_bundle.parent, "-v")
    assert result.returncode == 0, result.stdout + result.stderr
    summary = result.stdout.strip().splitlines()[-1]
    assert "3 passed, 1 skipped" in summary, result.stdout  # the budget test skips without --budget
    assert "test_model_gives_the_golden_outputs[tiny.s32] PASSED" in result.stdout
    assert "tensorflow" not in result.stdout.lower()


def test_without_bundles_everything_is_skipped_and_the_main_run_does_not_collect_it():
    result = device_suite()
    assert result.returncode == 0 and "4 skipped" in result.stdout, result.stdout
    main = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert main.returncode == 0, main.stdout + main.stderr
    collected = [line for line in main.stdout.splitlines() if "::" in line]
    assert collected and all(line.startswith("tests/") for line in collected)


def test_changed_expected_outputs_fail_with_the_figures(bundle_copy):
    def edit(golden):
        example = golden["examples"][0]
        example["outputs"]["pooled_output"] = [-v for v in example["outputs"]["pooled_output"]]
        golden["examples"][1]["outputs"]["sequence_output"]["first_token"][0] += 0.5
    _edit_golden(bundle_copy, edit)
    result = device_suite("--bundles", bundle_copy)
    assert result.returncode == 1
    assert _failed(result) == ["test_model_gives_the_golden_outputs[tiny.s32]"], result.stdout
    assert "example 0 (" in result.stdout and "pooled_output cosine -1.000000 < min_cosine 0.999" in result.stdout
    assert "example 1 (" in result.stdout and "sequence_output.first_token max |diff| 0.5 > bound " in result.stdout
    assert "x the manifest's validation max |diff|" in result.stdout


def test_changed_golden_ids_fail_the_tokenizer_check(bundle_copy):
    def edit(golden):
        golden["examples"][2]["input_ids"][1] += 1
    original = json.loads((bundle_copy / "golden.json").read_text())["examples"][2]["input_ids"][1]
    _edit_golden(bundle_copy, edit)
    result = device_suite("--bundles", bundle_copy)
    assert result.returncode == 1
    assert "test_tokenizer_gives_the_golden_ids[tiny.s32]" in _failed(result), result.stdout
    assert (f"input_ids differ at position 1: tokenizer gives {original}, golden.json has {original + 1} "
            "(lengths 32/32)") in result.stdout


def test_a_damaged_file_fails_the_manifest_check(bundle_copy):
    model = bytearray((bundle_copy / "model.tflite").read_bytes())
    model[-1] ^= 0xFF  # same size, one byte changed
    (bundle_copy / "model.tflite").write_bytes(bytes(model))
    result = device_suite("--bundles", bundle_copy, "-k", "files")
    assert result.returncode == 1
    assert "model.tflite: sha256 " in result.stdout and "differs from the manifest's" in result.stdout


def test_a_budget_too_small_fails_naming_the_figures_and_the_budget(tiny_bundle, tmp_path):
    budget = tmp_path / "budget.json"
    budget.write_text(json.dumps({"default": {"p90_ms": 1000, "peak_mb": 10000},
                                  "bundles": {"tiny.s32": {"p90_ms": 0.000001, "peak_mb": 1}}}))
    result = device_suite("--bundles", tiny_bundle, "--budget", budget, "--runs", "3")
    assert result.returncode == 1
    assert _failed(result) == ["test_latency_and_memory_within_budget[tiny.s32]"], result.stdout
    line = next(line for line in result.stdout.splitlines() if "over budget" in line)
    assert line.startswith(f"tiny.s32: over budget ({budget}, bundles['tiny.s32']): p90 latency ")
    assert "ms exceeds the budget p90_ms 1e-06 ms; peak RSS " in line and "MB exceeds the budget peak_mb 1 MB" in line
    assert "3 runs]" in line
    # A generous budget passes, and the figures are listed at the end.
    budget.write_text(json.dumps({"default": {"p90_ms": 10000, "peak_mb": 100000}}))
    result = device_suite("--bundles", tiny_bundle, "--budget", budget, "--runs", "3")
    assert result.returncode == 0, result.stdout
    assert "edgebert budget" in result.stdout and "tiny.s32: p50_ms " in result.stdout


@pytest.mark.parametrize("content, problem", [
    (None, "budget file not found"),
    ('{"default": {"p90_ms": 5,}}', "not valid JSON (Expecting property name enclosed in double quotes: "
                                    "line 1 column 26 (char 25))"),
    ("[1, 2]", "must be an object with 'default' and/or 'bundles', got list"),
    ('{"defaults": {}}', "unknown key 'defaults' (allowed: default, bundles)"),
    ('{"default": {"p95_ms": 5}}', "default: unknown key 'p95_ms' (allowed: p50_ms, p90_ms, p99_ms, peak_mb)"),
    ('{"default": [5]}', 'default must be an object like {"p90_ms": 50, "peak_mb": 120}, got list'),
    ('{"bundles": {"tiny.s32": {"peak_mb": -3}}}', "bundles['tiny.s32'].peak_mb must be a positive number, got -3"),
    ('{"bundles": [1]}', "'bundles' must map bundle names to limits, got list"),
    ('{"default": {"p90_ms": 0}}', "default.p90_ms must be a positive number, got 0"),
    ('{"default": {"p90_ms": true}}', "default.p90_ms must be a positive number, got True"),
    ('{"default": {"p90_ms": "5"}}', "default.p90_ms must be a positive number, got '5'"),
])
def test_bad_budget_files_are_refused_with_the_problem(tmp_path, content, problem):
    checks = _device_checks()
    budget = tmp_path / "budget.json"
    if content is not None:
        budget.write_text(content)
    with pytest.raises(checks.BudgetError) as error:
        checks.load_budget(budget)
    assert str(error.value) == problem


def test_budget_files_in_json_and_toml_and_how_entries_combine(tmp_path):
    checks = _device_checks()
    (tmp_path / "b.toml").write_text('[default]\np90_ms = 50\npeak_mb = 120\n\n[bundles."bert-mini.s128"]\np90_ms = 5\n')
    (tmp_path / "b.json").write_text(json.dumps({"default": {"p90_ms": 50, "peak_mb": 120},
                                                 "bundles": {"bert-mini.s128": {"p90_ms": 5}}}))
    for name in ("b.toml", "b.json"):
        budget = checks.load_budget(tmp_path / name)
        assert checks.budget_for(budget, "bert-mini.s128") == ({"p90_ms": 5, "peak_mb": 120},
                                                               "bundles['bert-mini.s128'] + default")
        assert checks.budget_for(budget, "other") == ({"p90_ms": 50, "peak_mb": 120}, "default")
    assert checks.check_budget({"p90_ms": 6.0, "peak_mb": 100.0}, {"p90_ms": 5, "peak_mb": 120}) == [
        "p90 latency 6.000 ms exceeds the budget p90_ms 5 ms"]


def test_a_bad_budget_file_is_one_pytest_usage_error_naming_the_file(tiny_bundle, tmp_path):
    budget = tmp_path / "budget.json"
    budget.write_text('{"default": {"p90_ms": -1}}')
    result = device_suite("--bundles", tiny_bundle, "--budget", budget)
    assert result.returncode == 4  # pytest's usage error, before any test runs
    assert "Traceback" not in result.stderr + result.stdout
    assert result.stderr.strip().splitlines() == [f"ERROR: --budget {budget}: default.p90_ms must be a positive "
                                                  "number, got -1"]
    result = device_suite("--bundles", tiny_bundle, "--budget", tmp_path / "missing.json")
    assert result.stderr.strip().splitlines() == [f"ERROR: --budget {tmp_path / 'missing.json'}: budget file not found"]


def test_a_path_without_bundles_is_a_usage_error(tmp_path):
    result = device_suite("--bundles", tmp_path)
    assert result.returncode == 4
    assert result.stderr.strip().splitlines() == [
        f"ERROR: --bundles {tmp_path}: not a bundle (no manifest.json) and holds no bundle directories"]
    result = device_suite("--bundles", tmp_path / "missing")
    assert result.stderr.strip().splitlines() == [f"ERROR: --bundles {tmp_path / 'missing'}: no such directory"]
