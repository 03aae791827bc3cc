"""safe_extract_zip refuses unsafe or corrupt zips with one line naming the zip and the member, and
leaves nothing behind; find_checkpoint_dir finds the checkpoint at the top level or one folder down."""
from __future__ import annotations

import struct
import zipfile
from pathlib import Path

import pytest

from edgebert import archive
from edgebert.archive import find_checkpoint_dir, safe_extract_zip
from edgebert.errors import ArchiveError, OutputError, SourceError


def make_zip(path: Path, members: dict[str, bytes], compression=zipfile.ZIP_DEFLATED) -> Path:
    with zipfile.ZipFile(path, "w", compression) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def assert_nothing_left(dest: Path) -> None:
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # no temporary directory either


def refuse(zip_path: Path, dest: Path, **limits) -> str:
    with pytest.raises(ArchiveError) as caught:
        safe_extract_zip(zip_path, dest, **limits)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{zip_path}: ")
    assert_nothing_left(dest)
    return message


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    (tmp_path / "out").mkdir()
    return tmp_path / "out" / "checkpoint"


def test_extracts_files_and_folders(tmp_path, dest):
    zip_path = make_zip(tmp_path / "ok.zip", {"top/a.txt": b"alpha", "top/sub/b.bin": bytes(range(256)) * 5000,
                                             "top/empty/": b"", "./c.txt": b"c"})
    assert safe_extract_zip(zip_path, dest) == dest
    assert (dest / "top" / "a.txt").read_bytes() == b"alpha"
    assert (dest / "top" / "sub" / "b.bin").read_bytes() == bytes(range(256)) * 5000
    assert (dest / "top" / "empty").is_dir()
    assert (dest / "c.txt").read_bytes() == b"c"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["checkpoint"]


def test_existing_destination_is_refused_unless_overwrite(tmp_path, dest):
    zip_path = make_zip(tmp_path / "ok.zip", {"new.txt": b"new"})
    dest.mkdir(parents=True)
    (dest / "old.txt").write_text("old")
    with pytest.raises(OutputError, match="already exists"):
        safe_extract_zip(zip_path, dest)
    safe_extract_zip(zip_path, dest, overwrite=True)
    assert sorted(p.name for p in dest.iterdir()) == ["new.txt"]
    assert sorted(p.name for p in dest.parent.iterdir()) == ["checkpoint"]


def test_parent_traversal(tmp_path, dest):
    zip_path = make_zip(tmp_path / "evil.zip", {"ok.txt": b"fine", "../evil": b"x"})
    assert refuse(zip_path, dest) == f"{zip_path}: unsafe member '../evil': '..' path component"
    assert not (dest.parent / "evil").exists()


def test_nested_traversal_with_backslashes(tmp_path, dest):
    zip_path = make_zip(tmp_path / "evil.zip", {"a\\..\\..\\evil": b"x"})
    assert "unsafe member 'a\\\\..\\\\..\\\\evil': '..' path component" in refuse(zip_path, dest)


@pytest.mark.parametrize("name", ["/abs/path", "C:/windows/evil", "\\\\server\\share\\evil"])
def test_absolute_paths(tmp_path, dest, name):
    zip_path = make_zip(tmp_path / "abs.zip", {"ok.txt": b"fine"})
    with zipfile.ZipFile(zip_path, "a") as zf:
        info = zipfile.ZipInfo("placeholder")
        info.filename = name  # ZipInfo() would strip a leading "/" or drive; a hostile zip does not
        zf.writestr(info, b"x")
    message = refuse(zip_path, dest)
    assert message == f"{zip_path}: unsafe member {name!r}: absolute path"


def test_symlink_member(tmp_path, dest):
    zip_path = tmp_path / "link.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("bert_config.json", b"{}")
        info = zipfile.ZipInfo("vocab.txt")
        info.create_system = 3
        info.external_attr = 0o120777 << 16
        zf.writestr(info, b"/etc/passwd")
    assert refuse(zip_path, dest) == f"{zip_path}: unsafe member 'vocab.txt': symbolic link"


def test_device_member(tmp_path, dest):
    zip_path = tmp_path / "fifo.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        info = zipfile.ZipInfo("pipe")
        info.create_system = 3
        info.external_attr = 0o010644 << 16  # a FIFO
        zf.writestr(info, b"")
    assert refuse(zip_path, dest) == f"{zip_path}: unsafe member 'pipe': not a regular file (mode 10644)"


def test_too_many_members(tmp_path, dest):
    zip_path = make_zip(tmp_path / "many.zip", {f"f{i}.txt": b"x" for i in range(6)})
    assert refuse(zip_path, dest, max_members=5) == (
        f"{zip_path}: too many members: 6 > limit 5 (first over the limit: 'f5.txt')")


def test_declared_size_over_the_bound(tmp_path, dest):
    zip_path = make_zip(tmp_path / "big.zip", {"small.bin": b"x" * 600, "big.bin": b"\0" * 600})
    assert refuse(zip_path, dest, max_total_bytes=1000) == (
        f"{zip_path}: too large: uncompressed size exceeds the limit of 1000 bytes at member 'big.bin' "
        f"(1200 bytes declared so far)")


def _patch_uncompressed_size(zip_path: Path, member: str, new_size: int) -> None:
    """Make the central directory (what zipfile trusts) declare `new_size` for `member`."""
    data = bytearray(zip_path.read_bytes())
    name = member.encode()
    central = data.index(b"PK\x01\x02")
    while True:
        name_length = struct.unpack_from("<H", data, central + 28)[0]
        if bytes(data[central + 46:central + 46 + name_length]) == name:
            struct.pack_into("<I", data, central + 24, new_size)
            break
        central = data.index(b"PK\x01\x02", central + 4)
    zip_path.write_bytes(bytes(data))


def test_header_that_lies_about_the_size(tmp_path, dest):
    # The member really expands to 1 MB but declares 100 bytes, within the 1000-byte bound.
    zip_path = make_zip(tmp_path / "bomb.zip", {"bomb.bin": b"\0" * 1_000_000})
    _patch_uncompressed_size(zip_path, "bomb.bin", 100)
    assert refuse(zip_path, dest, max_total_bytes=1000) == f"{zip_path}: corrupt member 'bomb.bin' (CRC mismatch)"


def test_streaming_guard_counts_bytes_actually_written(tmp_path, dest, monkeypatch):
    # CPython's zipfile stops at the declared size; the guard must hold even for a reader that does not.
    zip_path = make_zip(tmp_path / "bomb.zip", {"bomb.bin": b"\0" * 100})

    class Endless:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def read(self, n):
            return b"\0" * n

    monkeypatch.setattr(zipfile.ZipFile, "open", lambda self, info: Endless())
    monkeypatch.setattr(archive, "CHUNK_SIZE", 64)
    assert refuse(zip_path, dest) == (
        f"{zip_path}: corrupt member 'bomb.bin' (expands beyond its declared size of 100 bytes)")


def test_truncated_zip(tmp_path, dest):
    zip_path = make_zip(tmp_path / "cut.zip", {"bert_config.json": b"{}" * 1000})
    zip_path.write_bytes(zip_path.read_bytes()[:-30])
    assert refuse(zip_path, dest) == f"{zip_path}: not a valid zip archive (File is not a zip file)"


def test_not_a_zip(tmp_path, dest):
    zip_path = tmp_path / "page.zip"
    zip_path.write_text("<html>Service Unavailable</html>")
    assert refuse(zip_path, dest) == f"{zip_path}: not a valid zip archive (File is not a zip file)"


def test_missing_zip(tmp_path, dest):
    assert refuse(tmp_path / "nope.zip", dest) == f"{tmp_path / 'nope.zip'}: no such file"


@pytest.mark.parametrize("compression", [zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED])
def test_crc_corrupted_member(tmp_path, dest, compression):
    payload = b"bert weights " * 100
    zip_path = make_zip(tmp_path / "crc.zip", {"ok.txt": b"fine", "bert_model.ckpt.index": payload},
                        compression)
    data = bytearray(zip_path.read_bytes())
    with zipfile.ZipFile(zip_path) as zf:
        info = zf.getinfo("bert_model.ckpt.index")
    # Flip the CRC in the central directory (the last entry is the index file): the bytes no longer match.
    central = data.rindex(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 16, info.CRC ^ 0xFFFFFFFF)
    zip_path.write_bytes(bytes(data))
    assert refuse(zip_path, dest) == f"{zip_path}: corrupt member 'bert_model.ckpt.index' (CRC mismatch)"


def test_duplicate_and_clashing_members(tmp_path, dest):
    zip_path = tmp_path / "dup.zip"
    with zipfile.ZipFile(zip_path, "w") as zf:
        zf.writestr("a", b"file")
        zf.writestr("a/b", b"inside a file?")
    assert refuse(zip_path, dest) == f"{zip_path}: unsafe member 'a/b': file and directory of the same name"


def test_find_checkpoint_dir_flat_and_wrapped(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "bert_config.json").write_text("{}")
    assert find_checkpoint_dir(flat) == flat

    wrapped = tmp_path / "wrapped"
    (wrapped / "__MACOSX").mkdir(parents=True)
    (wrapped / "uncased_L-12_H-768_A-12").mkdir()
    (wrapped / "uncased_L-12_H-768_A-12" / "bert_config.json").write_text("{}")
    assert find_checkpoint_dir(wrapped) == wrapped / "uncased_L-12_H-768_A-12"


def test_find_checkpoint_dir_errors(tmp_path):
    with pytest.raises(SourceError) as caught:
        find_checkpoint_dir(tmp_path / "missing")
    assert str(caught.value) == f"{tmp_path / 'missing'}: no such directory"

    (tmp_path / "empty" / "deep" / "deeper").mkdir(parents=True)
    (tmp_path / "empty" / "deep" / "deeper" / "bert_config.json").write_text("{}")
    with pytest.raises(SourceError) as caught:
        find_checkpoint_dir(tmp_path / "empty")
    assert str(caught.value) == f"{tmp_path / 'empty'}: no bert_config.json here or one folder down"

    for name in ("b", "a"):
        (tmp_path / "two" / name).mkdir(parents=True)
        (tmp_path / "two" / name / "bert_config.json").write_text("{}")
    with pytest.raises(SourceError) as caught:
        find_checkpoint_dir(tmp_path / "two")
    assert str(caught.value) == f"{tmp_path / 'two'}: several checkpoints one folder down (a, b); pass one of them"
