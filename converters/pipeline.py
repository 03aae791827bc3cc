"""`convert()`: source -> Keras float model -> TFLite -> validation -> bundle, one stage per step.

The float Keras model is the reference every export is checked against; nothing is written unless the
export passes its mode's thresholds.
"""
from __future__ import annotations

import platform
import tempfile
import time
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Callable

import numpy as np

from converters.export import Compat, QuantizeMode, export_tflite
from converters import mediapipe_metadata
from converters.mixed_precision import (DEFAULT_BUDGET, check_budget, converter_makes_it, finish_export,
                                        quantizer_precision)
from converters.quantize import Override, check_overrides, expected_layer_names
from converters.sentence_embedding import SentencePooling
from edgebert.quiet import native_output_silenced
from converters.sources import Source, load_source
from converters.validate import ExportCheck
from edgebert import __version__, bundle, samples, tokenizer as tokenization
from edgebert.errors import SourceError, UsageError
from edgebert.interpreter import SIGNATURE, TFLiteModel, signature_for

GOLDEN_SENTENCES, GOLDEN_PAIRS = 4, 1


class Head(str, Enum):
    AUTO = "auto"  # classifier when the checkpoint has one, else sentence-embedding when it has one, else encoder
    ENCODER = "encoder"
    CLASSIFIER = "classifier"
    SENTENCE_EMBEDDING = "sentence-embedding"  # a sentence-transformers folder's pooling (+ Normalize)


class LastLayer(str, Enum):
    AUTO = "auto"  # [CLS] only where the outputs read nothing else (a classifier, [CLS] pooling), else full
    CLS = "cls"  # the last layer computes the [CLS] row alone (converters.model.encoder_layer)
    FULL = "full"


@dataclass(frozen=True)
class ConvertOptions:
    quantize: QuantizeMode = QuantizeMode.DYNAMIC_INT8
    seq_len: int | None = 128  # None: dynamic length; with buckets, the longest (serving_default)
    buckets: tuple[int, ...] = ()  # shorter lengths, one signature each in the same model.tflite
    last_layer: LastLayer = LastLayer.AUTO
    head: Head = Head.AUTO
    compat: Compat | None = None
    calibration_file: Path | None = None  # int8: sentences, one per line (default: samples/)
    calibration_size: int = 100
    validation_size: int = 32  # texts from samples/; a validation_file gives up to VALIDATION_FILE_TEXTS
    # The user's own text to validate on, one per line (default: samples/): the thresholds then hold for
    # text like it (a semantic search's short queries move further under int8 than samples/' sentences).
    validation_file: Path | None = None
    lowercase: bool | None = None  # None: follow the checkpoint
    labels: tuple[str, ...] = ()
    force: bool = False
    recipe_name: str | None = None  # the named recipe (converters/recipes) this export ends
    # A labelled task TSV to score the exported model.tflite on (manifest "evaluation"); its columns are
    # detected unless given (names or 0-based indices, as edgebert.tasks.load_task takes them).
    eval_file: Path | None = None
    eval_text_columns: tuple[str | int, ...] | None = None
    eval_label_column: str | int | None = None
    # Per-layer precisions (converters/quantize.py; a recipe's [[convert.overrides]]), and the search that
    # raises the most sensitive layers when an export misses its thresholds (converters/mixed_precision.py;
    # dynamic-int8, dynamic-int4, and int8 with static int8 dense layers among float ops). Off: an export
    # that misses is refused, as before.
    layer_overrides: tuple[Override, ...] = ()
    mixed_precision: bool = True
    mixed_precision_budget: float = DEFAULT_BUDGET  # largest share of weights kept float32
    # A dynamic-int8 or dynamic-int4 export that misses its thresholds is made again with outlier equalization
    # (converters/outliers.py: smoothing, value rotation, GPTQ) before any layer's precision is raised.
    equalize: bool = True
    # --equalize rotate: always equalize, rotating the dense layers' inputs at run time instead of smoothing
    # them (closer to float, slower: converters/outliers.py).
    rotate: bool = False

    def __post_init__(self):
        object.__setattr__(self, "quantize", QuantizeMode(self.quantize))
        object.__setattr__(self, "head", Head(self.head))
        object.__setattr__(self, "last_layer", LastLayer(self.last_layer))
        object.__setattr__(self, "buckets", tuple(sorted(set(self.buckets))))
        if self.seq_len is not None and not 3 <= self.seq_len:
            raise UsageError(f"--seq-len must be at least 3 ([CLS], one token, [SEP]), got {self.seq_len}")
        if self.buckets and self.seq_len is None:
            raise UsageError("length buckets need fixed lengths; 'dynamic' cannot be one of them")
        if any(not 3 <= length < self.seq_len for length in self.buckets):
            raise UsageError(f"--seq-len lengths must be at least 3, got {', '.join(map(str, self.lengths))}")
        if self.calibration_size < 1 or self.validation_size < 1:
            raise UsageError("calibration and validation sizes must be at least 1")
        if self.eval_file is None and (self.eval_text_columns or self.eval_label_column is not None):
            raise UsageError("--eval-text-columns and --eval-label-column need --eval FILE")
        object.__setattr__(self, "layer_overrides", tuple(self.layer_overrides))
        check_budget(self.mixed_precision_budget)
        if self.rotate:  # rotate is a kind of equalization
            object.__setattr__(self, "equalize", True)
        if self.rotate and not _may_equalize(self):
            raise UsageError("--equalize rotate is for dynamic-int8 and dynamic-int4 exports without --compat and "
                             f"without layer overrides (this one: {self.quantize.value})")
        if self.compat is not None and self.buckets:
            raise UsageError(f"--compat {self.compat.value} takes one length: tflite-runtime 2.14 crashes on "
                             f"Arm on the short lengths that buckets add (README: Raspberry Pi)")
        if self.layer_overrides and quantizer_precision(self.quantize, self.compat) is None:
            raise UsageError(f"per-layer overrides (recipe {self.layer_overrides[0].recipe}) need dynamic-int8 "
                             f"or dynamic-int4 without --compat; {self.quantize.value} is exported by the "
                             f"TensorFlow converter as a whole")

    @property
    def lengths(self) -> tuple[int | None, ...]:
        """Every length the model is exported at, shortest first; the last is serving_default."""
        return (*self.buckets, self.seq_len)


@dataclass(frozen=True)
class ConversionResult:
    bundle_dir: Path
    manifest: dict
    seconds: float


def parse_seq_len(text: str) -> int | None:
    if str(text).lower() == "dynamic":
        return None
    try:
        return int(text)
    except ValueError:
        raise UsageError(f"--seq-len must be a number, comma-separated numbers or 'dynamic', got {text!r}") from None


def parse_last_layer(text: str) -> LastLayer:
    try:
        return LastLayer(text)
    except ValueError:
        raise UsageError(f"unknown last layer {text!r} (choose from {', '.join(m.value for m in LastLayer)})") from None


def parse_seq_lens(text: str) -> tuple[int | None, tuple[int, ...]]:
    """`--seq-len`: one length, 'dynamic', or several (length buckets): (the longest, the shorter ones)."""
    parts = [part.strip() for part in str(text).split(",")]
    if len(parts) == 1:
        return parse_seq_len(parts[0]), ()
    lengths = [parse_seq_len(part) for part in parts]
    if None in lengths:
        raise UsageError("length buckets need fixed lengths; 'dynamic' cannot be one of them")
    if len(set(lengths)) != len(lengths):
        raise UsageError(f"--seq-len lists a length twice: {text}")
    lengths.sort()
    return lengths[-1], tuple(lengths[:-1])


def bundle_tokenizer(source: Source, seq_len: int | None):
    """The bundle's tokenizer, always rebuilt from the vocab so it behaves exactly like BERT's reference
    WordPiece (a Hugging Face tokenizer.json contributes its vocab and its word-length limit, which
    `load_source` read into `source.max_word_chars`)."""
    vocab = source.vocab
    if vocab is None:
        loaded = tokenization.load_tokenizer(source.tokenizer_json)
        by_id = sorted(loaded.get_vocab().items(), key=lambda item: item[1])
        if [i for _, i in by_id] != list(range(len(by_id))):
            raise SourceError("tokenizer vocabulary ids are not contiguous", source.tokenizer_json)
        vocab = [token for token, _ in by_id]
    if len(vocab) != source.config.vocab_size:
        raise SourceError(f"tokenizer has {len(vocab)} tokens, config says {source.config.vocab_size}", source.path)
    return tokenization.build_tokenizer(vocab, lowercase=source.lowercase, seq_len=seq_len,
                                        max_word_chars=source.max_word_chars)


def _resolve_head(source: Source, head: Head) -> tuple[int, SentencePooling | None]:
    """(number of labels, sentence pooling): at most one of them is set; neither for an encoder."""
    if head is Head.CLASSIFIER and not source.num_labels:
        raise UsageError("has no classifier head (output_weights/output_bias or classifier.*); use --head encoder",
                         source.path)
    if head is Head.SENTENCE_EMBEDDING and source.sentence_pooling is None:
        raise UsageError("is not a sentence-transformers model (no modules.json with a Pooling module); "
                         "use --head encoder", source.path)
    if head is Head.ENCODER:
        return 0, None
    if head is Head.SENTENCE_EMBEDDING or (head is Head.AUTO and not source.num_labels):
        return 0, source.sentence_pooling
    return source.num_labels, None


def _labels(source: Source, options: ConvertOptions, num_labels: int) -> list[str]:
    labels = list(options.labels) or source.labels or [str(i) for i in range(num_labels)]
    if num_labels and len(labels) != num_labels:
        raise UsageError(f"--labels names {len(labels)} labels but the classifier in {source.path} has {num_labels}")
    return labels if num_labels else []


VALIDATION_FILE_TEXTS = 256  # at most, from --validation: each is run on every candidate of a search


def _validation_texts(options: ConvertOptions) -> list:
    if options.validation_file is None:
        return _texts(options.validation_size)
    return samples.load_sentences(options.validation_file, limit=VALIDATION_FILE_TEXTS)  # none: one line


def _texts(limit: int, path: Path | None = None) -> list:
    """Real text for calibration and validation: sentences and some sentence pairs."""
    pairs = [] if path else samples.load_pairs(limit=max(1, limit // 4))
    return samples.load_sentences(path, limit=limit - len(pairs)) + pairs


def _encode_each(tokenizer, texts: list, seq_len: int | None) -> list[dict[str, np.ndarray]]:
    """One [1, S] input dict per text (dynamic models see each text at its own length)."""
    return [tokenization.encode(tokenizer, [text], seq_len) for text in texts]


def _at_every_length(tokenizer, texts: list, lengths: tuple) -> tuple[list[dict], list[dict]]:
    """Each text at each length (truncated to it), and the same ids padded to the longest: what a model
    with length buckets runs, and what its float reference sees (padding must change nothing)."""
    inputs = [encoded for length in lengths for encoded in _encode_each(tokenizer, texts, length)]
    longest = lengths[-1]
    if longest is None:
        return inputs, inputs
    pad = tokenizer.token_to_id("[PAD]")
    return inputs, [_pad_to(encoded, longest, pad) for encoded in inputs]


def _pad_to(encoded: dict[str, np.ndarray], width: int, pad_id: int) -> dict[str, np.ndarray]:
    extra = width - encoded["input_ids"].shape[-1]
    return {name: np.pad(value, ((0, 0), (0, extra)), constant_values=pad_id if name == "input_ids" else 0)
            for name, value in encoded.items()}


def _calibration(tokenizer, texts: list, lengths: tuple):
    """int8 calibration data: input dicts, or (signature, input dict) pairs for a bucketed model, each
    signature's activations calibrated on the texts at its own length."""
    if len(lengths) == 1:
        inputs = _encode_each(tokenizer, texts, lengths[0])
        return lambda: iter(inputs)
    pairs = [(signature_for(length, lengths[-1]), encoded) for length in lengths
             for encoded in _encode_each(tokenizer, texts, length)]
    return lambda: iter(pairs)


def _cls_only_last_layer(options: ConvertOptions, num_labels: int, pooling: SentencePooling | None) -> bool:
    from converters.model import reads_only_cls

    possible = reads_only_cls(num_labels, pooling)
    if options.last_layer is LastLayer.CLS and not possible:
        raise UsageError("--last-layer cls needs outputs that read only [CLS] (a classifier, or a sentence "
                         "embedding with CLS pooling); this export's "
                         f"{'pooling reads every token' if pooling else 'sequence_output needs every row'}")
    if options.compat is not None and options.last_layer is LastLayer.AUTO:
        # tflite-runtime 2.14 crashed on Cortex-A76 on per-tensor int8 dense layers of 2 to ~24 rows, and a
        # [CLS]-only layer has 1: unproven there, so a --compat export keeps the full layer unless asked.
        return False
    return possible and options.last_layer is not LastLayer.FULL


def _may_equalize(options: ConvertOptions) -> bool:
    """Outlier equalization is for dynamic int8 and int4 with per-channel weights (not --compat's
    per-tensor ones) when the user left the layers' precisions to edgebert."""
    return (options.equalize and options.quantize in (QuantizeMode.DYNAMIC_INT8, QuantizeMode.DYNAMIC_INT4)
            and options.compat is None and not options.layer_overrides)


def _shortfall(check: ExportCheck, model_bytes: bytes, scratch: Path, by_converter: bool, mode: QuantizeMode) -> float:
    """The plain export's validation shortfall (validate.shortfall: 1.0 = on the threshold; it passes
    below). `model_bytes` is the converter's export in the mode, or (ai-edge-quantizer's modes) the float32
    export, which is quantized here with every layer at the mode's precision."""
    from converters.validate import shortfall

    if not by_converter:
        from converters import quantize

        prepared = quantize.prepare(model_bytes)
        layers = quantize.find_layers(prepared)
        plan = quantize.apply_overrides(layers, quantizer_precision(mode, None), ())
        model_bytes = quantize.quantize(prepared, layers, {name: choice[0] for name, choice in plan.items()})
    path = scratch / "plain.tflite"
    path.write_bytes(model_bytes)
    try:
        report = check.measure(TFLiteModel(path))
        return 0.0 if check.passes(report) else shortfall(report, check.mode)
    finally:
        path.unlink()


def golden_examples(tflite: TFLiteModel, tokenizer, lengths: tuple, mode: QuantizeMode) -> dict:
    """A few texts with their ids and the exported model's own outputs, for checks on the device: at
    every length of a model with length buckets."""
    texts = samples.load_sentences(limit=GOLDEN_SENTENCES) + samples.load_pairs(limit=GOLDEN_PAIRS)
    examples = []
    for seq_len, text in ((length, text) for length in lengths for text in texts):
        encoded = tokenization.encode(tokenizer, [text], seq_len)
        outputs = tflite(**encoded)
        record = {"text": text} if isinstance(text, str) else {"text": text[0], "text_pair": text[1]}
        record.update({name: encoded[name][0].tolist() for name in ("input_ids", "attention_mask", "token_type_ids")})
        length = int(encoded["attention_mask"].sum())
        record["outputs"] = {name: _golden_value(name, value, length) for name, value in outputs.items()}
        examples.append(record)
    return {"signature": SIGNATURE, "tolerance": {"min_cosine": 0.999 if mode is not QuantizeMode.INT8 else 0.99},
            "examples": examples}


def _golden_value(name: str, value: np.ndarray, length: int) -> list:
    # A full sequence output is S x H floats per text; its first and mean token rows pin it down.
    if name == "sequence_output":
        return {"first_token": value[0, 0].tolist(), "mean_token": value[0, :length].mean(0).tolist()}
    return value[0].tolist()


def _tool_versions() -> dict:
    import tokenizers

    from converters.tf_import import tf, tf_keras
    return {"edgebert": __version__, "tensorflow": tf.__version__, "tf_keras": tf_keras.__version__,
            "numpy": np.__version__, "tokenizers": tokenizers.__version__, "python": platform.python_version()}


def _io_contract(lengths: tuple, config, num_labels: int, pooling: SentencePooling | None = None) -> dict:
    seq_len = lengths[-1]
    shape = [1, seq_len if seq_len else -1]
    inputs = [{"name": name, "dtype": "int32", "shape": shape}
              for name in ("input_ids", "attention_mask", "token_type_ids")]
    if num_labels:
        # the softmax of the logits, appended in the graph (converters/mediapipe_metadata.with_probabilities)
        outputs = [{"name": "probabilities", "dtype": "float32", "shape": [1, num_labels]}]
    elif pooling is not None:
        outputs = [{"name": "sentence_embedding", "dtype": "float32", "shape": [1, config.hidden_size]}]
    else:
        outputs = [{"name": "sequence_output", "dtype": "float32", "shape": [*shape, config.hidden_size]},
                   {"name": "pooled_output", "dtype": "float32", "shape": [1, config.hidden_size]}]
    contract = {"signature": SIGNATURE, "inputs": inputs, "outputs": outputs}
    if len(lengths) > 1:  # a [1, S] model per length; the shapes above are the longest's
        contract["signatures"] = {signature_for(length, seq_len): length for length in lengths}
    return contract


def convert(source_path: str | Path, out_dir: str | Path, options: ConvertOptions = ConvertOptions(),
            log: Callable[[str], None] = lambda message: None, source: Source | None = None,
            fetch_progress=None) -> ConversionResult:
    """Convert a checkpoint into a validated bundle at out_dir (atomically; nothing on failure).
    `fetch_progress(done, total)` reports the download when source_path is a variant name."""
    from converters.model import INT8_MASKED_SCORE, MASKED_SCORE, build_bert, set_google_weights

    started = time.perf_counter()
    out_dir = Path(out_dir)
    bundle.check_output_dir(out_dir, options.force)
    if source is None:
        log(f"reading {source_path}")
        source = load_source(source_path, options.lowercase, fetch_progress=fetch_progress)
    config, seq_len, mode, lengths = source.config, options.seq_len, options.quantize, options.lengths
    if seq_len is not None and seq_len > config.max_positions:
        raise UsageError(f"--seq-len {seq_len} exceeds the model's {config.max_positions} positions")
    num_labels, pooling = _resolve_head(source, options.head)
    labels = _labels(source, options, num_labels)
    if options.layer_overrides:  # before the slow part: a pattern that matches no layer fails at once
        expected = expected_layer_names(config.num_layers, pooling is None, num_labels > 0, bool(options.buckets))
        check_overrides(expected, options.layer_overrides)
    tokenizer = bundle_tokenizer(source, seq_len)
    tokenizer_bytes = tokenizer.to_str(pretty=True).encode("utf-8")

    eval_task = None
    if options.eval_file is not None:  # read before the slow part, so a bad file fails at once
        from edgebert.evaluate import check_task_fits, load_eval_task

        if not num_labels:
            raise UsageError("--eval scores a classifier, but this export is an encoder (no classifier head)",
                             source.path)
        eval_task = load_eval_task(options.eval_file, text_columns=options.eval_text_columns,
                                   label_column=options.eval_label_column)
        check_task_fits(eval_task, num_labels, source.path)

    validation_texts = _validation_texts(options)  # read before the slow part, so a bad file fails at once
    calibration = None
    if mode is QuantizeMode.INT8:  # read before the slow part, so a bad file fails at once
        calibration = _calibration(tokenizer, _texts(options.calibration_size, options.calibration_file), lengths)
    cls_only = _cls_only_last_layer(options, num_labels, pooling)

    embedder = f", {pooling.mode.value} pooling{' + normalize' if pooling.normalize else ''}" if pooling else ""
    log(f"building the float model ({config.num_layers} layers, hidden {config.hidden_size}{embedder})")
    model = build_bert(config, seq_len, num_labels, pooling=pooling)
    unused = set_google_weights(model, config, source.weights, num_labels, str(source.path))
    exported = model
    # The same weights in the graph that is exported: an int8-friendly mask bias (see model.py), a [CLS]-only
    # last layer, or any input length (each bucket's signature traces it at its own).
    if mode is QuantizeMode.INT8 or cls_only or options.buckets:
        exported = build_bert(config, None if options.buckets else seq_len, num_labels, pooling=pooling,
                              cls_only_last_layer=cls_only, shared_position_table=bool(options.buckets),
                              masked_score=INT8_MASKED_SCORE if mode is QuantizeMode.INT8 else MASKED_SCORE)
        exported.set_weights(model.get_weights())
    # The TensorFlow converter exports the mode itself, or float32 for ai-edge-quantizer (dynamic-int4,
    # per-layer overrides; converters/mixed_precision.py says which), which also steps in when an export
    # misses its thresholds and the mixed-precision search may run.
    # --equalize rotate is about fidelity: ai-edge-quantizer's per-row word embedding scales move the sentence
    # embedding less than the converter's one scale per table (README, the error study).
    by_converter = converter_makes_it(mode, options.compat, options.layer_overrides) and not options.rotate
    export_mode = mode if by_converter else QuantizeMode.FLOAT32
    shown = ",".join(str(length) for length in lengths) if seq_len else "dynamic"
    last = ", last layer [CLS] only" if cls_only else ""
    model_bytes = None  # --equalize rotate exports the rotated model below, and nothing before it
    if not options.rotate:
        log(f"exporting {export_mode.value} (seq len {shown}{last})")
        with native_output_silenced():
            model_bytes = export_tflite(exported, seq_len, export_mode, calibration, options.compat, options.buckets)

    def export_float32() -> bytes:
        with native_output_silenced():
            return export_tflite(exported, seq_len, QuantizeMode.FLOAT32, shorter_lengths=options.buckets)

    log("validating against the float model" + (" at every length" if options.buckets else ""))
    validation_inputs, references = _at_every_length(tokenizer, validation_texts, lengths)
    with tempfile.TemporaryDirectory(prefix="edgebert-validate-") as scratch:
        check = ExportCheck(model, validation_inputs, mode, references)
        rotate = options.rotate  # ConvertOptions checked that the export may be equalized
        equalized, missed = None, (_shortfall(check, model_bytes, Path(scratch), by_converter, mode)
                                   if _may_equalize(options) and not rotate else 0.0)
        if rotate:
            log(f"exporting {mode.value} with outlier equalization (run-time rotations, value rotation, GPTQ; "
                f"seq len {shown}{last}), as --equalize rotate asks")
        elif missed:
            log(f"the plain {mode.value} export misses its thresholds (shortfall {missed:.3g}); exporting "
                "again with outlier equalization (smoothing, value rotation, GPTQ)")
        if rotate or missed:
            from converters import outliers

            # Held out from what validation checks: GPTQ fitted to the validation texts would pass them and
            # say little about any other text.
            held_out = set(validation_texts)
            texts = [text for text in _texts(outliers.CALIBRATION_TEXTS, options.calibration_file)
                     if text not in held_out]
            if not texts:
                raise UsageError("has no sentence that validation does not check already; outlier equalization "
                                 "calibrates on others", options.calibration_file)
            rotation = outliers.ROTATION_BLOCKS if rotate else None
            equalized = outliers.equalize(
                model, lambda: build_bert(config, None if options.buckets else seq_len, num_labels, pooling=pooling,
                                          cls_only_last_layer=cls_only, shared_position_table=bool(options.buckets),
                                          smoothing=not rotate, rotation=rotation),
                config, _encode_each(tokenizer, texts, seq_len), log, rotation)
            exported = equalized.model  # export_float32() exports this from now on
            with native_output_silenced():
                model_bytes = export_tflite(exported, seq_len, export_mode, None, options.compat, options.buckets)
            if by_converter:  # else GPTQ refines each export ai-edge-quantizer makes (finish_export's refine)
                model_bytes = equalized.refine(model_bytes)
        quantized = finish_export(
            model_bytes, export_float32, mode, options.compat, options.layer_overrides, options.mixed_precision,
            options.mixed_precision_budget, check, Path(scratch), log,
            refine=equalized.refine if equalized else None, calibration=calibration, by_converter=by_converter)
        model_bytes, validation = quantized.model, quantized.validation
        # A classifier's logits become probabilities (a SOFTMAX in the graph); a classifier or sentence embedding
        # carries MediaPipe's metadata in model.tflite itself (converters/mediapipe_metadata.py).
        model_bytes, mediapipe = mediapipe_metadata.for_convert(
            model_bytes, head="classifier" if num_labels else "sentence-embedding" if pooling else "encoder",
            tokenizer=tokenizer, labels=labels, lowercase=source.lowercase, seq_len=seq_len, name=out_dir.name, log=log,
            buckets=options.buckets)
        if quantized.summary:
            log(quantized.summary)
        model_path = Path(scratch) / bundle.MODEL_FILE
        model_path.write_bytes(model_bytes)
        tflite = TFLiteModel(model_path)
        if options.buckets:
            validation["lengths"] = {str(length): report for length, report in check.by_length(tflite).items()}
        golden = golden_examples(tflite, tokenizer, lengths, mode)
        ops = tflite.op_names()
        runtime = tflite.runtime.describe()
        evaluation = None
        if eval_task is not None:  # the exported model itself, with the tokenizer.json the bundle ships
            from edgebert.evaluate import evaluate_model, manifest_record

            log(f"evaluating on {options.eval_file} ({len(eval_task):,} examples)")
            tokenizer_path = Path(scratch) / bundle.TOKENIZER_FILE
            tokenizer_path.write_bytes(tokenizer_bytes)
            evaluation = manifest_record(evaluate_model(model_path, tokenizer_path, seq_len, eval_task,
                                                        num_labels=num_labels))

    files = {bundle.MODEL_FILE: model_bytes,
             bundle.TOKENIZER_FILE: tokenizer_bytes,
             bundle.GOLDEN_FILE: bundle.to_json_bytes(golden)}
    variant = source.variant
    manifest = {
        "schema_version": bundle.MANIFEST_SCHEMA_VERSION,
        "name": out_dir.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {"path": str(source.path), "kind": source.kind, "sha256": source.sha256,
                   "variant": variant.name if variant else None, "random_weights": source.random_weights,
                   "unused_variables": unused, "history": source.history},
        "model": config.to_dict(),
        "head": "classifier" if num_labels else "sentence-embedding" if pooling else "encoder",
        "labels": labels,
        **({"sentence_embedding": pooling.to_manifest()} if pooling else {}),
        "recipe": {"name": options.recipe_name, "quantize": mode.value, "seq_len": seq_len or "dynamic",
                   **({"seq_lens": list(lengths)} if options.buckets else {}),
                   "last_layer": "cls" if cls_only else "full",
                   "compat": options.compat.value if options.compat else None,
                   "calibration": (str(options.calibration_file or "samples/") if mode is QuantizeMode.INT8 else None),
                   "overrides": [{"layers": o.layers, "precision": o.precision.value} for o in options.layer_overrides]},
        "io": _io_contract(lengths, config, num_labels, pooling),
        "mediapipe": mediapipe,
        "tokenizer": {"file": bundle.TOKENIZER_FILE, "lowercase": source.lowercase, "vocab_size": config.vocab_size,
                      "max_word_chars": source.max_word_chars},
        "ops": ops,
        "quantization": {**quantized.manifest,
                         **({"equalization": equalized.manifest(model_bytes, None if rotate else missed)} if equalized else {})},
        "validation": {**validation, "texts": str(options.validation_file or "samples/"), "runtime": runtime},
        **({"evaluation": evaluation} if evaluation is not None else {}),
        "sizes": {"model_bytes": len(model_bytes), "parameters": int(sum(np.prod(w.shape) for w in model.weights))},
        "files": {name: {"bytes": len(data), "sha256": bundle.sha256_bytes(data)} for name, data in files.items()},
        "tools": _tool_versions(),
    }
    files[bundle.MANIFEST_FILE] = bundle.to_json_bytes(manifest)
    log(f"writing {out_dir}")
    bundle.write_directory_atomically(out_dir, files, force=options.force)
    return ConversionResult(out_dir, manifest, time.perf_counter() - started)


def describe_validation(manifest: dict) -> str:
    """One line per output: the figures a person checks first."""
    parts = []
    for name, entry in manifest["validation"]["outputs"].items():
        text = f"{name}: min cos {entry['min_cosine']:.6f}, max |diff| {entry['max_abs_diff']:.3g}"
        if "argmax_agreement" in entry:
            text += (f", max probability diff {entry['max_probability_diff']:.3g}, "
                     f"argmax agreement {entry['argmax_agreement']:.1%}")
        parts.append(text)
    return "; ".join(parts)

