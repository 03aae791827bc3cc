"""Outlier equalization (converters/outliers.py): the same float function, less int8 error.

The real-weights case (all-MiniLM-L6-v2) is in test_quantize.py's slow test; here tiny random models
built in the test, one of them with an outlier planted where real BERTs have them.
"""
from __future__ import annotations

import numpy as np
import pytest

from test_quantize import PLANTED, SEQ_LEN, _convert, planted  # noqa: F401  (planted: a fixture)


def _interpreter(model_bytes):
    from ai_edge_litert.interpreter import Interpreter
    return Interpreter(model_content=model_bytes)


def _inputs(rng, count, vocab=100, length=SEQ_LEN):
    real = rng.integers(4, length + 1, count)
    examples = []
    for n in real:
        ids = np.zeros((1, length), np.int32)
        ids[0, :n] = rng.integers(5, vocab, n)
        mask = (ids > 0).astype(np.int32)
        examples.append({"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)})
    return examples


@pytest.fixture(scope="module")
def models(tiny_config):
    """A tiny float model with large LayerNorm gains in a few hidden dimensions (outlier channels, as in
    real BERTs), and its equalized copy."""
    from converters import outliers
    from converters.google_checkpoint import random_weights
    from converters.model import build_bert, set_google_weights

    weights = random_weights(tiny_config, seed=3)
    for name in weights:
        if name.endswith("LayerNorm/gamma"):
            weights[name] = weights[name].copy()
            weights[name][[7, 20]] *= 30.0
    model = build_bert(tiny_config, SEQ_LEN)
    set_google_weights(model, tiny_config, weights)
    calibration = _inputs(np.random.default_rng(0), 24, tiny_config.vocab_size)
    equalized = outliers.equalize(model, lambda: build_bert(tiny_config, SEQ_LEN, smoothing=True),
                                  tiny_config, calibration)
    return model, equalized


def test_equalization_keeps_the_float_function(models):
    model, equalized = models
    for example in _inputs(np.random.default_rng(1), 4):
        before, after = model(example), equalized.model(example)
        for name in before:
            np.testing.assert_allclose(after[name].numpy(), before[name].numpy(), atol=2e-5)


def test_smoothing_flattens_the_outlier_channels_and_rotation_spreads_the_values(models, tiny_config):
    model, equalized = models
    from converters.outliers import head_rotation

    scale = equalized.model.get_layer("layer_0_attention_input_scale").get_weights()[0]
    assert scale[[7, 20]].max() < 0.5 * np.median(scale)  # the outlier channels are divided down most
    rotation = head_rotation(tiny_config.hidden_size, tiny_config.head_size)
    np.testing.assert_allclose(rotation @ rotation.T, np.eye(len(rotation)), atol=1e-6)
    value = model.get_layer("layer_0_value").get_weights()[0] / scale[:, None]  # smoothed, then rotated
    np.testing.assert_allclose(equalized.model.get_layer("layer_0_value").get_weights()[0], value @ rotation,
                               rtol=1e-4, atol=1e-6)


def test_the_smoothing_survives_the_converter(models):
    """The TensorFlow converter folds a constant multiply into the next dense layer's weights, which would
    undo the smoothing before quantization; the graph keeps it as a MUL of its own."""
    from converters.export import QuantizeMode, export_tflite

    _, equalized = models
    interpreter = _interpreter(export_tflite(equalized.model, SEQ_LEN, QuantizeMode.DYNAMIC_INT8))
    names = {tensor["index"]: tensor["name"] for tensor in interpreter.get_tensor_details()}
    ops = [(op["op_name"], names[op["outputs"][0]]) for op in interpreter._get_ops_details()]
    scaled = {name.split("/")[1] for op, name in ops if op == "MUL" and "_input_scale/" in name}
    assert scaled == {f"layer_{i}_{part}_input_scale" for i in (0, 1) for part in ("attention", "intermediate")}
    # A folded multiply would name itself in the dense layer's output: none does.
    assert not [name for op, name in ops if op == "FULLY_CONNECTED" and "_input_scale" in name]


def test_gptq_has_less_output_error_than_rounding_at_the_same_scales():
    from converters.outliers import gptq

    rng = np.random.default_rng(0)
    weights = rng.normal(size=(16, 64))
    inputs = rng.normal(size=(512, 8)) @ rng.normal(size=(8, 64)) + 0.1 * rng.normal(size=(512, 64))
    inputs[:, 3] *= 20
    scales = np.abs(weights).max(1) / 127
    integers = gptq(weights, inputs.T @ inputs, scales)
    assert integers.dtype == np.int8 and np.abs(integers).max() <= 127
    error = lambda q: np.linalg.norm(inputs @ (weights - q * scales[:, None]).T)  # noqa: E731
    assert error(integers) < 0.8 * error(np.round(weights / scales[:, None]))


def _int8_dense_layers(model_bytes) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Keras layer name -> (int8 or int4 weights [out, in], per-channel scales) of each FULLY_CONNECTED."""
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils as fb

    from converters.outliers import _read_integers

    model = fb.read_model_from_bytearray(bytearray(model_bytes))
    graph, layers = model.subgraphs[0], {}
    for op in graph.operators:
        if fb.get_builtin_code_from_operator_code(model.operatorCodes[op.opcodeIndex]) != \
                schema.BuiltinOperator.FULLY_CONNECTED:
            continue
        weights = graph.tensors[op.inputs[1]]
        name = graph.tensors[op.outputs[0]].name.decode().split(";")[0].split("/")[1]
        data = _read_integers(model.buffers[weights.buffer].data, tuple(weights.shape),
                              weights.type == schema.TensorType.INT4)
        layers[name] = (data.astype(np.float64), np.asarray(weights.quantization.scale, np.float64))
    return layers


def test_int4_weights_unpack_in_litert_s_order_and_pack_back():
    """Two int4 values a byte, the lower nibble first; an odd count leaves the last high nibble zero."""
    from converters.outliers import _pack_int4, _read_integers

    values = np.array([[-8, 7, 0, 1, -1]], np.int8)
    packed = _pack_int4(values)
    assert packed == bytes([0x78, 0x10, 0x0F])
    np.testing.assert_array_equal(_read_integers(np.frombuffer(packed, np.uint8), (1, 5), True), values)


def test_gptq_lowers_every_exported_layers_error_on_its_calibration_inputs(models):
    """refine() rewrites the integers of every int8 dense layer the converter exported, at the
    converter's scales, so that each layer's output error on the calibration inputs, (W - Q s) H (W - Q s)^T
    with H their X^T X, is below round-to-nearest's; the query's folded 1/sqrt(head size) included."""
    from converters.export import QuantizeMode, export_tflite

    _, equalized = models
    exported = export_tflite(equalized.model, SEQ_LEN, QuantizeMode.DYNAMIC_INT8)
    rounded, refined = _int8_dense_layers(exported), _int8_dense_layers(equalized.refine(exported))
    assert set(rounded) == set(equalized.hessians) and len(rounded) == 13  # 2 layers x 6 dense, the pooler
    head_size = equalized.model.get_layer("layer_0_query").get_weights()[0].shape[1] // 4
    for name, (integers, scales) in rounded.items():
        weights = equalized.model.get_layer(name).get_weights()[0].T.astype(np.float64)
        if name.endswith("_query"):
            weights /= np.sqrt(head_size)  # what the converter folded in
        np.testing.assert_allclose(scales, np.abs(weights).max(1) / 127, rtol=1e-5)
        hessian = equalized.hessians[name]
        error = lambda q: np.trace((weights - q * scales[:, None]) @ hessian  # noqa: E731
                                   @ (weights - q * scales[:, None]).T)
        assert np.array_equal(integers, np.round(weights / scales[:, None]))
        assert error(refined[name][0]) < error(integers), name
        assert np.array_equal(refined[name][1], scales)


def test_gptq_lowers_every_int4_layers_error_at_ai_edge_quantizer_s_scales(models):
    """dynamic-int4 is ai-edge-quantizer's (OCTAV scales, which clip): refine() keeps its scales, reads the
    query's folded factor back from its integers, and lowers each layer's output error on the calibration
    inputs below the quantizer's own integers'."""
    from converters import quantize
    from converters.export import QuantizeMode, export_tflite

    _, equalized = models
    prepared = quantize.prepare(export_tflite(equalized.model, SEQ_LEN, QuantizeMode.FLOAT32))
    layers = quantize.find_layers(prepared)
    exported = quantize.quantize(prepared, layers, {layer.name: quantize.Precision.INT4 for layer in layers
                                                    if layer.op == "FULLY_CONNECTED"})
    rounded, refined = _int8_dense_layers(exported), _int8_dense_layers(equalized.refine(exported))
    assert set(rounded) == set(equalized.hessians) and len(rounded) == 13
    head_size = equalized.model.get_layer("layer_0_query").get_weights()[0].shape[1] // 4
    for name, (integers, scales) in rounded.items():
        assert integers.min() >= -8 and integers.max() <= 7
        weights = equalized.model.get_layer(name).get_weights()[0].T.astype(np.float64)
        if name.endswith("_query"):
            weights /= np.sqrt(head_size)  # what the converter folded in
        hessian = equalized.hessians[name]
        error = lambda q: np.trace((weights - q * scales[:, None]) @ hessian  # noqa: E731
                                   @ (weights - q * scales[:, None]).T)
        assert error(refined[name][0]) < error(integers), name
        assert np.array_equal(refined[name][1], scales)
        assert refined[name][0].min() >= -8 and refined[name][0].max() <= 7


def test_the_planted_outlier_converts_without_raising_any_layer(planted, tmp_path):
    """The planted model's plain dynamic int8 misses (test_quantize.py); equalized, it passes with every
    layer int8, and the manifest says what was done."""
    lines = []
    manifest = _convert(planted, tmp_path / "b", log=lines.append, equalize=True).manifest
    quantization = manifest["quantization"]
    assert not quantization["mixed_precision"]["searched"] and manifest["validation"]["passed"]
    assert {layer["precision"] for layer in quantization["layers"] if layer["name"].startswith("layer_")} == {"int8"}
    assert quantization["equalization"]["gptq"]["layers"] == 13
    assert quantization["equalization"]["plain_export_shortfall"] > 1  # the plain export missed
    assert any("outlier equalization" in line and "shortfall" in line for line in lines)
    assert PLANTED in {layer["name"] for layer in quantization["layers"]}
    # GPTQ and the smoothing never see the texts validation checks (samples/ would give them to both).
    from converters.outliers import CALIBRATION_TEXTS
    from converters.pipeline import _texts

    validation, calibration = set(_texts(8)), _texts(CALIBRATION_TEXTS)  # _convert validates on 8 texts
    assert validation <= set(calibration)
    assert quantization["equalization"]["gptq"]["texts"] == len([t for t in calibration if t not in validation])


def test_dynamic_int4_is_equalized_before_the_search_too(planted, tmp_path):
    """The plain all-int4 export (ai-edge-quantizer's, from the float32 export) misses on the planted outlier;
    the export is made again equalized, and every int4 or int8 layer of the shipped mix is GPTQ's."""
    lines = []
    manifest = _convert(planted, tmp_path / "b", log=lines.append, quantize="dynamic-int4", equalize=True).manifest
    quantization = manifest["quantization"]
    assert quantization["equalization"]["plain_export_shortfall"] > 1 and manifest["validation"]["passed"]
    quantized = [layer for layer in quantization["layers"] if layer["precision"] in ("int4", "int8")
                 and layer["name"] != "word_embeddings"]  # a lookup, not a dense layer: GPTQ has no Hessian
    assert quantization["equalization"]["gptq"]["layers"] == len(quantized) > 0
    assert any("plain dynamic-int4 export misses" in line for line in lines)


def test_equalize_off_and_other_modes_leave_the_export_alone(planted, tiny_checkpoint, tmp_path):
    from edgebert.errors import ValidationError

    with pytest.raises(ValidationError):
        _convert(planted, tmp_path / "off", equalize=False, mixed_precision=False)
    assert not (tmp_path / "off").exists()
    manifest = _convert(tiny_checkpoint, tmp_path / "plain", equalize=True).manifest  # passes as it is
    assert "equalization" not in manifest["quantization"]


def test_a_classifier_with_length_buckets_and_a_cls_only_last_layer_is_equalized_too(tiny_config, tmp_path):
    """The [CLS]-only last layer reads its query from the first smoothed row; each length's signature
    shares the GPTQ'd weights; the probabilities are validated at every length."""
    from test_quantize import _planted

    manifest = _convert(_planted(tmp_path, tiny_config, num_labels=3), tmp_path / "b", equalize=True,
                        buckets=(16,)).manifest
    assert manifest["recipe"]["last_layer"] == "cls" and manifest["recipe"]["seq_lens"] == [16, SEQ_LEN]
    assert manifest["quantization"]["equalization"]["gptq"]["layers"] == 13
    assert not manifest["quantization"]["mixed_precision"]["searched"]
    assert manifest["validation"]["passed"] and set(manifest["validation"]["lengths"]) == {"16", str(SEQ_LEN)}


def test_a_missing_calibration_file_is_one_line_and_writes_nothing(planted, tmp_path):
    from edgebert.errors import UsageError

    with pytest.raises(UsageError) as error:
        _convert(planted, tmp_path / "b", equalize=True, calibration_file=tmp_path / "missing.txt")
    assert "\n" not in str(error.value) and "missing.txt" in str(error.value)
    assert not (tmp_path / "b").exists()


def test_a_calibration_file_of_only_validation_texts_is_one_line_and_writes_nothing(planted, tmp_path):
    """GPTQ calibrates on texts validation does not check: a file that holds nothing else is refused."""
    from converters.pipeline import _texts
    from edgebert.errors import UsageError

    path = tmp_path / "calibration.txt"
    path.write_text("\n".join(text for text in _texts(8) if isinstance(text, str)) + "\n", encoding="utf-8")
    with pytest.raises(UsageError) as error:
        _convert(planted, tmp_path / "b", equalize=True, calibration_file=path)
    assert "\n" not in str(error.value) and "calibration.txt" in str(error.value)
    assert "validation" in str(error.value)
    assert not (tmp_path / "b").exists()


def test_the_manifest_counts_the_gptq_layers_of_the_shipped_model(models):
    """A layer the mixed-precision search keeps float32 has no integers for GPTQ to choose: the record
    counts what the shipped model holds, not what was calibrated."""
    from converters.export import QuantizeMode, export_tflite

    _, equalized = models
    quantized = equalized.refine(export_tflite(equalized.model, SEQ_LEN, QuantizeMode.DYNAMIC_INT8))
    assert equalized.manifest(quantized, 2.5)["gptq"]["layers"] == 13
    assert equalized.manifest(quantized, 2.5)["plain_export_shortfall"] == 2.5
    float_model = export_tflite(equalized.model, SEQ_LEN, QuantizeMode.FLOAT32)
    assert equalized.manifest(float_model, 2.5)["gptq"]["layers"] == 0


# --equalize rotate: the dense layers' inputs rotated at run time instead of smoothed.
ROTATION = (8, 16)  # tiny: hidden 32, intermediate 64


@pytest.fixture(scope="module")
def rotated(models, tiny_config):
    from converters import outliers
    from converters.model import build_bert

    model, _ = models
    calibration = _inputs(np.random.default_rng(0), 24, tiny_config.vocab_size)
    return outliers.equalize(model, lambda: build_bert(tiny_config, SEQ_LEN, rotation=ROTATION), tiny_config,
                             calibration, rotation=ROTATION)


def test_rotation_keeps_the_float_function_and_spreads_the_outlier_channels(models, rotated):
    """The model is the same function; each rotated dense input has its planted outlier channels spread
    over their blocks, so a row's largest value stands less far above the rest (what dynamic int8's row
    scale has to stretch over)."""
    from converters.outliers import _layer_inputs

    model, _ = models
    for example in _inputs(np.random.default_rng(1), 4):
        before, after = model(example), rotated.model(example)
        for name in before:
            np.testing.assert_allclose(after[name].numpy(), before[name].numpy(), atol=2e-5)
    examples = _inputs(np.random.default_rng(2), 4)
    names = ["layer_0_query", "layer_1_intermediate"]
    for plain, turned in zip(_layer_inputs(model, names, examples), _layer_inputs(rotated.model, names, examples)):
        for name in names:
            peak = lambda rows: np.median(np.abs(rows).max(1) / np.sqrt((rows ** 2).mean(1)))  # noqa: E731
            assert peak(turned[name]) < 0.7 * peak(plain[name]), name


def test_the_rotations_survive_the_converter_as_float_matmuls(rotated, tiny_config):
    """Neither the converter's folding nor its quantization may touch the rotation matrices: they stay
    float matmuls of their own, three per layer, and the dense layers stay int8."""
    from converters.export import QuantizeMode, export_tflite

    interpreter = _interpreter(export_tflite(rotated.model, SEQ_LEN, QuantizeMode.DYNAMIC_INT8))
    tensors = interpreter.get_tensor_details()
    ops = interpreter._get_ops_details()
    matmuls = [op for op in ops if op["op_name"] == "BATCH_MATMUL"
               and all(tensors[i]["dtype"] == np.float32 for i in op["inputs"])]
    # 3 rotations and attention's 2 per layer
    assert len(matmuls) == 5 * tiny_config.num_layers
    dense = [op for op in ops if op["op_name"] == "FULLY_CONNECTED"]
    assert len(dense) == 6 * tiny_config.num_layers + 1  # q, k, v, attention output, intermediate, output; pooler
    assert {tensors[op["inputs"][1]]["dtype"] for op in dense} == {np.int8}


def test_equalize_rotate_is_followed_by_the_search_where_rotation_is_not_enough(planted, tmp_path):
    """The planted layer's outlier is a kernel row whose input is always 0: smoothing zeroes the row, a
    rotation only spreads it over its block (50 / sqrt(8) still sets every scale). So the export with
    rotations misses, and the search raises the planted layer and nothing else."""
    lines = []
    manifest = _convert(planted, tmp_path / "b", log=lines.append, equalize=True, rotate=True).manifest
    quantization = manifest["quantization"]
    assert manifest["validation"]["passed"] and quantization["mixed_precision"]["searched"]
    assert [layer["name"] for layer in quantization["layers"] if layer["precision"] == "float32"] == [PLANTED]
    # ai-edge-quantizer's from the start (its per-row embedding scales), not the converter's then a search
    assert quantization["tool"].startswith("ai-edge-quantizer") and "tensorflow_converter" not in quantization
    equalization = quantization["equalization"]
    assert equalization["plain_export_shortfall"] is None and "smoothing" not in equalization
    inputs = equalization["run_time_rotation"]["inputs"]  # tiny: hidden 32 takes blocks of 32, not 64
    assert (inputs["intermediate"], inputs["output"]) == ("Hadamard, blocks of 32", "Hadamard, blocks of 32")
    assert equalization["gptq"]["layers"] == 12  # every int8 dense layer: 13 less the raised one
    assert not any("rotation" in layer["name"] for layer in quantization["layers"])
    assert any("--equalize rotate" in line for line in lines)


def test_equalize_rotate_with_a_mode_it_cannot_serve_is_one_line_and_writes_nothing(tiny_checkpoint, tmp_path):
    from edgebert.errors import UsageError

    for quantize in ("float32", "int8"):
        with pytest.raises(UsageError) as error:
            _convert(tiny_checkpoint, tmp_path / "b", quantize=quantize, equalize=True, rotate=True)
        assert "\n" not in str(error.value) and "--equalize rotate" in str(error.value)
    assert not (tmp_path / "b").exists()


def test_the_cli_takes_equalize_rotate_and_refuses_it_for_float32_in_one_line(tiny_checkpoint, tmp_path):
    from cli_helpers import error_line, invoke

    out = tmp_path / "b"
    result = invoke("convert", tiny_checkpoint, "--out", out, "--seq-len", "32", "--quantize", "float32",
                    "--equalize", "rotate")
    assert "--equalize rotate is for dynamic-int8 and dynamic-int4" in error_line(result, 2)
    assert not out.exists()
