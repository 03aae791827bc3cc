"""Writing a model in the format its source came in: Hugging Face's folder for a Hugging Face source,
Google's checkpoint layout for a Google one, so that fine-tuning, structured pruning and vocabulary
trimming lose nothing the source said.

Google's bert_config.json cannot say everything a Hugging Face config does (the exact erf GELU, which
most Hugging Face BERTs use), and transformers cannot read a Google checkpoint directory. So the output
takes the source's format:

    Hugging Face source   config.json (model_type bert; architectures BertForSequenceClassification
                          for a classifier, with id2label/label2id, else BertModel; hidden_act in
                          Hugging Face's names: "gelu" is erf, "gelu_new" tanh), model.safetensors in
                          transformers' names and [out, in] orientation, vocab.txt, tokenizer.json (the
                          source's own when the vocab is unchanged, else one built by edgebert.tokenizer
                          with the source's casing and word-length limit), tokenizer_config.json, and
                          the sentence-transformers files (modules.json, 1_Pooling/...) when asked to
                          keep them;
    Google source         bert_config.json, vocab.txt, bert_model.ckpt.* (google_checkpoint.py).

Both carry the edgebert record (edgebert_source.json: labels, lower-casing, max_word_chars, history),
which `load_source` reads back and `edgebert convert` carries into the manifest. A structured-pruned
model's per-layer shapes go into either config under edgebert's keys (converters/config.py); transformers
does not read them, so it cannot load a model whose layers differ in shape.

`prepare_output(source, out_dir, force=...)` does every check that can fail (the output directory, the
format's config, the source's tokenizer and sentence-transformers files, which it reads now) before the
caller's minutes of work; its `write(...)` afterwards only writes.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from converters import google_checkpoint, sentence_embedding
from converters.config import BertConfig
from converters.sources import Source, hf_to_google_name
from edgebert import tokenizer as tokenization
from edgebert.errors import ConfigError, OutputError, SourceError

HUGGING_FACE, GOOGLE = "hugging-face", "google"  # the two output formats
WEIGHTS_FILE, CONFIG_FILE = "model.safetensors", "config.json"
TOKENIZER_FILE, TOKENIZER_CONFIG_FILE, SPECIAL_TOKENS_FILE = ("tokenizer.json", "tokenizer_config.json",
                                                               "special_tokens_map.json")
# sentence-transformers' own files besides the module folders (which modules.json lists).
_SENTENCE_FILES = (sentence_embedding.MODULES_FILE, sentence_embedding.SETTINGS_FILE,
                   "config_sentence_transformers.json")

# Google variable scope -> Hugging Face module, the inverse of converters/sources.py's mapping.
_EMBEDDINGS = {"bert/embeddings/word_embeddings": "embeddings.word_embeddings.weight",
               "bert/embeddings/position_embeddings": "embeddings.position_embeddings.weight",
               "bert/embeddings/token_type_embeddings": "embeddings.token_type_embeddings.weight"}
_LAYER_SCOPES = {"attention/self/query": "attention.self.query", "attention/self/key": "attention.self.key",
                 "attention/self/value": "attention.self.value", "attention/output/dense": "attention.output.dense",
                 "attention/output/LayerNorm": "attention.output.LayerNorm",
                 "intermediate/dense": "intermediate.dense", "output/dense": "output.dense",
                 "output/LayerNorm": "output.LayerNorm"}
_SUFFIXES = {"kernel": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}


def output_format(source: Source) -> str:
    """HUGGING_FACE for a source read from a Hugging Face folder (also once pruned or trimmed), else GOOGLE."""
    return HUGGING_FACE if source.kind.startswith("hf-") else GOOGLE


def google_to_hf_name(name: str, prefix: str = "bert.") -> str:
    """The Hugging Face tensor name of a Google variable (`prefix` "bert." as BertForSequenceClassification
    saves it, "" as BertModel does); the classifier is `classifier.*` either way."""
    if name == google_checkpoint.CLASSIFIER_WEIGHTS:
        return "classifier.weight"
    if name == google_checkpoint.CLASSIFIER_BIAS:
        return "classifier.bias"
    if name in _EMBEDDINGS:
        return prefix + _EMBEDDINGS[name]
    scope, _, suffix = name.rpartition("/")
    if suffix in _SUFFIXES:
        if scope == "bert/embeddings/LayerNorm":
            return f"{prefix}embeddings.LayerNorm.{_SUFFIXES[suffix]}"
        if scope == "bert/pooler/dense":
            return f"{prefix}pooler.dense.{_SUFFIXES[suffix]}"
        parts = scope.split("/", 3)  # bert, encoder, layer_N, rest
        if (len(parts) == 4 and parts[:2] == ["bert", "encoder"] and parts[2].startswith("layer_")
                and parts[2][6:].isdigit() and parts[3] in _LAYER_SCOPES):
            return f"{prefix}encoder.layer.{parts[2][6:]}.{_LAYER_SCOPES[parts[3]]}.{_SUFFIXES[suffix]}"
    raise ConfigError(f"no Hugging Face name for the variable {name!r}")


def hf_tensors(config: BertConfig, weights: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model's tensors in transformers' names and orientation: every encoder variable the config
    implies, the pooler and the classifier when there is one. Dense kernels become [out, in]."""
    names = list(google_checkpoint.encoder_variable_shapes(config))
    classifier = google_checkpoint.CLASSIFIER_WEIGHTS in weights
    if classifier:
        names += [google_checkpoint.CLASSIFIER_WEIGHTS, google_checkpoint.CLASSIFIER_BIAS]
    tensors = {}
    for name in names:
        if name not in weights:
            raise ConfigError(f"the weights have no {name!r}, which this config needs")
        hf_name = google_to_hf_name(name, "bert." if classifier else "")
        assert hf_to_google_name(hf_name) == name, (name, hf_name)  # the loader reads back what is written
        value = np.asarray(weights[name], dtype=np.float32)
        tensors[hf_name] = np.ascontiguousarray(value.T if name.endswith("/kernel") else value)
    return tensors


def hf_config(config: BertConfig, labels: list[str], vocab: list[str]) -> dict:
    """config.json: the model's shape (config.to_hf_json) with transformers' class and labels."""
    hf = config.to_hf_json()
    hf["pad_token_id"] = vocab.index("[PAD]")
    if labels:
        hf["architectures"] = ["BertForSequenceClassification"]
        hf["id2label"] = {str(i): label for i, label in enumerate(labels)}
        hf["label2id"] = {label: i for i, label in enumerate(labels)}
        hf["problem_type"] = "single_label_classification"
    else:
        hf["architectures"] = ["BertModel"]
    return dict(sorted(hf.items()))


def _read_json_object(path: Path) -> dict:
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SourceError(f"unreadable JSON ({error})", path) from None
    if not isinstance(value, dict):
        raise SourceError("is not a JSON object", path)
    return value


def _sentence_files(directory: Path) -> tuple[dict[str, bytes], tuple[str, ...]]:
    """The sentence-transformers files of a folder `load_source` accepted (name -> bytes), and the module
    folders to create (Normalize's may be empty)."""
    files, folders = {}, []
    for name in _SENTENCE_FILES:
        if (directory / name).is_file():
            files[name] = (directory / name).read_bytes()
    for module in json.loads(files[sentence_embedding.MODULES_FILE]):
        folder = module.get("path", "")
        if folder in ("", ".") or not (directory / folder).is_dir():
            continue
        folders.append(folder)
        for path in sorted((directory / folder).iterdir()):
            if path.is_file():
                files[f"{folder}/{path.name}"] = path.read_bytes()
    return files, tuple(folders)


@dataclass(frozen=True)
class CheckpointOutput:
    """Where and how a model will be written; made by `prepare_output` before the work, so that `write`
    has nothing left that can fail but the disk."""

    out_dir: Path
    format: str
    force: bool
    lowercase: bool
    max_word_chars: int
    source_vocab: tuple[str, ...]
    # Hugging Face only: the source's tokenizer.json (its vocab and bytes), its tokenizer_config.json and
    # special_tokens_map.json, and the sentence-transformers files to keep.
    source_tokenizer: tuple[tuple[str, ...], bytes] | None = None
    tokenizer_config: dict = field(default_factory=dict)
    special_tokens: bytes | None = None
    sentence_files: dict[str, bytes] = field(default_factory=dict)
    sentence_folders: tuple[str, ...] = ()

    def write(self, config: BertConfig, weights: dict[str, np.ndarray], record: dict) -> Path:
        """Write the model (the source's vocab, `config`'s shapes, `weights` in Google's names) with its
        edgebert record."""
        vocab = list(self.source_vocab)
        if self.format == GOOGLE:
            return google_checkpoint.write_checkpoint_directory(self.out_dir, config, weights, vocab,
                                                                record=record, force=self.force)
        labels = []
        if google_checkpoint.CLASSIFIER_WEIGHTS in weights:
            labels = [str(label) for label in record.get("labels", [])]
            count = len(weights[google_checkpoint.CLASSIFIER_WEIGHTS])
            labels = labels if len(labels) == count else [str(i) for i in range(count)]
        files = {CONFIG_FILE: _json_bytes(hf_config(config, labels, vocab)),
                 "vocab.txt": ("\n".join(vocab) + "\n").encode("utf-8"),
                 TOKENIZER_FILE: self._tokenizer_json(vocab),
                 TOKENIZER_CONFIG_FILE: _json_bytes(self._tokenizer_config(config, vocab)),
                 google_checkpoint.SOURCE_RECORD: _json_bytes(record),
                 **({SPECIAL_TOKENS_FILE: self.special_tokens} if self.special_tokens is not None else {}),
                 **self.sentence_files}
        return write_hf_directory(self.out_dir, config, weights, vocab, files, self.sentence_folders, self.force)

    def _tokenizer_json(self, vocab: list[str]) -> bytes:
        if self.source_tokenizer is not None and list(self.source_tokenizer[0]) == vocab:
            return self.source_tokenizer[1]  # the source's own file, as it was (unless its vocab differs)
        tokenizer = tokenization.build_tokenizer(vocab, lowercase=self.lowercase, seq_len=None,
                                                 max_word_chars=self.max_word_chars)
        tokenizer.no_truncation()
        return tokenizer.to_str(pretty=True).encode("utf-8")

    def _tokenizer_config(self, config: BertConfig, vocab: list[str]) -> dict:
        settings = {**self.tokenizer_config, "do_lower_case": self.lowercase}
        settings.setdefault("tokenizer_class", "BertTokenizer")
        settings.setdefault("model_max_length", config.max_positions)
        added = settings.get("added_tokens_decoder")
        if isinstance(added, dict):  # ids of the source's vocab: renumber them for this one (a trim moves them)
            ids = {token: i for i, token in enumerate(vocab)}
            settings["added_tokens_decoder"] = {
                str(ids[entry["content"]]): entry for entry in added.values()
                if isinstance(entry, dict) and entry.get("content") in ids}
        return settings


def prepare_output(source: Source, out_dir: str | os.PathLike, *, force: bool = False,
                   keep_sentence_pooling: bool = False) -> CheckpointOutput:
    """Check now what writing `source`'s model (or one made from it: fine-tuned, pruned) to out_dir needs
    (the directory can be written, the format's config can say the source's, the vocab and the source's
    tokenizer files are read) and return the plan. `keep_sentence_pooling`: keep a sentence-transformers
    folder's pooling files (for outputs that are still that encoder, e.g. a trimmed vocabulary)."""
    from edgebert.bundle import check_output_dir

    out_dir = Path(out_dir)
    check_output_dir(out_dir, force)
    config = source.config
    kind = output_format(source)
    source_tokenizer = None
    if source.tokenizer_json is not None:
        loaded = tokenization.load_tokenizer(source.tokenizer_json)
        by_id = sorted(loaded.get_vocab().items(), key=lambda item: item[1])
        if [i for _, i in by_id] != list(range(len(by_id))):
            raise SourceError("tokenizer vocabulary ids are not contiguous", source.tokenizer_json)
        source_tokenizer = (tuple(token for token, _ in by_id), Path(source.tokenizer_json).read_bytes())
    if source.vocab is None and source_tokenizer is None:
        raise SourceError("has no vocabulary (neither vocab.txt nor tokenizer.json)", source.path)
    vocab = tuple(source.vocab) if source.vocab is not None else source_tokenizer[0]
    if len(vocab) != config.vocab_size:
        raise SourceError(f"vocab has {len(vocab)} tokens but the config says vocab_size {config.vocab_size}",
                          source.path)
    common = {"out_dir": out_dir, "format": kind, "force": force, "lowercase": source.lowercase,
              "max_word_chars": source.max_word_chars, "source_vocab": vocab}
    if kind == GOOGLE:
        try:
            config.to_google_json()
        except ConfigError as error:
            raise ConfigError(f"cannot write this model in Google's layout: {error.problem}",
                              source.path) from None
        return CheckpointOutput(**common)
    try:
        import safetensors.numpy  # noqa: F401  (the converter's install has it; check before the work)
    except ImportError:
        raise OutputError("writing Hugging Face's format needs safetensors (pip install -e '.[convert]')",
                          out_dir) from None
    directory = Path(source.path)
    settings_path = directory / TOKENIZER_CONFIG_FILE
    settings = _read_json_object(settings_path) if settings_path.is_file() else {}
    special_path = directory / SPECIAL_TOKENS_FILE
    special = special_path.read_bytes() if special_path.is_file() else None
    sentence_files, folders = {}, ()
    if keep_sentence_pooling and source.sentence_pooling is not None:
        sentence_files, folders = _sentence_files(directory)
    return CheckpointOutput(**common, source_tokenizer=source_tokenizer, tokenizer_config=settings,
                            special_tokens=special, sentence_files=sentence_files, sentence_folders=folders)


def write_hf_directory(out_dir: Path, config: BertConfig, weights: dict[str, np.ndarray], vocab: list[str],
                       files: dict[str, bytes], folders: tuple[str, ...] = (), force: bool = False) -> Path:
    """model.safetensors plus `files` (relative name -> bytes) as the directory out_dir, all or nothing:
    staged in a hidden sibling, then renamed into place (with force, the old one stays if that fails).
    A full disk or a read-only place is one OutputError naming out_dir."""
    from safetensors.numpy import save

    from edgebert.bundle import check_output_dir, staged_directory, write_files

    out_dir = Path(out_dir)
    if len(vocab) != config.vocab_size:
        raise ConfigError(f"vocab has {len(vocab)} tokens but the config says vocab_size {config.vocab_size}")
    files = {WEIGHTS_FILE: save(hf_tensors(config, weights), metadata={"format": "pt"}),  # as save_pretrained
             **files}
    check_output_dir(out_dir, force)
    with staged_directory(out_dir) as staging:
        for folder in folders:
            (staging / folder).mkdir(parents=True, exist_ok=True)
        write_files(staging, files)
    return out_dir


def _json_bytes(value: dict) -> bytes:
    return (json.dumps(value, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
