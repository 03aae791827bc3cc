"""What rotating the dense layers' inputs at run time would cost a bundle: the rotations alone, timed beside it.

    python -m benchmarks.rotation_cost BUNDLE [--blocks 64:32,64:64,128:128] [--runs 300] [--out FILE]

`python -m benchmarks.minilm_error_study` finds that MiniLM's dynamic int8 reaches issue 11's fidelity
target (min cosine >= 0.999 on SST-2 dev) only when the LayerNorm outputs and the feed-forward output's
input are rotated too (block-diagonal Hadamard; the cheapest that passes in the replay: blocks of 64 on
the LayerNorm outputs and 32 on the feed-forward output's input; the attention output's rotation folds
into the value layer and is free). Those three rotations per layer cannot fold into any weight
(post-LayerNorm BERT adds the LayerNorm output to its residual; GELU sits before the feed-forward
output), so they run at run time, in float. This measures what they cost on the bundle's own shape
(layers, hidden and intermediate width, sequence length), before anyone builds them into the export:

- a float graph holding only those rotations, per layer two hidden-wide and one intermediate-wide, each
  followed by an ADD of a graph input so that the converter can fold nothing, in two forms:
  `fc`, one FULLY_CONNECTED per rotation (the rows cut into blocks); `bmm`, the same with the matrix
  tied to a run-time 1, a BATCH_MATMUL, as `convert --equalize rotate` exports it (model.BlockRotation);
  and `kron`, the block's Hadamard as the Kronecker product of two smaller ones (two FULLY_CONNECTED and
  a TRANSPOSE; the permuted order it leaves would fold into the next layer's weights);
- the same graph without the rotations (the ADDs alone), whose time is subtracted;
- the bundle itself (serving_default, one real sentence padded to its length),

all in one process, 1 thread, interleaved round by round, medians. The cost is quoted as a share of the
bundle's own latency.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _hadamard(size: int) -> np.ndarray:
    from converters.outliers import hadamard

    return hadamard(size).astype(np.float32)


def rotation_graph(layers: int, seq: int, hidden: int, inner: int, blocks: tuple[int, int] | None,
                   form: str) -> bytes:
    """A float .tflite with `layers` x (2 hidden-wide + 1 inner-wide) rotations, `blocks` (hidden-wide
    block, inner-wide block); blocks None: the ADDs alone."""
    import tensorflow as tf

    def rotate(x, width, ones):
        if blocks is None:
            return x
        block = blocks[0] if width == hidden else blocks[1]
        rows = seq * width // block
        if form == "fc":
            return tf.reshape(tf.reshape(x, [rows, block]) @ _hadamard(block), [1, seq, width])
        if form == "bmm":  # the matrix tied to a run-time 1, as the export must (else quantizers take it for weights)
            return tf.reshape(tf.reshape(x, [rows, block]) @ (_hadamard(block) * ones), [1, seq, width])
        small = 2 ** (int(np.log2(block)) // 2)  # block = small x large, e.g. 128 = 8 x 16
        large = block // small
        y = tf.reshape(tf.reshape(x, [rows * small, large]) @ _hadamard(large), [rows, small, large])
        y = tf.reshape(tf.transpose(y, [0, 2, 1]), [rows * large, small]) @ _hadamard(small)
        return tf.reshape(y, [1, seq, width])

    @tf.function(input_signature=[tf.TensorSpec([1, seq, hidden], tf.float32),
                                  tf.TensorSpec([1, seq, inner], tf.float32)])
    def graph(x0, g0):
        x, g = x0, g0
        ones = tf.cast(tf.reduce_min(tf.abs(x0)) >= 0, tf.float32)
        for _ in range(layers):
            x = rotate(x, hidden, ones) + x0  # the attention's input (a LayerNorm output)
            x = rotate(x, hidden, ones) + x0  # the intermediate layer's input (the next LayerNorm output)
            g = rotate(g, inner, ones) + g0  # the feed-forward output's input (GELU's output)
        return {"hidden": x, "inner": g}

    module = tf.Module()
    module.graph = graph
    with tempfile.TemporaryDirectory() as saved:  # through a SavedModel, so that the .tflite has a signature
        tf.saved_model.save(module, saved, signatures={"serving_default": graph.get_concrete_function()})
        return tf.lite.TFLiteConverter.from_saved_model(saved).convert()


class Timed:
    """One interpreter, one fixed feed: call() returns the seconds of one invoke."""

    def __init__(self, model_path: Path, feed: dict[str, np.ndarray]):
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(model_path), num_threads=1)
        self.runner = self.interpreter.get_signature_runner("serving_default")
        self.feed = feed
        self.runner(**feed)  # XNNPACK packs the weights on the first call

    def call(self) -> float:
        started = time.perf_counter()
        self.runner(**self.feed)
        return time.perf_counter() - started


def bundle_feed(bundle: Path) -> tuple[dict, dict]:
    from edgebert import tokenizer as tokenization
    from edgebert.samples import load_sentences

    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    seq_len = manifest["recipe"]["seq_len"]
    if not isinstance(seq_len, int):
        raise SystemExit(f"error: {bundle}: needs a bundle of one fixed length (seq_len {seq_len!r})")
    tokenizer = tokenization.load_tokenizer(bundle / "tokenizer.json")
    return manifest, tokenization.encode(tokenizer, load_sentences(limit=1), seq_len)


def _machine() -> str:
    """The CPU the figures come from, with the features that decide its int8 kernels (AMX, VNNI, dot-product)."""
    from importlib.metadata import version

    from edgebert import cpu_features
    from edgebert.device_info import device_facts

    facts = {**device_facts(), **cpu_features.device_facts()}
    return (f"CPU: {facts['cpu_model']} ({facts['cores']} cores); features {facts['cpu_features']}; int8 kernels "
            f"{facts['int8_kernels']}; ai-edge-litert {version('ai-edge-litert')}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.rotation_cost", description=__doc__.split("\n")[0])
    parser.add_argument("bundle", type=Path, help="a bundle of one fixed length (edgebert convert's output)")
    parser.add_argument("--blocks", default="64:32,64:64,128:128",
                        help="Hadamard block sizes, LAYERNORM:FFN pairs (powers of two): the LayerNorm "
                             "outputs' block and the feed-forward output's input's")
    parser.add_argument("--runs", type=int, default=300, help="timed calls of each model")
    parser.add_argument("--out", type=Path, help="write the markdown table here too")
    args = parser.parse_args(argv)
    if not (args.bundle / "model.tflite").is_file():
        print(f"error: {args.bundle}: not a bundle (no model.tflite)", file=sys.stderr)
        return 2
    try:
        blocks = [tuple(int(b) for b in pair.split(":")) for pair in args.blocks.split(",") if pair.strip()]
    except ValueError:
        blocks = []
    if not blocks or any(len(pair) != 2 or any(b < 4 or b & (b - 1) for b in pair) for pair in blocks):
        print(f"error: --blocks {args.blocks}: want LAYERNORM:FFN pairs of powers of two >= 4, "
              "e.g. 64:32", file=sys.stderr)
        return 2
    manifest, feed = bundle_feed(args.bundle)
    config = manifest["model"]
    layers, hidden, inner = config["num_layers"], config["hidden_size"], config["intermediate_size"]
    seq = manifest["recipe"]["seq_len"]
    plans = [("adds alone", None, "fc")] + [(f"{form} {a}:{b}", (a, b), form)
                                            for a, b in blocks for form in ("fc", "bmm", "kron")]
    timed: dict[str, Timed] = {"bundle": Timed(args.bundle / "model.tflite", feed)}
    with tempfile.TemporaryDirectory() as tmp:
        for name, block, form in plans:
            path = Path(tmp) / f"{name.replace(' ', '-')}.tflite"
            path.write_bytes(rotation_graph(layers, seq, hidden, inner, block, form))
            rng = np.random.default_rng(0)
            timed[name] = Timed(path, {"x0": rng.standard_normal((1, seq, hidden), np.float32),
                                       "g0": rng.standard_normal((1, seq, inner), np.float32)})
        samples: dict[str, list[float]] = {name: [] for name in timed}
        for _ in range(args.runs):
            for name, model in timed.items():
                samples[name].append(model.call())
    p50 = {name: statistics.median(values) * 1e3 for name, values in samples.items()}
    lines = [f"{args.bundle.name}: {layers} layers, hidden {hidden}, intermediate {inner}, seq {seq}; "
             f"bundle p50 {p50['bundle']:.3f} ms, the ADDs alone {p50['adds alone']:.3f} ms "
             f"({args.runs} runs, 1 thread)",
             _machine(), "",
             "| rotations | p50 | less the ADDs | share of the bundle's latency |", "|---|---:|---:|---:|"]
    for name, _, _ in plans[1:]:
        cost = p50[name] - p50["adds alone"]
        lines.append(f"| {name} | {p50[name]:.3f} ms | {cost:.3f} ms | {cost / p50['bundle']:.1%} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.write_text(text + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
