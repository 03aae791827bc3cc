"""XNNPACK's weight cache through LiteRT's CompiledModel: same outputs, a cache file, reused warm."""
from __future__ import annotations

import numpy as np
import pytest

from ci import missing
from cli_helpers import error_line, invoke
from edgebert.errors import RuntimeNotAvailableError


def _supported() -> bool:
    from edgebert.interpreter import find_runtime, weight_cache_supported

    try:
        return weight_cache_supported(find_runtime())
    except RuntimeNotAvailableError:  # no interpreter at all; any other error is a bug and fails the tests
        return False


@pytest.fixture(autouse=True)
def _weight_cache_runtime():
    if not _supported():
        missing("needs ai-edge-litert with CompiledModel's weight cache")


def test_cached_weights_give_the_interpreters_outputs(tiny_bundle, tmp_path):
    from edgebert.bundle import read_bundle
    from edgebert.interpreter import TFLiteModel

    bundle = read_bundle(tiny_bundle)
    cache = tmp_path / "cache" / "tiny.xnnpack-cache"
    plain = TFLiteModel(bundle.model_path, num_threads=1)
    cached = TFLiteModel(bundle.model_path, num_threads=1, weight_cache=cache)
    assert cache.is_file() and cache.stat().st_size > 0
    for example in bundle.golden["examples"]:
        feed = {name: np.array([example[name]], np.int32) for name in plain.input_names}
        expected, got = plain(**feed), cached(**feed)
        assert set(got) == set(expected)
        for name in expected:
            np.testing.assert_array_equal(got[name], expected[name])
    warm = TFLiteModel(bundle.model_path, num_threads=1, weight_cache=cache)  # maps the file written above
    np.testing.assert_array_equal(warm(**feed)["pooled_output"], expected["pooled_output"])


def test_bench_reports_a_cold_then_a_warm_cache(tiny_bundle, tmp_path):
    from edgebert.bench import bench_in_fresh_process

    first = bench_in_fresh_process(tiny_bundle, runs=3, warmup=1, weight_cache=tmp_path / "c")
    second = bench_in_fresh_process(tiny_bundle, runs=3, warmup=1, weight_cache=tmp_path / "c")
    assert "error" not in first, first
    assert first["settings"]["weight_cache"]["warm"] is False and second["settings"]["weight_cache"]["warm"] is True
    assert first["settings"]["weight_cache"]["bytes"] > 0


def test_weight_cache_option_errors(tiny_bundle, tmp_path):
    (tmp_path / "file").write_text("x")
    line = error_line(invoke("bench", tiny_bundle, "--weight-cache", tmp_path / "file"), 2)
    assert line == f"error: --weight-cache must be a directory: {tmp_path / 'file'} is a file"
    line = error_line(invoke("bench", tiny_bundle, "--weight-cache", tmp_path / "d", "--no-xnnpack"), 2)
    assert "cannot go with --no-xnnpack" in line
