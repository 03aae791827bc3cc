"""What would make full int8 hold on a real fine-tuned classifier? Each candidate export of the same
classifier against its float model on a labelled task file: the TensorFlow converter's calibrated int8, plain
and with outlier equalization (smoothing and value rotation; then GPTQ on top), its int16-activation mode,
and ai-edge-quantizer's static int8 with int8 activations, with int16 activations (a16w8) everywhere, and with
only the dense layers integer; then each kind of op alone at int8, every other op float (which ops can take
int8 activations at all); and last what `edgebert convert --quantize int8` makes by default (its
mixed-precision search: static int8 dense layers among float ops, the most sensitive raised to float).

    python -m benchmarks.full_int8 CLASSIFIER --task ../shared/data/glue/SST-2/dev.tsv [--limit 300] [--out FILE]

Prints, per export, the largest change of a class probability (validation's full-int8 threshold is 0.2), the
accuracy, the model bytes and the mean time per call (1 thread; a16w8 runs LiteRT's reference kernels); the
float model's accuracy first. ai-edge-quantizer keeps the model's output int8: edgebert's interpreter
dequantizes it with the output's own scale before the softmax. All but the last row are trials, not the
product."""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from edgebert.scores import softmax


def probabilities(path: Path, feeds: list[dict]) -> tuple[np.ndarray, float]:
    """Each feed's class probabilities from the `.tflite` at `path`, and the mean seconds per call.
    TFLiteModel dequantizes an integer output (ai-edge-quantizer's static recipes end in int8 logits)."""
    from edgebert.interpreter import TFLiteModel

    model = TFLiteModel(path, num_threads=1)
    started = time.perf_counter()
    outputs = [model(**feed) for feed in feeds]
    seconds = (time.perf_counter() - started) / len(feeds)
    if "probabilities" in outputs[0]:  # a bundle's model.tflite ends in its SOFTMAX
        return np.stack([output["probabilities"][0] for output in outputs]), seconds
    return np.stack([softmax(output["logits"][0]) for output in outputs]), seconds


def aeq_static(float_bytes: bytes, calibration: list[dict], int16_ops=(), integer_ops=None) -> bytes:
    """ai-edge-quantizer's static quantization: int8 weights; int8 activations on `integer_ops` (default:
    every op it supports; any other op stays float), int16 activations on `int16_ops`."""
    from ai_edge_quantizer import quantizer, recipe_manager
    from ai_edge_quantizer.qtyping import TFLOperationName

    manager = recipe_manager.RecipeManager()
    for op in integer_ops or (TFLOperationName.ALL_SUPPORTED,):
        manager.add_static_config(regex=".*", operation_name=op, activation_num_bits=8, weight_num_bits=8)
    for op in int16_ops:
        manager.add_static_config(regex=".*", operation_name=op, activation_num_bits=16, weight_num_bits=8)
    engine = quantizer.Quantizer(bytearray(float_bytes), manager.get_quantization_recipe())
    calibrated = engine.calibrate({"serving_default": calibration})
    return bytes(engine.quantize(calibrated, enable_progress_bar=False, enable_progress_report=False).quantized_model)


# The op kinds of a BERT graph ai-edge-quantizer can make integer (RESHAPE, TRANSPOSE and the like only
# move values); LayerNorm is MEAN, SQUARED_DIFFERENCE, ADD, RSQRT, MUL and SUB.
OP_KINDS = ("FULLY_CONNECTED", "BATCH_MATMUL", "SOFTMAX", "GELU", "ADD", "MUL", "SUB", "MEAN",
            "SQUARED_DIFFERENCE", "RSQRT")


def product_int8(source: str, seq: int, out: Path) -> tuple[bytes, dict]:
    """The model.tflite `edgebert convert --quantize int8 --seq-len SEQ` writes, with its defaults, and
    what its manifest says of the mix."""
    from converters.pipeline import ConvertOptions, convert

    quantization = convert(source, out, ConvertOptions(quantize="int8", seq_len=seq)).manifest["quantization"]
    mixed = quantization["mixed_precision"]
    return (out / "model.tflite").read_bytes(), {"tool": quantization["tool"], "summary": mixed.get("summary"),
                                                 "raised": mixed.get("raised", [])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("source", help="a fine-tuned classifier checkpoint")
    parser.add_argument("--task", type=Path, required=True, help="a labelled TSV (sentence, label)")
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--out", type=Path, help="also write the rows here, as JSON")
    args = parser.parse_args()

    import tensorflow as tf
    from ai_edge_quantizer.qtyping import TFLOperationName

    from converters import outliers
    from converters.export import QuantizeMode, export_tflite, serving_function
    from converters.model import INT8_MASKED_SCORE, build_bert, set_google_weights
    from converters.pipeline import _encode_each, _texts, bundle_tokenizer
    from converters.sources import load_source
    from edgebert.quiet import native_output_silenced
    from edgebert.tasks import load_task

    source = load_source(args.source)
    config, labels_count, seq = source.config, source.num_labels, args.seq_len
    tokenizer = bundle_tokenizer(source, seq)
    float_model = build_bert(config, seq, labels_count)
    set_google_weights(float_model, config, source.weights, labels_count)
    # Every export masks padding with the int8-friendly bias, as `convert --quantize int8` does
    # (converters/model.py); the reference is the float model as trained.
    model = build_bert(config, seq, labels_count, masked_score=INT8_MASKED_SCORE)
    model.set_weights(float_model.get_weights())
    calibration = _encode_each(tokenizer, _texts(200), seq)
    task = load_task(args.task)
    feeds = _encode_each(tokenizer, list(task.texts[:args.limit]), seq)
    labels = np.asarray(task.labels[:args.limit])
    reference = np.stack([softmax(np.asarray(float_model(feed)["logits"])[0]) for feed in feeds])
    rows = [{"export": "float32 (Keras)", "accuracy": float((reference.argmax(1) == labels).mean())}]
    print(f"float32: accuracy {rows[0]['accuracy']:.4f} over {len(feeds)} texts", flush=True)

    def int16_converter() -> bytes:
        converter = tf.lite.TFLiteConverter.from_concrete_functions([serving_function(model, seq)], model)
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: iter(calibration)
        converter.target_spec.supported_ops = [
            tf.lite.OpsSet.EXPERIMENTAL_TFLITE_BUILTINS_ACTIVATIONS_INT16_WEIGHTS_INT8]
        return converter.convert()

    def equalized():
        return outliers.equalize(
            model, lambda: build_bert(config, seq, labels_count, masked_score=INT8_MASKED_SCORE, smoothing=True),
            config, calibration)

    with tempfile.TemporaryDirectory(prefix="full-int8-") as scratch:
        with native_output_silenced():
            float_bytes = export_tflite(model, seq, QuantizeMode.FLOAT32)
        plain = lambda: export_tflite(model, seq, QuantizeMode.INT8, lambda: iter(calibration))  # noqa: E731
        smoothing = {}  # the equalized model and its int8 export, which the GPTQ row refines

        def smoothed():
            smoothing["model"] = equalized()
            smoothing["int8"] = export_tflite(smoothing["model"].model, seq, QuantizeMode.INT8, lambda: iter(calibration))
            return smoothing["int8"]

        candidates = [
            ("int8, TensorFlow converter", plain),
            ("int8 equalized, TensorFlow converter", smoothed),
            ("int8 equalized + GPTQ, TensorFlow converter",
             lambda: smoothing["model"].refine(smoothing["int8"])),
            ("int16 activations, TensorFlow converter", int16_converter),
            ("int8, ai-edge-quantizer", lambda: aeq_static(float_bytes, calibration)),
            ("int8 dense layers only (every other op float), ai-edge-quantizer",
             lambda: aeq_static(float_bytes, calibration, integer_ops=(TFLOperationName.FULLY_CONNECTED,))),
            ("int16 activations (a16w8), ai-edge-quantizer",
             lambda: aeq_static(float_bytes, calibration, int16_ops=(TFLOperationName.ALL_SUPPORTED,))),
        ]
        # Which ops can take int8 activations at all: each kind alone at int8, every other op float.
        for op in OP_KINDS:
            candidates.append((f"only {op} int8 (every other op float), ai-edge-quantizer",
                               lambda op=op: aeq_static(float_bytes, calibration, integer_ops=(TFLOperationName[op],))))
        candidates.append(("edgebert convert --quantize int8 (default: mixed precision)",
                           lambda: product_int8(args.source, seq, Path(scratch, "bundle"))))
        for name, make in candidates:
            try:
                with native_output_silenced():  # the converters' logs; the rows below are printed
                    exported = make()
                exported, notes = exported if isinstance(exported, tuple) else (exported, {})
            except Exception as error:  # a trial: a mode the converter refuses is a result too
                row = {"export": name, "refused": str(error).strip().splitlines()[0][:200]}
                print(f"{name}: refused: {row['refused']}", flush=True)
                rows.append(row)
                continue
            path = Path(scratch, f"{name}.tflite")
            path.write_bytes(exported)
            got, seconds = probabilities(path, feeds)
            row = {"export": name, "bytes": len(exported), "max_probability_change": float(np.abs(got - reference).max()),
                   "accuracy": float((got.argmax(1) == labels).mean()), "ms_per_call": seconds * 1e3, **notes}
            rows.append(row)
            print(f"{name}: largest probability change {row['max_probability_change']:.4f}, accuracy "
                  f"{row['accuracy']:.4f}, {len(exported):,} bytes, {row['ms_per_call']:.1f} ms/call", flush=True)
    if args.out:
        args.out.write_text(json.dumps({"source": str(args.source), "task": str(args.task), "texts": len(feeds),
                                        "seq_len": seq, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
