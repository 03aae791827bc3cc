"""The sweep: cells recorded, failures recorded without stopping, and resume after a kill."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
from click.testing import CliRunner

from edgebert.cli import cli

pytestmark = pytest.mark.slow
ARGS = ["--variants", "tiny", "--quantize", "float32,dynamic-int8", "--runs", "2", "--warmup", "0"]


def _sweep(out, *extra):
    return CliRunner().invoke(cli, ["sweep", "--out", str(out), *ARGS, *extra], catch_exceptions=False)


def test_sweep_resumes_after_being_killed(tmp_path, monkeypatch):
    from edgebert.results import read_results

    out = tmp_path / "sweep"
    monkeypatch.setenv("EDGEBERT_CACHE", str(tmp_path / "cache"))  # no real checkpoint: random ones
    process = subprocess.Popen([sys.executable, "-m", "edgebert", "sweep", "--out", str(out), *ARGS],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not list((out / "cells").glob("*.json")) and time.monotonic() < deadline and process.poll() is None:
            time.sleep(0.2)
        assert list((out / "cells").glob("*.json")), "the first cell never finished"
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    finished_first = {p.name for p in (out / "cells").glob("*.json")}

    result = _sweep(out)
    assert result.exit_code == 0, result.stderr
    skipped = [line for line in result.stderr.splitlines() if "unchanged, skipped" in line]
    assert len(skipped) == len(finished_first) >= 1
    results = read_results(out / "results.json")["results"]
    assert [(r["sweep"]["quantize"], r["sweep"]["status"]) for r in results] == [
        ("float32", "ok"), ("dynamic-int8", "ok")]
    assert all(r["sweep"]["random_weights"] and r["sweep"]["variant"] == "uncased_L-2_H-128_A-2" for r in results)
    assert not [p for p in (out / "bundles").iterdir() if p.name.startswith(".")]

    again = _sweep(out)  # nothing changed: everything skipped, no conversion
    assert again.stderr.count("unchanged, skipped") == 2 and "converting" not in again.stderr


def test_a_failing_cell_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    from converters import sweep as sweep_module
    from edgebert.errors import ConversionError

    monkeypatch.setenv("EDGEBERT_CACHE", str(tmp_path / "cache"))
    real_convert = sweep_module.convert

    def convert_but_not_float32(source_path, out, options, **kwargs):
        if options.quantize.value == "float32":
            raise ConversionError("TFLite conversion (float32) failed: simulated")
        return real_convert(source_path, out, options, **kwargs)

    monkeypatch.setattr(sweep_module, "convert", convert_but_not_float32)
    result = _sweep(tmp_path / "sweep")
    assert result.exit_code == 1
    data = json.loads((tmp_path / "sweep" / "results.json").read_text())
    failed, ok = data["results"]
    assert failed["error"] == "TFLite conversion (float32) failed: simulated"
    assert failed["sweep"]["status"] == "failed" and ok["sweep"]["status"] == "ok"
    assert "1 failed" in result.stdout

    monkeypatch.setattr(sweep_module, "convert", real_convert)  # the failed cell is redone on rerun
    rerun = _sweep(tmp_path / "sweep")
    assert rerun.exit_code == 0 and rerun.stderr.count("unchanged, skipped") == 1


def test_sweep_bad_options(tmp_path):
    result = CliRunner().invoke(cli, ["sweep", "--out", str(tmp_path / "s"), "--variants", "tiny,huge"],
                                catch_exceptions=False)
    assert result.exit_code == 2 and result.stderr.splitlines()[-1].startswith("error: unknown variant 'huge'")
    result = CliRunner().invoke(cli, ["sweep", "--out", str(tmp_path / "s"), "--threads", "one"],
                                catch_exceptions=False)
    assert result.stderr.strip() == "error: --threads must be comma-separated whole numbers, got 'one'"
    assert not (tmp_path / "s").exists()
