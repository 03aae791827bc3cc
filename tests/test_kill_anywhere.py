"""SIGKILL at any point of `finetune`, `trim-vocab` and `convert --recipe` (tests/test_cli_processes.py
does `convert`, tests/test_sweep.py `sweep`): the points are picked from each command's progress lines
(reading, training, trimming, exporting, validating, writing), never from sleeps. After each kill no
partial checkpoint or bundle is visible under the output's name; the same command run again finishes,
resumes where the command supports it (finetune after its last finished epoch, a recipe after its last
finished step), and leaves nothing else behind. What the rerun gives, against an uninterrupted run:

- trim-vocab is deterministic: the same checkpoint files, byte for byte, wherever it was killed;
- finetune killed after its last epoch: the same checkpoint, byte for byte, as an uninterrupted run (the
  rerun only writes what the killed run trained);
- a recipe killed after its steps: the same outputs, bit for bit (golden.json), and validation figures as
  an uninterrupted run; the model's bytes differ in tensor names only (Keras numbers layers per process);
- killed during training, the epochs finished before the kill keep their recorded figures, but the
  epochs after it differ a little from an uninterrupted run's: the dropout random stream starts again
  from the seed in the rerun (a known limit, not bit-identical), so only validity is checked there.

Ctrl-C (SIGINT) is one line, `error: interrupted`, exit 130, with the same clean state."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgebert import samples

REPO = Path(__file__).resolve().parent.parent
CHECKPOINT_FILES = {"bert_config.json", "vocab.txt", "bert_model.ckpt.index", "bert_model.ckpt.data-00000-of-00001",
                    "edgebert_source.json"}


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """A tiny two-label task (SST-2's header) and a text corpus, from samples/."""
    root = tmp_path_factory.mktemp("task")
    sentences = samples.load_sentences()
    (root / "train.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n"
                                                                   for i, s in enumerate(sentences[:96])))
    (root / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{s}\t{i % 2}\n"
                                                                 for i, s in enumerate(sentences[96:128])))
    (root / "corpus.txt").write_text("\n".join(sentences[:60]) + "\n")
    (root / "recipe.toml").write_text(
        'description = "fine-tune, trim, export: every kind of step, quickly"\n\n'
        '[[steps]]\nkind = "finetune"\nepochs = 2\nbatch_size = 16\nmax_seq_len = 32\nnew_head = true\n\n'
        '[[steps]]\nkind = "trim-vocab"\nkeep_characters = "all"\n\n'
        '[convert]\nquantize = "dynamic-int8"\nseq_len = 32\n')
    return {name: root / name for name in ("train.tsv", "dev.tsv", "corpus.txt", "recipe.toml")}


def _finetune(source, out, data) -> list[str]:
    return ["finetune", source, "--task", data["train.tsv"], "--dev", data["dev.tsv"], "--out", out, "--epochs", "3",
            "--batch-size", "16", "--max-seq-len", "32", "--new-head"]


def _trim(source, out, data) -> list[str]:
    return ["trim-vocab", source, "--corpus", data["corpus.txt"], "--out", out]


def _recipe(source, out, data) -> list[str]:
    return ["convert", source, "--recipe", data["recipe.toml"], "--task", data["train.tsv"], "--dev", data["dev.tsv"],
            "--out", out]


def _edgebert(args: list, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgebert", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout)


def _until(args: list, progress: str) -> tuple[subprocess.Popen, list[str]]:
    """Start the command; return it, still running, once it has printed a line starting with `progress`."""
    process = subprocess.Popen([sys.executable, "-m", "edgebert", *map(str, args)], cwd=REPO, text=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    seen = []
    for line in process.stderr:
        seen.append(line.rstrip("\n"))
        if line.startswith(progress):
            assert process.poll() is None, seen
            return process, seen
    process.wait(timeout=60)
    pytest.fail(f"ended (exit {process.returncode}) before printing {progress!r}: {seen[-5:]}")


def _kill(process: subprocess.Popen, sig=signal.SIGKILL) -> None:
    try:
        os.killpg(process.pid, sig)
    finally:
        process.wait(timeout=120)


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith((out.name, f".{out.name}")))


def _visible(out: Path) -> list[str]:
    return [name for name in _leftovers(out) if not name.startswith(".")]


def _digests(directory: Path, names) -> dict[str, str]:
    return {name: hashlib.sha256((directory / name).read_bytes()).hexdigest() for name in sorted(names)}


def _assert_whole_checkpoint_or_none(out: Path) -> None:
    if out.exists():  # killed after the rename: whole
        assert {p.name for p in out.iterdir()} >= CHECKPOINT_FILES - {"edgebert_source.json"}


def _history(out: Path) -> dict:
    return json.loads((out / "edgebert_source.json").read_text())["history"][-1]


@pytest.fixture(scope="module")
def finetuned(tiny_classifier_checkpoint, data, tmp_path_factory) -> Path:
    """The uninterrupted run, for comparison."""
    out = tmp_path_factory.mktemp("reference") / "ft"
    done = _edgebert(_finetune(tiny_classifier_checkpoint, out, data))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.parametrize("point", ["tokenizing ", "epoch 2/3", "epoch 3: "])
def test_finetune_killed_at_any_point(tiny_classifier_checkpoint, data, finetuned, tmp_path, point):
    out = tmp_path / "ft"
    process, seen = _until(_finetune(tiny_classifier_checkpoint, out, data), point)
    _kill(process)
    assert process.returncode == -signal.SIGKILL
    _assert_whole_checkpoint_or_none(out)
    assert _visible(out) in ([], ["ft.work"], ["ft"], ["ft", "ft.work"]), _leftovers(out)

    done = _edgebert(_finetune(tiny_classifier_checkpoint, out, data))
    assert done.returncode == 0, done.stderr[-3000:]
    finished = [line for line in seen if line.startswith("epoch ") and ": train loss" in line]
    if finished:
        assert f"resuming after epoch {len(finished)} of 3" in done.stderr, done.stderr[-2000:]
    assert _leftovers(out) == ["ft"]  # the work directory and any staging are gone
    assert {p.name for p in out.iterdir()} == CHECKPOINT_FILES
    ours, reference = _history(out), _history(finetuned)
    assert [e["epoch"] for e in ours["epochs"]] == [1, 2, 3]
    for before, again in zip(ours["epochs"][: len(finished)], reference["epochs"]):  # trained before the kill
        assert (before["train_loss"], before["dev"]) == (again["train_loss"], again["dev"])
    if len(finished) == 3:  # everything trained before the kill: the rerun only writes
        assert _digests(out, CHECKPOINT_FILES - {"edgebert_source.json"}) == \
            _digests(finetuned, CHECKPOINT_FILES - {"edgebert_source.json"})


def test_ctrl_c_during_finetune_is_one_line_exit_130_and_the_rerun_resumes(tiny_classifier_checkpoint, data,
                                                                           tmp_path):
    out = tmp_path / "ft"
    process, _ = _until(_finetune(tiny_classifier_checkpoint, out, data), "epoch 2/3")
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 130, stderr[-3000:]
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1] == "error: interrupted" and "Traceback" not in stderr, lines[-5:]
    assert not out.exists() and not [n for n in _leftovers(out) if n.startswith(".")]
    done = _edgebert(_finetune(tiny_classifier_checkpoint, out, data))
    assert done.returncode == 0 and "resuming after epoch 1 of 3" in done.stderr, done.stderr[-2000:]


@pytest.fixture(scope="module")
def trimmed(tiny_classifier_checkpoint, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "tv"
    done = _edgebert(_trim(tiny_classifier_checkpoint, out, data))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


def _until_staging(process: subprocess.Popen, out: Path, timeout: float = 60) -> Path:
    """Wait (polling the directory, not sleeping blind) until the writer's hidden staging directory for
    `out` appears: the process is then inside its atomic write."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and process.poll() is None:
        staged = list(out.parent.glob(f".{out.name}.tmp-*"))
        if staged:
            return staged[0]
        time.sleep(0.001)
    pytest.fail(f"no staging directory for {out} appeared (exit {process.poll()})")


@pytest.mark.parametrize("point", ["reading ", "trimming ", "writing ", "inside the write"])
def test_trim_vocab_killed_at_any_point(tiny_classifier_checkpoint, data, trimmed, tmp_path, point):
    out = tmp_path / "tv"
    process, _ = _until(_trim(tiny_classifier_checkpoint, out, data), point.replace("inside the write", "writing "))
    if point == "inside the write":
        assert str(os.getpid()) not in _until_staging(process, out).name  # the writer's own pid names it
    _kill(process)
    _assert_whole_checkpoint_or_none(out)
    if out.exists():  # killed after the rename: whole, and a rerun needs --force (as for convert)
        return
    done = _edgebert(_trim(tiny_classifier_checkpoint, out, data))
    assert done.returncode == 0, done.stderr[-3000:]
    assert _leftovers(out) == ["tv"]  # the killed run's staging directory is gone too
    names = {p.name for p in out.iterdir()} - {"edgebert_source.json"}
    assert _digests(out, names) == _digests(trimmed, names)  # deterministic: the same files


@pytest.fixture(scope="module")
def recipe_bundle(tiny_classifier_checkpoint, data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("reference") / "rb"
    done = _edgebert(_recipe(tiny_classifier_checkpoint, out, data))
    assert done.returncode == 0, done.stderr[-3000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("point", ["epoch 2/2", "step 2/2 trim-vocab", "exporting ", "validating ", "writing "])
def test_convert_recipe_killed_at_any_point(tiny_classifier_checkpoint, data, recipe_bundle, tmp_path, point):
    from edgebert.bundle import read_bundle

    out = tmp_path / "rb"
    process, seen = _until(_recipe(tiny_classifier_checkpoint, out, data), point)
    _kill(process)
    assert not out.exists() or read_bundle(out)  # all or nothing
    if out.exists():
        return
    work = tmp_path / "rb.recipe-work"
    for step in (work.iterdir() if work.is_dir() else ()):  # every visible step checkpoint is whole
        if step.is_dir() and not step.name.startswith(".") and not step.name.endswith(".work"):
            assert {p.name for p in step.iterdir()} >= CHECKPOINT_FILES - {"edgebert_source.json"}, step

    done = _edgebert(_recipe(tiny_classifier_checkpoint, out, data))
    assert done.returncode == 0, done.stderr[-3000:]
    assert _leftovers(out) == ["rb"]  # the work directory, staging and the lock are gone
    manifest, reference = read_bundle(out).manifest, read_bundle(recipe_bundle).manifest
    trained_before_kill = any(line.startswith("step 2/2") for line in seen)
    if trained_before_kill:  # the rerun reuses the killed run's step checkpoints: the same model
        assert "epoch 1/2" not in done.stderr, done.stderr[-2000:]
        # The same outputs, bit for bit (golden.json records them), and the same validation figures. The
        # model's bytes differ in tensor names only: Keras numbers its layers per process, and the
        # uninterrupted run built the fine-tuning model first (a fresh process exports the same bytes).
        assert manifest["files"]["golden.json"] == reference["files"]["golden.json"]
        assert manifest["validation"]["outputs"] == reference["validation"]["outputs"]
        assert manifest["files"]["model.tflite"]["bytes"] == reference["files"]["model.tflite"]["bytes"]
    else:
        assert "resuming after epoch 1 of 2" in done.stderr, done.stderr[-2000:]
