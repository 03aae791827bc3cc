"""The bundle: the directory a user ships (model.tflite, tokenizer.json, manifest.json, golden.json).

Writing is atomic: everything goes into a hidden sibling directory that is renamed into place only when
complete, so an interrupted or failed conversion never leaves a half-written bundle behind.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

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


def write_directory_atomically(out_dir: Path, files: dict[str, bytes], force: bool = False) -> Path:
    """Write `files` (name -> bytes) as the directory out_dir, all or nothing."""
    out_dir = Path(out_dir)
    check_output_dir(out_dir, force)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(out_dir)
    staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-{os.getpid()}-", dir=out_dir.parent))
    try:
        for name, data in files.items():
            with open(staging / name, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        if out_dir.exists():  # --force: move the old one aside, then swap, then delete it
            retired = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-{os.getpid()}-", dir=out_dir.parent))
            os.replace(out_dir, retired / "old")
            os.replace(staging, out_dir)
            shutil.rmtree(retired, ignore_errors=True)
        else:
            os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def remove_stale_staging(out_dir: Path) -> None:
    """Remove the hidden staging (and retired) directories that a killed writer of `out_dir` left beside
    it. Their names carry the writer's pid; a directory whose writer still runs is left alone."""
    for leftover in Path(out_dir).parent.glob(f".{Path(out_dir).name}.*-*-*"):
        kind, _, rest = leftover.name[len(Path(out_dir).name) + 2:].partition("-")
        pid = rest.split("-")[0]
        if kind in ("tmp", "old") and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


def _process_alive(pid: int) -> bool:
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
    def output_names(self) -> list[str]:
        return [output["name"] for output in self.manifest["io"]["outputs"]]

    @property
    def labels(self) -> list[str]:
        return list(self.manifest.get("labels") or [])


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise BundleError(f"unreadable JSON ({error})", path) from None
    if not isinstance(data, dict):
        raise BundleError("is not a JSON object", path)
    return data


def read_bundle(path: str | Path) -> Bundle:
    """Open a bundle directory, checking that its files are all there and match the manifest."""
    path = Path(path)
    if not path.is_dir():
        raise BundleError("not a bundle directory (no such directory)", path)
    missing = [name for name in BUNDLE_FILES if not (path / name).is_file()]
    if missing:
        raise BundleError(f"not a complete bundle (missing {', '.join(missing)})", path)
    manifest = _read_json(path / MANIFEST_FILE)
    if manifest.get("schema_version") != MANIFEST_SCHEMA_VERSION:
        raise BundleError(f"manifest schema_version is {manifest.get('schema_version')!r}; this edgebert reads "
                          f"{MANIFEST_SCHEMA_VERSION}", path / MANIFEST_FILE)
    for name, record in manifest.get("files", {}).items():
        actual = (path / name).stat().st_size
        if actual != record.get("bytes"):
            raise BundleError(f"is {actual} bytes but the manifest says {record.get('bytes')} "
                              "(truncated or replaced?)", path / name)
    return Bundle(path=path, manifest=manifest, golden=_read_json(path / GOLDEN_FILE))
