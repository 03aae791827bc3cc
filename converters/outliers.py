"""Outlier equalization for dynamic int8 and int4: the same float function, rewritten so that they lose less.

Real pretrained BERTs carry a few hidden dimensions whose activations are many times the rest. Dynamic
int8 quantizes each dense layer's input per row at run time, so those channels set the step of the whole
row, and round-to-nearest weights add an error of their own. `python -m benchmarks.minilm_error_study`
measured the remedies one by one on the real all-MiniLM-L6-v2 (min cosine of its sentence embedding
against float over the 872 SST-2 dev sentences: all-int8 0.99384). The three applied here change
neither quantizer nor kernel, and cost at run time only two elementwise multiplies per layer:

1. Smoothing (SmoothQuant, alpha 0.5) of the LayerNorm outputs that the query/key/value and the
   intermediate layer read: divided per channel by s = max|x|^a / max|w|^(1-a), and the dense layers'
   weight rows multiplied by s. Post-LayerNorm BERT also adds that tensor to its residual, so s cannot
   fold into the LayerNorm: it is a ChannelScale (a MUL) in the graph (converters/model.py).
2. A Hadamard rotation of each attention head's value vectors, undone in the attention output layer's
   weights: attention only mixes value rows, so the rotation passes through it and costs nothing at run
   time, and the attention output layer's input has its outliers spread over the head.
3. GPTQ on the exported model: once the quantizer has chosen each int8 or int4 dense layer's per-channel
   scales, the integers are chosen again column by column, each rounding error pushed onto the columns
   not yet rounded through the inverse Hessian of the layer's float inputs on the calibration text.
   (ai-edge-quantizer has a GPTQ too, but with min/max scales inside its own export only; this one also
   refines the TensorFlow converter's int8 export and keeps int4's clipped OCTAV scales.)

In the study the three lift 0.99384 to 0.99787; where that still misses the thresholds, the mixed-precision
search (converters/mixed_precision.py) raises the layers that need it, each candidate with GPTQ applied.
`--equalize rotate` goes further, for users who put fidelity before speed: instead of the smoothing, the
two LayerNorm outputs of each layer and the feed-forward output layer's input are rotated at run time
(BlockRotation, blocks of 64 and 32: in the study the cheapest rotations that reach 0.999, 0.99908), a
float matmul in front of three dense layers per layer; `python -m benchmarks.rotation_cost` measured that
at about a fifth of MiniLM's latency on an AMX Xeon.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

SMOOTHING_ALPHA = 0.5
GPTQ_DAMPING = 0.01  # of the Hessian's mean diagonal, added to it: keeps the inverse well conditioned
CALIBRATION_TEXTS = 256  # what GPTQ and the smoothing see (at most: samples/ has 203 sentences)
ROTATION_BLOCKS = (64, 32)  # --equalize rotate: LayerNorm outputs, feed-forward output's input (module docstring)


def hadamard(size: int) -> np.ndarray:
    """The orthonormal Hadamard matrix of a power-of-two size (Sylvester's construction)."""
    if size < 1 or size & (size - 1):
        raise ValueError(f"a Hadamard block must be a power of two, got {size}")
    matrix = np.array([[1.0]])
    while len(matrix) < size:
        matrix = np.block([[matrix, matrix], [matrix, -matrix]])
    return matrix / math.sqrt(size)


def rotation_block(width: int, block: int) -> int:
    """`block` (a power of two) where it divides the width, else the largest power of two that does (a
    pruned layer's width)."""
    return math.gcd(width, block)


def block_hadamard(width: int, block: int) -> np.ndarray:
    """The orthonormal block-diagonal Hadamard matrix over `width` channels that model.BlockRotation applies."""
    return np.kron(np.eye(width // rotation_block(width, block)),
                   hadamard(rotation_block(width, block))).astype(np.float32)


def head_rotation(width: int, head_size: int) -> np.ndarray:
    """Block-diagonal Hadamard over `width` value channels, blocks of the largest power of two that
    divides the head size, so that no block crosses a head (each head's softmax mixes only its own)."""
    block = head_size & -head_size
    return np.kron(np.eye(width // block), hadamard(block)).astype(np.float32)


def gptq(weights: np.ndarray, hessian: np.ndarray, scales: np.ndarray, limit: int = 127,
         lowest: int | None = None) -> np.ndarray:
    """GPTQ's integers for `weights` [out, in] at the given per-output-channel `scales`, in [lowest (default
    -limit), limit]: columns rounded in order of decreasing Hessian diagonal (the inputs that vary most first),
    each column's rounding error spread over the columns still to come."""
    w = weights.astype(np.float64).copy()
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) == 0  # inputs that were always zero: any weight is as good
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    h += GPTQ_DAMPING * np.mean(np.diag(h)) * np.eye(len(h))
    order = np.argsort(-np.diag(h), kind="stable")
    w, h = w[:, order], h[order][:, order]
    upper = np.linalg.cholesky(np.linalg.inv(h)).T
    scales = scales.astype(np.float64)
    lowest = -limit if lowest is None else lowest
    integers = np.zeros(w.shape, np.int8)
    for column in range(w.shape[1]):
        rounded = np.clip(np.round(w[:, column] / scales), lowest, limit)
        integers[:, column] = rounded
        error = (w[:, column] - rounded * scales) / upper[column, column]
        w[:, column + 1:] -= np.outer(error, upper[column, column + 1:])
    return integers[:, np.argsort(order)]


def _dense_names(model) -> list[str]:
    from converters.tf_import import tf_keras
    return [layer.name for layer in model.layers if isinstance(layer, tf_keras.layers.Dense)]


def _layer_inputs(model, names: list[str], inputs: list[dict]):
    """For each input dict, name -> the layer's float input as rows [R, C], real tokens only (padding
    rows carry nothing the export will be judged on)."""
    from converters.tf_import import tf_keras

    probe = tf_keras.Model(model.inputs, [model.get_layer(name).input for name in names])
    for example in inputs:
        values = probe(example, training=False)
        real = example["attention_mask"][0].astype(bool)
        rows = {}
        for name, value in zip(names, values):
            value = np.asarray(value, np.float64)
            value = value[0] if value.ndim == 3 else value  # (S or 1, C); a pooler's (1, C) stays
            rows[name] = value[real] if len(value) == len(real) else value
        yield rows


@dataclass
class Equalized:
    """The export model with smoothing and rotation applied, and what GPTQ needs to refine its exports."""
    model: object  # tf_keras.Model, the same float function as the original
    hessians: dict[str, np.ndarray]  # Dense layer name -> X^T X of its inputs on the calibration text
    texts: int  # calibration texts the smoothing and the Hessians saw
    value_block: int  # the value rotation's Hadamard block
    rotation: tuple[int, int] | None = None  # run-time rotation blocks (LayerNorm outputs, FFN output's input)
    _cache: dict = field(default_factory=dict)

    def refine(self, model_bytes: bytes) -> bytes:
        """`model_bytes` with every int8 or int4 dense layer's integers replaced by GPTQ's, at the scales the
        quantizer chose. Buffers shared by several subgraphs (length buckets) are rewritten once."""
        from converters import quantize

        schema, fb = quantize._schema()
        tflite = fb.read_model_from_bytearray(bytearray(model_bytes))
        for name, tensor, buffer in self._gptq_layers(tflite, schema, fb):
            int4 = tensor.type == schema.TensorType.INT4
            current = _read_integers(buffer.data, tuple(tensor.shape), int4)
            integers = self._integers(name, np.asarray(tensor.quantization.scale, np.float64), current, int4)
            buffer.data = np.frombuffer(_pack_int4(integers) if int4 else integers.tobytes(), np.uint8)
        return quantize._serialize(tflite, fb)

    def manifest(self, model_bytes: bytes, plain_shortfall: float | None) -> dict:
        """The manifest's `quantization.equalization` for the model that is shipped."""
        from converters import quantize

        schema, fb = quantize._schema()
        tflite = fb.read_model_from_bytearray(bytearray(model_bytes))
        if self.rotation:
            layer_norms, output = self.rotation
            inputs = {"run_time_rotation": {
                "inputs": {"query/key/value": f"Hadamard, blocks of {layer_norms}",
                           "intermediate": f"Hadamard, blocks of {layer_norms}",
                           "output": f"Hadamard, blocks of {output}"},
                "why": "--equalize rotate: a float matmul in front of each of those layers at run time"}}
        else:
            inputs = {"smoothing": {"alpha": SMOOTHING_ALPHA, "inputs": ["query/key/value", "intermediate"]}}
        shortfall = None if plain_shortfall is None else round(plain_shortfall, 4)  # None: not measured (rotate)
        return {"plain_export_shortfall": shortfall, **inputs,
                "value_rotation": f"Hadamard, blocks of {self.value_block}",
                "gptq": {"texts": self.texts, "layers": len(self._gptq_layers(tflite, schema, fb))}}

    def _gptq_layers(self, tflite, schema, fb) -> list:
        """(Keras layer name, weight tensor, buffer) of each int8 or int4 dense layer GPTQ refines, once per
        buffer: per-channel weights (not --compat's one scale per tensor) of a layer it has a Hessian for."""
        from converters import quantize

        found, seen = [], set()
        for graph in tflite.subgraphs:
            for op in graph.operators:
                if fb.get_builtin_code_from_operator_code(
                        tflite.operatorCodes[op.opcodeIndex]) != schema.BuiltinOperator.FULLY_CONNECTED:
                    continue
                tensor = graph.tensors[op.inputs[1]]
                buffer = tflite.buffers[tensor.buffer]
                name = quantize._layer_name(graph.tensors[op.outputs[0]].name.decode()).replace("/", "_")
                if (tensor.type in (schema.TensorType.INT8, schema.TensorType.INT4) and buffer.data is not None
                        and tensor.buffer not in seen
                        and name in self.hessians and len(tensor.quantization.scale) == tensor.shape[0]):
                    seen.add(tensor.buffer)
                    found.append((name, tensor, buffer))
        return found

    def _integers(self, name: str, scales: np.ndarray, current: np.ndarray, int4: bool) -> np.ndarray:
        key = (name, int4, hashlib.sha256(scales.tobytes()).hexdigest())
        if key not in self._cache:  # the mixed-precision search quantizes the same layer dozens of times
            weights = self.model.get_layer(name).get_weights()[0].T.astype(np.float64)  # [out, in]
            low, high = INT4_RANGE if int4 else INT8_RANGE
            factor = folded_factor(weights, current * scales[:, None], (current > low) & (current < high))
            self._cache[key] = gptq(weights * factor, self.hessians[name], scales, high, low)
        return self._cache[key]


# The integers of the quantizer's weights: symmetric int8; int4 also uses -8 (ai-edge-quantizer does).
INT8_RANGE, INT4_RANGE = (-127, 127), (-8, 7)


def folded_factor(weights: np.ndarray, dequantized: np.ndarray, unclipped: np.ndarray) -> float:
    """The constant the converter folded into a layer's weights (the query's 1/sqrt(head size); 1 for the
    rest), read back from the quantizer's own output: the least-squares ratio of dequantized to Keras
    weights per row, over the weights it did not clip (OCTAV's int4 scales clip the largest), and the
    median over rows, since the factor is one number per layer and each row's estimate is noisy at int4."""
    numerator = np.sum(np.where(unclipped, dequantized * weights, 0.0), axis=1)
    denominator = np.sum(np.where(unclipped, weights * weights, 0.0), axis=1)
    useful = denominator > 0
    return float(np.median(numerator[useful] / denominator[useful])) if useful.any() else 1.0


def _read_integers(data: np.ndarray, shape: tuple[int, ...], int4: bool) -> np.ndarray:
    """A weight buffer as int8 values of `shape`; int4 comes packed two to a byte, the lower nibble first
    (LiteRT's layout)."""
    raw = np.asarray(data, np.uint8).view(np.int8)
    if not int4:
        return raw.reshape(shape)
    low, high = (raw << 4).astype(np.int8) >> 4, raw >> 4
    return np.stack([low, high], axis=-1).reshape(-1)[:int(np.prod(shape))].reshape(shape)


def _pack_int4(values: np.ndarray) -> bytes:
    flat = values.astype(np.int8).reshape(-1)
    if len(flat) % 2:
        flat = np.append(flat, np.int8(0))
    return ((flat[0::2].astype(np.uint8) & 0x0F) | (flat[1::2].astype(np.uint8) << 4)).astype(np.uint8).tobytes()


def equalize(model, rebuild: Callable[[], object], config, calibration: list[dict],
             log: Callable[[str], None] = lambda message: None, rotation: tuple[int, int] | None = None) -> Equalized:
    """`rebuild()` makes the export graph with ChannelScale layers (build_bert(..., smoothing=True)), or
    with `rotation` its BlockRotation layers (build_bert(..., rotation=rotation)); it gets `model`'s
    weights, smoothed or rotated, and with the value rotation (see the module docstring). `calibration`:
    input dicts of real text."""
    names = _dense_names(model)
    how = "rotating at run time" if rotation else "smoothing and rotating"
    log(f"outlier equalization: {how}, then GPTQ's Hessians over {len(calibration)} texts")
    smoothed = [] if rotation else [f"layer_{i}_{part}" for i in range(config.num_layers)
                                    for part in ("key", "intermediate")]
    peaks: dict[str, np.ndarray] = {}
    for rows in (_layer_inputs(model, smoothed, calibration) if smoothed else ()):
        for name, value in rows.items():
            peak = np.abs(value).max(0)
            peaks[name] = np.maximum(peaks.get(name, peak), peak)
    equalized = rebuild()
    for layer in model.layers:
        if layer.weights:
            equalized.get_layer(layer.name).set_weights(layer.get_weights())
    for index in range(config.num_layers):
        p = f"layer_{index}"
        if rotation:
            _fold_rotation(equalized, [f"{p}_query", f"{p}_key", f"{p}_value", f"{p}_intermediate"], rotation[0])
            _fold_rotation(equalized, [f"{p}_output"], rotation[1])
        else:
            _smooth(equalized, f"{p}_attention_input_scale", [f"{p}_query", f"{p}_key", f"{p}_value"],
                    peaks[f"{p}_key"])
            _smooth(equalized, f"{p}_intermediate_input_scale", [f"{p}_intermediate"], peaks[f"{p}_intermediate"])
        _rotate_values(equalized, p, config.head_size)
    hessians: dict[str, np.ndarray] = {}
    for rows in _layer_inputs(equalized, names, calibration):
        for name, value in rows.items():
            hessians[name] = hessians.get(name, 0) + value.T @ value
    if rotation:  # the blocks as the layers have them (a narrower one where a pruned layer's width asks)
        rotation = (rotation_block(config.hidden_size, rotation[0]),
                    min(rotation_block(config.intermediate_in(i), rotation[1]) for i in range(config.num_layers)))
    return Equalized(equalized, hessians, len(calibration), config.head_size & -config.head_size, rotation)


def _smooth(model, scale_layer: str, dense_layers: list[str], input_peak: np.ndarray) -> None:
    kernels = [model.get_layer(name).get_weights() for name in dense_layers]
    weight_peak = np.max([np.abs(kernel).max(1) for kernel, _ in kernels], axis=0)
    s = (np.maximum(input_peak, 1e-5) ** SMOOTHING_ALPHA
         / np.maximum(weight_peak, 1e-5) ** (1 - SMOOTHING_ALPHA)).astype(np.float32)
    model.get_layer(scale_layer).set_weights([1.0 / s])
    for name, (kernel, bias) in zip(dense_layers, kernels):
        model.get_layer(name).set_weights([kernel * s[:, None], bias])


def _fold_rotation(model, dense_layers: list[str], block: int) -> None:
    """The inverse of the BlockRotation in front of each layer folded into its weights: (x R)(R^T W) = x W."""
    for name in dense_layers:
        layer = model.get_layer(name)
        kernel, bias = layer.get_weights()
        layer.set_weights([block_hadamard(kernel.shape[0], block).T @ kernel, bias])


def _rotate_values(model, prefix: str, head_size: int) -> None:
    value, output = model.get_layer(f"{prefix}_value"), model.get_layer(f"{prefix}_attention_output")
    (value_kernel, value_bias), (output_kernel, output_bias) = value.get_weights(), output.get_weights()
    rotation = head_rotation(value_kernel.shape[1], head_size)
    value.set_weights([value_kernel @ rotation, value_bias @ rotation])
    output.set_weights([rotation.T @ output_kernel, output_bias])
