"""download() and fetch_checkpoint() against a local HTTP server on 127.0.0.1 (no other network):
full and resumed downloads, servers that ignore Range, HTTP errors, offline, checksums, progress,
and the checkpoint cache end to end."""
from __future__ import annotations

import hashlib
import io
import json
import re
import socket
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from edgebert.errors import ArchiveError, DownloadError, SourceError
from edgebert.fetch import (OFFLINE_HINT, default_cache_dir, download, fetch_checkpoint, missing_checkpoint_files,
                            source_record_path)
from edgebert.variants import Variant

MINI = Variant(4, 256)


class Server:
    """Serves `files` (path -> bytes) with Range support; switches simulate misbehaving servers."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.drop_after: int | None = None  # close the connection after this many body bytes
        self.ignore_range = False  # answer 200 with the whole file even to a Range request
        self.status: int | None = None  # answer every request with this status (e.g. 404, 500)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02},
                                        daemon=True)
        self._thread.start()
        self.running = True

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    def url(self, path: str) -> str:
        return f"{self.base_url}/{path.lstrip('/')}"

    def stop(self) -> None:
        if self.running:
            self.running = False
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)

    def range_requests(self) -> list[str]:
        return [headers["Range"] for _, headers in self.requests if "Range" in headers]

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):
                pass

            def do_GET(self):
                server.requests.append((self.path, dict(self.headers)))
                body = server.files.get(self.path)
                if server.status is not None or body is None:
                    self.send_error(server.status or 404)
                    return
                total, start = len(body), 0
                match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                if match and not server.ignore_range:
                    start = int(match.group(1))
                    if start >= total:
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{total}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{total - 1}/{total}")
                else:
                    self.send_response(200)
                self.send_header("Content-Type", "application/zip")
                self.send_header("Content-Length", str(total - start))
                self.end_headers()
                payload = body[start:]
                if server.drop_after is not None:
                    self.wfile.write(payload[:server.drop_after])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                self.wfile.write(payload)

        return Handler


@pytest.fixture
def server(monkeypatch):
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    httpd = Server()
    yield httpd
    httpd.stop()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEBERT_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("EDGEBERT_DOWNLOAD_ROOT", raising=False)


def payload(size: int = 300_000) -> bytes:
    return bytes((i * 7 + i // 251) % 256 for i in range(size))


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_full_download_writes_dest_and_sha256(server, tmp_path):
    data = payload()
    server.files["/model.zip"] = data
    dest = tmp_path / "d" / "model.zip"
    assert download(server.url("model.zip"), dest) == dest
    assert dest.read_bytes() == data
    digest = hashlib.sha256(data).hexdigest()
    assert (tmp_path / "d" / "model.zip.sha256").read_text() == f"{digest}  model.zip\n"
    assert not (tmp_path / "d" / "model.zip.part").exists()
    assert server.range_requests() == []


def test_interrupted_download_resumes_with_range(server, tmp_path):
    data = payload()
    server.files["/model.zip"] = data
    server.drop_after = 100_000
    dest, part = tmp_path / "model.zip", tmp_path / "model.zip.part"
    url = server.url("model.zip")
    with pytest.raises(DownloadError) as caught:
        download(url, dest, chunk_size=8192)
    message = one_line(caught)
    assert message.startswith(f"{url}: ")
    assert f"of {len(data)} bytes" in message and "run the same command again to resume" in message
    assert not dest.exists()
    kept = part.stat().st_size
    assert 0 < kept <= 100_000
    assert part.read_bytes() == data[:kept]

    server.drop_after = None
    seen = []
    download(url, dest, progress=lambda done, total: seen.append((done, total)), chunk_size=8192)
    assert server.range_requests() == [f"bytes={kept}-"]
    assert dest.read_bytes() == data
    assert seen[0] == (kept, len(data)) and seen[-1] == (len(data), len(data))
    assert (tmp_path / "model.zip.sha256").read_text().split()[0] == hashlib.sha256(data).hexdigest()
    assert not part.exists()


def test_server_ignoring_range_restarts_from_zero(server, tmp_path):
    data = payload()
    server.files["/model.zip"] = data
    server.ignore_range = True
    dest = tmp_path / "model.zip"
    (tmp_path / "model.zip.part").write_bytes(b"stale bytes from some other file")
    download(server.url("model.zip"), dest)
    assert server.range_requests() == ["bytes=32-"]
    assert dest.read_bytes() == data
    assert (tmp_path / "model.zip.sha256").read_text().split()[0] == hashlib.sha256(data).hexdigest()


def test_complete_part_answered_416_is_finished(server, tmp_path):
    data = payload(5000)
    server.files["/model.zip"] = data
    (tmp_path / "model.zip.part").write_bytes(data)
    download(server.url("model.zip"), tmp_path / "model.zip")
    assert (tmp_path / "model.zip").read_bytes() == data


def test_oversized_part_answered_416_restarts(server, tmp_path):
    data = payload(5000)
    server.files["/model.zip"] = data
    (tmp_path / "model.zip.part").write_bytes(data + b"junk")
    download(server.url("model.zip"), tmp_path / "model.zip")
    assert (tmp_path / "model.zip").read_bytes() == data
    assert server.range_requests() == ["bytes=5004-"]


def test_http_404(server, tmp_path):
    url = server.url("missing.zip")
    with pytest.raises(DownloadError) as caught:
        download(url, tmp_path / "missing.zip")
    assert one_line(caught) == f"{url}: HTTP 404 Not Found"
    assert list(tmp_path.iterdir()) == []


def test_http_500(server, tmp_path):
    server.files["/model.zip"] = b"x"
    server.status = 500
    with pytest.raises(DownloadError) as caught:
        download(server.url("model.zip"), tmp_path / "model.zip")
    assert one_line(caught) == f"{server.url('model.zip')}: HTTP 500 Internal Server Error"


def closed_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_offline_message(tmp_path, monkeypatch):
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    url = f"http://127.0.0.1:{closed_port()}/uncased_L-4_H-256_A-4.zip"
    with pytest.raises(DownloadError) as caught:
        download(url, tmp_path / "model.zip", timeout=5)
    assert one_line(caught) == (
        f"cannot reach {url} (Connection refused): you seem to be offline; download it elsewhere and "
        f"pass the zip or the extracted directory to 'edgebert convert' instead")
    assert caught.value.url == url
    assert OFFLINE_HINT in str(caught.value)
    assert not (tmp_path / "model.zip").exists()


def test_unknown_scheme(tmp_path):
    with pytest.raises(DownloadError) as caught:
        download("ftp-ish://nowhere/x.zip", tmp_path / "x.zip")
    assert one_line(caught).startswith("ftp-ish://nowhere/x.zip: not a valid URL (")


def test_sha256_mismatch_leaves_no_file(server, tmp_path):
    data = payload(10_000)
    server.files["/model.zip"] = data
    url, wrong = server.url("model.zip"), "0" * 64
    with pytest.raises(DownloadError) as caught:
        download(url, tmp_path / "model.zip", expected_sha256=wrong)
    assert one_line(caught) == (
        f"{url}: sha256 mismatch: expected {wrong}, got {hashlib.sha256(data).hexdigest()}")
    assert list(tmp_path.iterdir()) == []


def test_sha256_match_is_accepted(server, tmp_path):
    data = payload(10_000)
    server.files["/model.zip"] = data
    digest = hashlib.sha256(data).hexdigest()
    download(server.url("model.zip"), tmp_path / "model.zip", expected_sha256=digest.upper())
    assert (tmp_path / "model.zip").read_bytes() == data


def test_progress_increases_to_the_total(server, tmp_path):
    data = payload()
    server.files["/model.zip"] = data
    seen = []
    download(server.url("model.zip"), tmp_path / "model.zip", chunk_size=32_768,
             progress=lambda done, total: seen.append((done, total)))
    done = [d for d, _ in seen]
    assert len(seen) > 5
    assert done == sorted(set(done))  # strictly increasing
    assert {total for _, total in seen} == {len(data)}
    assert seen[-1] == (len(data), len(data))


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("EDGEBERT_CACHE", str(tmp_path / "explicit"))
    assert default_cache_dir() == tmp_path / "explicit"
    monkeypatch.delenv("EDGEBERT_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "edgebert"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "edgebert"


CHECKPOINT = {"bert_config.json": b'{"hidden_size": 256}', "vocab.txt": b"[PAD]\n[UNK]\nhello\n",
              "bert_model.ckpt.index": b"index bytes", "bert_model.ckpt.data-00000-of-00001": b"\x01" * 4096}


def checkpoint_zip(folder: str = "", files: dict[str, bytes] = CHECKPOINT) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as zf:
        if folder:
            zf.writestr(f"{folder}/", b"")
        for name, data in files.items():
            zf.writestr(f"{folder}/{name}" if folder else name, data)
    return buffer.getvalue()


@pytest.mark.parametrize("folder", ["", MINI.name])
def test_fetch_checkpoint_end_to_end(server, tmp_path, folder):
    archive = checkpoint_zip(folder)
    server.files[f"/mirror/{MINI.name}.zip"] = archive
    cache = tmp_path / "cache"
    directory = fetch_checkpoint(MINI, cache_dir=cache, base_url=server.url("mirror/"))
    expected = cache / "checkpoints" / MINI.name
    assert directory == (expected / folder if folder else expected)
    assert {p.name: p.read_bytes() for p in directory.iterdir()} == CHECKPOINT
    assert missing_checkpoint_files(directory) == []
    assert list((cache / "downloads").iterdir()) == []  # the zip is deleted once extracted
    record = json.loads(source_record_path(MINI, cache).read_text())
    assert record["url"] == f"{server.base_url}/mirror/{MINI.name}.zip"
    assert record["sha256"] == hashlib.sha256(archive).hexdigest()
    assert record["bytes"] == len(archive)
    assert record["fetched_at"].endswith("+00:00")

    server.stop()  # a cache hit needs no network
    assert fetch_checkpoint(MINI, cache_dir=cache, base_url="http://127.0.0.1:9/never") == directory
    with pytest.raises(DownloadError, match="you seem to be offline"):
        fetch_checkpoint(MINI, cache_dir=cache, base_url=f"http://127.0.0.1:{closed_port()}", force=True)


def test_fetch_checkpoint_uses_env_download_root_and_cache(server, monkeypatch, tmp_path):
    server.files[f"/{MINI.name}.zip"] = checkpoint_zip()
    monkeypatch.setenv("EDGEBERT_DOWNLOAD_ROOT", server.base_url)
    directory = fetch_checkpoint(MINI)
    assert directory == tmp_path / "cache" / "checkpoints" / MINI.name
    assert [path for path, _ in server.requests] == [f"/{MINI.name}.zip"]


def test_fetch_checkpoint_resumes_and_force_downloads_again(server, tmp_path):
    archive = checkpoint_zip(MINI.name)
    server.files[f"/{MINI.name}.zip"] = archive
    server.drop_after = 200
    with pytest.raises(DownloadError, match="run the same command again to resume"):
        fetch_checkpoint(MINI, base_url=server.base_url)
    server.drop_after = None
    seen = []
    directory = fetch_checkpoint(MINI, base_url=server.base_url, progress=lambda d, t: seen.append(d))
    assert server.range_requests() == ["bytes=200-"]
    assert seen[-1] == len(archive)
    (directory / "vocab.txt").write_bytes(b"edited")
    fetch_checkpoint(MINI, base_url=server.base_url, force=True)
    assert (directory / "vocab.txt").read_bytes() == CHECKPOINT["vocab.txt"]
    assert len(server.requests) == 3


def test_fetch_checkpoint_incomplete_archive(server, tmp_path):
    files = {name: data for name, data in CHECKPOINT.items() if not name.startswith("bert_model.ckpt.data")}
    server.files[f"/{MINI.name}.zip"] = checkpoint_zip(files=files)
    url = f"{server.base_url}/{MINI.name}.zip"
    with pytest.raises(SourceError) as caught:
        fetch_checkpoint(MINI, base_url=server.base_url)
    assert one_line(caught) == (
        f"{url}: the downloaded archive is not a complete BERT checkpoint: missing bert_model.ckpt.data-*")
    cache = tmp_path / "cache"
    assert not (cache / "checkpoints" / MINI.name).exists()
    assert list((cache / "downloads").iterdir()) == []


def test_fetch_checkpoint_unsafe_archive(server, tmp_path):
    server.files[f"/{MINI.name}.zip"] = checkpoint_zip(files={**CHECKPOINT, "../escape": b"x"})
    with pytest.raises(ArchiveError) as caught:
        fetch_checkpoint(MINI, base_url=server.base_url)
    cache = tmp_path / "cache"
    assert one_line(caught) == (
        f"{cache / 'downloads' / (MINI.name + '.zip')}: unsafe member '../escape': '..' path component")
    assert not (cache / "checkpoints" / MINI.name).exists()
    assert list((cache / "downloads").iterdir()) == []
