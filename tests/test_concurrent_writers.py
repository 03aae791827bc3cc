"""Two writers of one output: two `edgebert convert` runs to the same --out (with and without --force) and
two sweeps of the same directory. One wins; the other fails at once with one line naming the output and
saying another edgebert is writing it (the lock `.NAME.lock` beside the output, held for the whole run).
What is left is always one complete, valid bundle or results file."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CONVERT = ("--seq-len", "32")


def _start(*args, env=None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "edgebert", *map(str, args)], cwd=REPO, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)


def _wait_for(process: subprocess.Popen, prefix: str) -> list[str]:
    """Read the process's stderr until a line starts with `prefix` (it is then still running)."""
    seen = []
    for line in process.stderr:
        seen.append(line.rstrip("\n"))
        if line.startswith(prefix):
            assert process.poll() is None
            return seen
    process.wait(timeout=60)
    pytest.fail(f"ended (exit {process.returncode}) before printing {prefix!r}: {seen[-5:]}")


def _finish(process: subprocess.Popen, timeout: float = 300) -> tuple[int, str]:
    try:
        _, stderr = process.communicate(timeout=timeout)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=60)
    return process.returncode, stderr


def _lock_error(out: Path, stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines  # refused before any work: no progress line either
    # The pid is there unless the winner had not yet written it when the loser looked (a race of
    # microseconds that the loser waits out for 0.2 s); the output and the lock are always named.
    assert re.match(rf"error: {re.escape(str(out))}: another edgebert is writing it \((pid \d+, )?lock ",
                    lines[0]), lines
    assert f"lock {out.parent / ('.' + out.name + '.lock')}" in lines[0], lines
    return lines[0]


def assert_valid_bundle(out: Path) -> dict:
    """A whole bundle: every file the manifest lists, with its size and sha256, and nothing else."""
    from edgebert.bundle import BUNDLE_FILES, file_sha256, read_bundle

    bundle = read_bundle(out)
    assert sorted(p.name for p in out.iterdir()) == sorted(BUNDLE_FILES)
    for name, record in bundle.manifest["files"].items():
        assert file_sha256(out / name) == record["sha256"], name
    return bundle.manifest


def _beside(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith((out.name, f".{out.name}")))


def test_two_converts_started_together_one_wins_the_other_fails_at_once(tiny_checkpoint, tmp_path):
    out = tmp_path / "bundle"
    first, second = (_start("convert", tiny_checkpoint, "--out", out, *CONVERT) for _ in range(2))
    (code_a, err_a), (code_b, err_b) = _finish(first), _finish(second)
    assert sorted([code_a, code_b]) == [0, 1], (err_a[-2000:], err_b[-2000:])
    _lock_error(out, err_b if code_b else err_a)
    assert_valid_bundle(out)
    assert _beside(out) == ["bundle"]  # the winner removed its lock file


def test_a_forced_convert_is_refused_while_another_forced_one_writes(tiny_checkpoint, tmp_path):
    out = tmp_path / "bundle"
    first = _start("convert", tiny_checkpoint, "--out", out, *CONVERT)
    assert _finish(first)[0] == 0
    before = assert_valid_bundle(out)["created"]

    writer = _start("convert", tiny_checkpoint, "--out", out, *CONVERT, "--force")
    _wait_for(writer, "building ")
    assert (tmp_path / ".bundle.lock").read_text().strip() == str(writer.pid)
    code, stderr = _finish(_start("convert", tiny_checkpoint, "--out", out, *CONVERT, "--force"), timeout=120)
    assert code == 1
    assert f"(pid {writer.pid}, " in _lock_error(out, stderr)
    assert writer.poll() is None  # the refused run did not disturb the writer, which goes on
    code, stderr = _finish(writer)
    assert code == 0, stderr[-3000:]
    manifest = assert_valid_bundle(out)
    assert manifest["created"] >= before
    assert _beside(out) == ["bundle"]


def test_a_killed_writers_lock_does_not_block_the_next_run(tiny_checkpoint, tmp_path):
    out = tmp_path / "bundle"
    writer = _start("convert", tiny_checkpoint, "--out", out, *CONVERT)
    _wait_for(writer, "building ")
    os.killpg(writer.pid, signal.SIGKILL)
    writer.wait(timeout=60)
    assert (tmp_path / ".bundle.lock").is_file()  # left behind, but no longer locked
    code, stderr = _finish(_start("convert", tiny_checkpoint, "--out", out, *CONVERT))
    assert code == 0, stderr[-3000:]
    assert_valid_bundle(out)
    assert _beside(out) == ["bundle"]


# --- the lock itself, in process ------------------------------------------------------------------------

def test_output_lock_excludes_a_second_holder_and_goes_away(tmp_path):
    from edgebert.bundle import output_lock
    from edgebert.errors import OutputError

    out = tmp_path / "deep" / "er" / "bundle"
    with output_lock(out) as lock:
        assert lock == tmp_path / "deep" / "er" / ".bundle.lock" and lock.read_text() == f"{os.getpid()}\n"
        with pytest.raises(OutputError) as refused:
            with output_lock(out):
                pass
        assert str(refused.value) == (f"{out}: another edgebert is writing it (pid {os.getpid()}, lock {lock}); "
                                      "wait for it to finish")
        with output_lock(tmp_path / "deep" / "er" / "other"):  # another output: its own lock
            pass
    assert not (tmp_path / "deep").exists()  # the lock file, and the parents it made, are gone
    with output_lock(out):  # free again
        pass


def test_output_lock_survives_its_holder_being_killed(tmp_path):
    from edgebert.bundle import output_lock

    out = tmp_path / "bundle"
    code = ("import sys, time; from edgebert.bundle import output_lock\n"
            f"with output_lock({str(out)!r}):\n    print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        from edgebert.errors import OutputError
        with pytest.raises(OutputError, match="another edgebert is writing it"):
            with output_lock(out):
                pass
    finally:
        holder.kill()
        holder.wait(timeout=60)
    with output_lock(out):
        pass
    assert list(tmp_path.iterdir()) == []


# --- two sweeps ----------------------------------------------------------------------------------------

SWEEP = ("--variants", "tiny", "--quantize", "dynamic-int8", "--runs", "2", "--warmup", "0")


@pytest.mark.slow
def test_two_sweeps_of_one_directory_one_runs_the_other_is_refused(tmp_path):
    from edgebert.results import read_results

    out = tmp_path / "sweep"
    env = {**os.environ, "EDGEBERT_CACHE": str(tmp_path / "cache")}
    first = _start("sweep", "--out", out, *SWEEP, env=env)
    _wait_for(first, "bert-tiny: writing a random checkpoint")
    code, stderr = _finish(_start("sweep", "--out", out, *SWEEP, env=env), timeout=120)
    assert code == 1
    _lock_error(out, stderr)
    code, stderr = _finish(first)
    assert code == 0, stderr[-3000:]
    results = read_results(out / "results.json")["results"]
    assert [(r["sweep"]["quantize"], r["sweep"]["status"]) for r in results] == [("dynamic-int8", "ok")]
    assert json.loads((out / "cells" / "uncased_L-2_H-128_A-2.dynamic-int8.s128.t1.json").read_text())["result"] \
        == results[0]
    assert _beside(out) == ["sweep"]
    assert not [p for p in out.rglob(".*")]  # no staging or temporary file inside


# --- finetune, trim-vocab and prune: one writer per checkpoint directory --------------------------------

CHECKPOINT_FILES = ["bert_config.json", "bert_model.ckpt.data-00000-of-00001", "bert_model.ckpt.index",
                    "edgebert_source.json", "vocab.txt"]


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict[str, Path]:
    """A three-label task (header `text label`: SST-2's `sentence label` has two) and a text corpus."""
    from edgebert import samples

    root = tmp_path_factory.mktemp("task")
    sentences = samples.load_sentences()[:48]
    (root / "train.tsv").write_text("text\tlabel\n" + "".join(f"{s}\t{i % 3}\n" for i, s in enumerate(sentences)))
    (root / "corpus.txt").write_text("\n".join(sentences) + "\n")
    return {"train": root / "train.tsv", "corpus": root / "corpus.txt"}


def _checkpoint_command(command: str, out: Path, task: dict, encoder: Path, classifier: Path) -> tuple[list, str]:
    """The command line, and the progress line after which it is surely holding its lock."""
    if command == "finetune":
        return (["finetune", encoder, "--task", task["train"], "--out", out, "--epochs", "1", "--batch-size", "16",
                 "--max-seq-len", "16", "--new-head"], f"reading {encoder}")
    if command == "trim-vocab":
        return ["trim-vocab", encoder, "--corpus", task["corpus"], "--out", out], "read 48 texts"
    return (["prune", classifier, "--task", task["train"], "--heads", "0.5", "--examples", "16", "--seq-len", "16",
             "--out", out], f"reading {classifier}")


@pytest.mark.parametrize("command", ["finetune", "trim-vocab", "prune"])
def test_a_second_checkpoint_writer_of_one_output_fails_at_once(command, task, tiny_checkpoint,
                                                                  tiny_classifier_checkpoint, tmp_path):
    """The first writer is stopped (SIGSTOP) once its progress shows it is under way, so it surely holds the
    lock while the second starts; then it is let go and finishes. No sleeps, no race."""
    out = tmp_path / "ckpt"
    args, under_way = _checkpoint_command(command, out, task, tiny_checkpoint, tiny_classifier_checkpoint)
    writer = _start(*args)
    try:
        _wait_for(writer, under_way)
        os.kill(writer.pid, signal.SIGSTOP)
        assert (tmp_path / ".ckpt.lock").read_text().strip() == str(writer.pid)
        code, stderr = _finish(_start(*args), timeout=120)
        assert code == 1, stderr[-3000:]
        assert f"(pid {writer.pid}, " in _lock_error(out, stderr)
        assert not out.exists()  # the refused run wrote nothing
    finally:
        if writer.poll() is None:
            os.kill(writer.pid, signal.SIGCONT)
    code, stderr = _finish(writer)
    assert code == 0, stderr[-3000:]
    assert sorted(p.name for p in out.iterdir()) == CHECKPOINT_FILES
    assert _beside(out) == ["ckpt"]  # the lock (and finetune's ckpt.work) gone
