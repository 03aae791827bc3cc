"""On-device checks, per bundle: the files arrived intact, the tokenizer gives the golden ids, the model
gives the golden outputs, and (with --budget) latency and memory stay within budget.

Runs with the device-side install only (numpy, tokenizers, click, an interpreter, pytest): nothing
here imports TensorFlow.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .device_checks import budget_for, check_budget, check_files, check_golden, check_tokenizer

MEASURE = Path(__file__).resolve().parent / "measure.py"


def _fail_on(problems: list[str], bundle, what: str) -> None:
    if problems:
        pytest.fail(f"{bundle.path.name}: {what}: {len(problems)} problem(s)\n  " + "\n  ".join(problems),
                    pytrace=False)


def test_files_match_the_manifest(bundle):
    _fail_on(check_files(bundle), bundle, "files")


def test_tokenizer_gives_the_golden_ids(bundle):
    _fail_on(check_tokenizer(bundle), bundle, "tokenizer.json vs golden.json ids")


# The model runs in a child process (edgebert.isolated): a damaged or hostile model.tflite that crashes
# the native interpreter fails this test with the signal's name instead of killing the whole suite.
MODEL_TIMEOUT_S = 600


def test_model_gives_the_golden_outputs(bundle, settings):
    from edgebert.errors import EdgebertError
    from edgebert.isolated import run

    try:
        outputs = run("golden_outputs", {"bundle": str(bundle.path), "threads": settings.threads},
                      model_path=bundle.model_path, timeout=MODEL_TIMEOUT_S)
    except EdgebertError as error:
        pytest.fail(f"{bundle.path.name}: model outputs vs golden.json: {error}", pytrace=False)
    _fail_on(check_golden(bundle, outputs=outputs), bundle, "model outputs vs golden.json")


def _measure(bundle, settings) -> dict:
    """Latency and peak RSS from a fresh process (this one's RSS includes pytest and other bundles)."""
    import edgebert

    env = dict(os.environ)
    package_root = str(Path(edgebert.__file__).resolve().parent.parent)  # the edgebert this suite runs
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, env.get("PYTHONPATH")]))
    command = [sys.executable, str(MEASURE), str(bundle.path), "--runs", str(settings.runs)]
    if settings.threads:
        command += ["--threads", str(settings.threads)]
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["(no output)"])[-1]
        pytest.fail(f"{bundle.path.name}: measuring latency and memory failed: {last}", pytrace=False)
    return json.loads(result.stdout.strip().splitlines()[-1])


def test_latency_and_memory_within_budget(bundle, settings):
    if settings.budget is None:
        pytest.skip("no --budget file given")
    limits, origin = budget_for(settings.budget, bundle.path.name)
    if not limits:
        pytest.skip(f"the budget {settings.budget_path} sets no limits for {bundle.path.name} (and no default)")
    measured = _measure(bundle, settings)
    figures = ", ".join(f"{key} {measured[key]:.3f}" for key in ("p50_ms", "p90_ms", "p99_ms", "peak_mb")
                        if measured.get(key) is not None)
    settings.measurements.append(f"{bundle.path.name}: {figures} ({measured['runs']} runs, "
                                 f"{measured.get('threads') or 'default'} threads; budget {origin}: "
                                 + ", ".join(f"{key} {value:g}" for key, value in limits.items()) + ")")
    problems = check_budget(measured, limits)
    if problems:
        pytest.fail(f"{bundle.path.name}: over budget ({settings.budget_path}, {origin}): " + "; ".join(problems)
                    + f" [measured by {measured['measured_by']}, {measured['runs']} runs]", pytrace=False)
