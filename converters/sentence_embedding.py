"""sentence-transformers folders: how BERT's token vectors become the sentence embedding.

A sentence-transformers model is a Hugging Face BERT folder plus `modules.json`, which lists the modules
`SentenceTransformer.encode` runs in order:

    Transformer   the BERT itself, at path "" (config.json, model.safetensors, tokenizer.json)
    Pooling       its settings in e.g. 1_Pooling/config.json: CLS token, mean or max over the real tokens
    Normalize     optional: L2-normalize the pooled vector (no settings)

edgebert exports that computation as the output `sentence_embedding` [1, H] (converters/model.py builds
it). Any other module (Dense, a second Pooling...) or pooling mode is refused with a one-line error
naming the file, rather than exported as something that would differ from `encode`.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from enum import Enum
from pathlib import Path, PurePosixPath

from edgebert.errors import SourceError

MODULES_FILE = "modules.json"
SETTINGS_FILE = "sentence_bert_config.json"
_PREFIX = "sentence_transformers.models."
TRANSFORMER, POOLING, NORMALIZE = (_PREFIX + name for name in ("Transformer", "Pooling", "Normalize"))


class PoolingMode(str, Enum):
    CLS = "cls"  # the [CLS] token's vector
    MEAN = "mean"  # the mean over the real (attention mask 1) tokens
    MAX = "max"  # the per-dimension maximum over the real tokens


# The keys sentence-transformers' Pooling writes into its config.json, and the modes edgebert exports.
_MODE_KEYS = {"pooling_mode_cls_token": PoolingMode.CLS, "pooling_mode_mean_tokens": PoolingMode.MEAN,
              "pooling_mode_max_tokens": PoolingMode.MAX}


@dataclass(frozen=True)
class SentencePooling:
    mode: PoolingMode
    normalize: bool  # the model lists a Normalize module: the embedding has unit L2 norm
    dimension: int  # the Pooling's word_embedding_dimension (= the BERT's hidden size)
    # SentenceTransformer.encode truncates texts at this many tokens (sentence_bert_config.json).
    max_seq_length: int | None = None

    def __post_init__(self):
        object.__setattr__(self, "mode", PoolingMode(self.mode))

    def to_manifest(self) -> dict:
        return {"pooling": self.mode.value, "normalize": self.normalize, "dimension": self.dimension,
                "max_seq_length": self.max_seq_length}


def _read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SourceError("not found (modules.json lists it)", path) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SourceError(f"unreadable JSON ({error})", path) from None


def _module_types(modules_path: Path) -> list[tuple[str, str]]:
    """(type, path) of each module in modules.json, in order."""
    modules = _read_json(modules_path)
    if not isinstance(modules, list) or not modules:
        raise SourceError("must be a non-empty JSON list of modules", modules_path)
    listed = []
    for index, module in enumerate(modules):
        if not isinstance(module, dict) or not isinstance(module.get("type"), str):
            raise SourceError(f"module {index} has no \"type\" string", modules_path)
        path = module.get("path", "")
        if not isinstance(path, str):
            raise SourceError(f"module {index} ({module['type']}) has a non-string \"path\" {path!r}", modules_path)
        listed.append((module["type"], path))
    return listed


def _pooling_mode(config_path: Path, config: dict) -> PoolingMode:
    """The one pooling mode a Pooling config.json enables (newer files may also name it as "pooling_mode")."""
    named = config.get("pooling_mode")
    if named is not None:
        if named not in {mode.value for mode in PoolingMode}:
            raise SourceError(f"pooling_mode {named!r} is not supported (edgebert exports cls, mean or max)",
                              config_path)
        return PoolingMode(named)
    enabled = [key for key, value in config.items() if key.startswith("pooling_mode") and value is True]
    unsupported = [key for key in enabled if key not in _MODE_KEYS]
    if unsupported:
        raise SourceError(f"pooling mode {unsupported[0]} is not supported (edgebert exports "
                          f"{', '.join(_MODE_KEYS)})", config_path)
    if not enabled:
        raise SourceError(f"enables no pooling mode (set one of {', '.join(_MODE_KEYS)} to true)", config_path)
    if len(enabled) > 1:
        raise SourceError(f"enables several pooling modes ({', '.join(enabled)}); their concatenation is not "
                          "supported, enable one", config_path)
    return _MODE_KEYS[enabled[0]]


def read_sentence_pooling(directory: Path, hidden_size: int) -> SentencePooling | None:
    """The sentence embedding a sentence-transformers folder defines; None when it has no modules.json
    (a plain Hugging Face BERT). A SourceError names the file for anything edgebert cannot export."""
    directory = Path(directory)
    modules_path = directory / MODULES_FILE
    if not modules_path.is_file():
        return None
    modules = _module_types(modules_path)
    types = [kind for kind, _ in modules]
    for kind in types:
        if kind not in (TRANSFORMER, POOLING, NORMALIZE):
            raise SourceError(f"module type {kind!r} is not supported (edgebert exports Transformer, then "
                              "Pooling, then optionally Normalize)", modules_path)
    if types not in ([TRANSFORMER, POOLING], [TRANSFORMER, POOLING, NORMALIZE]):
        short = " -> ".join(kind.removeprefix(_PREFIX) for kind in types)
        raise SourceError(f"lists {short}; edgebert exports Transformer -> Pooling (-> Normalize)", modules_path)
    if modules[0][1] not in ("", "."):
        raise SourceError(f"the Transformer module lives in {modules[0][1]!r}; edgebert reads a BERT at the "
                          "folder's top level (path \"\")", modules_path)
    pooling_dir = PurePosixPath(modules[1][1])
    if pooling_dir.is_absolute() or ".." in pooling_dir.parts:
        raise SourceError(f"the Pooling module's path {modules[1][1]!r} leaves the model folder", modules_path)
    config_path = directory / pooling_dir / "config.json"
    config = _read_json(config_path)
    if not isinstance(config, dict):
        raise SourceError("is not a JSON object", config_path)
    mode = _pooling_mode(config_path, config)
    dimension = config.get("word_embedding_dimension", hidden_size)
    if dimension != hidden_size:
        raise SourceError(f"word_embedding_dimension {dimension!r} differs from the model's hidden_size "
                          f"{hidden_size}", config_path)
    return SentencePooling(mode, normalize=types[-1] == NORMALIZE, dimension=hidden_size,
                           max_seq_length=_max_seq_length(directory / SETTINGS_FILE))


def _max_seq_length(path: Path) -> int | None:
    if not path.is_file():
        return None
    settings = _read_json(path)
    value = settings.get("max_seq_length") if isinstance(settings, dict) else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SourceError(f"max_seq_length must be a positive integer, got {value!r}", path)
    return value


def files(directory: Path) -> list[Path]:
    """The sentence-transformers files that define the embedding (for the source's sha256)."""
    directory = Path(directory)
    found = [directory / name for name in (MODULES_FILE, SETTINGS_FILE)]
    found += sorted(directory.glob("*_Pooling/config.json"))
    return [path for path in found if path.is_file()]
