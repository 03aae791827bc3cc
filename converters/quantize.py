"""Per-layer quantization of a float32 `.tflite` with ai-edge-quantizer, and recipe overrides.

The TensorFlow converter quantizes a whole model one way. ai-edge-quantizer (AEQ, Google's quantizer for
LiteRT models) rewrites a float `.tflite` op by op as a recipe says, so each layer can have its own
precision: what recipe overrides and the mixed-precision search (converters/mixed_precision.py) need,
and the only way to int4 weights. The pipeline still exports with the TensorFlow converter (float32 for
this path) and hands the bytes here.

Layers are the ops that carry weights: every FULLY_CONNECTED (a Dense layer) and the word-embedding
lookup, named after the Keras layer they come from (converters/model.py), the encoder layer's index
written as a path:

    word_embeddings  (and position_embeddings in a model with length buckets, where it is a lookup)
    layer_0/query  layer_0/key  layer_0/value  layer_0/attention_output  layer_0/intermediate  layer_0/output
    ... one set per encoder layer ...
    pooler  classifier          (encoders and classifiers; a sentence embedder has neither)

Precisions (weights; activations stay float32 in the graph):
    int8     int8 per output channel (the embedding per row); the kernels quantize each token's
             activations to int8 at run time (XNNPACK's qd8-f32-qc8w)
    int4     int4 per output channel, scales by OCTAV's clipping search (all-MiniLM-L6-v2, everything
             int4: min cosine 0.885 vs 0.818 with plain min/max); the embedding in blocks of 32 per row
             (alone at int4: 0.9969 vs 0.9431 per row); activations as for int8 (qd8-f32-qc4w)
    float32  not quantized
Full int8's search (mixed_precision.finish_export) quantizes its int8 dense layers statically instead:
int8 activations too, their per-tensor ranges calibrated once (calibrate()), and every op but the dense
layers float32. On the fine-tuned all-MiniLM-L6-v2 that is as far as int8 activations go: its LayerNorms
(MEAN, SQUARED_DIFFERENCE) and residual ADDs, each alone at int8, move a probability by 0.95-0.99
(`python -m benchmarks.full_int8`; README, under the MiniLM table).
Layers with fewer than 1024 weights stay float32, as the TensorFlow converter leaves them: quantizing
them saves nothing and costs accuracy.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from edgebert.errors import ConversionError, SourceError
from edgebert.quiet import native_output_silenced

MIN_WEIGHTS = 1024  # the TensorFlow converter's own floor for quantizing a weight
_EMBEDDING_MIN_ROWS = 256  # a GATHER from a constant table this tall is the word-embedding lookup
_ENCODER_LAYER = re.compile(r"layer_(\d+)_(.+)")  # a Keras layer name in the graph
_ENCODER_PATH = re.compile(r"layer_(\d+)/(.+)")  # the same layer's name here
# A model with length buckets has one subgraph per length, which the TensorFlow converter fills with the
# same tensor names; AEQ wants names unique in the whole model, so prepare() prefixes each shorter
# length's names with its signature ("seq_16:"), and each subgraph's copy of a layer gets its own recipe
# entry (_scopes).
_BUCKET_PREFIX = re.compile(r"^seq_\d+:")


class Precision(str, Enum):
    FLOAT32 = "float32"
    INT8 = "int8"
    INT4 = "int4"

    @property
    def bytes_per_weight(self) -> float:
        return {Precision.FLOAT32: 4.0, Precision.INT8: 1.0, Precision.INT4: 0.5}[self]

    def raised(self) -> Precision:
        """One step up the ladder the mixed-precision search climbs: int4 -> int8 -> float32."""
        return Precision.INT8 if self is Precision.INT4 else Precision.FLOAT32

    def lowered(self) -> Precision:
        """One step down: float32 -> int8 -> int4."""
        return Precision.INT8 if self is Precision.FLOAT32 else Precision.INT4


@dataclass(frozen=True)
class Layer:
    name: str  # as in the module docstring: "layer_3/intermediate"
    op: str  # "FULLY_CONNECTED" or "EMBEDDING_LOOKUP" (or "GATHER" in a TensorFlow-converter export)
    scope: str  # AEQ's name for the op: its output tensors' names, each followed by ";"
    weights: int  # number of weight elements
    dtype: str  # of the weights in the model this was read from: float32, float16, int8 or int4
    # What a dense layer multiplies: "float32", "int8" (full integer) or "int8 at run time" (dynamic);
    # None for a lookup, which computes nothing.
    activations: str | None

    @property
    def quantizable(self) -> bool:
        return self.weights >= MIN_WEIGHTS

    @property
    def float_bytes(self) -> int:
        return 4 * self.weights


@dataclass(frozen=True)
class Override:
    """A recipe's `[[convert.overrides]]` entry: every layer whose whole name matches `layers` gets
    `precision`. Later entries win over earlier ones."""
    layers: str  # a regular expression over layer names (re.fullmatch)
    precision: Precision
    recipe: str = ""  # the recipe file it came from, for error messages

    def matches(self, name: str) -> bool:
        return re.fullmatch(self.layers, name) is not None


def parse_overrides(entries, path: str | Path) -> tuple[Override, ...]:
    """`[[convert.overrides]]` tables -> Overrides. Any problem is a one-line SourceError naming `path`."""
    if not isinstance(entries, list):
        raise SourceError("[[convert.overrides]] must be a list of tables with keys layers and precision", path)
    overrides = []
    for number, entry in enumerate(entries, 1):
        if not isinstance(entry, dict) or set(entry) != {"layers", "precision"}:
            raise SourceError(f"override {number} needs exactly the keys layers and precision, "
                              f"got {sorted(entry) if isinstance(entry, dict) else entry!r}", path)
        pattern, precision = entry["layers"], entry["precision"]
        try:
            re.compile(pattern)
        except (re.error, TypeError) as error:
            raise SourceError(f"override {number}: layers = {pattern!r} is not a regular expression ({error})",
                              path) from None
        if not isinstance(precision, str) or precision not in [p.value for p in Precision]:
            raise SourceError(f"override {number} ({pattern!r}): unknown precision {precision!r} "
                              f"(choose from {', '.join(p.value for p in Precision)})", path)
        overrides.append(Override(pattern, Precision(precision), str(path)))
    return tuple(overrides)


def expected_layer_names(num_layers: int, has_pooler: bool, has_classifier: bool,
                         position_table: bool = False) -> list[str]:
    """The layer names a model will have, known before it is built (so overrides fail at once);
    `position_table`: a model with length buckets, whose position embeddings are a lookup table too."""
    parts = ("query", "key", "value", "attention_output", "intermediate", "output")
    names = ["position_embeddings"] * position_table + ["word_embeddings"]
    names += [f"layer_{i}/{part}" for i in range(num_layers) for part in parts]
    return names + ["pooler"] * has_pooler + ["classifier"] * has_classifier


def describe_names(names: list[str]) -> str:
    """A short listing of layer names for an error message: layer_0..5/{...} instead of 36 names."""
    indices = sorted({int(m.group(1)) for m in map(_ENCODER_PATH.fullmatch, names) if m})
    parts = list(dict.fromkeys(m.group(2) for m in map(_ENCODER_PATH.fullmatch, names) if m))
    others = [name for name in names if not _ENCODER_PATH.fullmatch(name)]
    encoder = [f"layer_{indices[0]}..{indices[-1]}/{{{','.join(parts)}}}"] if indices else []
    return ", ".join(others[:1] + encoder + others[1:])


def check_overrides(names: list[str], overrides: tuple[Override, ...]) -> None:
    """An override that matches no layer is an error naming its recipe file: a typo would otherwise
    silently change nothing."""
    for override in overrides:
        if not any(override.matches(name) for name in names):
            raise SourceError(f"override layers = {override.layers!r} matches no layer "
                              f"(the layers are {describe_names(names)})", override.recipe or None)


def apply_overrides(layers: list[Layer], default: Precision, overrides: tuple[Override, ...]
                    ) -> dict[str, tuple[Precision, str]]:
    """Each layer's precision and the reason for it: the mode's, float32 for layers too small to gain,
    or the last override that matches it."""
    check_overrides([layer.name for layer in layers], overrides)
    plan = {layer.name: (default, "the mode's precision") if layer.quantizable else
            (Precision.FLOAT32, f"fewer than {MIN_WEIGHTS} weights: kept float32") for layer in layers}
    for override in overrides:
        for layer in layers:
            if override.matches(layer.name):
                plan[layer.name] = (override.precision, f"recipe override {override.layers!r}")
    return plan


# --- reading and rewriting the flatbuffer --------------------------------------------------------------

def _schema():
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils
    return schema, flatbuffer_utils


def _layer_name(tensor_name: str) -> str:
    """'bert_encoder/layer_3_intermediate/Tensordot;...' (or 'seq_16:bert_encoder/...') -> 'layer_3/intermediate'."""
    parts = _BUCKET_PREFIX.sub("", tensor_name.split(";")[0]).split("/")
    keras = parts[1] if len(parts) > 1 else parts[0]
    match = _ENCODER_LAYER.fullmatch(keras)
    return f"layer_{match.group(1)}/{match.group(2)}" if match else keras


def _dtype(schema, tensor_type: int) -> str:
    names = {schema.TensorType.FLOAT32: "float32", schema.TensorType.FLOAT16: "float16",
             schema.TensorType.INT8: "int8", schema.TensorType.INT4: "int4", schema.TensorType.INT32: "int32"}
    return names.get(tensor_type, str(tensor_type))


def find_layers(model_bytes: bytes) -> list[Layer]:
    """The weight-carrying ops of a `.tflite`, in graph order, with their weights' type (followed through
    a DEQUANTIZE, as float16 exports store them). Works on float and quantized models alike. A model
    with length buckets shares its weights between its subgraphs: each layer is listed once."""
    layers, seen = [], set()
    for layer in _weight_ops(model_bytes):
        if layer.name not in seen:
            seen.add(layer.name)
            layers.append(layer)
    return layers


def _scopes(model_bytes: bytes) -> dict[str, list[str]]:
    """Each layer's scope in every subgraph: the converter numbers the names of a bucketed model's
    later subgraphs (".../MatMul1"), so one layer has one scope per length."""
    scopes: dict[str, list[str]] = {}
    for layer in _weight_ops(model_bytes):
        scopes.setdefault(layer.name, []).append(layer.scope)
    return scopes


def _weight_ops(model_bytes: bytes) -> list[Layer]:
    """Every weight-carrying op of every subgraph (see find_layers)."""
    schema, fb = _schema()
    model = fb.read_model_from_bytearray(bytearray(model_bytes))
    ops = schema.BuiltinOperator
    layers = []
    serving = _serving_subgraph(model)  # first: the other lengths' names may have been dropped
    order = [serving] + [i for i in range(len(model.subgraphs)) if i != serving]
    for graph in (model.subgraphs[i] for i in order):
        producers = {out: op for op in graph.operators for out in op.outputs}
        for op in graph.operators:
            code = fb.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
            weight_input = {ops.FULLY_CONNECTED: 1, ops.EMBEDDING_LOOKUP: 1, ops.GATHER: 0}.get(code)
            if weight_input is None:
                continue
            index = op.inputs[weight_input]
            source = producers.get(index)
            if source is not None and fb.get_builtin_code_from_operator_code(
                    model.operatorCodes[source.opcodeIndex]) == ops.DEQUANTIZE:
                index = source.inputs[0]
            tensor = graph.tensors[index]
            if model.buffers[tensor.buffer].data is None or len(tensor.shape) != 2:
                continue  # activations times activations, or a lookup in a computed table: no weights
            if code == ops.GATHER and tensor.shape[0] < _EMBEDDING_MIN_ROWS:
                continue  # the token-type table (2 rows): tiny, left to the converter
            names = [graph.tensors[i].name.decode() for i in op.outputs]
            if not names[0]:
                continue  # a shorter length's copy of a layer, its names dropped (_share_identical_buffers)
            op_name = {ops.FULLY_CONNECTED: "FULLY_CONNECTED", ops.EMBEDDING_LOOKUP: "EMBEDDING_LOOKUP"}.get(
                code, "GATHER")
            dtype = _dtype(schema, tensor.type)
            activations = None  # a lookup computes nothing
            if code == ops.FULLY_CONNECTED:
                activations = ("int8" if _dtype(schema, graph.tensors[op.inputs[0]].type) == "int8"
                               else "int8 at run time" if dtype in ("int8", "int4") else "float32")
            layers.append(Layer(_layer_name(names[0]), op_name, ";".join(names) + ";",
                                int(np.prod(tensor.shape)), dtype, activations))
    return layers


def prepare(float_model: bytes) -> bytes:
    """The float model with its word-embedding GATHER turned into RESHAPE -> EMBEDDING_LOOKUP -> RESHAPE.

    AEQ quantizes EMBEDDING_LOOKUP tables (per row, or in blocks for int4), not GATHER ones, and LiteRT's
    EMBEDDING_LOOKUP dequantizes only the rows it looks up. It takes 1-D ids, hence the reshapes. Outputs
    are bit-identical to the float model's."""
    schema, fb = _schema()
    model = fb.read_model_from_bytearray(bytearray(float_model))
    ops = schema.BuiltinOperator
    _prefix_bucket_names(model)
    for graph in model.subgraphs:
        rewritten = []
        for op in graph.operators:
            code = fb.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex])
            table = graph.tensors[op.inputs[0]] if code == ops.GATHER else None
            if (table is None or model.buffers[table.buffer].data is None or len(table.shape) != 2
                    or table.shape[0] < _EMBEDDING_MIN_ROWS or table.type != schema.TensorType.FLOAT32):
                rewritten.append(op)
                continue
            rewritten.extend(_embedding_lookup(model, graph, op, schema, fb))
        graph.operators = rewritten
    return _serialize(model, fb)


def _prefix_bucket_names(model) -> None:
    """Prefix the tensor names of every subgraph but serving_default's with its signature (see
    _BUCKET_PREFIX); a model with one subgraph is left as it is."""
    if len(model.subgraphs) < 2:
        return
    for signature in model.signatureDefs or []:
        key = signature.signatureKey.decode() if isinstance(signature.signatureKey, bytes) else signature.signatureKey
        if key == "serving_default":
            continue
        for tensor in model.subgraphs[signature.subgraphIndex].tensors:
            tensor.name = f"{key}:".encode() + tensor.name


def _serialize(model, fb) -> bytes:
    """The model's bytes. Buffers read from a file that stores them past the flatbuffer (AEQ writes large
    models so) come back as bytearray slices, which the flatbuffers builder copies one byte per Python
    call (minutes for MiniLM); as numpy arrays it copies them whole."""
    for buffer in model.buffers:
        if buffer.data is not None and not isinstance(buffer.data, np.ndarray):
            buffer.data = np.frombuffer(buffer.data, np.uint8)
    return bytes(fb.convert_object_to_bytearray(model))


def _embedding_lookup(model, graph, gather, schema, fb) -> list:
    ids, out = graph.tensors[gather.inputs[1]], graph.tensors[gather.outputs[0]]
    base = out.name.decode().split(";")[0]
    hidden = graph.tensors[gather.inputs[0]].shape[1]
    count = int(np.prod(ids.shape))
    dynamic = -1 in _signature(ids)  # a dynamic-length model: [1, -1] ids
    flat = _add_tensor(model, graph, schema, f"{base}/ids", [count], [-1 if dynamic else count], schema.TensorType.INT32)
    rows = _add_tensor(model, graph, schema, f"{base}/rows", [count, hidden], [-1 if dynamic else count, hidden],
                       schema.TensorType.FLOAT32)
    flat_shape = _add_tensor(model, graph, schema, f"{base}/ids_shape", [1], [1], schema.TensorType.INT32,
                             np.array([-1], np.int32))
    out_shape = _add_tensor(model, graph, schema, f"{base}/shape", [len(out.shape)], [len(out.shape)],
                            schema.TensorType.INT32, np.array(_signature(out), np.int32))
    reshape, lookup = (_opcode(model, schema, fb, code) for code in (schema.BuiltinOperator.RESHAPE,
                                                                    schema.BuiltinOperator.EMBEDDING_LOOKUP))
    return [_operator(schema, reshape, [gather.inputs[1], flat_shape], [flat]),
            _operator(schema, lookup, [flat, gather.inputs[0]], [rows]),
            _operator(schema, reshape, [rows, out_shape], list(gather.outputs))]


def _signature(tensor) -> list[int]:
    signature = tensor.shapeSignature
    return list(signature) if signature is not None and len(signature) else list(tensor.shape)


def _add_tensor(model, graph, schema, name, shape, signature, dtype, data: np.ndarray | None = None) -> int:
    tensor, buffer = schema.TensorT(), schema.BufferT()
    tensor.name, tensor.shape, tensor.shapeSignature, tensor.type = name.encode(), shape, signature, dtype
    buffer.data = None if data is None else np.frombuffer(data.tobytes(), np.uint8)
    model.buffers.append(buffer)
    tensor.buffer = len(model.buffers) - 1
    graph.tensors.append(tensor)
    return len(graph.tensors) - 1


def _opcode(model, schema, fb, builtin: int) -> int:
    for index, code in enumerate(model.operatorCodes):
        if fb.get_builtin_code_from_operator_code(code) == builtin:
            return index
    code = schema.OperatorCodeT()
    code.builtinCode, code.deprecatedBuiltinCode, code.version = builtin, min(builtin, 127), 1
    model.operatorCodes.append(code)
    return len(model.operatorCodes) - 1


def _operator(schema, opcode: int, inputs: list[int], outputs: list[int]):
    op = schema.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = opcode, list(inputs), list(outputs)
    return op


def _share_identical_buffers(model_bytes: bytes) -> bytes:
    """One buffer for each distinct constant. AEQ quantizes a weight once per subgraph that uses it, so
    a model with length buckets would carry one quantized copy per length; the copies are byte for byte
    the same, so every tensor is pointed at the first and the others are emptied (indices stay valid).
    The shorter lengths' tensor names go too (their signatures name their inputs and outputs): with
    int4 weights the names and per-channel scales of each extra subgraph are a visible share of the
    bytes, and serving_default's names are the ones find_layers reads."""
    import hashlib

    schema, fb = _schema()
    model = fb.read_model_from_bytearray(bytearray(model_bytes))
    if len(model.subgraphs) < 2:
        return model_bytes
    first: dict[bytes, int] = {}
    moved: dict[int, int] = {}
    for index, buffer in enumerate(model.buffers):
        if buffer.data is None or len(buffer.data) < MIN_WEIGHTS:
            continue
        digest = hashlib.sha256(memoryview(np.ascontiguousarray(buffer.data, dtype=np.uint8))).digest()
        if digest in first:
            moved[index] = first[digest]
        else:
            first[digest] = index
    serving = _serving_subgraph(model)
    for index, graph in enumerate(model.subgraphs):
        for tensor in graph.tensors:
            tensor.buffer = moved.get(tensor.buffer, tensor.buffer)
            if index != serving:
                tensor.name = b""
    for index in moved:
        model.buffers[index].data = None
    return _serialize(model, fb)


def _serving_subgraph(model) -> int:
    """The index of serving_default's subgraph (the first when there is no such signature)."""
    for signature in model.signatureDefs or []:
        key = signature.signatureKey
        if (key.decode() if isinstance(key, bytes) else key) == "serving_default":
            return int(signature.subgraphIndex)
    return 0


def _mark_per_channel_hybrid(model_bytes: bytes) -> bytes:
    """Give AEQ's int8/int4-weight FULLY_CONNECTED ops what the TensorFlow converter gives its own:
    version 12 and asymmetric run-time quantization of the inputs.

    AEQ writes version 5, which tflite-runtime 2.14 loads and then runs with one scale for every
    channel: a BERT-Mini's pooled output came out at cosine 0.04 against float. At version 12 it refuses
    the model, as it refuses the converter's. Asymmetric inputs are what the converter asks for too:
    XNNPACK gives identical outputs either way; LiteRT's own kernel (no XNNPACK) is closer to float."""
    schema, fb = _schema()
    model = fb.read_model_from_bytearray(bytearray(model_bytes))
    for graph in model.subgraphs:
        for op in graph.operators:
            code = model.operatorCodes[op.opcodeIndex]
            if fb.get_builtin_code_from_operator_code(code) != schema.BuiltinOperator.FULLY_CONNECTED:
                continue
            if (graph.tensors[op.inputs[0]].type == schema.TensorType.FLOAT32
                    and graph.tensors[op.inputs[1]].type in (schema.TensorType.INT8, schema.TensorType.INT4)):
                code.version = max(code.version, 12)
                op.builtinOptions.asymmetricQuantizeInputs = True
    return _serialize(model, fb)


def calibrate(prepared: bytes, layers: list[Layer], calibration) -> dict:
    """The activation ranges static int8 needs (AEQ's calibration result), measured once on the float
    model for every dense layer, so that each candidate of a full-int8 search is only a quantize() away.
    `calibration()` yields input dicts, or (signature, input dict) pairs for a model with length buckets."""
    from ai_edge_quantizer import quantizer

    feeds: dict[str, list] = {}
    for item in calibration():
        signature, inputs = item if isinstance(item, tuple) else ("serving_default", item)
        feeds.setdefault(signature, []).append(inputs)
    engine = quantizer.Quantizer(bytearray(prepared))
    _add_static_configs(engine, _scopes(prepared), [layer for layer in layers if layer.op == "FULLY_CONNECTED"])
    try:
        with native_output_silenced():
            return engine.calibrate(feeds)
    except Exception as error:  # as in quantize(): AEQ's ValueError, RuntimeError, KeyError...
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(f"ai-edge-quantizer's calibration failed: {first}") from error


def _add_static_configs(engine, scopes: dict[str, list[str]], dense: list[Layer]) -> None:
    """int8 weights per output channel and int8 activations with calibrated per-tensor ranges, for
    each of these dense layers (in every subgraph: `scopes`, from _scopes); nothing else changes."""
    from ai_edge_quantizer import qtyping

    for layer in dense:
        for scope in scopes.get(layer.name, [layer.scope]):
            engine.add_static_config("^" + re.escape(scope) + "$", qtyping.TFLOperationName.FULLY_CONNECTED,
                                     activation_num_bits=8, weight_num_bits=8)


def quantize(prepared: bytes, layers: list[Layer], plan: dict[str, Precision], int4_block: int | None = None,
             static: dict | None = None) -> bytes:
    """`prepared` (see prepare()) with each layer at its planned precision (missing or float32: left
    float). One AEQ recipe entry per quantized layer, anchored on its exact scope. `int4_block`: int4 dense
    layers in blocks of that many input channels with min/max scales instead of per channel with OCTAV's
    (benchmarks.quantizers measures it; the product does not ship it). `static`: calibrate()'s ranges; int8
    dense layers then take int8 activations (full int8's search), every other op staying float32."""
    from ai_edge_quantizer import qtyping, quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    todo = [layer for layer in layers if plan.get(layer.name, Precision.FLOAT32) is not Precision.FLOAT32]
    if not todo:
        return prepared
    engine = quantizer.Quantizer(bytearray(prepared))
    scopes = _scopes(prepared)
    if static is not None:
        dense = [layer for layer in todo if layer.op == "FULLY_CONNECTED" and plan[layer.name] is Precision.INT8]
        _add_static_configs(engine, scopes, dense)
        todo = [layer for layer in todo if layer not in dense]
    for layer in todo:
        int4 = plan[layer.name] is Precision.INT4
        embedding = layer.op == "EMBEDDING_LOOKUP"
        block = (32 if embedding else int4_block) if int4 else None
        granularity = (qtyping.QuantGranularity[f"BLOCKWISE_{block}"] if block
                       else qtyping.QuantGranularity.CHANNELWISE)
        algorithm = (AlgorithmName.OCTAV if int4 and not block else AlgorithmName.MIN_MAX_UNIFORM_QUANT)
        for scope in scopes.get(layer.name, [layer.scope]):
            engine.add_dynamic_config("^" + re.escape(scope) + "$", qtyping.TFLOperationName(layer.op),
                                      4 if int4 else 8, granularity=granularity, algorithm_key=algorithm)
    try:
        with native_output_silenced():  # AEQ's progress bars and absl warnings
            result = engine.quantize(static, enable_progress_bar=False, enable_progress_report=False)
    except Exception as error:  # AEQ raises ValueError, RuntimeError, KeyError...: all mean "could not"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(f"ai-edge-quantizer failed: {first}") from error
    return _share_identical_buffers(_mark_per_channel_hybrid(bytes(result.quantized_model)))


def quantizer_version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("ai-edge-quantizer")
    except PackageNotFoundError:
        return "unknown"
