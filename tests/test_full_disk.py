"""Full disks and read-only places: `convert` and `sweep` writing into a small tmpfs that fills in the middle
of a write, and into a read-only mount. Each gives one error line naming the path, leaves no partial
output (no half bundle, no staging directory, no lock or temporary file) and touches nothing outside the
output (a file already there, an older bundle being replaced, the source checkpoint).

The tests mount the tmpfs themselves, which needs root (CAP_SYS_ADMIN): elsewhere they skip with the
reason, and in CI (CI=true) they fail. (A chmod-ed directory is no read-only place for root, who writes
anyway: a read-only mount is.)"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from ci import missing

REPO = Path(__file__).resolve().parent.parent
PAGE = 4096


def _edgebert(*args, env_extra=None, timeout=600) -> subprocess.CompletedProcess:
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "edgebert", *map(str, args)], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, env=env)


@pytest.fixture
def mount_tmpfs(tmp_path):
    """mount_tmpfs(bytes, read_only=False) -> a fresh tmpfs of that size; unmounted at the end, always."""
    mounted = []

    def mount(size: int, read_only: bool = False, prepare=None) -> Path:
        point = tmp_path / f"mnt{len(mounted)}"
        point.mkdir()
        if os.geteuid() != 0 or not shutil.which("mount"):
            missing("mounting a tmpfs needs root and mount(8)")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(point)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            missing(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        mounted.append(point)
        if prepare is not None:
            prepare(point)
        if read_only:
            subprocess.run(["mount", "-o", "remount,ro", str(point)], check=True, capture_output=True)
        return point

    try:
        yield mount
    finally:
        for point in reversed(mounted):
            if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(point)], capture_output=True)


def _error_line(done: subprocess.CompletedProcess) -> str:
    """The last stderr line, which must be the only error, after progress lines only, with no traceback."""
    assert done.returncode == 1, (done.returncode, done.stderr[-3000:])
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), lines[-5:]
    assert not [line for line in lines[:-1] if "error" in line.lower()], lines
    return lines[-1]


def _snapshot(root: Path) -> dict[str, str]:
    """Every file under root, by relative path, with its sha256 (directories as 'dir')."""
    found = {}
    for path in sorted(root.rglob("*")):
        found[str(path.relative_to(root))] = ("dir" if path.is_dir() else
                                              hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def _sizes(bundle: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in bundle.iterdir()}


def _pages(n: int) -> int:
    return (n + PAGE - 1) // PAGE * PAGE


def _keep(point: Path) -> None:
    (point / "keep.txt").write_text("someone else's file\n")


# --- convert --------------------------------------------------------------------------------------------

def test_convert_into_a_disk_that_fills_while_writing_the_tokenizer(tiny_checkpoint, tiny_bundle, mount_tmpfs):
    sizes = _sizes(tiny_bundle)
    # room for model.tflite (and the lock file's page), not for all of tokenizer.json: it fills mid-write
    point = mount_tmpfs(_pages(sizes["model.tflite"]) + 2 * PAGE + sizes["tokenizer.json"] // 2, prepare=_keep)
    before, source = _snapshot(point), _snapshot(tiny_checkpoint)
    out = point / "bundle"
    line = _error_line(_edgebert("convert", tiny_checkpoint, "--out", out, "--seq-len", "32"))
    assert line == f"error: {out}: cannot write: No space left on device (nothing was written)", line
    assert _snapshot(point) == before  # no bundle, no staging directory, no lock file; keep.txt as it was
    assert _snapshot(tiny_checkpoint) == source


def test_a_forced_convert_that_does_not_fit_leaves_the_old_bundle_whole(tiny_checkpoint, tiny_bundle, mount_tmpfs):
    sizes = _sizes(tiny_bundle)
    total = sum(_pages(n) for n in sizes.values())

    def old_bundle(point):
        _keep(point)
        shutil.copytree(tiny_bundle, point / "bundle")
    point = mount_tmpfs(total + 2 * PAGE + sizes["model.tflite"] // 2, prepare=old_bundle)
    before = _snapshot(point)
    out = point / "bundle"
    line = _error_line(_edgebert("convert", tiny_checkpoint, "--out", out, "--seq-len", "32", "--force"))
    assert line == f"error: {out}: cannot write: No space left on device (nothing was written)", line
    assert _snapshot(point) == before  # the old bundle is untouched


@pytest.mark.parametrize("nested", [False, True])
def test_convert_into_a_read_only_place(tiny_checkpoint, tiny_bundle, mount_tmpfs, nested):
    def old_bundle(point):
        _keep(point)
        shutil.copytree(tiny_bundle, point / "bundle")
    point = mount_tmpfs(8 << 20, read_only=True, prepare=old_bundle)
    before = _snapshot(point)
    out = point / "new" / "bundle" if nested else point / "bundle"
    line = _error_line(_edgebert("convert", tiny_checkpoint, "--out", out, "--seq-len", "32", "--force"))
    assert line.startswith(f"error: {out}: cannot write here ("), line
    assert "Read-only file system" in line, line
    assert _snapshot(point) == before


# --- sweep ----------------------------------------------------------------------------------------------

SWEEP = ("--variants", "tiny", "--quantize", "dynamic-int8", "--runs", "2", "--warmup", "0")


@pytest.fixture(scope="module")
def tiny_grid_checkpoints(tmp_path_factory) -> Path:
    """A random BERT-Tiny in Google's layout under its Google name, for `sweep --checkpoints` (so that the
    sweep writes only bundles and results into the small disk)."""
    from converters.config import BertConfig
    from converters.google_checkpoint import write_random_checkpoint
    from converters.vocab import synthetic_vocab
    from edgebert.variants import parse_variant

    root = tmp_path_factory.mktemp("grid")
    variant = parse_variant("tiny")
    config = BertConfig.from_variant(variant)
    write_random_checkpoint(config, root / variant.name, synthetic_vocab(config.vocab_size), seed=0)
    return root


@pytest.mark.slow
def test_sweep_into_a_disk_that_fills_while_writing_a_bundle(tiny_grid_checkpoints, mount_tmpfs, tmp_path):
    point = mount_tmpfs(2 << 20, prepare=_keep)  # the BERT-Tiny bundle's model alone is 4.5 MB
    source = _snapshot(tiny_grid_checkpoints)
    out = point / "sweep"
    done = _edgebert("sweep", "--out", out, *SWEEP, "--checkpoints", tiny_grid_checkpoints,
                     env_extra={"EDGEBERT_CACHE": str(tmp_path / "cache")})
    line = _error_line(done)
    bundle = out / "bundles" / "bert-tiny.dynamic-int8.s128"
    assert line == f"error: {bundle}: cannot write: No space left on device (nothing was written)", line
    left = _snapshot(point)
    assert [name for name in left if Path(name).name.startswith(".")] == []  # no staging, temp or lock file
    assert not bundle.exists() and not (out / "results.json").exists()
    assert left["keep.txt"] == hashlib.sha256(b"someone else's file\n").hexdigest()
    assert _snapshot(tiny_grid_checkpoints) == source


@pytest.mark.slow
def test_sweep_into_a_read_only_place(tiny_grid_checkpoints, mount_tmpfs, tmp_path):
    point = mount_tmpfs(1 << 20, read_only=True, prepare=_keep)
    before = _snapshot(point)
    out = point / "sweep"
    done = _edgebert("sweep", "--out", out, *SWEEP, "--checkpoints", tiny_grid_checkpoints,
                     env_extra={"EDGEBERT_CACHE": str(tmp_path / "cache")})
    line = _error_line(done)
    assert line.startswith(f"error: {out}: cannot write here (") and "Read-only file system" in line, line
    assert _snapshot(point) == before


def test_sweep_results_that_cannot_be_written_stop_the_sweep_with_one_line(tmp_path, monkeypatch):
    """The sweep's own JSON files (results.json, cells): a failed write keeps the previous file and is an
    OutputError naming the file, not a traceback or a half-written file."""
    from converters.sweep import _atomic_write
    from edgebert.errors import OutputError

    path = tmp_path / "results.json"
    _atomic_write(path, {"a": 1})
    real_fsync = os.fsync

    def full(fd):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OutputError) as failed:
        _atomic_write(path, {"a": 2})
    monkeypatch.setattr(os, "fsync", real_fsync)
    assert str(failed.value) == f"{path}: cannot write: No space left on device"
    assert path.read_text() == '{\n  "a": 1\n}\n' and sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]
