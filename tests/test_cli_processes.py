"""The real `edgebert` process on bad input and under signals: stderr is one `error: ...` line with no
traceback, the exit code is right, and nothing half-written is left under the output's name.

CliRunner tests (test_cli.py) check the messages in-process; these run `python -m edgebert` as a user
does, so that what Python, TensorFlow or click would print around an error is seen too.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def _edgebert(*args, env_extra=None, timeout=300) -> subprocess.CompletedProcess:
    env = {**os.environ, "EDGEBERT_CACHE": str(Path(os.environ.get("TMPDIR", "/tmp")) / "edgebert-test-cache"),
           **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "edgebert", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


def _one_error_line(done: subprocess.CompletedProcess, exit_code: int) -> str:
    """The only line of stderr that is not the converter's own logging, checked to be an error line."""
    assert done.returncode == exit_code, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    ours = [line for line in done.stderr.splitlines() if line and not _is_progress(line)]
    assert len(ours) == 1, ours
    assert ours[0].startswith("error: "), ours
    return ours[0]


def _is_progress(line: str) -> bool:
    """The converter's progress lines before the error (`reading ...`), not part of the error report."""
    return line.startswith(("reading ", "building ", "exporting ", "validating ", "writing "))


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith((out.name, f".{out.name}")))


def test_a_corrupt_checkpoint_index(tiny_checkpoint, copy_of, tmp_path):
    source = copy_of(tiny_checkpoint)
    index = source / "bert_model.ckpt.index"
    index.write_bytes(b"\x00garbage, not a TensorFlow checkpoint index" * 10)
    out = tmp_path / "bundle"
    line = _one_error_line(_edgebert("convert", source, "--out", out), 1)
    assert str(source) in line and "checkpoint" in line, line
    assert _leftovers(out) == []


def test_a_truncated_safetensors_file(tiny_checkpoint, tmp_path):
    from converters.sources import load_source
    from test_sources import _hf_directory

    directory = _hf_directory(tmp_path, load_source(tiny_checkpoint))
    weights = directory / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    out = tmp_path / "bundle"
    line = _one_error_line(_edgebert("convert", directory, "--out", out), 1)
    assert line.startswith(f"error: {weights}: "), line
    assert _leftovers(out) == []


@pytest.fixture(scope="module")
def zip_bomb(tmp_path_factory) -> Path:
    """~19 MB on disk that would expand to 4.1 GiB: zeros, deflated, in a Google checkpoint's file name."""
    path = tmp_path_factory.mktemp("bomb") / "bert-bomb.zip"
    zeros = b"\0" * (16 << 20)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("bert_model.ckpt.data-00000-of-00001", "w", force_zip64=True) as member:
            for _ in range(int(4.1 * 2**30) // len(zeros)):
                member.write(zeros)
    return path


def test_a_zip_bomb_is_refused_by_the_default_4_gib_limit(zip_bomb, tmp_path):
    from edgebert.archive import MAX_TOTAL_BYTES

    assert MAX_TOTAL_BYTES == 4 * 2**30  # the README's promise
    out = tmp_path / "bundle"
    line = _one_error_line(_edgebert("convert", zip_bomb, "--out", out), 1)
    assert line == (f"error: {zip_bomb}: too large: uncompressed size exceeds the limit of {4 * 2**30} bytes "
                    "at member 'bert_model.ckpt.data-00000-of-00001' "
                    f"({int(4.1 * 2**30) // (16 << 20) * (16 << 20)} bytes declared so far)"), line
    assert _leftovers(out) == []
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("edgebert-zip-*/x/*.data-*"))


def _convert_until(source: Path, out: Path, progress: str) -> subprocess.Popen:
    """Start `edgebert convert` and return it once it has printed the progress line `progress`."""
    process = subprocess.Popen([sys.executable, "-m", "edgebert", "convert", str(source), "--out", str(out),
                                "--seq-len", "32"], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True, start_new_session=True)
    seen = []
    for line in process.stderr:
        seen.append(line.rstrip("\n"))
        if line.startswith(progress):
            return process
    process.wait(timeout=60)
    pytest.fail(f"convert ended (exit {process.returncode}) before printing {progress!r}: {seen[-5:]}")


@pytest.mark.parametrize("step", ["building ", "exporting ", "validating ", "writing "])
def test_sigkill_during_convert_leaves_no_bundle_and_a_rerun_completes(tiny_checkpoint, tmp_path, step):
    out = tmp_path / "bundle"
    process = _convert_until(tiny_checkpoint, out, step)
    try:
        os.killpg(process.pid, signal.SIGKILL)
    finally:
        process.wait(timeout=60)
    assert process.returncode == -signal.SIGKILL
    assert not out.exists() or (out / "manifest.json").is_file()  # all or nothing
    if out.exists():  # killed after the rename: then the bundle is whole, and a rerun needs --force
        return
    done = _edgebert("convert", tiny_checkpoint, "--out", out, "--seq-len", "32")
    assert done.returncode == 0, done.stderr[-3000:]
    assert _leftovers(out) == ["bundle"]  # the killed run's staging directory was cleared


def test_ctrl_c_during_convert_is_one_line_exit_130_and_leaves_nothing(tiny_checkpoint, tmp_path):
    out = tmp_path / "bundle"
    process = _convert_until(tiny_checkpoint, out, "exporting ")
    os.killpg(process.pid, signal.SIGINT)
    _, stderr = process.communicate(timeout=120)
    rest = [line for line in stderr.splitlines() if line and not _is_progress(line)]
    assert process.returncode == 130, stderr[-3000:]
    assert rest == ["error: interrupted"], rest
    assert _leftovers(out) == []


def test_a_writer_clears_the_staging_a_killed_writer_left_but_not_a_running_ones(tmp_path):
    from edgebert.bundle import write_directory_atomically

    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True, check=True)
    dead_pid = int(finished.stdout)
    killed = tmp_path / f".bundle.tmp-{dead_pid}-abc123"
    retired = tmp_path / f".bundle.old-{dead_pid}-def456"
    running = tmp_path / f".bundle.tmp-{os.getpid()}-ghi789"  # this process: alive
    other = tmp_path / f".bundles.tmp-{dead_pid}-jkl012"  # another output's staging
    for directory in (killed, retired, running, other):
        directory.mkdir()
        (directory / "model.tflite").write_bytes(b"partial")
    write_directory_atomically(tmp_path / "bundle", {"a.txt": b"a"})
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["bundle", running.name, other.name])
