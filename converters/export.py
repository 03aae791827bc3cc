"""TFLite export: one Keras BERT -> `.tflite` bytes, with the quantization mode as a closed choice.

Builtin ops only, always: a model that needs Flex ops would not load in the stock interpreter on a
phone, so the converter is told to fail rather than fall back.
"""
from __future__ import annotations

import warnings
from enum import Enum
from typing import Callable, Iterable

import numpy as np

from converters.model import INPUT_NAMES
from converters.tf_import import tf, tf_keras
from edgebert.errors import ConversionError, UsageError
from edgebert.interpreter import SIGNATURE, signature_for


class QuantizeMode(str, Enum):
    FLOAT32 = "float32"
    FLOAT16 = "float16"
    DYNAMIC_INT8 = "dynamic-int8"  # int8 weights, float activations: the CPU sweet spot
    INT8 = "int8"  # full integer, calibrated: for NPUs/DSPs; slower than dynamic int8 on CPU
    # int4 weights per channel, int8 activations at run time; made by ai-edge-quantizer from the float32
    # export (converters/quantize.py): the TensorFlow converter has no int4
    DYNAMIC_INT4 = "dynamic-int4"

    @classmethod
    def parse(cls, text: str) -> "QuantizeMode":
        try:
            return cls(text)
        except ValueError:
            raise UsageError(f"unknown quantization mode {text!r} "
                             f"(choose from {', '.join(m.value for m in cls)})") from None


class Compat(str, Enum):
    """Targets older than the converter. tflite-runtime 2.14 cannot load FULLY_CONNECTED version 12,
    which per-channel dynamic int8 produces; per-tensor quantization of dense layers avoids it."""
    TFLITE_RUNTIME_2_14 = "tflite-runtime-2.14"

    @classmethod
    def parse(cls, text: str | None) -> "Compat | None":
        if text is None:
            return None
        try:
            return cls(text)
        except ValueError:
            raise UsageError(f"unknown compat target {text!r} (choose from {', '.join(c.value for c in cls)})") from None


def serving_function(model: tf_keras.Model, seq_len: int | None, signature: str = SIGNATURE):
    """A concrete function over named int32 [1, S] inputs: named TensorSpecs are what give the
    signature its input names. With several functions the converter names each signature after its
    function's graph, so the Python function is given the signature's name."""
    specs = [tf.TensorSpec([1, seq_len], tf.int32, name=name) for name in INPUT_NAMES]

    def serve(input_ids, attention_mask, token_type_ids):
        return model({"input_ids": input_ids, "attention_mask": attention_mask,
                      "token_type_ids": token_type_ids}, training=False)

    serve.__name__ = signature
    return tf.function(serve, input_signature=specs).get_concrete_function()


def export_tflite(model: tf_keras.Model, seq_len: int | None, mode: QuantizeMode,
                  calibration: Callable[[], Iterable] | None = None,
                  compat: Compat | None = None, shorter_lengths: tuple[int, ...] = ()) -> bytes:
    """Convert BERT's serving function to TFLite. `calibration` yields input dicts of real tokenized
    text (int8 only). `shorter_lengths` adds one signature per length (length buckets, named by
    edgebert.interpreter.signature_for): the converter stores the weights once for all of them, and
    `seq_len`, the longest, stays `serving_default`. A bucketed int8 calibration yields
    (signature, input dict) pairs, one signature's texts at its own length."""
    functions = [serving_function(model, length, signature_for(length, seq_len))
                 for length in (*sorted(shorter_lengths), seq_len)]
    return convert_function(functions, model, mode, calibration, compat)


def convert_function(function, trackable, mode: QuantizeMode,
                     calibration: Callable[[], Iterable] | None = None,
                     compat: Compat | None = None) -> bytes:
    """Any concrete function (BERT's, or a benchmark's single layer), or a list of them (one signature
    each), to TFLite bytes in `mode`, on builtin ops only. `trackable` owns the functions' variables
    (the Keras model or layer)."""
    if compat is Compat.TFLITE_RUNTIME_2_14 and mode is QuantizeMode.DYNAMIC_INT4:
        raise UsageError(f"--compat {compat.value}: tflite-runtime 2.14 has no int4 kernels; use dynamic-int8")
    if compat is Compat.TFLITE_RUNTIME_2_14 and mode is not QuantizeMode.DYNAMIC_INT8:
        raise UsageError(f"--compat {compat.value} only changes dynamic-int8 models; "
                         f"{mode.value} already loads in tflite-runtime 2.14")
    if mode is QuantizeMode.DYNAMIC_INT4:
        raise UsageError("dynamic-int4 is made by ai-edge-quantizer from a float32 export "
                         "(converters.quantize), not by the TensorFlow converter")
    functions = function if isinstance(function, list) else [function]
    converter = tf.lite.TFLiteConverter.from_concrete_functions(functions, trackable)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if mode is QuantizeMode.FLOAT16:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode is QuantizeMode.DYNAMIC_INT8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if compat is Compat.TFLITE_RUNTIME_2_14:
            converter._experimental_disable_per_channel_quantization_for_dense_layers = True
    elif mode is QuantizeMode.INT8:
        if calibration is None:
            raise UsageError("int8 needs calibration text (real sentences, never random ids)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = calibration
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        with warnings.catch_warnings():  # int8 calibration runs TF's own, deprecated, interpreter
            warnings.simplefilter("ignore")
            return converter.convert()
    except Exception as error:  # the converter raises a zoo of types; all mean "could not convert"
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ConversionError(f"TFLite conversion ({mode.value}) failed: {first_line}") from error
