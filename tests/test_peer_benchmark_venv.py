"""The peer benchmark's end-to-end tests (and the pytorch_model.bin loader), run in the environment that has
the heavy [bench] extra.

torch, transformers<5, onnxruntime and onnx (the [bench] extra) stay out of the main environment, so
tests/test_peer_benchmark.py skips its real tests there. `.ci/run` makes `.venv-bench` with them
(`pip install torch==2.13.0 && pip install -e '.[convert,bench,test]'`); this test runs that file in it
and requires every test to pass and none to skip. EDGEBERT_BENCH_PYTHON names another such Python.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ci import missing

REPO = Path(__file__).resolve().parent.parent
BENCH_PYTHON = Path(os.environ.get("EDGEBERT_BENCH_PYTHON", REPO / ".venv-bench" / "bin" / "python"))


def test_peer_benchmark_and_torch_tests_pass_in_the_bench_environment():
    if not BENCH_PYTHON.is_file():
        missing(f"no Python with the [bench] extra at {BENCH_PYTHON} (python -m venv .venv-bench && "
                ".venv-bench/bin/pip install torch==2.13.0 && .venv-bench/bin/pip install -e '.[convert,bench,test]')")
    if Path(sys.prefix).resolve() == BENCH_PYTHON.parent.parent.resolve():
        pytest.skip("this is the bench environment itself: tests/test_peer_benchmark.py runs here directly")
    # Also the one README claim that needs torch: pytorch_model.bin loads through torch's weights_only.
    done = subprocess.run([str(BENCH_PYTHON), "-m", "pytest", "tests/test_peer_benchmark.py",
                           "tests/test_sources.py::test_pytorch_model_bin_through_weights_only", "-q", "-rs",
                           "-p", "no:cacheprovider"], cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    summary = done.stdout.strip().splitlines()[-1]
    assert re.match(r"\d+ passed in ", summary), summary  # and nothing skipped, failed or deselected
