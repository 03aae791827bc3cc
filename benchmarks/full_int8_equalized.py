"""Does outlier equalization rescue full int8? The TensorFlow converter's calibrated int8 export of a
fine-tuned classifier, plain and equalized (smoothing and value rotation; then GPTQ on top), against the float
model on a labelled task file.

    python -m benchmarks.full_int8_equalized CLASSIFIER --task ../shared/data/glue/SST-2/dev.tsv [--limit 300]

Prints, per export, the largest change of a class probability (validation's full-int8 threshold is 0.2)
and the accuracy; the float model's accuracy first. A trial, not the product: `edgebert convert --quantize
int8` does not equalize."""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0].replace("\n", " "))
    parser.add_argument("source", help="a fine-tuned classifier checkpoint")
    parser.add_argument("--task", type=Path, required=True, help="a labelled TSV (sentence, label)")
    parser.add_argument("--limit", type=int, default=300)
    parser.add_argument("--seq-len", type=int, default=64)
    args = parser.parse_args()

    from converters import outliers
    from converters.export import QuantizeMode, export_tflite
    from converters.model import INT8_MASKED_SCORE, build_bert, set_google_weights
    from converters.pipeline import _encode_each, _texts, bundle_tokenizer
    from converters.sources import load_source
    from edgebert.interpreter import TFLiteModel
    from edgebert.quiet import native_output_silenced
    from edgebert.tasks import load_task

    source = load_source(args.source)
    config, labels_count, seq = source.config, source.num_labels, args.seq_len
    tokenizer = bundle_tokenizer(source, seq)
    model = build_bert(config, seq, labels_count)
    set_google_weights(model, config, source.weights, labels_count)
    int8_model = build_bert(config, seq, labels_count, masked_score=INT8_MASKED_SCORE)
    int8_model.set_weights(model.get_weights())
    calibration = _encode_each(tokenizer, _texts(200), seq)
    task = load_task(args.task)
    feeds = _encode_each(tokenizer, list(task.texts[:args.limit]), seq)
    labels = np.asarray(task.labels[:args.limit])

    def softmax(logits):
        shifted = np.exp(logits - logits.max(-1, keepdims=True))
        return shifted / shifted.sum(-1, keepdims=True)

    reference = np.stack([softmax(np.asarray(model(feed)["logits"])[0]) for feed in feeds])
    print(f"float32: accuracy {(reference.argmax(1) == labels).mean():.4f} over {len(feeds)} texts", flush=True)

    def measure(name: str, model_bytes: bytes, scratch: Path) -> None:
        path = scratch / f"{name}.tflite"
        path.write_bytes(model_bytes)
        exported = TFLiteModel(path, num_threads=1)
        got = np.stack([softmax(exported(**feed)["logits"][0]) for feed in feeds])
        print(f"{name}: largest probability change {np.abs(got - reference).max():.4f}, "
              f"accuracy {(got.argmax(1) == labels).mean():.4f}", flush=True)

    import tempfile

    with tempfile.TemporaryDirectory(prefix="full-int8-") as scratch:
        with native_output_silenced():
            plain = export_tflite(int8_model, seq, QuantizeMode.INT8, lambda: iter(calibration))
        measure("int8", plain, Path(scratch))
        equalized = outliers.equalize(
            int8_model, lambda: build_bert(config, seq, labels_count, masked_score=INT8_MASKED_SCORE, smoothing=True),
            config, calibration)
        with native_output_silenced():
            smoothed = export_tflite(equalized.model, seq, QuantizeMode.INT8, lambda: iter(calibration))
        measure("int8 equalized", smoothed, Path(scratch))
        measure("int8 equalized + GPTQ", equalized.refine(smoothed), Path(scratch))


if __name__ == "__main__":
    main()
