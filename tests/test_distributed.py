"""The search, the grid and the sweep on Ray, against a real cluster started here: a head and a worker node as
separate `ray start` processes on 127.0.0.1, tiny random models, tiny task files. The worker is killed mid-run,
the driver is killed mid-run and rerun; every process the tests start is stopped by its PID."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from benchmarks.local_ray import RAY, Cluster
from benchmarks.local_ray import descendants as _descendants, free_port as _free_port, kill_tree as _kill_tree
from benchmarks.local_ray import ray_env as _env
from ci import missing
from cli_helpers import error_line, invoke
from test_finetune import _write_task

REPO = Path(__file__).resolve().parent.parent
CELLS = ["--batch-size", "16", "--learning-rate", "3e-3,1e-6"]  # 1.0 and ~0.5 dev accuracy: a clear best
DRIVER_TIMEOUT = 240


@pytest.fixture(scope="module")
def ray_installed():
    try:
        import ray  # noqa: F401
    except ImportError:
        missing("Ray is not installed (pip install -e '.[distributed]')")
    if not RAY.exists() or not Path("/proc").is_dir():
        missing("the `ray` command (or /proc, to stop its processes) is not available")


@pytest.fixture(scope="module")
def cluster(ray_installed):
    started = Cluster()
    yield started
    started.stop()


@pytest.fixture(scope="module")
def files(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("dist")
    train, dev = _write_task(root / "train.tsv", 1600, 0), _write_task(root / "dev.tsv", 80, 1)
    return tiny_checkpoint, train, dev


def _finetune_args(files, out: Path, *more) -> list[str]:
    source, train, dev = files
    return ["finetune", str(source), "--task", str(train), "--dev", str(dev), "--out", str(out), "--epochs", "4",
            "--patience", "4", "--max-seq-len", "32", *CELLS, *more]


def _driver(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgebert", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO, start_new_session=True)


def _sweep_args(checkpoints: Path, out: Path, *more) -> list[str]:
    return ["sweep", "--out", str(out), "--variants", "tiny", "--quantize", "float32,dynamic-int8", "--seq-len", "32",
            "--runs", "2", "--warmup", "0", "--checkpoints", str(checkpoints), *more]


@pytest.fixture(scope="module")
def sweep_checkpoints(tiny_checkpoint, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sweep-ckpts")
    shutil.copytree(tiny_checkpoint, root / "uncased_L-2_H-128_A-2")  # the tiny model stands in for Tiny
    return root


def _running_task(process: subprocess.Popen, names: tuple[str, ...]) -> bool:
    """Whether a Ray worker under this node's process runs one of these tasks (Ray titles it ray::NAME)."""
    for pid in _descendants(process.pid):
        try:
            title = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0].decode(errors="replace")
        except OSError:
            continue
        if any(title.startswith(f"ray::{name}") for name in names):
            return True
    return False


def _search_record(out: Path) -> dict:
    return json.loads((out / "edgebert_source.json").read_text())["history"][-1]


def _trial_entries(out: Path) -> list[dict]:
    """Each trial's entry as the search collected it (the run directories hold the finished models)."""
    runs = sorted((out.parent / f"{out.name}.search").glob("bs*"))
    return [json.loads((run / "edgebert_source.json").read_text())["history"][-1] for run in runs]


# ---------------------------------------------------------------------------------------------------
# Without a cluster


def test_a_bad_address_is_one_line():
    result = invoke("finetune", "x", "--task", "t.tsv", "--out", "o", "--search", "--ray", "nowhere")
    assert "--ray takes auto, local or HOST:PORT" in error_line(result, 2)


def test_ray_without_a_search_is_one_line(tiny_checkpoint, tmp_path):
    train = _write_task(tmp_path / "t.tsv", 8, 0)
    result = invoke("finetune", tiny_checkpoint, "--task", train, "--out", tmp_path / "o", "--ray", "local")
    assert "--ray and --storage run a search's trials" in error_line(result, 2)


def test_no_cluster_at_the_address_fails_in_seconds_with_one_line(ray_installed, files, tmp_path):
    port = _free_port()  # closed again: nothing listens there
    started = time.monotonic()
    driver = _driver(_finetune_args(files, tmp_path / "best", "--ray", f"127.0.0.1:{port}"))
    stdout, stderr = driver.communicate(timeout=60)
    assert time.monotonic() - started < 30
    assert driver.returncode == 2 and stdout == ""
    assert stderr.splitlines()[-1] == (f"error: no Ray cluster answers at 127.0.0.1:{port} (connection refused); "
                                       f"start one there with `ray start --head --port {port}`, or use --ray local")
    assert "Traceback" not in stderr


def test_a_sweep_with_no_cluster_at_the_address_fails_in_seconds_with_one_line(ray_installed, tmp_path):
    port = _free_port()
    started = time.monotonic()
    driver = _driver(["sweep", "--out", str(tmp_path / "s"), "--variants", "tiny", "--ray", f"127.0.0.1:{port}"])
    stdout, stderr = driver.communicate(timeout=60)
    assert time.monotonic() - started < 30
    assert driver.returncode == 2 and stdout == "" and "Traceback" not in stderr
    assert stderr.splitlines() == [(f"error: no Ray cluster answers at 127.0.0.1:{port} (connection refused); "
                                    f"start one there with `ray start --head --port {port}`, or use --ray local")]
    assert not (tmp_path / "s").exists()


def test_a_trial_s_scratch_folder_clears_those_of_processes_that_are_gone(tmp_path):
    """A trial killed with its node never reaches its `finally`: the next one on that node removes its folder."""
    from converters.distributed import _scratch_dir

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    dead = tmp_path / f"edgebert-trial-{gone.pid}-abc"
    live = tmp_path / f"edgebert-trial-{os.getpid()}-abc"
    other = tmp_path / f"edgebert-cell-{gone.pid}-abc"  # a sweep cell's: another kind, left to its own
    for folder in (dead, live, other):
        (folder / "work").mkdir(parents=True)
    made = _scratch_dir("trial", str(tmp_path))
    assert made.is_dir() and made.name.startswith(f"edgebert-trial-{os.getpid()}-")
    assert not dead.exists() and live.is_dir() and other.is_dir()


def test_sweep_cpus_per_trial_goes_with_ray(tmp_path):
    result = invoke("sweep", "--out", tmp_path / "s", "--cpus-per-trial", "2")
    assert error_line(result, 2) == "error: --cpus-per-trial goes with --ray"


def test_a_search_over_changed_inputs_is_refused(files, tmp_path):
    """Here (no Ray): the second search's epochs differ, so its runs must not mix with the first's."""
    out = tmp_path / "best"
    first = invoke(*_finetune_args(files, out, "--epochs", "1"))
    assert first.exit_code == 0, first.output
    assert [t["run"] for t in _search_record(out)["search"]] == ["bs16-lr0.003", "bs16-lr1e-06"]
    again = invoke(*_finetune_args(files, out, "--epochs", "2", "--force"))
    line = error_line(again, 2, progress=tuple(again.stderr.splitlines()[:-1]))
    assert line == (f"error: {out}.search: holds a search with other inputs (options epochs changed); rerun with the "
                    "same ones, or pass --restart to start over")


# ---------------------------------------------------------------------------------------------------
# On a head and a worker node


@pytest.mark.slow
def test_a_killed_worker_node_s_trial_restarts_from_its_checkpoint_and_finishes_once(cluster, files, tmp_path):
    out = tmp_path / "best"
    driver = _driver(_finetune_args(files, out, "--ray", cluster.address, "--epochs", "8", "--patience", "8"))
    lines, killed, second_epoch = [], False, set()
    for line in driver.stderr:  # the driver's progress, one line per event
        lines.append(line.rstrip("\n"))
        if ": epoch 2," in line:
            second_epoch.add(line.split(":")[0])
        # Both trials run at once, one per node (one CPU each). Once both have reported epoch 2, Tune holds
        # each one's epoch-1 checkpoint (it saves before it asks for the next epoch): kill the worker node.
        if not killed and len(second_epoch) == 2:
            _kill_tree(cluster.worker)
            killed = True
    driver.wait(timeout=DRIVER_TIMEOUT)
    log = "\n".join(lines)
    assert driver.returncode == 0, log[-4000:]
    assert killed, "the trials did not run at the same time; nothing was killed:\n" + log[-4000:]
    assert "restarting from its last checkpoint" in log, log[-4000:]
    trials = _search_record(out)["search"]
    assert [t["run"] for t in trials] == ["bs16-lr0.003", "bs16-lr1e-06"]  # each exactly once
    assert all("accuracy" in t for t in trials), trials
    assert max(t["resumed_after_epoch"] for t in trials) >= 1, log  # went on from an epoch checkpoint
    entries = {e["options"]["learning_rate"]: e for e in _trial_entries(out)}
    # Each run's epochs are 1..8 once each: the restarted one went on after its last checkpoint.
    assert all([r["epoch"] for r in e["epochs"]] == list(range(1, 9)) for e in entries.values())
    assert _search_record(out)["dev_metrics"]["accuracy"] == 1.0
    cluster.worker = cluster.start_worker()  # for the next test


def _kill_after_a_finished_trial(args: list[str]) -> str:
    """Start the driver, kill it (and its process group) once a trial has finished; that trial's name."""
    line = _kill_after(args, lambda line: "] bs16-" in line and ": finished" in line)
    return line.split("] ", 1)[1].split(":")[0]


def _kill_after(args: list[str], seen) -> str:
    """Start the driver and kill it (and its process group) at the first progress line `seen` accepts."""
    driver = _driver(args)
    lines = []
    for line in driver.stderr:
        lines.append(line.rstrip("\n"))
        if seen(line):
            break
    _kill_tree(driver)
    assert lines and seen(lines[-1]), "\n".join(lines)[-4000:]
    return lines[-1]


def _rerun(args: list[str]) -> str:
    rerun = subprocess.run([sys.executable, "-m", "edgebert", *args], capture_output=True, text=True, env=_env(),
                           cwd=REPO, timeout=DRIVER_TIMEOUT)
    assert rerun.returncode == 0, rerun.stderr[-4000:]
    assert "ray: resuming the experiment" in rerun.stderr
    return rerun.stderr


@pytest.mark.slow
def test_a_killed_driver_resumes_without_redoing_finished_trials(cluster, files, tmp_path):
    args = _finetune_args(files, tmp_path / "best", "--ray", cluster.address, "--learning-rate", "3e-3,1e-6,1e-5")
    finished = _kill_after_a_finished_trial(args)
    rerun = _rerun(args)
    assert f"{finished}: epoch" not in rerun, rerun  # not trained again: its model was kept when it finished
    trials = _search_record(tmp_path / "best")["search"]
    assert sorted(t["run"] for t in trials) == ["bs16-lr0.003", "bs16-lr1e-05", "bs16-lr1e-06"]

    # The same best as an uninterrupted search here, without Ray.
    plain = invoke(*_finetune_args(files, tmp_path / "plain", "--learning-rate", "3e-3,1e-6,1e-5"))
    assert plain.exit_code == 0, plain.output
    ours, theirs = _search_record(tmp_path / "best"), _search_record(tmp_path / "plain")
    scores = [{t["run"]: t.get("accuracy") for t in r["search"]} for r in (ours, theirs)]
    assert ours["options"]["learning_rate"] == theirs["options"]["learning_rate"], scores
    assert ours["dev_metrics"]["accuracy"] == pytest.approx(theirs["dev_metrics"]["accuracy"], abs=0.02)


# What a kill can leave of Ray's own state (seen in CI): its search state cut short mid-write, or a trial's
# recorded checkpoint already deleted by Tune (num_to_keep) before the state recording the next was saved.


@pytest.mark.slow
def test_a_half_written_ray_search_state_redoes_no_finished_trial(cluster, files, tmp_path):
    args = _finetune_args(files, tmp_path / "best", "--ray", cluster.address)
    finished = _kill_after_a_finished_trial(args)
    experiment = next((tmp_path / "best.search" / "ray").iterdir())
    states = list(experiment.glob("basic-variant-state-*.json"))
    assert states, sorted(path.name for path in experiment.iterdir())
    for state in states:
        state.write_bytes(b"")  # Ray cannot read it: it starts the experiment over
    rerun = _rerun(args)
    assert f"{finished}: epoch" not in rerun, rerun
    trials = _search_record(tmp_path / "best")["search"]
    assert [t["run"] for t in trials] == ["bs16-lr0.003", "bs16-lr1e-06"], trials
    assert all(t["status"] == "ok" for t in trials), trials


@pytest.mark.slow
def test_a_trial_whose_checkpoint_is_gone_is_restarted_from_its_first_epoch(cluster, files, tmp_path):
    args = _finetune_args(files, tmp_path / "best", "--ray", cluster.address)
    # Two epochs (seconds) after a trial's first checkpoint: Ray's state, saved each second, records one.
    _kill_after(args, lambda line: ": epoch 3," in line)
    experiment = next((tmp_path / "best.search" / "ray").iterdir())
    checkpoints = list(experiment.glob("*/checkpoint_*"))
    assert checkpoints, sorted(path.name for path in experiment.iterdir())
    for checkpoint in checkpoints:
        shutil.rmtree(checkpoint)
    rerun = _rerun(args)
    assert "could not be resumed; restarting from the first epoch" in rerun, rerun
    # Each failure is one line with its reason, not Ray's traceback.
    assert "its process or node failed (ValueError: Could not recover from checkpoint" in rerun, rerun
    assert "Traceback" not in rerun, rerun
    trials = _search_record(tmp_path / "best")["search"]
    assert [t["run"] for t in trials] == ["bs16-lr0.003", "bs16-lr1e-06"], trials
    assert all(t["status"] == "ok" for t in trials), trials


@pytest.mark.slow
def test_the_grid_on_ray_and_here_give_the_same_table(cluster, files, tmp_path):
    source, train, dev = files
    (tmp_path / "data" / "SST-2").mkdir(parents=True)
    shutil.copy(train, tmp_path / "data" / "SST-2" / "train.tsv")
    shutil.copy(dev, tmp_path / "data" / "SST-2" / "dev.tsv")
    shutil.copytree(source, tmp_path / "ckpts" / "uncased_L-2_H-128_A-2")  # the tiny model stands in for Tiny
    common = ["grid", "--variants", "tiny", "--tasks", "SST-2", "--data", str(tmp_path / "data"),
              "--checkpoints", str(tmp_path / "ckpts"), "--batch-sizes", "16", "--learning-rates", "3e-3,1e-6",
              "--epochs", "3", "--max-seq-len", "32", "--runs", "3"]
    grids = {}
    for name, extra in (("ray", ["--ray", cluster.address, "--storage", str(tmp_path / "store")]), ("here", [])):
        done = subprocess.run([sys.executable, "-m", "edgebert", *common, "--out", str(tmp_path / name), *extra],
                              capture_output=True, text=True, env=_env(), cwd=REPO, timeout=DRIVER_TIMEOUT)
        assert done.returncode == 0, done.stderr[-4000:]
        assert "| L=2 | 100.0 / " in done.stdout, done.stdout
        grids[name] = json.loads((tmp_path / name / "grid.json").read_text())
    assert any((tmp_path / "store").iterdir())  # Tune's experiment went to --storage
    ray_cell, here_cell = grids["ray"]["cells"][0], grids["here"]["cells"][0]
    assert set(ray_cell) == set(here_cell)  # one result format either way
    assert ray_cell["best"]["run"] == here_cell["best"]["run"] == "bs16-lr0.003"
    assert [t["run"] for t in ray_cell["trials"]] == [t["run"] for t in here_cell["trials"]]
    assert ray_cell["tflite"]["dev_metrics"]["accuracy"] >= 0.9
    results = json.loads((tmp_path / "ray" / "results.json").read_text())["results"]
    assert results[0]["sweep"]["accuracy"]["task"] == "SST-2" and results[0]["latency_ms"]["p50"] > 0


@pytest.mark.slow
def test_a_sweep_on_ray_with_its_worker_killed_mid_cell_gives_every_cell_once_as_here(cluster, sweep_checkpoints,
                                                                                       tmp_path):
    out = tmp_path / "ray"
    driver = _driver(_sweep_args(sweep_checkpoints, out, "--ray", cluster.address))
    killed = False
    try:
        deadline = time.monotonic() + DRIVER_TIMEOUT
        while driver.poll() is None and not killed and time.monotonic() < deadline:
            if _running_task(cluster.worker, ("_convert_on_node", "_bench_on_node")):
                _kill_tree(cluster.worker)  # the worker node, mid-cell: Ray retries its task on the head
                killed = True
            time.sleep(0.05)
        stdout, stderr = driver.communicate(timeout=DRIVER_TIMEOUT)
    finally:
        if driver.poll() is None:
            _kill_tree(driver)
    assert driver.returncode == 0, stderr[-4000:]
    assert killed, "no cell ran on the worker node; nothing was killed:\n" + stderr[-4000:]
    assert "2 cells, 0 failed" in stdout, stdout
    assert stderr.count(": converting (Ray task)") == 2, stderr
    for mode in ("float32", "dynamic-int8"):  # progress: one line per finished cell, naming its node
        done = [line for line in stderr.splitlines() if f"] bert-tiny.{mode}.s32 t1: p50 " in line]
        assert len(done) == 1 and " on node " in done[0], stderr
    names = ["uncased_L-2_H-128_A-2.float32.s32.t1.json", "uncased_L-2_H-128_A-2.dynamic-int8.s32.t1.json"]
    results = json.loads((out / "results.json").read_text())["results"]
    assert [(r["sweep"]["quantize"], r["sweep"]["status"]) for r in results] == [("float32", "ok"),
                                                                                ("dynamic-int8", "ok")]  # once each
    assert sorted(p.name for p in (out / "cells").iterdir()) == sorted(names)
    assert all(r["sweep"]["ray_node"]["node_id"] and r["device"]["cpu_model"] for r in results)  # who measured it
    assert sorted(p.name for p in (out / "bundles").iterdir()) == ["bert-tiny.dynamic-int8.s32", "bert-tiny.float32.s32"]

    # The same cells as a sweep here, in the same format; and the Ray sweep's directory resumes here: nothing redone.
    here = invoke(*_sweep_args(sweep_checkpoints, tmp_path / "here"))
    assert here.exit_code == 0, here.stderr
    theirs = json.loads((tmp_path / "here" / "results.json").read_text())["results"]
    assert [r["bundle"]["name"] for r in results] == [r["bundle"]["name"] for r in theirs]
    assert [set(r) for r in results] == [set(r) for r in theirs]
    assert [set(r["sweep"]) for r in results] == [set(r["sweep"]) for r in theirs]
    assert [r["bundle"]["path"] for r in results] == [str((out / "bundles" / r["bundle"]["name"]).resolve())
                                                      for r in results]
    keys = {name: json.loads((tmp_path / d / "cells" / name).read_text())["key"] for d in ("ray", "here") for name in names}
    assert len(set(keys.values())) == 2
    resumed = invoke(*_sweep_args(sweep_checkpoints, out))
    assert resumed.exit_code == 0 and resumed.stderr.count("unchanged, skipped") == 2, resumed.stderr
    assert "converting" not in resumed.stderr
    cluster.worker = cluster.start_worker()  # for the next test
