"""Outlier equalization for dynamic int8: the same float function, rewritten so that int8 loses less.

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
3. GPTQ on the exported model: once the quantizer has chosen each int8 dense layer's per-channel scales,
   the integers are chosen again column by column, each rounding error pushed onto the columns not yet
   rounded through the inverse Hessian of the layer's float inputs on the calibration text.

In the study the three lift 0.99384 to 0.99787; where that still misses the thresholds, the mixed-precision
search (converters/mixed_precision.py) raises the layers that need it, each candidate with GPTQ applied.
Rotating the feed-forward output layer's 1536-wide input would add ~0.0008 more, but only at run time
(a float matmul per layer), so it is not done.
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


def hadamard(size: int) -> np.ndarray:
    """The orthonormal Hadamard matrix of a power-of-two size (Sylvester's construction)."""
    if size < 1 or size & (size - 1):
        raise ValueError(f"a Hadamard block must be a power of two, got {size}")
    matrix = np.array([[1.0]])
    while len(matrix) < size:
        matrix = np.block([[matrix, matrix], [matrix, -matrix]])
    return matrix / math.sqrt(size)


def head_rotation(width: int, head_size: int) -> np.ndarray:
    """Block-diagonal Hadamard over `width` value channels, blocks of the largest power of two that
    divides the head size, so that no block crosses a head (each head's softmax mixes only its own)."""
    block = head_size & -head_size
    return np.kron(np.eye(width // block), hadamard(block)).astype(np.float32)


def gptq(weights: np.ndarray, hessian: np.ndarray, scales: np.ndarray, limit: int = 127) -> np.ndarray:
    """GPTQ's integers for `weights` [out, in] at the given per-output-channel `scales`, in [-limit,
    limit]: columns rounded in order of decreasing Hessian diagonal (the inputs that vary most first),
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
    integers = np.zeros(w.shape, np.int8)
    for column in range(w.shape[1]):
        rounded = np.clip(np.round(w[:, column] / scales), -limit, limit)
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
    _cache: dict = field(default_factory=dict)

    def refine(self, model_bytes: bytes) -> bytes:
        """`model_bytes` with every int8 dense layer's integers replaced by GPTQ's, at the scales the
        quantizer chose. Buffers shared by several subgraphs (length buckets) are rewritten once."""
        from converters import quantize

        schema, fb = quantize._schema()
        tflite = fb.read_model_from_bytearray(bytearray(model_bytes))
        for name, tensor, buffer in self._gptq_layers(tflite, schema, fb):
            scales = np.asarray(tensor.quantization.scale, np.float64)
            buffer.data = np.frombuffer(self._integers(name, scales).tobytes(), np.uint8)
        return quantize._serialize(tflite, fb)

    def manifest(self, model_bytes: bytes, plain_shortfall: float) -> dict:
        """The manifest's `quantization.equalization` for the model that is shipped."""
        from converters import quantize

        schema, fb = quantize._schema()
        tflite = fb.read_model_from_bytearray(bytearray(model_bytes))
        return {"plain_export_shortfall": round(plain_shortfall, 4),
                "smoothing": {"alpha": SMOOTHING_ALPHA, "inputs": ["query/key/value", "intermediate"]},
                "value_rotation": f"Hadamard, blocks of {self.value_block}",
                "gptq": {"texts": self.texts, "layers": len(self._gptq_layers(tflite, schema, fb))}}

    def _gptq_layers(self, tflite, schema, fb) -> list:
        """(Keras layer name, weight tensor, buffer) of each int8 dense layer GPTQ refines, once per buffer:
        per-channel int8 weights (not --compat's one scale per tensor) of a layer it has a Hessian for."""
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
                if (tensor.type == schema.TensorType.INT8 and buffer.data is not None and tensor.buffer not in seen
                        and name in self.hessians and len(tensor.quantization.scale) == tensor.shape[0]):
                    seen.add(tensor.buffer)
                    found.append((name, tensor, buffer))
        return found

    def _integers(self, name: str, scales: np.ndarray) -> np.ndarray:
        key = (name, hashlib.sha256(scales.tobytes()).hexdigest())
        if key not in self._cache:  # the mixed-precision search quantizes the same layer dozens of times
            weights = self.model.get_layer(name).get_weights()[0].T.astype(np.float64)  # [out, in]
            # The converter folds constant factors into the weights (the query's 1/sqrt(head size)); a
            # symmetric scale is the row's largest weight over 127, so it tells each row's factor.
            peak = np.abs(weights).max(1)
            folded = np.where(peak > 0, scales * 127 / np.maximum(peak, 1e-30), 1.0)
            self._cache[key] = gptq(weights * folded[:, None], self.hessians[name], scales)
        return self._cache[key]


def equalize(model, rebuild: Callable[[], object], config, calibration: list[dict],
             log: Callable[[str], None] = lambda message: None) -> Equalized:
    """`rebuild()` makes the export graph with ChannelScale layers (build_bert(..., smoothing=True));
    it gets `model`'s weights, smoothed and rotated (see the module docstring). `calibration`: input
    dicts of real text."""
    names = _dense_names(model)
    log(f"outlier equalization: smoothing and rotating, then GPTQ's Hessians over {len(calibration)} texts")
    smoothed = [f"layer_{i}_{part}" for i in range(config.num_layers) for part in ("key", "intermediate")]
    peaks: dict[str, np.ndarray] = {}
    for rows in _layer_inputs(model, smoothed, calibration):
        for name, value in rows.items():
            peak = np.abs(value).max(0)
            peaks[name] = np.maximum(peaks.get(name, peak), peak)
    equalized = rebuild()
    for layer in model.layers:
        if layer.weights:
            equalized.get_layer(layer.name).set_weights(layer.get_weights())
    for index in range(config.num_layers):
        p = f"layer_{index}"
        _smooth(equalized, f"{p}_attention_input_scale", [f"{p}_query", f"{p}_key", f"{p}_value"], peaks[f"{p}_key"])
        _smooth(equalized, f"{p}_intermediate_input_scale", [f"{p}_intermediate"], peaks[f"{p}_intermediate"])
        _rotate_values(equalized, p, config.head_size)
    hessians: dict[str, np.ndarray] = {}
    for rows in _layer_inputs(equalized, names, calibration):
        for name, value in rows.items():
            hessians[name] = hessians.get(name, 0) + value.T @ value
    return Equalized(equalized, hessians, len(calibration), config.head_size & -config.head_size)


def _smooth(model, scale_layer: str, dense_layers: list[str], input_peak: np.ndarray) -> None:
    kernels = [model.get_layer(name).get_weights() for name in dense_layers]
    weight_peak = np.max([np.abs(kernel).max(1) for kernel, _ in kernels], axis=0)
    s = (np.maximum(input_peak, 1e-5) ** SMOOTHING_ALPHA
         / np.maximum(weight_peak, 1e-5) ** (1 - SMOOTHING_ALPHA)).astype(np.float32)
    model.get_layer(scale_layer).set_weights([1.0 / s])
    for name, (kernel, bias) in zip(dense_layers, kernels):
        model.get_layer(name).set_weights([kernel * s[:, None], bias])


def _rotate_values(model, prefix: str, head_size: int) -> None:
    value, output = model.get_layer(f"{prefix}_value"), model.get_layer(f"{prefix}_attention_output")
    (value_kernel, value_bias), (output_kernel, output_bias) = value.get_weights(), output.get_weights()
    rotation = head_rotation(value_kernel.shape[1], head_size)
    value.set_weights([value_kernel @ rotation, value_bias @ rotation])
    output.set_weights([rotation.T @ output_kernel, output_bias])
