"""One hierarchy of errors that the CLI turns into a single line and a non-zero exit.

Every error names what it is about (a file, a URL, a variant name) and the problem, so a user can act
on the message without a traceback. Library code raises these; only `edgebert.cli` catches them.
"""
from __future__ import annotations

import os


class EdgebertError(Exception):
    """Base class. `str(error)` is the whole one-line message the CLI prints."""

    exit_code = 1

    def __init__(self, problem: str, path: str | os.PathLike | None = None):
        self.problem = problem
        self.path = None if path is None else os.fspath(path)
        super().__init__(f"{self.path}: {problem}" if self.path else problem)


class UsageError(EdgebertError):
    """An option or argument that cannot work (unknown variant, unknown mode, bad combination)."""

    exit_code = 2


class UnknownVariantError(UsageError):
    """A variant name that does not resolve to the L x H grid."""


class SourceError(EdgebertError):
    """A checkpoint source that is missing, corrupt, truncated or inconsistent with its config."""


class ConfigError(SourceError):
    """A model config that is missing, unreadable or disagrees with the weights."""


class VocabError(SourceError):
    """A vocabulary or tokenizer file that is missing or unusable."""


class ArchiveError(EdgebertError):
    """An archive that is corrupt or unsafe to extract (absolute paths, `..`, links, too large)."""


class DownloadError(EdgebertError):
    """A download that failed (offline, HTTP error, size or checksum mismatch)."""


class OutputError(EdgebertError):
    """An output location that exists (without --force) or cannot be written."""


class ConversionError(EdgebertError):
    """The TFLite converter or the model builder failed."""


class ValidationError(EdgebertError):
    """An exported model that misses a fidelity threshold: carries the figure and the threshold."""

    def __init__(self, metric: str, value: float, threshold: float, detail: str = ""):
        self.metric, self.value, self.threshold = metric, value, threshold
        problem = f"validation failed: {metric} = {value:.6g}, threshold {threshold:g}"
        super().__init__(problem + (f" ({detail})" if detail else ""))


class BundleError(EdgebertError):
    """A bundle directory that is missing files or whose manifest disagrees with its model."""


class RuntimeNotAvailableError(EdgebertError):
    """No TFLite interpreter (ai-edge-litert, tflite-runtime or tensorflow.lite) could be imported."""
