"""Google's TF1 BERT checkpoint layout: the variable table, a random-weight writer, and a reader.

The writer produces exactly the names, shapes and dtypes of Google's release (checked in the tests
against the real BERT-Mini index), so tests and the offline demo exercise the same path as a real
download. Weights everywhere in the converter are a dict of Google variable name -> float32 array,
with Dense kernels as [in, out] (Google's orientation).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from converters.config import BertConfig
from edgebert.errors import ConfigError, OutputError, SourceError

CHECKPOINT_PREFIX = "bert_model.ckpt"
# run_classifier's head: [num_labels, hidden], i.e. transposed relative to Dense kernels.
CLASSIFIER_WEIGHTS, CLASSIFIER_BIAS = "output_weights", "output_bias"
# Written beside random checkpoints so that bundles and results made from them say so.
RANDOM_MARKER = "edgebert_random_weights.json"
# Written by fine-tuning, pruning and vocabulary trimming: labels, lower-casing and what was done.
SOURCE_RECORD = "edgebert_source.json"


def encoder_variable_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """The variables the exported encoder uses, in Google's order, with their shapes."""
    h = config.hidden_size
    shapes = {
        "bert/embeddings/word_embeddings": (config.vocab_size, h),
        "bert/embeddings/token_type_embeddings": (config.type_vocab_size, h),
        "bert/embeddings/position_embeddings": (config.max_positions, h),
        "bert/embeddings/LayerNorm/beta": (h,),
        "bert/embeddings/LayerNorm/gamma": (h,),
    }
    for n in range(config.num_layers):
        layer = f"bert/encoder/layer_{n}"
        w, i = config.attention_width(n), config.intermediate_in(n)  # smaller after structured pruning
        for dense, (d_in, d_out) in {
            "attention/self/query": (h, w), "attention/self/key": (h, w), "attention/self/value": (h, w),
            "attention/output/dense": (w, h), "intermediate/dense": (h, i), "output/dense": (i, h),
        }.items():
            shapes[f"{layer}/{dense}/kernel"] = (d_in, d_out)
            shapes[f"{layer}/{dense}/bias"] = (d_out,)
        for norm in ("attention/output/LayerNorm", "output/LayerNorm"):
            shapes[f"{layer}/{norm}/beta"] = (h,)
            shapes[f"{layer}/{norm}/gamma"] = (h,)
    shapes["bert/pooler/dense/kernel"] = (h, h)
    shapes["bert/pooler/dense/bias"] = (h,)
    return shapes


def pretraining_head_shapes(config: BertConfig) -> dict[str, tuple[int, ...]]:
    """The masked-LM and next-sentence heads every released checkpoint carries (unused on export)."""
    h = config.hidden_size
    return {
        "cls/predictions/output_bias": (config.vocab_size,),
        "cls/predictions/transform/LayerNorm/beta": (h,),
        "cls/predictions/transform/LayerNorm/gamma": (h,),
        "cls/predictions/transform/dense/bias": (h,),
        "cls/predictions/transform/dense/kernel": (h, h),
        "cls/seq_relationship/output_bias": (2,),
        "cls/seq_relationship/output_weights": (2, h),
    }


def classifier_shapes(config: BertConfig, num_labels: int) -> dict[str, tuple[int, ...]]:
    return {CLASSIFIER_WEIGHTS: (num_labels, config.hidden_size), CLASSIFIER_BIAS: (num_labels,)}


def random_weights(config: BertConfig, seed: int = 0, num_labels: int = 0) -> dict[str, np.ndarray]:
    """Weights drawn like Google's initializer (truncated normal, std 0.02), except that LayerNorms and
    biases get small random values too: zeros would hide a swapped gamma/beta or bias in the tests."""
    rng = np.random.default_rng(seed)
    shapes = {**encoder_variable_shapes(config), **pretraining_head_shapes(config)}
    if num_labels:
        shapes.update(classifier_shapes(config, num_labels))
    weights = {}
    for name, shape in shapes.items():
        if name.endswith("/gamma"):
            value = 1.0 + 0.1 * rng.standard_normal(shape)
        elif name.endswith(("bias", "/beta")):
            value = 0.02 * rng.standard_normal(shape)
        else:
            value = np.clip(rng.standard_normal(shape), -2.0, 2.0) * 0.02
        weights[name] = value.astype(np.float32)
    return weights


def write_checkpoint(weights: dict[str, np.ndarray], prefix: Path) -> None:
    """Write TF1 name-based variables with `tf.compat.v1.train.Saver` (object-based `tf.train.Checkpoint`
    would rename them)."""
    from converters.tf_import import tf

    graph = tf.Graph()
    with graph.as_default():
        variables = [tf.compat.v1.Variable(value, name=name, dtype=tf.float32) for name, value in weights.items()]
        saver = tf.compat.v1.train.Saver(variables, write_version=tf.compat.v1.train.SaverDef.V2)
        with tf.compat.v1.Session(graph=graph) as session:
            session.run(tf.compat.v1.variables_initializer(variables))
            saver.save(session, str(prefix), write_meta_graph=False, write_state=False)


def write_checkpoint_directory(out_dir: Path, config: BertConfig, weights: dict[str, np.ndarray],
                               vocab: list[str], *, record: dict | None = None, force: bool = False,
                               extra_files: dict[str, str] | None = None) -> Path:
    """Write a complete Google-style checkpoint directory (bert_config.json, vocab.txt,
    bert_model.ckpt.{index,data-00000-of-00001}) atomically: staged beside out_dir, then renamed.
    `record` (what edgebert did to make these weights: labels, lower-casing, fine-tuning and pruning
    steps) goes to SOURCE_RECORD, which `edgebert convert` carries into the bundle's manifest."""
    out_dir = Path(out_dir)
    if len(vocab) != config.vocab_size:
        raise ConfigError(f"vocab has {len(vocab)} tokens but the config says vocab_size {config.vocab_size}")
    if out_dir.exists() and not force:
        raise OutputError("already exists (pass --force to replace it)", out_dir)
    from edgebert.bundle import staged_directory

    with staged_directory(out_dir) as staging:
        write_checkpoint(weights, staging / CHECKPOINT_PREFIX)
        (staging / "bert_config.json").write_text(json.dumps(config.to_google_json(), indent=2) + "\n")
        (staging / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
        if record is not None:
            (staging / SOURCE_RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        for name, text in (extra_files or {}).items():
            (staging / name).write_text(text, encoding="utf-8")
    return out_dir


def read_source_record(directory: Path) -> dict:
    """SOURCE_RECORD of a directory edgebert wrote ({} when absent); a bad one is a SourceError."""
    path = Path(directory) / SOURCE_RECORD
    if not path.is_file():
        return {}
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SourceError(f"unreadable edgebert record ({error})", path) from None
    if not isinstance(record, dict) or not isinstance(record.get("history", []), list):
        raise SourceError("edgebert record is not a JSON object with a 'history' list", path)
    return record


def write_random_checkpoint(config: BertConfig, out_dir: Path, vocab: list[str], *, seed: int = 0,
                            num_labels: int = 0, force: bool = False) -> Path:
    """A complete Google-style checkpoint directory with random weights, marked as random."""
    marker = json.dumps({"seed": seed, "num_labels": num_labels}) + "\n"
    return write_checkpoint_directory(out_dir, config, random_weights(config, seed=seed, num_labels=num_labels),
                                      vocab, force=force, extra_files={RANDOM_MARKER: marker})


def find_checkpoint_prefix(directory: Path) -> Path:
    """The checkpoint prefix in a directory: the `checkpoint` state file's latest if present (fine-tuned
    run_classifier output), else `bert_model.ckpt`, else the only `*.index` there."""
    state = directory / "checkpoint"
    if state.is_file():
        for line in state.read_text(errors="replace").splitlines():
            if line.startswith("model_checkpoint_path:"):
                name = line.split(":", 1)[1].strip().strip('"')
                candidate = Path(name) if Path(name).is_absolute() else directory / name
                if candidate.with_name(candidate.name + ".index").is_file():
                    return candidate
    if (directory / f"{CHECKPOINT_PREFIX}.index").is_file():
        return directory / CHECKPOINT_PREFIX
    indexes = sorted(directory.glob("*.index"))
    if len(indexes) == 1:
        return indexes[0].with_suffix("")
    if not indexes:
        raise SourceError(f"no checkpoint found (expected {CHECKPOINT_PREFIX}.index and its data file)", directory)
    raise SourceError(f"several checkpoints found ({', '.join(p.name for p in indexes)}); "
                      "pass the prefix of the one to use", directory)


def read_checkpoint(prefix: Path) -> dict[str, np.ndarray]:
    """Every float variable of a TF checkpoint by name. Corrupt or truncated files raise SourceError
    naming the file."""
    from converters.tf_import import tf

    prefix = Path(prefix)
    index = prefix.with_name(prefix.name + ".index")
    if not index.is_file():
        raise SourceError("checkpoint index not found", index)
    if not list(prefix.parent.glob(prefix.name + ".data-*")):
        raise SourceError("checkpoint data file (.data-00000-of-00001) not found", prefix.parent)
    try:
        reader = tf.train.load_checkpoint(str(prefix))
        dtypes = reader.get_variable_to_dtype_map()
    except (tf.errors.OpError, ValueError) as error:
        raise SourceError(f"corrupt checkpoint index ({_first_line(error)})", index) from None
    data = sorted(prefix.parent.glob(prefix.name + ".data-*"))
    try:
        return {name: reader.get_tensor(name) for name, dtype in sorted(dtypes.items()) if dtype.is_floating}
    except (tf.errors.OpError, ValueError, IndexError) as error:  # IndexError: a short data file
        raise SourceError(f"corrupt or truncated checkpoint data ({_first_line(error)})",
                          data[0] if len(data) == 1 else prefix.parent) from None


def _first_line(error: Exception) -> str:
    return getattr(error, "message", str(error)).strip().splitlines()[0]
