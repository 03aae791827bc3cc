"""The bundle: the directory a user ships (model.tflite, tokenizer.json, manifest.json, golden.json).

Writing is atomic: everything goes into a hidden sibling directory that is renamed into place only when
complete, so an interrupted or failed conversion never leaves a half-written bundle behind.

Writers of one output exclude each other with `output_lock`: an exclusive flock(2) on the hidden file
`.NAME.lock` beside the output, held for the whole run. A second writer fails at once with one line
naming the output ("another edgebert is writing it"). The kernel drops the lock when its holder dies, even
by SIGKILL, so a killed run never blocks the next one; a run that ends removes the file.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

from edgebert.errors import BundleError, OutputError

MANIFEST_SCHEMA_VERSION = 1
MODEL_FILE, TOKENIZER_FILE, MANIFEST_FILE, GOLDEN_FILE = "model.tflite", "tokenizer.json", "manifest.json", "golden.json"
BUNDLE_FILES = (MODEL_FILE, TOKENIZER_FILE, MANIFEST_FILE, GOLDEN_FILE)


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_sha256(path: Path) -> str:
    """A file's sha256, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_output_dir(out_dir: Path, force: bool) -> None:
    """Refuse early (before minutes of conversion) an output that exists or cannot be written."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not force:
        raise OutputError("already exists (pass --force to replace it)", out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError("exists and is not a directory", out_dir)
    parent = out_dir.parent
    existing = parent
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write here ({existing} is not a writable directory)", out_dir)


@contextlib.contextmanager
def staged_directory(out_dir: Path) -> Iterator[Path]:
    """A hidden sibling of out_dir for the caller to fill; when the block ends it is renamed into place.
    An existing out_dir (the caller allowed --force) is moved aside first and stays if the swap fails.
    On any error the staging is removed, and an OSError (a full disk, a read-only place) becomes one
    OutputError naming out_dir. The staging's name carries our pid, so the next writer can clear it if
    we are killed (remove_stale_staging)."""
    out_dir = Path(out_dir)
    try:
        out_dir.parent.mkdir(parents=True, exist_ok=True)
        remove_stale_staging(out_dir)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{os.getpid()}-", dir=out_dir.parent))
    except OSError as error:
        raise OutputError(f"cannot write here: {error.strerror or error}", out_dir) from None
    try:
        yield staging
        if out_dir.exists():  # --force: move the old one aside, then swap, then delete it
            retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-{os.getpid()}-", dir=out_dir.parent))
            os.replace(out_dir, retired / "old")
            try:
                os.replace(staging, out_dir)
            except BaseException:
                os.replace(retired / "old", out_dir)  # the old output stays
                raise
            finally:
                shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
    except BaseException as error:
        shutil.rmtree(staging, ignore_errors=True)
        if isinstance(error, OSError):
            raise OutputError(f"cannot write: {error.strerror or error} (nothing was written)", out_dir) from None
        raise


def write_files(directory: Path, files: dict[str, bytes]) -> None:
    """Write name -> bytes under directory (subfolders made as needed), each flushed to disk."""
    for name, data in files.items():
        (directory / name).parent.mkdir(parents=True, exist_ok=True)
        with open(directory / name, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())


def write_directory_atomically(out_dir: Path, files: dict[str, bytes], force: bool = False) -> Path:
    """Write `files` (name -> bytes) as the directory out_dir, all or nothing."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir, force)
    with staged_directory(out_dir) as staging:
        write_files(staging, files)
    return out_dir


def remove_stale_staging(out_dir: Path) -> None:
    """Remove the hidden staging (and retired) directories that a killed writer of `out_dir` left beside
    it. Their names carry the writer's pid; a directory whose writer still runs is left alone."""
    for leftover in Path(out_dir).parent.glob(f".{Path(out_dir).name}.*-*-*"):
        kind, _, rest = leftover.name[len(Path(out_dir).name) + 2:].partition("-")
        pid = rest.split("-")[0]
        if kind in ("tmp", "old") and pid.isdigit() and not process_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def lock_path(out: Path) -> Path:
    """The lock file of an output: hidden, beside it."""
    return Path(out).parent / f".{Path(out).name}.lock"


@contextlib.contextmanager
def output_lock(out: str | os.PathLike) -> Iterator[Path]:
    """Hold the exclusive lock on the output `out` (a bundle, checkpoint or sweep directory, or a file)
    for the duration of the block; raise a one-line OutputError if another process holds it or it cannot
    be created. Missing parent directories are created, and removed again at the end if still empty."""
    out = Path(out)
    created = _make_parents(out.parent, out)
    try:
        handle = _acquire(lock_path(out), out)
    except BaseException:
        _remove_if_empty(created)
        raise
    try:
        yield lock_path(out)
    finally:
        with contextlib.suppress(OSError):  # unlinked while held: a waiter that opened it re-checks the inode
            os.unlink(lock_path(out))
        os.close(handle)
        _remove_if_empty(created)


def _make_parents(parent: Path, out: Path) -> list[Path]:
    missing = []
    while not parent.exists() and parent != parent.parent:
        missing.append(parent)
        parent = parent.parent
    for directory in reversed(missing):
        try:
            directory.mkdir()
        except FileExistsError:
            pass
        except OSError as error:
            _remove_if_empty([d for d in missing if d.is_dir()])
            raise OutputError(f"cannot write here (cannot create {directory}: {error.strerror})", out) from None
    return missing


def _remove_if_empty(directories: list[Path]) -> None:
    for directory in directories:  # deepest first
        with contextlib.suppress(OSError):
            directory.rmdir()


def _acquire(path: Path, out: Path) -> int:
    try:
        import fcntl
    except ImportError:  # Windows: no flock; writers are not excluded there
        return os.open(os.devnull, os.O_RDONLY)
    while True:
        try:
            handle = os.open(path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        except OSError as error:
            raise OutputError(f"cannot write here (cannot create the lock file {path}: {error.strerror})",
                              out) from None
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _lock_holder(handle)
            os.close(handle)
            raise OutputError(f"another edgebert is writing it ({f'pid {holder}, ' if holder else ''}"
                              f"lock {path}); wait for it to finish", out) from None
        except OSError as error:
            os.close(handle)
            raise OutputError(f"cannot lock {path}: {error.strerror}", out) from None
        try:  # the previous holder may have removed the file between our open and our lock
            if os.fstat(handle).st_ino == os.stat(path).st_ino:
                break
        except FileNotFoundError:
            pass
        os.close(handle)
    with contextlib.suppress(OSError):  # who holds it, for the message another writer prints
        os.ftruncate(handle, 0)
        os.write(handle, f"{os.getpid()}\n".encode())
    return handle


def _lock_holder(handle: int) -> int | None:
    # The holder writes its pid just after it takes the lock; a writer that lost the race by
    # microseconds may look before that, so look a few times before saying nothing about who.
    for _ in range(20):
        with contextlib.suppress(OSError, ValueError):
            return int(os.pread(handle, 32, 0).decode("ascii").strip() or "x")
        time.sleep(0.01)
    return None


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def to_json_bytes(data: dict) -> bytes:
    return (json.dumps(data, indent=2, sort_keys=False) + "\n").encode("utf-8")


@dataclass(frozen=True)
class Bundle:
    path: Path
    manifest: dict
    golden: dict

    @property
    def model_path(self) -> Path:
        return self.path / MODEL_FILE

    @property
    def tokenizer_path(self) -> Path:
        return self.path / TOKENIZER_FILE

    @property
    def seq_len(self) -> int | None:
        value = self.manifest["recipe"]["seq_len"]
        return None if value == "dynamic" else int(value)

    @property
    def seq_lens(self) -> tuple[int, ...]:
        """Every length the model has a signature for, shortest first (length buckets); () when dynamic."""
        if self.seq_len is None:
            return ()
        return tuple(self.manifest["recipe"].get("seq_lens") or (self.seq_len,))

    @property
    def output_names(self) -> list[str]:
        return [output["name"] for output in self.manifest["io"]["outputs"]]

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.get("labels") or [])


# A bundle comes from elsewhere: its JSON files are read only up to these sizes (a BERT-Base golden.json
# at seq 512 is ~20 MB; the tokenizer has its own limit in edgebert.tokenizer).
MAX_JSON_BYTES = {MANIFEST_FILE: 16 << 20, GOLDEN_FILE: 256 << 20}


def _read_json(path: Path) -> dict:
    limit = MAX_JSON_BYTES.get(path.name, 256 << 20)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(limit + 1)
        if len(raw) > limit:
            raise BundleError(f"is larger than {limit >> 20} MiB, the limit for this file", path)
        data = json.loads(raw.decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"unreadable JSON ({error})", path) from None
    except RecursionError:  # hostile nesting: [[[[...]]]]
        raise BundleError("unreadable JSON (nested too deeply)", path) from None
    if not isinstance(data, dict):
        raise BundleError("is not a JSON object", path)
    return data


def _is_plain_name(name) -> bool:
    return (isinstance(name, str) and name not in ("", ".", "..") and "/" not in name and "\\" not in name
            and "\0" not in name)


def check_manifest(manifest: dict, path: Path) -> None:
    """The manifest's fields that the device side relies on have the types it expects (a bundle is
    untrusted input): one BundleError naming the first field that does not."""
    def fail(field: str, problem: str):
        raise BundleError(f"manifest {field} {problem}", path)

    if manifest.get("schema_version") != MANIFEST_SCHEMA_VERSION:
        raise BundleError(f"manifest schema_version is {manifest.get('schema_version')!r}; this edgebert reads "
                          f"{MANIFEST_SCHEMA_VERSION}", path)
    for field, kind in (("recipe", dict), ("io", dict), ("files", dict)):
        if not isinstance(manifest.get(field), kind):
            fail(field, f"is {type(manifest.get(field)).__name__}, not an object")
    seq_len = manifest["recipe"].get("seq_len")
    if not (seq_len == "dynamic" or (type(seq_len) is int and 0 < seq_len <= 1 << 16)):
        fail("recipe.seq_len", f"is {seq_len!r} (expected a length or 'dynamic')")
    seq_lens = manifest["recipe"].get("seq_lens")
    if seq_lens is not None and not (
            isinstance(seq_lens, list) and seq_lens and all(type(v) is int and 0 < v for v in seq_lens)
            and seq_lens == sorted(set(seq_lens)) and seq_lens[-1] == seq_len):
        fail("recipe.seq_lens", f"is {seq_lens!r} (expected increasing lengths ending at seq_len {seq_len!r})")
    outputs = manifest["io"].get("outputs")
    if not (isinstance(outputs, list) and outputs and all(isinstance(o, dict) and isinstance(o.get("name"), str)
                                                            for o in outputs)):
        fail("io.outputs", "is not a list of {name, ...} objects")
    labels = manifest.get("labels")
    if labels is not None and not (isinstance(labels, list) and all(isinstance(label, str) for label in labels)):
        fail("labels", "is not a list of strings")
    if not isinstance(manifest.get("head"), (str, type(None))):
        fail("head", f"is {type(manifest['head']).__name__}, not a string")
    if "model" in manifest and not isinstance(manifest["model"], dict):
        fail("model", f"is {type(manifest['model']).__name__}, not an object")
    for name in (MODEL_FILE, TOKENIZER_FILE, GOLDEN_FILE):
        if name not in manifest["files"]:
            fail("files", f"does not list {name}")
    for name, record in manifest["files"].items():
        if not _is_plain_name(name):
            fail("files", f"names {name!r}, which is not a file name inside the bundle")
        if not (isinstance(record, dict) and type(record.get("bytes")) is int and record["bytes"] >= 0
                and isinstance(record.get("sha256"), str) and len(record["sha256"]) == 64):
            fail(f"files[{name!r}]", "is not {bytes: N, sha256: 64 hex digits}")


def read_bundle(path: str | Path) -> Bundle:
    """Open a bundle directory, checking that its files are all there and match the manifest: each is a
    regular file (not a link out of the bundle) with the size and sha256 the manifest records, and the
    manifest's fields have the types the device side expects. A bundle directory that is itself a
    symbolic link is followed (its files must still be its own)."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError("not a bundle directory (no such directory)", path)
    missing = [name for name in BUNDLE_FILES if not (path / name).is_file()]
    if missing:
        raise BundleError(f"not a complete bundle (missing {', '.join(missing)})", path)
    for name in BUNDLE_FILES:
        if (path / name).is_symlink():
            raise BundleError(f"is a symbolic link (to {os.readlink(path / name)}); a bundle's files must be its "
                              "own regular files", path / name)
    manifest = _read_json(path / MANIFEST_FILE)
    check_manifest(manifest, path / MANIFEST_FILE)
    for name, record in manifest["files"].items():
        file = path / name
        if file.is_symlink() or not file.is_file():
            raise BundleError("is listed in the manifest but is not a regular file in the bundle", file)
        actual = file.stat().st_size
        if actual != record["bytes"]:
            raise BundleError(f"is {actual} bytes but the manifest says {record['bytes']} "
                              "(truncated or replaced?)", file)
    for name, record in manifest["files"].items():  # sizes first (cheap), then the contents
        digest = file_sha256(path / name)
        if digest != record["sha256"].lower():
            raise BundleError(f"sha256 {digest[:12]}... differs from the manifest's {record['sha256'][:12]}... "
                              "(damaged or replaced)", path / name)
    return Bundle(path=path, manifest=manifest, golden=_read_json(path / GOLDEN_FILE))
