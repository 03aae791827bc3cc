"""Safe, atomic extraction of checkpoint zips, and finding the checkpoint inside.

Google's BERT Miniatures come as zips of up to ~420 MB (Base). `safe_extract_zip` checks every member
name and type before writing anything, streams members in chunks, and extracts into a temporary
sibling of the destination that is renamed into place only when everything succeeded: on any error
nothing is left at the destination and the temporary directory is gone.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import tempfile
import zipfile
import zlib
from pathlib import Path

from edgebert.errors import ArchiveError, OutputError, SourceError

MAX_TOTAL_BYTES = 4 * 2**30
MAX_MEMBERS = 10_000
CHUNK_SIZE = 1 << 20
CONFIG_FILE = "bert_config.json"

_DRIVE = re.compile(r"^[A-Za-z]:")


def _member_parts(info: zipfile.ZipInfo, zip_path: Path) -> tuple[str, ...]:
    """The path components a member would be written to, or ArchiveError if it would escape."""
    name = info.filename
    posix = name.replace("\\", "/")
    if posix.startswith("/") or _DRIVE.match(posix):
        raise ArchiveError(f"unsafe member {name!r}: absolute path", zip_path)
    parts = tuple(part for part in posix.split("/") if part not in ("", "."))
    if ".." in parts:
        raise ArchiveError(f"unsafe member {name!r}: '..' path component", zip_path)
    mode = info.external_attr >> 16
    kind = stat.S_IFMT(mode)
    if kind and not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        what = "symbolic link" if stat.S_ISLNK(mode) else f"not a regular file (mode {mode:o})"
        raise ArchiveError(f"unsafe member {name!r}: {what}", zip_path)
    return parts


def _plan(archive: zipfile.ZipFile, zip_path: Path, max_total_bytes: int,
          max_members: int) -> list[tuple[zipfile.ZipInfo, tuple[str, ...]]]:
    """Check every member before anything is written: names, types, count, declared sizes, clashes."""
    infos = archive.infolist()
    if len(infos) > max_members:
        raise ArchiveError(f"too many members: {len(infos)} > limit {max_members} "
                           f"(first over the limit: {infos[max_members].filename!r})", zip_path)
    plan, files, dirs, declared = [], set(), set(), 0
    for info in infos:
        parts = _member_parts(info, zip_path)
        if not parts:
            continue  # "./" and the like: the destination itself
        declared += info.file_size
        if declared > max_total_bytes:
            raise ArchiveError(f"too large: uncompressed size exceeds the limit of {max_total_bytes} bytes "
                               f"at member {info.filename!r} ({declared} bytes declared so far)", zip_path)
        parents = {parts[:n] for n in range(1, len(parts))}
        if info.is_dir():
            parents.add(parts)
        elif parts in files:
            raise ArchiveError(f"unsafe member {info.filename!r}: duplicate name", zip_path)
        if parents & files or (not info.is_dir() and parts in dirs):
            raise ArchiveError(f"unsafe member {info.filename!r}: file and directory of the same name",
                               zip_path)
        dirs |= parents
        if not info.is_dir():
            files.add(parts)
        plan.append((info, parts))
    return plan


def _copy_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path, zip_path: Path,
                 budget: int) -> int:
    """Stream one member to `target` in chunks; returns the bytes written. Never writes more than the
    member declares nor more than `budget` (a zip that lies in its headers)."""
    written = 0
    try:
        with archive.open(info) as source, open(target, "wb") as sink:
            while True:
                chunk = source.read(CHUNK_SIZE)
                if not chunk:
                    break
                written += len(chunk)
                if written > info.file_size:
                    raise ArchiveError(f"corrupt member {info.filename!r} (expands beyond its declared "
                                       f"size of {info.file_size} bytes)", zip_path)
                if written > budget:
                    raise ArchiveError(f"too large: member {info.filename!r} expands beyond the limit "
                                       f"on uncompressed size", zip_path)
                sink.write(chunk)
    except zipfile.BadZipFile as error:
        problem = "CRC mismatch" if "CRC" in str(error) else str(error)
        raise ArchiveError(f"corrupt member {info.filename!r} ({problem})", zip_path) from None
    except (EOFError, zlib.error, NotImplementedError, RuntimeError) as error:
        raise ArchiveError(f"corrupt member {info.filename!r} ({error or type(error).__name__})",
                           zip_path) from None
    if written != info.file_size:
        raise ArchiveError(f"corrupt member {info.filename!r} (got {written} of {info.file_size} bytes)",
                           zip_path)
    return written


def safe_extract_zip(zip_path: str | os.PathLike, dest_dir: str | os.PathLike, *,
                     max_total_bytes: int = MAX_TOTAL_BYTES, max_members: int = MAX_MEMBERS,
                     overwrite: bool = False) -> Path:
    """Extract `zip_path` into `dest_dir` (created; must not exist unless `overwrite`) and return it.

    Refuses absolute names, `..` components, links and other non-regular members, more than
    `max_members` members and more than `max_total_bytes` uncompressed bytes (declared in the headers
    or actually written), raising `ArchiveError` naming the zip and the member. Atomic: the members go
    to a temporary sibling directory that is renamed to `dest_dir` only when all of them are written.
    """
    zip_path, dest_dir = Path(zip_path), Path(dest_dir)
    if dest_dir.exists() and not overwrite:
        raise OutputError("already exists", dest_dir)
    try:
        archive = zipfile.ZipFile(zip_path)
    except FileNotFoundError:
        raise ArchiveError("no such file", zip_path) from None
    except (zipfile.BadZipFile, EOFError, OSError, ValueError) as error:
        reason = getattr(error, "strerror", None) or str(error) or type(error).__name__
        raise ArchiveError(f"not a valid zip archive ({reason})", zip_path) from None
    with archive:
        plan = _plan(archive, zip_path, max_total_bytes, max_members)
        dest_dir.parent.mkdir(parents=True, exist_ok=True)
        temp_dir = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.", suffix=".partial", dir=dest_dir.parent))
        try:
            budget = max_total_bytes
            for info, parts in plan:
                target = temp_dir.joinpath(*parts)
                if info.is_dir():
                    target.mkdir(parents=True, exist_ok=True)
                    continue
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    budget -= _copy_member(archive, info, target, zip_path, budget)
                except OSError as error:
                    raise OutputError(f"cannot write member {info.filename!r} of {zip_path} "
                                      f"({error.strerror or error})", dest_dir) from None
            _move_into_place(temp_dir, dest_dir, overwrite)
        except BaseException:
            shutil.rmtree(temp_dir, ignore_errors=True)
            raise
    return dest_dir


def _move_into_place(temp_dir: Path, dest_dir: Path, overwrite: bool) -> None:
    if not dest_dir.exists():
        os.replace(temp_dir, dest_dir)
        return
    if not overwrite:
        raise OutputError("already exists", dest_dir)
    old = Path(tempfile.mkdtemp(prefix=f".{dest_dir.name}.", suffix=".old", dir=dest_dir.parent))
    os.replace(dest_dir, old / "replaced")
    os.replace(temp_dir, dest_dir)
    shutil.rmtree(old, ignore_errors=True)


def find_checkpoint_dir(root: str | os.PathLike) -> Path:
    """The directory holding `bert_config.json`: `root` itself or one level down (Google's zips
    sometimes wrap their files in a folder such as `uncased_L-12_H-768_A-12/`)."""
    root = Path(root)
    if not root.is_dir():
        raise SourceError("no such directory", root)
    if (root / CONFIG_FILE).is_file():
        return root
    found = sorted(child for child in root.iterdir()
                   if child.is_dir() and not child.name.startswith((".", "__MACOSX"))
                   and (child / CONFIG_FILE).is_file())
    if len(found) == 1:
        return found[0]
    if not found:
        raise SourceError(f"no {CONFIG_FILE} here or one folder down", root)
    names = ", ".join(child.name for child in found)
    raise SourceError(f"several checkpoints one folder down ({names}); pass one of them", root)
