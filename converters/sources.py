"""Everything the converter accepts as a source, read into one shape: a config, Google-named weights and
a tokenizer recipe.

Accepted: a Google checkpoint directory (bert_config.json, vocab.txt, bert_model.ckpt.*), a checkpoint
prefix, its zip, a fine-tuned run_classifier checkpoint (top-level output_weights/output_bias), a
Hugging Face directory (config.json + model.safetensors, or pytorch_model.bin through torch's
weights_only loader; a sentence-transformers folder also brings its pooling, see
converters/sentence_embedding.py), or a variant name, fetched into the cache.
"""
from __future__ import annotations

import hashlib
import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from converters import google_checkpoint, sentence_embedding
from converters.config import BertConfig
from edgebert import tokenizer as tokenization
from edgebert.bundle import file_sha256
from edgebert.errors import ConfigError, SourceError, UnknownVariantError
from edgebert.variants import ALL_VARIANTS, Variant, parse_variant



@dataclass
class Source:
    path: Path
    kind: str
    config: BertConfig
    weights: dict[str, np.ndarray]
    lowercase: bool
    vocab: list[str] | None = None
    tokenizer_json: Path | None = None
    labels: list[str] = field(default_factory=list)
    # Words longer than this become [UNK]: 200 for Google's tokenizer, a Hugging Face tokenizer.json's own
    # max_input_chars_per_word (100 for HF's BertTokenizer with only a vocab.txt).
    max_word_chars: int = tokenization.GOOGLE_MAX_WORD_CHARS
    sha256: str = ""
    random_weights: bool = False
    # What edgebert did to make these weights (fine-tuning, pruning, trimming), oldest first; the
    # bundle's manifest carries it.
    history: list[dict] = field(default_factory=list)
    # A sentence-transformers folder's pooling (modules.json + 1_Pooling/config.json); None otherwise.
    sentence_pooling: sentence_embedding.SentencePooling | None = None

    @property
    def num_labels(self) -> int:
        weights = self.weights.get(google_checkpoint.CLASSIFIER_WEIGHTS)
        return 0 if weights is None else int(weights.shape[0])

    @property
    def variant(self) -> Variant | None:
        shape = Variant(self.config.num_layers, self.config.hidden_size)
        grid_like = (self.config.num_heads == shape.heads and self.config.intermediate_size == shape.intermediate
                     and not self.config.layer_heads and not self.config.layer_intermediate_sizes)  # not pruned
        return shape if shape in ALL_VARIANTS and grid_like else None


def directory_sha256(files: list[Path]) -> str:
    """One digest over several files (name and content), order-independent."""
    digest = hashlib.sha256()
    for path in sorted(files, key=lambda p: p.name):
        digest.update(f"{path.name}\0{file_sha256(path)}\n".encode())
    return digest.hexdigest()


def check_weights_match(config: BertConfig, weights: dict[str, np.ndarray], config_path: Path) -> None:
    """Every encoder variable the config implies exists with that shape; else name both sides."""
    for name, shape in google_checkpoint.encoder_variable_shapes(config).items():
        if name not in weights:
            raise ConfigError(f"the weights have no {name!r}, which this config "
                              f"({config.num_layers} layers) needs", config_path)
        if tuple(weights[name].shape) != shape:
            raise ConfigError(f"config implies {name} of shape {list(shape)} but the weights have "
                              f"{list(weights[name].shape)}", config_path)
    head = weights.get(google_checkpoint.CLASSIFIER_WEIGHTS)
    if head is not None:
        bias = weights.get(google_checkpoint.CLASSIFIER_BIAS)
        if head.ndim != 2 or head.shape[1] != config.hidden_size or bias is None or bias.shape != head.shape[:1]:
            raise ConfigError(f"classifier head output_weights {list(head.shape)} / output_bias "
                              f"{None if bias is None else list(bias.shape)} do not fit hidden_size "
                              f"{config.hidden_size}", config_path)


def _vocab_matches(config: BertConfig, vocab: list[str], vocab_path: Path) -> None:
    if len(vocab) != config.vocab_size:
        raise ConfigError(f"has {len(vocab)} tokens but the config says vocab_size {config.vocab_size}", vocab_path)


def load_google_directory(directory: Path, lowercase: bool | None = None, prefix: Path | None = None) -> Source:
    config_path = directory / "bert_config.json"
    config = BertConfig.from_json_file(config_path, "google")
    vocab_path = directory / "vocab.txt"
    vocab = tokenization.read_vocab(vocab_path)
    _vocab_matches(config, vocab, vocab_path)
    prefix = prefix or google_checkpoint.find_checkpoint_prefix(directory)
    weights = google_checkpoint.read_checkpoint(prefix)
    check_weights_match(config, weights, config_path)
    record = google_checkpoint.read_source_record(directory)
    if lowercase is None:
        lowercase = record.get("lowercase", not tokenization.vocab_is_cased(vocab))
    max_word_chars = _record_max_word_chars(record, tokenization.GOOGLE_MAX_WORD_CHARS, directory)
    files = [config_path, vocab_path, *prefix.parent.glob(prefix.name + ".*")]
    return Source(path=directory, kind="google-checkpoint", config=config, weights=weights, lowercase=bool(lowercase),
                  vocab=vocab, sha256=directory_sha256(files), labels=[str(x) for x in record.get("labels", [])],
                  max_word_chars=max_word_chars,
                  random_weights=(directory / google_checkpoint.RANDOM_MARKER).is_file()
                  or bool(record.get("random_init")),
                  history=list(record.get("history", [])))


def _record_max_word_chars(record: dict, default: int, directory: Path) -> int:
    """The word-length limit an edgebert record states (written with the model), else `default`."""
    max_word_chars = record.get("max_word_chars", default)
    if isinstance(max_word_chars, bool) or not isinstance(max_word_chars, int) or max_word_chars < 1:
        raise SourceError(f"edgebert record has a bad max_word_chars {max_word_chars!r}",
                          directory / google_checkpoint.SOURCE_RECORD)
    return max_word_chars


def load_google_zip(zip_path: Path, lowercase: bool | None = None) -> Source:
    from edgebert.archive import find_checkpoint_dir, safe_extract_zip

    with tempfile.TemporaryDirectory(prefix="edgebert-zip-") as scratch:
        extracted = safe_extract_zip(zip_path, Path(scratch) / "x")
        source = load_google_directory(find_checkpoint_dir(extracted), lowercase)
    source.path, source.kind, source.sha256 = zip_path, "google-zip", file_sha256(zip_path)
    return source


# Hugging Face BertModel names (after an optional "bert." prefix) -> Google names.
_HF_EMBEDDINGS = {"embeddings.word_embeddings.weight": "bert/embeddings/word_embeddings",
                  "embeddings.position_embeddings.weight": "bert/embeddings/position_embeddings",
                  "embeddings.token_type_embeddings.weight": "bert/embeddings/token_type_embeddings"}
_HF_LAYER_SCOPES = {"attention.self.query": "attention/self/query", "attention.self.key": "attention/self/key",
                    "attention.self.value": "attention/self/value", "attention.output.dense": "attention/output/dense",
                    "attention.output.LayerNorm": "attention/output/LayerNorm",
                    "intermediate.dense": "intermediate/dense", "output.dense": "output/dense",
                    "output.LayerNorm": "output/LayerNorm"}
_HF_SUFFIXES = {"weight": "kernel", "bias": "bias", "gamma": "gamma", "beta": "beta"}


def hf_to_google_name(name: str) -> str | None:
    """Map one Hugging Face tensor name; None for tensors the encoder does not use."""
    if name in ("classifier.weight", "classifier.bias"):
        return google_checkpoint.CLASSIFIER_WEIGHTS if name.endswith("weight") else google_checkpoint.CLASSIFIER_BIAS
    name = name.removeprefix("bert.")
    if name in _HF_EMBEDDINGS:
        return _HF_EMBEDDINGS[name]
    scope, _, suffix = name.rpartition(".")
    is_norm = scope.endswith("LayerNorm")
    suffix = {"weight": "gamma", "bias": "beta"}.get(suffix, suffix) if is_norm else _HF_SUFFIXES.get(suffix)
    if scope == "embeddings.LayerNorm":
        return f"bert/embeddings/LayerNorm/{suffix}"
    if scope == "pooler.dense":
        return f"bert/pooler/dense/{suffix}"
    parts = scope.split(".", 3)  # encoder, layer, N, rest
    if len(parts) == 4 and parts[:2] == ["encoder", "layer"] and parts[2].isdigit() and parts[3] in _HF_LAYER_SCOPES:
        return f"bert/encoder/layer_{parts[2]}/{_HF_LAYER_SCOPES[parts[3]]}/{suffix}"
    return None


def _read_hf_tensors(directory: Path) -> tuple[dict[str, np.ndarray], Path, str]:
    safetensors_path, bin_path = directory / "model.safetensors", directory / "pytorch_model.bin"
    if safetensors_path.is_file():
        from safetensors import SafetensorError
        from safetensors.numpy import load_file
        try:
            return load_file(str(safetensors_path)), safetensors_path, "hf-safetensors"
        except (SafetensorError, OSError, ValueError) as error:
            raise SourceError(f"corrupt or truncated safetensors file ({error})", safetensors_path) from None
    if bin_path.is_file():
        try:
            import torch
        except ImportError:
            raise SourceError("pytorch_model.bin needs torch (pip install torch), which loads it with "
                              "weights_only=True; or convert it to model.safetensors", bin_path) from None
        try:  # weights_only: never an unrestricted unpickle of a downloaded file
            state = torch.load(str(bin_path), map_location="cpu", weights_only=True)
        except Exception as error:  # torch raises UnpicklingError, RuntimeError, EOFError...
            raise SourceError(f"cannot load safely with weights_only=True ({str(error).splitlines()[0]})",
                              bin_path) from None
        return {k: v.float().numpy() for k, v in state.items()}, bin_path, "hf-pytorch"
    raise SourceError("Hugging Face directory has neither model.safetensors nor pytorch_model.bin", directory)


def load_hf_directory(directory: Path, lowercase: bool | None = None) -> Source:
    config_path = directory / "config.json"
    config = BertConfig.from_json_file(config_path, "hf")
    tensors, weights_path, kind = _read_hf_tensors(directory)
    weights = {}
    for name, value in tensors.items():
        google_name = hf_to_google_name(name)
        if google_name is None:
            continue
        value = np.asarray(value, dtype=np.float32)
        # torch Linear stores [out, in]; Google kernels are [in, out]. The classifier is [out, in] in both.
        weights[google_name] = value.T if google_name.endswith("/kernel") else value
    if "bert/embeddings/word_embeddings" not in weights:
        examples = ", ".join(sorted(tensors)[:3])
        raise SourceError(f"not a BERT checkpoint (no embeddings.word_embeddings.weight; has {examples}...)", weights_path)
    check_weights_match(config, weights, config_path)
    raw_config = json.loads(config_path.read_text(encoding="utf-8"))
    tokenizer_json = directory / "tokenizer.json"
    vocab_path = directory / "vocab.txt"
    vocab = None
    if vocab_path.is_file():
        vocab = tokenization.read_vocab(vocab_path)
        _vocab_matches(config, vocab, vocab_path)
    elif not tokenizer_json.is_file():
        raise SourceError("Hugging Face directory has neither vocab.txt nor tokenizer.json", directory)
    max_word_chars = tokenization.HF_MAX_WORD_CHARS  # transformers' BertTokenizer, from vocab.txt
    if tokenizer_json.is_file():  # what transformers' BertTokenizerFast uses: the file's own setting
        max_word_chars = tokenization.max_word_chars(tokenization.load_tokenizer(tokenizer_json), tokenizer_json)
    # A folder edgebert wrote (fine-tuned, pruned, trimmed) carries its record: casing, limit, history.
    record = google_checkpoint.read_source_record(directory)
    max_word_chars = _record_max_word_chars(record, max_word_chars, directory)
    if lowercase is None:
        lowercase = record.get("lowercase")
        lowercase = lowercase if isinstance(lowercase, bool) else _hf_lowercase(directory, vocab)
    num_labels = weights["output_weights"].shape[0] if "output_weights" in weights else 0
    id2label = raw_config.get("id2label") or {}
    labels = [str(id2label.get(str(i), id2label.get(i, i))) for i in range(num_labels)]
    pooling = sentence_embedding.read_sentence_pooling(directory, config.hidden_size)
    files = [config_path, weights_path] + [p for p in (vocab_path, tokenizer_json) if p.is_file()]
    files += sentence_embedding.files(directory) if pooling else []
    return Source(path=directory, kind=kind, config=config, weights=weights, lowercase=lowercase, vocab=vocab,
                  tokenizer_json=tokenizer_json if tokenizer_json.is_file() else None, labels=labels,
                  max_word_chars=max_word_chars, sha256=directory_sha256(files), sentence_pooling=pooling,
                  random_weights=bool(record.get("random_init")), history=list(record.get("history", [])))


def _hf_lowercase(directory: Path, vocab: list[str] | None) -> bool:
    settings = directory / "tokenizer_config.json"
    if settings.is_file():
        try:
            value = json.loads(settings.read_text(encoding="utf-8")).get("do_lower_case")
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise SourceError(f"unreadable JSON ({error})", settings) from None
        if isinstance(value, bool):
            return value
    return True if vocab is None else not tokenization.vocab_is_cased(vocab)


def load_source(text: str | Path, lowercase: bool | None = None, *, fetch_progress=None) -> Source:
    """Open whatever the user pointed at; a one-line SourceError names the path and the problem."""
    path = Path(text).expanduser()
    if path.is_dir():
        if (path / "bert_config.json").is_file():
            return load_google_directory(path, lowercase)
        if (path / "config.json").is_file():
            return load_hf_directory(path, lowercase)
        nested = [child for child in path.iterdir() if (child / "bert_config.json").is_file()]
        if len(nested) == 1:
            return load_google_directory(nested[0], lowercase)
        raise SourceError("not a checkpoint directory (no bert_config.json or config.json)", path)
    if path.is_file():
        if path.suffix == ".zip":
            return load_google_zip(path, lowercase)
        if path.suffix == ".index":  # the user pointed at bert_model.ckpt.index
            return load_google_directory(path.parent, lowercase, prefix=path.with_suffix(""))
        raise SourceError("not a checkpoint (expected a directory, a .zip, or a checkpoint prefix)", path)
    if path.with_name(path.name + ".index").is_file():  # a prefix like dir/bert_model.ckpt
        return load_google_directory(path.parent, lowercase, prefix=path)
    try:
        variant = parse_variant(str(text))
    except UnknownVariantError:
        raise SourceError("no such file or directory (nor a variant name such as bert-mini)", path) from None
    from edgebert.fetch import fetch_checkpoint

    return load_google_directory(fetch_checkpoint(variant, progress=fetch_progress), lowercase)
