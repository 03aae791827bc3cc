"""MediaPipe Tasks: a bundle's model as the `.tflite` that MediaPipe's TextClassifier and TextEmbedder
(Android, iOS, the web, Python) run with no app code.

MediaPipe reads a BERT model's contract from TFLite Model Metadata packed into the file, and requires:
one subgraph; three int32 inputs [1, S] (all fixed or all dynamic) whose tensor metadata is named
`ids`, `mask` and `segment_ids`; a BertTokenizer input process unit with the vocabulary packed into
the file as a VOCABULARY file; for a classifier, the labels as a TENSOR_AXIS_LABELS file. It treats
every output tensor as one classification head or one embedding, and applies no softmax. So what
MediaPipe sees, per head:

    head                task            the one output
    classifier          TextClassifier  `probabilities`: a SOFTMAX appended to the logits in the graph
    sentence-embedding  TextEmbedder    `sentence_embedding`, the graph edgebert runs, unchanged
    encoder             TextEmbedder    `pooled_output` (`sequence_output` dropped: it would be a second
                                        embedding of S x H values)

`edgebert convert` gives a classifier's model.tflite the `probabilities` output in every signature
(`with_probabilities`: the SOFTMAX goes after whatever the mode made of the logits, so float16, int8,
int4, --compat and mixed-precision exports all get it; edgebert's runner, validation and device tests
read it, and still read `logits` from older bundles). A classifier's and a sentence-embedding bundle's
own model.tflite then carries the metadata (the interpreter ignores metadata, so edgebert's runner is
unaffected) when the model is uncased, has one length and MediaPipe's writers are installed; otherwise
the manifest's `mediapipe` record says why not. An encoder bundle keeps both of its outputs, and
`edgebert export-mediapipe BUNDLE --out FILE` writes its MediaPipe file (the same graph minus
`sequence_output`, with the metadata), as it does for a bundle without metadata of any head (an older
classifier's `logits` get the SOFTMAX there; a bucketed model keeps its longest length). The vocabulary
packed is always the bundle's own (after `trim-vocab`, the trimmed one).

The graph is edited with the TFLite schema of ai-edge-litert (the device side's runtime, the newest
schema here: an older one would drop the fields it does not know when the model is packed again).
The metadata is written by MediaPipe's own writers (`mediapipe.tasks.python.metadata.metadata_writers`
in PyPI `mediapipe` 1.2.3), imported here without running `mediapipe/__init__.py` (which imports cv2
and matplotlib) and without TensorFlow, with a stand-in for the native module the 1.2.3 wheel lacks
(`_pywrap_metadata_version`: "1.1.0" is the parser version a BERT tokenizer with a vocab file needs).
mediapipe 1.2.3 pins absl-py~=2.3 and tensorflow-model-optimization pins absl-py~=1.2, so pip cannot
resolve both in one environment: install it with `pip install --no-deps mediapipe==1.2.3` (the writers
need only flatbuffers and numpy, which the converter has).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgebert.errors import BundleError, UsageError
from edgebert.scores import LOGITS, PROBABILITIES

MEDIAPIPE_VERSION = "1.2.3"
INSTALL_HINT = f"pip install --no-deps mediapipe=={MEDIAPIPE_VERSION}"
METADATA_NAME = "TFLITE_METADATA"  # the TFLite model's metadata entry that holds the ModelMetadata buffer
PARSER_VERSION = "1.1.0"  # the metadata parser version a BertTokenizer with a vocab file needs
SIGNATURE = "serving_default"
INPUTS = {"input_ids": "ids", "attention_mask": "mask", "token_type_ids": "segment_ids"}  # edgebert -> MediaPipe
NEEDED_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]")
VOCAB_FILE = "vocab.txt"
TASKS = {"classifier": ("TextClassifier", PROBABILITIES),
         "sentence-embedding": ("TextEmbedder", "sentence_embedding"),
         "encoder": ("TextEmbedder", "pooled_output")}
EXPORT_COMMAND = "edgebert export-mediapipe BUNDLE --out FILE"


# --- importing MediaPipe's writers ----------------------------------------------------------------------

def _package(name: str, path: str) -> types.ModuleType:
    module = types.ModuleType(name)
    module.__path__ = [path]
    module.__package__ = name
    return module


def import_mediapipe(module: str) -> types.ModuleType:
    """A submodule of PyPI `mediapipe` (the metadata writers, the text tasks), imported without running
    the package's `__init__` (cv2, matplotlib, audio) and without importing TensorFlow for it; a
    UsageError with the install line when mediapipe is not installed."""
    absent = UsageError(f"MediaPipe's metadata writers are not installed: {INSTALL_HINT}")
    if "mediapipe" in sys.modules and sys.modules["mediapipe"] is None:  # import blocked
        raise absent
    if "mediapipe" not in sys.modules:
        spec = importlib.util.find_spec("mediapipe")
        if spec is None or not spec.submodule_search_locations:
            raise absent
        root = spec.submodule_search_locations[0]
        # The packages on the way down, as bare namespaces: their __init__ files import every task.
        for name, sub in (("mediapipe", ""), ("mediapipe.tasks", "tasks"), ("mediapipe.tasks.python", "tasks/python")):
            sys.modules.setdefault(name, _package(name, os.path.join(root, sub)))
        try:
            from importlib.metadata import version
            sys.modules["mediapipe"].__version__ = version("mediapipe")
        except Exception:  # noqa: BLE001 - a version string is only informative
            pass
    _stub_metadata_version()
    blocked = "tensorflow" not in sys.modules  # mediapipe's metadata.py uses TF's file API when it can import TF
    if blocked:
        sys.modules["tensorflow"] = None  # type: ignore[assignment]
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise UsageError(f"cannot import {module} ({error}); MediaPipe's writers need {INSTALL_HINT}") from None
    finally:
        if blocked and sys.modules.get("tensorflow", 0) is None:
            del sys.modules["tensorflow"]


def _stub_metadata_version() -> None:
    """mediapipe 1.2.3's wheel lacks the native module that computes the metadata parser version."""
    name = "mediapipe.tasks.cc.metadata.python._pywrap_metadata_version"
    if name in sys.modules:
        return
    try:
        importlib.import_module(name)
        return
    except ImportError:
        pass
    parents = ("mediapipe.tasks.cc", "mediapipe.tasks.cc.metadata", "mediapipe.tasks.cc.metadata.python")
    for parent in parents:
        if parent not in sys.modules:
            module = types.ModuleType(parent)
            module.__path__ = []
            sys.modules[parent] = module
    stub = types.ModuleType(name)
    stub.GetMinimumMetadataParserVersion = lambda *args, **kwargs: PARSER_VERSION
    sys.modules[name] = stub
    sys.modules[parents[-1]]._pywrap_metadata_version = stub


def writers_available() -> bool:
    try:
        import_mediapipe("mediapipe.tasks.python.metadata.metadata_writers.metadata_writer")
    except UsageError:
        return False
    return True


# --- the graph MediaPipe runs ---------------------------------------------------------------------------

def _schema():
    """ai-edge-litert's TFLite schema (object API) and its flatbuffer helpers, as converters/quantize.py uses
    them: they also read the buffers a large model stores past the flatbuffer."""
    try:
        from ai_edge_litert import schema_py_generated
        from ai_edge_litert.tools import flatbuffer_utils
    except ImportError as error:
        raise UsageError(f"editing a .tflite needs ai-edge-litert's schema ({error}): pip install ai-edge-litert") \
            from None
    return schema_py_generated, flatbuffer_utils


def _unpack(model_bytes: bytes, where):
    _, utils = _schema()
    try:
        return utils.read_model_from_bytearray(bytearray(model_bytes))
    except Exception as error:  # noqa: BLE001 - a corrupt flatbuffer raises anything
        raise BundleError(f"not a TFLite model ({type(error).__name__}: {error})", where) from None


def _pack(model) -> bytes:
    """The model's bytes; buffer data as numpy arrays, which the flatbuffers builder copies whole (as
    converters/quantize.py's _serialize does)."""
    _, utils = _schema()
    for buffer in model.buffers or []:
        if buffer.data is not None and not isinstance(buffer.data, np.ndarray):
            buffer.data = np.frombuffer(bytes(buffer.data), np.uint8)
    return bytes(utils.convert_object_to_bytearray(model))


@dataclass(frozen=True)
class Prepared:
    """A single-output model ready for its metadata, and the model's names MediaPipe's writer needs."""
    model: bytes
    input_tensor_names: dict[str, str]  # edgebert input name -> the model's tensor name
    output: str
    seq_len: int | None


def single_output_model(model_bytes: bytes, head: str, where: str | os.PathLike) -> Prepared:
    """The graph MediaPipe runs for this head (see the module docstring), with any earlier metadata and
    its packed files removed. `where` names the model in errors."""
    if head not in TASKS:
        raise UsageError(f"head {head!r} has no MediaPipe task (expected one of {', '.join(TASKS)})", where)
    fb, _ = _schema()
    model = _unpack(model_bytes, where)
    signature = next((s for s in model.signatureDefs or [] if _text(s.signatureKey) == SIGNATURE), None)
    if signature is None:
        raise BundleError(f"model has no {SIGNATURE!r} signature", where)
    if len(model.subgraphs or []) != 1:  # length buckets: MediaPipe runs one subgraph, the longest length
        _keep_only_signature(model, signature, where)
    graph = model.subgraphs[0]
    inputs = {_text(item.name): int(item.tensorIndex) for item in signature.inputs or []}
    if sorted(inputs) != sorted(INPUTS) or sorted(inputs.values()) != sorted(int(i) for i in graph.inputs):
        raise UsageError(f"MediaPipe's BERT tasks need the inputs {', '.join(INPUTS)}; this model has "
                         f"{', '.join(sorted(inputs)) or 'none'}", where)
    shapes = set()
    for name, index in inputs.items():
        tensor = graph.tensors[index]
        signature_shape = tensor.shapeSignature if tensor.shapeSignature is not None else tensor.shape
        shape = tuple(int(v) for v in signature_shape)
        if tensor.type != fb.TensorType.INT32 or len(shape) != 2 or shape[0] != 1:
            raise UsageError(f"MediaPipe needs int32 [1, S] inputs; {name} is {_type_name(fb, tensor.type)} "
                             f"{list(shape)}", where)
        shapes.add(shape[1])
    if len(shapes) != 1:
        raise UsageError(f"MediaPipe needs the three inputs at one length; they have {sorted(shapes)}", where)
    length = shapes.pop()

    outputs = {_text(item.name): int(item.tensorIndex) for item in signature.outputs or []}
    _, output = TASKS[head]
    if head == "classifier" and output not in outputs:  # an older bundle's model: logits only
        if LOGITS not in outputs:
            raise BundleError(f"classifier model has neither {output!r} nor {LOGITS!r} output (has "
                              f"{sorted(outputs)})", where)
        _give_probabilities(fb, model, graph, signature, where)
        outputs = {_text(item.name): int(item.tensorIndex) for item in signature.outputs}
    if output not in outputs:
        raise BundleError(f"{head} model has no {output!r} output (has {sorted(outputs)})", where)
    kept = outputs[output]
    graph.outputs = np.array([kept], dtype=np.int32)
    entry = fb.TensorMapT()
    entry.name, entry.tensorIndex = output, kept
    signature.outputs = [entry]
    _drop_metadata(fb, model)

    packed = _pack(model)
    names = {name: _text(graph.tensors[index].name) for name, index in inputs.items()}
    return Prepared(packed, names, output, None if length < 0 else length)


def _keep_only_signature(model, signature, where) -> None:
    """Drop every subgraph but `signature`'s (a model with length buckets has one per length), and
    empty the buffers only the dropped ones used (indices stay valid; the shared weights stay)."""
    index = int(signature.subgraphIndex)
    if not 0 <= index < len(model.subgraphs):
        raise BundleError(f"signature {SIGNATURE!r} names subgraph {index}, which does not exist", where)
    kept = model.subgraphs[index]
    used = {int(tensor.buffer) for tensor in kept.tensors or []}
    dropped = {int(tensor.buffer) for i, graph in enumerate(model.subgraphs) if i != index
               for tensor in graph.tensors or []}
    for buffer in dropped - used - {0}:  # buffer 0 is the empty sentinel every model starts with
        model.buffers[buffer].data = None
    model.subgraphs, model.signatureDefs = [kept], [signature]
    signature.subgraphIndex = 0


def _text(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _type_name(fb, code: int) -> str:
    return next((name for name, value in vars(fb.TensorType).items() if value == code), str(code)).lower()


# --- a classifier's probabilities -----------------------------------------------------------------------

def with_probabilities(model_bytes: bytes, where: str | os.PathLike = "model.tflite") -> bytes:
    """A classifier model whose every signature (a model with length buckets has one per length) gives
    `probabilities`, a SOFTMAX of its logits appended in the graph, in place of `logits`: what MediaPipe's
    TextClassifier reports as scores, and what `edgebert convert` ships. The SOFTMAX reads the float32
    logits whatever the mode made of the layers before them. Checked on the interpreter before it is
    returned: the new output is the softmax of the old one at every length."""
    fb, _ = _schema()
    model = _unpack(model_bytes, where)
    if not model.signatureDefs:
        raise BundleError("model has no signatures", where)
    changed = False
    for signature in model.signatureDefs:
        names = [_text(item.name) for item in signature.outputs or []]
        if names == [PROBABILITIES]:
            continue
        if names != [LOGITS]:
            raise BundleError(f"signature {_text(signature.signatureKey)!r} of a classifier should give "
                              f"{LOGITS!r} alone, not {names}", where)
        index = int(signature.subgraphIndex)
        if not 0 <= index < len(model.subgraphs):
            raise BundleError(f"signature {_text(signature.signatureKey)!r} names subgraph {index}, which does "
                              f"not exist", where)
        _give_probabilities(fb, model, model.subgraphs[index], signature, where)
        changed = True
    if not changed:
        return bytes(model_bytes)
    packed = _pack(model)
    _check_probabilities(model_bytes, packed, where)
    return packed


def _give_probabilities(fb, model, graph, signature, where) -> None:
    """Append SOFTMAX(logits) to `graph` and make it the signature's and the graph's output in place of them."""
    [entry] = [item for item in signature.outputs if _text(item.name) == LOGITS]
    logits = int(entry.tensorIndex)
    source = graph.tensors[logits]
    if source.type != fb.TensorType.FLOAT32:
        raise BundleError(f"the classifier's logits are {_type_name(fb, source.type)}; the SOFTMAX that gives "
                          f"its probabilities reads float32", where)
    probabilities = _append_softmax(fb, model, graph, logits)
    graph.outputs = np.array([probabilities if int(i) == logits else int(i) for i in graph.outputs], dtype=np.int32)
    entry.name, entry.tensorIndex = PROBABILITIES, probabilities


def _append_softmax(fb, model, graph, logits: int) -> int:
    """probabilities = SOFTMAX(logits, beta 1): a new tensor and operator at the end of `graph`."""
    code = next((i for i, c in enumerate(model.operatorCodes)
                 if max(c.builtinCode, c.deprecatedBuiltinCode) == fb.BuiltinOperator.SOFTMAX), None)
    if code is None:
        operator_code = fb.OperatorCodeT()
        operator_code.builtinCode = operator_code.deprecatedBuiltinCode = fb.BuiltinOperator.SOFTMAX
        operator_code.version = 1
        model.operatorCodes.append(operator_code)
        code = len(model.operatorCodes) - 1
    source = graph.tensors[logits]
    model.buffers.append(fb.BufferT())  # an activation: an empty buffer of its own
    tensor = fb.TensorT()
    tensor.name, tensor.type, tensor.buffer = PROBABILITIES, fb.TensorType.FLOAT32, len(model.buffers) - 1
    tensor.shape = np.array(source.shape, dtype=np.int32)
    if source.shapeSignature is not None:
        tensor.shapeSignature = np.array(source.shapeSignature, dtype=np.int32)
    graph.tensors.append(tensor)
    operator = fb.OperatorT()
    operator.opcodeIndex = code
    operator.inputs = np.array([logits], dtype=np.int32)
    operator.outputs = np.array([len(graph.tensors) - 1], dtype=np.int32)
    operator.builtinOptionsType = fb.BuiltinOptions.SoftmaxOptions
    operator.builtinOptions = fb.SoftmaxOptionsT()
    operator.builtinOptions.beta = 1.0
    graph.operators.append(operator)
    return len(graph.tensors) - 1


PROBE_LENGTH = 8  # the length a dynamic model is probed at


def _check_probabilities(before: bytes, after: bytes, where) -> None:
    """Both models on the interpreter, at each of their lengths: `probabilities` must be the softmax of
    `logits` within 1e-5 (the rewrite touched nothing else). The ids are the vocabulary's first four
    tokens, which every BERT vocabulary has."""
    from edgebert.interpreter import TFLiteModel
    from edgebert.scores import softmax

    with tempfile.TemporaryDirectory(prefix="edgebert-probabilities-") as scratch:
        paths = [Path(scratch) / name for name in ("logits.tflite", "probabilities.tflite")]
        for path, data in zip(paths, (before, after)):
            path.write_bytes(data)
        original, rewritten = (TFLiteModel(path) for path in paths)
        worst = 0.0
        for length in rewritten.lengths or (PROBE_LENGTH,):
            feed = {"input_ids": (np.arange(length) % 4)[None].astype(np.int32),
                    "attention_mask": np.ones((1, length), np.int32),
                    "token_type_ids": np.zeros((1, length), np.int32)}
            want = softmax(np.asarray(original(**feed)[LOGITS]).reshape(-1))
            got = np.asarray(rewritten(**feed)[PROBABILITIES], dtype=np.float64).reshape(-1)
            worst = max(worst, float(np.abs(got - want).max()))
    if not worst <= 1e-5:
        raise BundleError(f"the model's probabilities differ from the softmax of its logits by {worst:.3g} "
                          f"(limit 1e-5)", where)


def _drop_metadata(fb, model) -> None:
    """Forget an earlier TFLITE_METADATA entry (its buffer is emptied; indices stay valid). Packing the
    model also leaves behind the zip of associated files that followed the old flatbuffer."""
    kept = []
    for entry in model.metadata or []:
        if _text(entry.name) == METADATA_NAME:
            model.buffers[entry.buffer] = fb.BufferT()
        else:
            kept.append(entry)
    model.metadata = kept


# --- the metadata ---------------------------------------------------------------------------------------

def check_vocab(vocab: list[str], where: str | os.PathLike) -> None:
    missing = [token for token in NEEDED_TOKENS if token not in vocab]
    if missing:
        raise UsageError(f"MediaPipe's BERT tokenizer needs {', '.join(NEEDED_TOKENS)} in the vocabulary; "
                         f"missing {', '.join(missing)}", where)
    bad = next((token for token in vocab if not token or any(c in token for c in "\r\n")), None)
    if bad is not None:
        raise UsageError(f"vocabulary token {bad!r} cannot be written one per line", where)


def mediapipe_model(model_bytes: bytes, *, head: str, vocab: list[str], labels: list[str] | None = None,
                    lowercase: bool = True, name: str = "", where: str | os.PathLike = "model.tflite") -> bytes:
    """The model as MediaPipe runs it (see the module docstring), with its metadata packed in."""
    _check_lowercase(lowercase, where)
    check_vocab(vocab, where)
    prepared = single_output_model(model_bytes, head, where)
    return write_metadata(prepared, head=head, vocab=vocab, labels=labels, name=name, where=where)


def _check_lowercase(lowercase: bool, where) -> None:
    if not lowercase:
        raise UsageError("is a cased model, and MediaPipe's BERT tokenizer lower-cases every text: it would "
                         "feed this model other ids than its own tokenizer", where)


def write_metadata(prepared: Prepared, *, head: str, vocab: list[str], labels: list[str] | None = None,
                   name: str = "", where: str | os.PathLike = "model.tflite") -> bytes:
    """Pack MediaPipe's metadata (tokenizer + vocab, input names, the output; labels for a classifier)
    into a single-output model, with MediaPipe's own writers."""
    metadata_writer = import_mediapipe("mediapipe.tasks.python.metadata.metadata_writers.metadata_writer")
    task, output = TASKS[head]
    names = prepared.input_tensor_names
    with tempfile.TemporaryDirectory(prefix="edgebert-mediapipe-") as scratch:
        vocab_path = Path(scratch) / VOCAB_FILE
        vocab_path.write_text("".join(token + "\n" for token in vocab), encoding="utf-8")
        tokenizer = metadata_writer.BertTokenizer(str(vocab_path))
        writer = metadata_writer.MetadataWriter.create(bytearray(prepared.model))
        description = _description(head, name)
        writer.add_general_info(name or task, description)
        writer.add_bert_text_input(tokenizer, names["input_ids"], names["attention_mask"], names["token_type_ids"])
        if head == "classifier":
            if not labels or any(not label or any(c in label for c in "\r\n") for label in labels):
                raise UsageError(f"MediaPipe needs one non-empty label name per class, got {labels!r}", where)
            writer.add_classification_output(metadata_writer.Labels().add(list(labels)), name=output,
                                             description="Probability of each label (softmax of the logits).")
        else:
            writer.add_feature_output(name=output, description=_OUTPUT_DESCRIPTIONS[head])
        try:
            content, _ = writer.populate()
        except (ValueError, RuntimeError) as error:
            raise BundleError(f"MediaPipe's metadata writer failed: {error}", where) from None
    return bytes(content)


_OUTPUT_DESCRIPTIONS = {
    "sentence-embedding": "The sentence embedding (the sentence-transformers model's pooling).",
    "encoder": "BERT's pooled output: tanh(dense(the [CLS] token's last hidden state)).",
}


def _description(head: str, name: str) -> str:
    what = {"classifier": "Classifies a text", "sentence-embedding": "Embeds a text",
            "encoder": "BERT's pooled output for a text"}[head]
    return f"{what}; converted by edgebert{f' ({name})' if name else ''}."


# --- bundles --------------------------------------------------------------------------------------------

def what_mediapipe_sees(head: str, seq_len: int | None, file: str | None, *, metadata_bytes: int | None = None,
                        reason: str | None = None, buckets: tuple[int, ...] = ()) -> dict:
    """The manifest's `mediapipe` record: which file MediaPipe loads, as which task, which output, at which
    length (MediaPipe pads and truncates to S; a dynamic model gets each text at its own length; a model
    with length buckets is exported at its longest, serving_default)."""
    task, output = TASKS[head]
    record = {"task": task, "file": file, "output": output, "seq_len": seq_len or "dynamic",
              "tokenizer": TOKENIZER_NOTE}
    if metadata_bytes is not None:
        record["metadata_bytes"] = metadata_bytes
    if file is None:
        record["export"] = EXPORT_COMMAND
    notes = [reason] if reason else []
    if seq_len is None:
        notes.append(DYNAMIC_NOTE)
    if buckets and not reason:
        notes.append(f"length buckets: MediaPipe runs one subgraph; the export keeps the longest length, {seq_len}")
    if notes:
        record["note"] = "; ".join(notes)
    return record


TOKENIZER_NOTE = ("MediaPipe's own BERT tokenizer with this bundle's vocabulary, single texts (segment ids 0); it "
                  "gives other ids than the bundle's tokenizer on accented and non-Latin text (it lower-cases "
                  "ASCII only and strips no accents)")
DYNAMIC_NOTE = ("dynamic length: MediaPipe feeds each text at its own length and does not truncate, so a text "
                "over the model's positions fails; convert with a fixed --seq-len for MediaPipe")


def for_convert(model_bytes: bytes, *, head: str, tokenizer, labels: list[str], lowercase: bool,
                seq_len: int | None, name: str, log=lambda message: None,
                buckets: tuple[int, ...] = ()) -> tuple[bytes, dict]:
    """What `edgebert convert` does: a classifier's logits become `probabilities` in every signature
    (with_probabilities); then a classifier or sentence-embedding model gets its metadata in model.tflite
    itself (when it has one length, is uncased and MediaPipe's writers are installed), with the vocabulary
    of the bundle's `tokenizer`; an encoder is left as it is. The record says how to export the MediaPipe
    file where model.tflite is not it, and why. Returns (the model's bytes, the manifest's `mediapipe`
    record)."""
    where = name or "model.tflite"
    if head == "classifier":
        model_bytes = with_probabilities(model_bytes, where)
    if head not in ("classifier", "sentence-embedding"):
        return model_bytes, what_mediapipe_sees(head, seq_len, None, buckets=buckets)
    reason = None
    if buckets:
        reason = (f"length buckets: MediaPipe runs one subgraph, so model.tflite (one per length) carries no "
                  f"metadata; `edgebert export-mediapipe` writes the longest, {seq_len}")
    elif not lowercase:
        reason = "cased model: MediaPipe's BERT tokenizer lower-cases every text, so no metadata was written"
    elif not writers_available():
        reason = f"MediaPipe's metadata writers were not installed ({INSTALL_HINT}), so no metadata was written"
    if reason:
        log(f"note: {reason}")
        return model_bytes, what_mediapipe_sees(head, seq_len, None, reason=reason, buckets=buckets)
    vocab = vocab_in_id_order(tokenizer.get_vocab(with_added_tokens=True), where)
    with_metadata = mediapipe_model(model_bytes, head=head, vocab=vocab, labels=labels, lowercase=lowercase,
                                    name=name, where=where)
    record = what_mediapipe_sees(head, seq_len, "model.tflite", metadata_bytes=len(with_metadata) - len(model_bytes))
    return with_metadata, record


def bundle_vocab(tokenizer_path: Path) -> list[str]:
    """The bundle's vocabulary in id order, from its tokenizer.json."""
    from edgebert import tokenizer as tokenization

    loaded = tokenization.load_tokenizer(tokenizer_path)
    return vocab_in_id_order(loaded.get_vocab(with_added_tokens=True), tokenizer_path)


def vocab_in_id_order(ids: dict[str, int], where: str | os.PathLike) -> list[str]:
    """token -> id as a list indexed by id (the ids must be 0..N-1)."""
    by_id = sorted(ids.items(), key=lambda item: item[1])
    if [index for _, index in by_id] != list(range(len(by_id))):
        raise BundleError("tokenizer vocabulary ids are not contiguous", where)
    return [token for token, _ in by_id]


def export_bundle(bundle_dir: str | os.PathLike, out_file: str | os.PathLike, *, force: bool = False) -> dict:
    """Write BUNDLE's model as MediaPipe runs it to out_file (atomically), after checking that it gives the
    bundle model's own outputs on golden.json's inputs (a classifier: its probabilities, or the softmax
    of an older bundle's logits). A bundle whose model.tflite already carries the metadata (`edgebert
    convert` wrote it) has it copied byte for byte, and the summary's notes say so."""
    from edgebert.bundle import read_bundle
    from edgebert.model_info import read_tflite

    bundle = read_bundle(bundle_dir)
    out_file = Path(out_file)
    if out_file.is_dir():
        raise UsageError("is a directory; --out names the .tflite file to write", out_file)
    if out_file.exists() and not force:
        raise UsageError("already exists (pass --force to replace it)", out_file)
    if not out_file.parent.is_dir():
        raise UsageError("cannot write here: its directory does not exist", out_file)
    head = bundle.manifest.get("head")
    if head not in TASKS:
        raise BundleError(f"manifest head is {head!r} (expected one of {', '.join(TASKS)})",
                          bundle.path / "manifest.json")
    lowercase = bool((bundle.manifest.get("tokenizer") or {}).get("lowercase", True))
    vocab = bundle_vocab(bundle.tokenizer_path)
    source = bundle.model_path.read_bytes()
    _check_lowercase(lowercase, bundle.path)
    notes = []
    ready = (bundle.manifest.get("mediapipe") or {}).get("file") == "model.tflite" and \
        read_tflite(source, bundle.model_path)["metadata"] is not None
    if ready:
        model = source
        notes.append(f"{bundle.model_path} already carries MediaPipe's metadata (edgebert convert wrote it): "
                     f"MediaPipe runs it as it is, and {out_file} is a copy of it")
    else:
        model = mediapipe_model(source, head=head, vocab=vocab, labels=bundle.labels, lowercase=lowercase,
                                name=bundle.manifest.get("name") or bundle.path.name, where=bundle.path)
    worst = _check_against_bundle(bundle, model, head)
    staging = out_file.with_name(f".{out_file.name}.tmp-{os.getpid()}")
    try:
        staging.write_bytes(model)
        os.replace(staging, out_file)
    finally:
        staging.unlink(missing_ok=True)
    task, output = TASKS[head]
    if bundle.seq_len is None:
        notes.append(DYNAMIC_NOTE)
    return {"file": str(out_file), "bytes": len(model), "bundle_model_bytes": len(source), "task": task,
            "output": output, "seq_len": bundle.seq_len or "dynamic", "labels": bundle.labels if head == "classifier"
            else [], "vocab_size": len(vocab), "max_abs_diff": worst, "copied": ready, "notes": notes}


def _check_against_bundle(bundle, model: bytes, head: str) -> float:
    """Run the bundle's model.tflite and the MediaPipe model on golden.json's ids: the output MediaPipe
    sees must be the bundle's (a classifier's probabilities: its own, or the softmax of its logits)
    within 1e-5."""
    from edgebert.interpreter import TFLiteModel
    from edgebert.scores import class_probabilities

    # The MediaPipe model has the bundle's longest length only (length buckets have golden examples at each).
    examples = [e for e in (bundle.golden.get("examples") or []) if e.get("text_pair") is None
                and (bundle.seq_len is None or len(e.get("input_ids") or []) == bundle.seq_len)]
    if not examples:
        raise BundleError("golden.json has no single-text example to check the MediaPipe model on",
                          bundle.path / "golden.json")
    task, output = TASKS[head]
    with tempfile.TemporaryDirectory(prefix="edgebert-mediapipe-check-") as scratch:
        path = Path(scratch) / "mediapipe.tflite"
        path.write_bytes(model)
        original, exported = TFLiteModel(bundle.model_path), TFLiteModel(path)
        worst = 0.0
        for example in examples:
            feed = {name: np.asarray([example[name]], dtype=np.int32) for name in INPUTS}
            want = original(**feed)
            got = np.asarray(exported(**feed)[output], dtype=np.float64).reshape(-1)
            expected = class_probabilities(want, bundle.model_path) if head == "classifier" \
                else np.asarray(want[output], dtype=np.float64).reshape(-1)
            worst = max(worst, float(np.abs(got - expected).max()))
    if not worst <= 1e-5:
        raise BundleError(f"the MediaPipe model's {output} differs from the bundle's by {worst:.3g} (limit 1e-5)",
                          bundle.path)
    return worst
