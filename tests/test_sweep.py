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


def _kill_during_second_conversion(out, env) -> list[str]:
    """Start the sweep, and SIGKILL its process group as soon as it reports converting its second bundle
    (the float32 cell is finished by then); return the progress lines it printed."""
    process = subprocess.Popen([sys.executable, "-m", "edgebert", "sweep", "--out", str(out), *ARGS],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env,
                               start_new_session=True)
    lines, converting = [], False
    try:
        for line in process.stderr:  # progress lines, one per step; ends when the process does
            lines.append(line.rstrip("\n"))
            if line.startswith("bert-tiny.dynamic-int8.s128: converting"):
                converting = True
                break
        assert converting and process.poll() is None, f"the sweep ended before its second conversion: {lines}"
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        if process.poll() is None:  # the assertion above, or a timeout: never leave the sweep running
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL, f"the sweep was not killed: exit {process.returncode}"
    return lines


def test_sweep_killed_during_a_conversion_resumes_where_it_stopped(tmp_path, monkeypatch):
    from edgebert.results import read_results

    out = tmp_path / "sweep"
    monkeypatch.setenv("EDGEBERT_CACHE", str(tmp_path / "cache"))  # no real checkpoint: random ones
    lines = _kill_during_second_conversion(out, {**os.environ, "EDGEBERT_CACHE": str(tmp_path / "cache")})
    assert any("bert-tiny.float32.s128 t1: p50" in line for line in lines), lines
    assert sorted(p.name for p in (out / "cells").glob("*.json")) == ["uncased_L-2_H-128_A-2.float32.s128.t1.json"]
    visible = [p for p in (out / "bundles").iterdir() if not p.name.startswith(".")]
    assert [p.name for p in visible] == ["bert-tiny.float32.s128"]  # the interrupted bundle is not visible
    assert (visible[0] / "manifest.json").is_file()

    result = _sweep(out)
    assert result.exit_code == 0, result.stderr
    assert "bert-tiny.float32.s128 t1: unchanged, skipped" in result.stderr
    assert "bert-tiny.float32.s128: converting" not in result.stderr
    assert "bert-tiny.dynamic-int8.s128: converting" in result.stderr
    results = read_results(out / "results.json")["results"]
    assert [(r["sweep"]["quantize"], r["sweep"]["status"]) for r in results] == [
        ("float32", "ok"), ("dynamic-int8", "ok")]
    assert all(r["sweep"]["random_weights"] and r["sweep"]["variant"] == "uncased_L-2_H-128_A-2" for r in results)
    assert not [p for p in (out / "bundles").iterdir() if p.name.startswith(".")]

    again = _sweep(out)  # nothing changed: everything skipped, no conversion
    assert again.stderr.count("unchanged, skipped") == 2 and "converting" not in again.stderr


def test_a_changed_input_redoes_exactly_the_cells_it_affects(tmp_path, monkeypatch):
    from converters.config import BertConfig
    from converters.google_checkpoint import write_random_checkpoint
    from converters.vocab import synthetic_vocab
    from edgebert.variants import parse_variant

    out = tmp_path / "sweep"
    monkeypatch.setenv("EDGEBERT_CACHE", str(tmp_path / "cache"))
    assert _sweep(out).exit_code == 0

    more_threads = _sweep(out, "--threads", "1,2")  # new cells only: t2 of each mode, no conversion
    assert more_threads.exit_code == 0, more_threads.stderr
    assert more_threads.stderr.count("unchanged, skipped") == 2 and "converting" not in more_threads.stderr
    assert more_threads.stderr.count("t2: benchmarking") == 2 and "t1: benchmarking" not in more_threads.stderr

    more_runs = _sweep(out, "--runs", "3")  # a bench setting: every cell measured again, no conversion
    assert more_runs.exit_code == 0, more_runs.stderr
    assert "unchanged, skipped" not in more_runs.stderr and "converting" not in more_runs.stderr
    assert more_runs.stderr.count("t1: benchmarking") == 2

    other_seed = tmp_path / "checkpoints" / "uncased_L-2_H-128_A-2"  # the same variant, other weights
    config = BertConfig.from_variant(parse_variant("tiny"))
    write_random_checkpoint(config, other_seed, synthetic_vocab(config.vocab_size), seed=1)
    reseeded = _sweep(out, "--checkpoints", str(other_seed.parent))
    assert reseeded.exit_code == 0, reseeded.stderr
    assert "unchanged, skipped" not in reseeded.stderr
    assert reseeded.stderr.count(": converting") == 2


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
