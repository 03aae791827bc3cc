"""The roofline: how much matrix work a BERT forward pass is, and how fast this CPU's LiteRT can do it.

`bert_macs` counts multiply-accumulates; `build_fc_models` writes single FULLY_CONNECTED layers converted
with TensorFlow (dynamic int8 like the bundles, and float32 for reference); the worker
(`benchmarks.peer.worker`, engine "roofline") times them with LiteRT + XNNPACK, the runtime the bundles
use, and reports GMAC/s. The best dynamic-int8 figure over the shapes tried is the roofline each bundle's
achieved throughput (MACs / p50) is compared with.
"""
from __future__ import annotations

from pathlib import Path

# [M x K] x [K x N]: M = 128 rows (one seq-128 sentence), K inputs, N outputs. Several shapes, since the
# kernels' efficiency depends on the shape; the best is the roofline.
DEFAULT_SHAPES = ((128, 2048, 2048), (128, 1024, 4096), (128, 4096, 1024), (128, 512, 2048))


def bert_macs(layers: int, hidden: int, intermediate: int, seq_len: int) -> dict:
    """Multiply-accumulates of one BERT encoder forward pass at batch 1, embeddings excluded.

    With S = seq_len, H = hidden, I = intermediate, L = layers (heads A and head size D = H/A cancel out):

        per layer:  Q, K, V, O projections   4 * S * H * H
                    FFN (H->I, I->H)         2 * S * H * I
                    attention scores Q K^T   A * S * S * D = S * S * H
                    attention context P V    A * S * S * D = S * S * H
        pooler:     one token, H -> H        H * H

        total = L * (4*S*H^2 + 2*S*H*I + 2*S^2*H) + H^2

    `dense` (projections, FFN, pooler) is what dynamic int8 runs on int8 kernels; `attention` (scores
    and context) are activation x activation products, which stay float in a dynamic-int8 model.
    LayerNorm, softmax, GELU, biases and residual adds are not multiply-accumulates and are not counted.
    """
    s, h, i, n = seq_len, hidden, intermediate, layers
    projections = n * 4 * s * h * h
    ffn = n * 2 * s * h * i
    attention = n * 2 * s * s * h
    pooler = h * h
    dense = projections + ffn + pooler
    return {"total": dense + attention, "dense": dense, "attention": attention, "projections": projections,
            "ffn": ffn, "pooler": pooler}


def parse_shapes(text: str) -> tuple[tuple[int, int, int], ...]:
    """'128x2048x2048,128x1024x4096' -> ((128, 2048, 2048), (128, 1024, 4096))."""
    shapes = []
    for part in text.split(","):
        dims = part.strip().lower().split("x")
        if len(dims) != 3 or not all(d.isdigit() and int(d) > 0 for d in dims):
            raise ValueError(f"a roofline shape is MxKxN with positive integers, got {part!r}")
        shapes.append(tuple(int(d) for d in dims))
    return tuple(shapes)


def build_fc_models(shapes, out_dir: Path, seed: int = 0) -> list[dict]:
    """One float32 and one dynamic-int8 .tflite per shape, each a single FULLY_CONNECTED [M,K] x [K,N]
    (+ bias), converted by TensorFlow the way converters/export.py converts the bundles' Dense layers
    (Optimize.DEFAULT, no representative data: int8 per-channel weights, activations quantized on the
    fly). Returns [{"shape", "mode", "path", "macs"}]."""
    import numpy as np

    from converters.export import QuantizeMode, convert_function
    from converters.tf_import import tf, tf_keras
    from edgebert.quiet import native_output_silenced

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    models = []
    for m, k, n in shapes:
        dense = tf_keras.layers.Dense(n)
        dense.build((None, k))
        dense.set_weights([(rng.standard_normal((k, n)) * 0.02).astype(np.float32),
                           (rng.standard_normal(n) * 0.02).astype(np.float32)])

        @tf.function(input_signature=[tf.TensorSpec([m, k], tf.float32, name="x")])
        def serve(x):
            return {"y": dense(x)}  # noqa: B023 - converted right below, in this iteration

        for mode in ("float32", "dynamic-int8"):
            path = out_dir / f"fc_{m}x{k}x{n}.{mode}.tflite"
            if not path.is_file():
                with native_output_silenced():
                    data = convert_function(serve.get_concrete_function(), dense, QuantizeMode(mode))
                path.write_bytes(data)
            models.append({"shape": [m, k, n], "mode": mode, "path": str(path), "macs": m * k * n})
    return models


def time_fc_models(models: list[dict], threads: int, runs: int, warmup: int = 3) -> list[dict]:
    """Time each model's bare invoke with ai_edge_litert (XNNPACK on), median over `runs`. Runs in the
    roofline worker, which imports no TensorFlow. Any model works: float inputs get random values, integer
    inputs ones. `macs` may be 0 (no GMAC/s then)."""
    import time

    import numpy as np

    from edgebert.interpreter import find_runtime
    from edgebert.quiet import native_output_silenced

    runtime = find_runtime("auto")
    results = []
    rng = np.random.default_rng(1)
    for model in models:
        with native_output_silenced():
            interpreter = runtime.module.Interpreter(model_path=model["path"], num_threads=threads)
            interpreter.allocate_tensors()
            for detail in interpreter.get_input_details():  # random floats; int inputs (token ids...) ones
                if np.issubdtype(detail["dtype"], np.floating):
                    value = rng.standard_normal(detail["shape"]).astype(detail["dtype"])
                else:
                    value = np.ones(detail["shape"], detail["dtype"])
                interpreter.set_tensor(detail["index"], value)
            interpreter.invoke()  # applies XNNPACK
        delegated = sum(op["op_name"] == "DELEGATE" for op in interpreter._get_ops_details())
        for _ in range(warmup):
            interpreter.invoke()
        timings = np.empty(runs, np.int64)
        for index in range(runs):
            start = time.perf_counter_ns()
            interpreter.invoke()
            timings[index] = time.perf_counter_ns() - start
        p50_s = float(np.median(timings)) / 1e9
        results.append({**model, "threads": threads, "p50_ms": round(p50_s * 1e3, 4),
                        "min_ms": round(float(timings.min()) / 1e6, 4),
                        "gmacs": round(model.get("macs", 0) / p50_s / 1e9, 2), "xnnpack_partitions": delegated,
                        "runtime": runtime.describe()})
        del interpreter
    return results


def best(timed: list[dict], mode: str, threads: int) -> dict | None:
    """The fastest (GMAC/s at the median) of the timed layers of one mode and thread count."""
    rows = [row for row in timed if row["mode"] == mode and row["threads"] == threads]
    return max(rows, key=lambda row: row["gmacs"]) if rows else None
