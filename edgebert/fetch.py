"""Download Google's BERT Miniatures checkpoints into a local cache (standard library only).

    download(url, dest)            one file, resumable (`dest.part` + HTTP Range), length- and sha256-checked
    fetch_checkpoint(variant)      download + safe extraction into the cache; a cache hit needs no network

Cache layout (`default_cache_dir()`):

    downloads/<name>.zip[.part]          while downloading; the zip is deleted once extracted
    checkpoints/<name>/                  the extracted zip (the checkpoint may sit one folder down)
    checkpoints/<name>.source.json       url, sha256, bytes and time of the zip it came from
"""
from __future__ import annotations

import datetime
import hashlib
import json
import os
import re
import shutil
import socket
import ssl
import urllib.error
import urllib.request
from http.client import HTTPException
from pathlib import Path
from typing import Callable, Optional

from edgebert import __version__
from edgebert.archive import find_checkpoint_dir, safe_extract_zip
from edgebert.errors import ArchiveError, DownloadError, SourceError
from edgebert.variants import Variant

Progress = Callable[[int, Optional[int]], None]

CACHE_ENV = "EDGEBERT_CACHE"
DOWNLOAD_ROOT_ENV = "EDGEBERT_DOWNLOAD_ROOT"
CHECKPOINT_FILES = ("bert_config.json", "vocab.txt", "bert_model.ckpt.index")
CHECKPOINT_DATA_GLOB = "bert_model.ckpt.data-*"
OFFLINE_HINT = ("you seem to be offline; download it elsewhere and pass the zip or the extracted "
                "directory to 'edgebert convert' instead")
RESUME_HINT = "run the same command again to resume"

_CONTENT_RANGE = re.compile(r"bytes\s+(\d+)-(\d+)/(\d+|\*)", re.IGNORECASE)
_UNSATISFIED_RANGE = re.compile(r"bytes\s+\*/(\d+)", re.IGNORECASE)


def default_cache_dir() -> Path:
    """`$EDGEBERT_CACHE`, else `$XDG_CACHE_HOME/edgebert`, else `~/.cache/edgebert`."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "edgebert"
    return Path.home() / ".cache" / "edgebert"


def _download_error(problem: str, url: str, *, with_url_prefix: bool = True) -> DownloadError:
    error = DownloadError(problem, url if with_url_prefix else None)
    error.url = url
    return error


def _reason(error: BaseException) -> str:
    """A short human reason for a network error: `Connection refused`, `timed out`, ..."""
    if isinstance(error, urllib.error.URLError) and not isinstance(error, urllib.error.HTTPError):
        reason = error.reason
        if isinstance(reason, BaseException):
            return _reason(reason)
        return str(reason)
    if isinstance(error, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error) or type(error).__name__


def _is_tls_error(error: BaseException) -> bool:
    reason = getattr(error, "reason", error)
    return isinstance(reason, ssl.SSLError)


def _open(url: str, offset: int, timeout: float):
    """Open `url` (from byte `offset` when > 0). Returns the response, or None for HTTP 416 together
    with the total size the server reported (if any)."""
    headers = {"User-Agent": f"edgebert/{__version__}", "Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        return urllib.request.urlopen(request, timeout=timeout), None
    except urllib.error.HTTPError as error:
        if error.code == 416 and offset:
            match = _UNSATISFIED_RANGE.search(error.headers.get("Content-Range", "") or "")
            error.close()
            return None, (int(match.group(1)) if match else None)
        error.close()
        raise _download_error(f"HTTP {error.code} {error.reason}", url) from None
    except ValueError as error:  # unknown url type, malformed URL
        raise _download_error(f"not a valid URL ({error})", url) from None
    except (urllib.error.URLError, OSError, HTTPException) as error:
        if isinstance(error, urllib.error.URLError) and isinstance(error.reason, str):
            raise _download_error(f"not a valid URL ({error.reason})", url) from None
        if _is_tls_error(error):
            raise _download_error(f"TLS error ({_reason(error)})", url) from None
        raise _download_error(f"cannot reach {url} ({_reason(error)}): {OFFLINE_HINT}", url,
                              with_url_prefix=False) from None


def _hash_file(path: Path, hasher, chunk_size: int) -> None:
    with open(path, "rb") as file:
        for chunk in iter(lambda: file.read(chunk_size), b""):
            hasher.update(chunk)


def download(url: str, dest: str | os.PathLike, *, progress: Progress | None = None, timeout: float = 30.0,
             expected_sha256: str | None = None, chunk_size: int = 1 << 20) -> Path:
    """Download `url` to `dest` and return `dest`; write the hex sha256 to `dest.sha256`.

    Bytes go to `dest.part` first; an existing `.part` (an interrupted earlier call) is resumed with
    an HTTP Range request (206: append; 200: start over; 416: complete if its size is the total,
    else start over). The received length is checked against Content-Length / Content-Range, the
    sha256 against `expected_sha256` when given, and only then is `.part` renamed to `dest`.
    `progress(done_bytes, total_bytes_or_None)` is called as chunks arrive. Failures raise
    `DownloadError`; an interrupted transfer keeps `.part` so the next call resumes it, a checksum
    or length mismatch deletes it.
    """
    dest = Path(dest)
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    expected = expected_sha256.strip().lower() if expected_sha256 else None

    for _attempt in range(3):  # a restart from zero is at most needed twice (bad 206, bad 416)
        offset = part.stat().st_size if part.exists() else 0
        response, unsatisfied_total = _open(url, offset, timeout)
        hasher = hashlib.sha256()
        if response is None:  # 416: the server has nothing past `offset`
            if unsatisfied_total is not None and unsatisfied_total == offset:
                _hash_file(part, hasher, chunk_size)
                if progress:
                    progress(offset, offset)
                return _finish(url, part, dest, hasher.hexdigest(), expected)
            part.unlink()
            continue
        with response:
            status = response.status
            if status == 206 and offset:
                match = _CONTENT_RANGE.search(response.headers.get("Content-Range", "") or "")
                if not match or int(match.group(1)) != offset:
                    part.unlink()  # not the range we asked for: start over
                    continue
                total = None if match.group(3) == "*" else int(match.group(3))
                if total is None:
                    total = offset + int(match.group(2)) - int(match.group(1)) + 1
                _hash_file(part, hasher, chunk_size)
                mode = "ab"
            elif 200 <= status < 300 and status != 206:
                offset, mode = 0, "wb"  # a full answer: start over
                length = response.headers.get("Content-Length")
                total = int(length) if length and length.isdigit() else None
            else:
                raise _download_error(f"unexpected HTTP {status} {response.reason}", url)
            done = _receive(url, response, part, mode, offset, total, hasher, progress, chunk_size)
        if total is not None and done != total:
            raise _download_error(f"incomplete download: got {done} of {total} bytes; {RESUME_HINT}", url)
        return _finish(url, part, dest, hasher.hexdigest(), expected)
    raise _download_error("the server keeps answering with the wrong byte range", url)


def _receive(url, response, part, mode, offset, total, hasher, progress, chunk_size) -> int:
    """Stream the body into `part`; returns the bytes `part` now holds."""
    done = offset
    if progress:
        progress(done, total)
    with open(part, mode) as sink:
        while True:
            try:
                chunk = response.read(chunk_size)
            except (OSError, HTTPException) as error:
                of_total = f" of {total}" if total is not None else ""
                raise _download_error(f"connection lost after {done}{of_total} bytes ({_reason(error)}); "
                                      f"{RESUME_HINT}", url) from None
            if not chunk:
                return done
            done += len(chunk)
            if total is not None and done > total:
                sink.close()
                part.unlink()
                raise _download_error(f"the server sent more than the {total} bytes it announced", url)
            sink.write(chunk)
            hasher.update(chunk)
            if progress:
                progress(done, total)


def _finish(url: str, part: Path, dest: Path, digest: str, expected: str | None) -> Path:
    if expected and digest != expected:
        part.unlink()
        raise _download_error(f"sha256 mismatch: expected {expected}, got {digest}", url)
    os.replace(part, dest)
    record = dest.with_name(dest.name + ".sha256")
    temp = record.with_name(record.name + ".tmp")
    temp.write_text(f"{digest}  {dest.name}\n")
    os.replace(temp, record)
    return dest


def missing_checkpoint_files(directory: str | os.PathLike) -> list[str]:
    """The files of a Google TF1 checkpoint that `directory` lacks (empty when complete)."""
    directory = Path(directory)
    missing = [name for name in CHECKPOINT_FILES if not (directory / name).is_file()]
    if not any(path.is_file() for path in directory.glob(CHECKPOINT_DATA_GLOB)):
        missing.append(CHECKPOINT_DATA_GLOB)
    return missing


def cached_checkpoint(variant: Variant, cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The complete checkpoint of `variant` already in the cache, or None (never touches the network)."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    extracted = cache / "checkpoints" / variant.name
    return _complete_checkpoint(extracted) if extracted.is_dir() else None


def _complete_checkpoint(root: Path) -> Path | None:
    try:
        directory = find_checkpoint_dir(root)
    except SourceError:
        return None
    return None if missing_checkpoint_files(directory) else directory


def checkpoint_url(variant: Variant, base_url: str | None = None) -> str:
    """Where `variant` is downloaded from: `base_url`, else `$EDGEBERT_DOWNLOAD_ROOT`, else Google's."""
    base = base_url or os.environ.get(DOWNLOAD_ROOT_ENV)
    return f"{base.rstrip('/')}/{variant.name}.zip" if base else variant.url


def source_record_path(variant: Variant, cache_dir: str | os.PathLike | None = None) -> Path:
    """`checkpoints/<name>.source.json`: url, sha256, bytes and fetched_at of the downloaded zip."""
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    return cache / "checkpoints" / f"{variant.name}.source.json"


def fetch_checkpoint(variant: Variant, *, cache_dir: str | os.PathLike | None = None,
                     base_url: str | None = None, progress: Progress | None = None,
                     force: bool = False) -> Path:
    """Download and extract `variant` into the cache; return the directory holding its checkpoint.

    A complete checkpoint already in the cache is returned without network access unless `force`.
    An interrupted download resumes on the next call. Raises `DownloadError`, `ArchiveError` (unsafe
    or corrupt zip; the zip is then deleted so the next call downloads it again) or `SourceError`
    (the zip holds no complete checkpoint).
    """
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    extracted = cache / "checkpoints" / variant.name
    record = source_record_path(variant, cache)
    if not force:
        found = cached_checkpoint(variant, cache)
        if found is not None:
            return found

    url = checkpoint_url(variant, base_url)
    zip_path = cache / "downloads" / f"{variant.name}.zip"
    digest_path = zip_path.with_name(zip_path.name + ".sha256")
    if force:
        for stale in (zip_path, digest_path, zip_path.with_name(zip_path.name + ".part")):
            stale.unlink(missing_ok=True)
    if not (zip_path.is_file() and digest_path.is_file()):  # else: downloaded before, not yet extracted
        download(url, zip_path, progress=progress)
    digest = digest_path.read_text().split()[0]
    size = zip_path.stat().st_size

    try:
        safe_extract_zip(zip_path, extracted, overwrite=True)
    except ArchiveError:
        zip_path.unlink(missing_ok=True)
        digest_path.unlink(missing_ok=True)
        raise
    try:
        directory = find_checkpoint_dir(extracted)
        missing = missing_checkpoint_files(directory)
        problem = f"missing {', '.join(missing)}" if missing else None
    except SourceError as error:
        problem = error.problem
    if problem:
        shutil.rmtree(extracted, ignore_errors=True)
        zip_path.unlink(missing_ok=True)
        digest_path.unlink(missing_ok=True)
        raise SourceError(f"the downloaded archive is not a complete BERT checkpoint: {problem}", url)

    fetched_at = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat()
    temp = record.with_name(record.name + ".tmp")
    temp.write_text(json.dumps({"variant": variant.name, "url": url, "sha256": digest, "bytes": size,
                                "fetched_at": fetched_at,
                                "checkpoint_dir": directory.relative_to(record.parent).as_posix()},
                               indent=2) + "\n")
    os.replace(temp, record)
    zip_path.unlink(missing_ok=True)
    digest_path.unlink(missing_ok=True)
    return directory
