"""Where a bundle's time goes: an op profile by construction, since LiteRT's Python API has no profiler.

    python -m benchmarks.peer.components --variant medium [--threads 1] [--runs 30] [--bundle DIR]

Each piece of one encoder layer is built from converters/model.py's own layers, converted alone (the
way converters/export.py converts: builtin ops, dynamic int8 where there are weights) and timed with
LiteRT + XNNPACK in a fresh TensorFlow-free process (the roofline worker), batch 1, seq S:

  dense, as exported      Q, K, V, O (H->H), FFN in (H->I) and out (I->H): six FULLY_CONNECTED, dyn int8
  dense, fused QKV        the same with Q, K, V as one H->3H layer (one activation quantization, not three)
  attention core          q*1/sqrt(D), reshape/transpose to heads, Q K^T + mask, softmax, P V, back (float)
  add + LayerNorm         residual add and Keras LayerNormalization (MEAN, SQUARED_DIFFERENCE, RSQRT, ...)
  GELU                    tanh GELU over [S, I]
  whole layer             converters.model.encoder_layer, dynamic int8

and, with --bundle, the bundle itself. The per-forward estimate is L x (dense + attention + 2 x
(add+LayerNorm) + GELU); what the bundle takes beyond it is embeddings, pooler and per-call overhead.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path


def build_components(config, seq_len: int, out_dir: Path) -> list[dict]:
    import numpy as np

    from converters.model import AttentionMaskBias, ScaledDotProductAttention, _activation, _layer_norm, encoder_layer
    from converters.export import QuantizeMode, convert_function
    from converters.tf_import import tf, tf_keras
    from edgebert.quiet import native_output_silenced

    h, i, s = config.hidden_size, config.intermediate_size, seq_len
    rng = np.random.default_rng(0)
    Input, Dense = tf_keras.Input, tf_keras.layers.Dense

    def randomize(model):
        model.set_weights([(rng.standard_normal(w.shape) * 0.02).astype(np.float32) for w in model.get_weights()])
        return model

    models = {}
    x = Input((s, h), batch_size=1, name="x")
    inner = Input((s, i), batch_size=1, name="inner")
    models["dense, as exported (6 FC)"] = (tf_keras.Model([x, inner], [Dense(h)(x), Dense(h)(x), Dense(h)(x),
                                                                         Dense(h)(x), Dense(i)(x), Dense(h)(inner)]),
                                           "dynamic-int8")
    x = Input((s, h), batch_size=1, name="x")
    inner = Input((s, i), batch_size=1, name="inner")
    models["dense, fused QKV (4 FC)"] = (tf_keras.Model([x, inner], [Dense(3 * h)(x), Dense(h)(x), Dense(i)(x),
                                                                       Dense(h)(inner)]), "dynamic-int8")
    q, k, v = (Input((s, h), batch_size=1, name=n) for n in ("q", "k", "v"))
    mask = Input((s,), batch_size=1, dtype=tf.int32, name="attention_mask")
    bias = AttentionMaskBias()(mask)
    models["attention core"] = (tf_keras.Model([q, k, v, mask],
                                               ScaledDotProductAttention(config.num_heads)(q, k, v, bias)), "float32")
    x, y = Input((s, h), batch_size=1, name="x"), Input((s, h), batch_size=1, name="y")
    models["add + LayerNorm"] = (tf_keras.Model([x, y], _layer_norm(config, "ln")(x + y)), "float32")
    x = Input((s, i), batch_size=1, name="x")
    models["GELU"] = (tf_keras.Model(x, tf_keras.layers.Lambda(_activation(config.activation))(x)), "float32")
    x = Input((s, h), batch_size=1, name="x")
    mask = Input((s,), batch_size=1, dtype=tf.int32, name="attention_mask")
    models["whole encoder layer"] = (tf_keras.Model([x, mask], encoder_layer(x, AttentionMaskBias()(mask), config, 0)),
                                     "dynamic-int8")

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for index, (name, (model, mode)) in enumerate(models.items()):
        randomize(model)
        specs = [tf.TensorSpec(t.shape, t.dtype, name=t.name.split(":")[0]) for t in model.inputs]
        function = tf.function(lambda *args, m=model: m(list(args) if len(args) > 1 else args[0]),
                               input_signature=specs)
        with native_output_silenced():
            data = convert_function(function.get_concrete_function(), model, QuantizeMode(mode))
        path = out_dir / f"component{index}.tflite"
        path.write_bytes(data)
        written.append({"name": name, "mode": mode, "path": str(path), "macs": 0, "shape": [s, h, i]})
    return written


def time_in_fresh_process(models: list[dict], threads: int, runs: int) -> list[dict]:
    from benchmarks.peer.runner import Worker

    with tempfile.TemporaryDirectory(prefix="peer-components-") as scratch:
        worker = Worker.start({"engine": "components", "kind": "roofline", "threads": threads, "models": models,
                               "runs": runs}, Path(scratch) / "worker.log", 900.0)
        try:
            timed = worker.receive()["timed"]
            worker.close()
        finally:
            worker.kill()
    return timed


def profile(config, seq_len: int, threads: int, runs: int, bundle: Path | None, work: Path) -> dict:
    models = build_components(config, seq_len, work)
    if bundle is not None:
        models.append({"name": "bundle", "mode": "bundle", "path": str(Path(bundle) / "model.tflite"), "macs": 0,
                       "shape": []})
    timed = {row["name"]: row for row in time_in_fresh_process(models, threads, runs)}
    ms = {name: row["p50_ms"] for name, row in timed.items()}
    layers = config.num_layers
    per_layer = {"dense (6 FC, dyn int8)": ms["dense, as exported (6 FC)"], "attention core (float)": ms["attention core"],
                 "2 x add + LayerNorm": 2 * ms["add + LayerNorm"], "GELU": ms["GELU"]}
    estimate = layers * sum(per_layer.values())
    result = {"config": config.to_dict(), "seq_len": seq_len, "threads": threads, "runs": runs, "components": timed,
              "per_layer_ms": per_layer, "sum_of_parts_per_layer_ms": round(sum(per_layer.values()), 4),
              "whole_layer_ms": ms["whole encoder layer"], "forward_estimate_ms": round(estimate, 4),
              "fused_qkv_saving_per_forward_ms": round(layers * (ms["dense, as exported (6 FC)"]
                                                                  - ms["dense, fused QKV (4 FC)"]), 4)}
    if "bundle" in ms:
        result["bundle_p50_ms"] = ms["bundle"]
        result["shares_of_bundle"] = {name: round(layers * value / ms["bundle"], 3) for name, value in per_layer.items()}
        result["unexplained_ms"] = round(ms["bundle"] - layers * ms["whole encoder layer"], 4)
    return result


def format_profile(result: dict) -> str:
    config = result["config"]
    lines = [(f"L{config['num_layers']} H{config['hidden_size']} I{config['intermediate_size']}, "
              f"seq {result['seq_len']}, {result['threads']} thread(s), median of {result['runs']} invokes, "
              "LiteRT + XNNPACK"), "",
             "| component | ms per layer | ms per forward (x L) | share of bundle p50 |", "| --- | ---: | ---: | ---: |"]
    shares = result.get("shares_of_bundle", {})
    for name, value in result["per_layer_ms"].items():
        share = shares.get(name)
        lines.append(f"| {name} | {value:.4f} | {value * config['num_layers']:.3f} | "
                     f"{'-' if share is None else f'{100 * share:.0f} %'} |")
    lines.append(f"| sum of parts | {result['sum_of_parts_per_layer_ms']:.4f} | {result['forward_estimate_ms']:.3f} | |")
    lines.append(f"| whole encoder layer (as one model) | {result['whole_layer_ms']:.4f} | "
                 f"{result['whole_layer_ms'] * config['num_layers']:.3f} | |")
    if "bundle_p50_ms" in result:
        lines.append(f"| the bundle (bare invoke) | | {result['bundle_p50_ms']:.3f} | 100 % |")
    lines.append("")
    lines.append(f"Q, K, V as one H->3H layer would save ~{result['fused_qkv_saving_per_forward_ms']:.3f} ms per forward "
                 f"(dense per layer {result['components']['dense, as exported (6 FC)']['p50_ms']:.4f} -> "
                 f"{result['components']['dense, fused QKV (4 FC)']['p50_ms']:.4f} ms).")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", default="medium")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--bundle", type=Path, default=None, help="a dynamic-int8 bundle of the same variant")
    parser.add_argument("--json", type=Path, default=None, help="write the result here too")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from converters.config import BertConfig
    from edgebert.variants import parse_variant

    config = BertConfig.from_variant(parse_variant(args.variant))
    with tempfile.TemporaryDirectory(prefix="peer-components-") as scratch:
        result = profile(config, args.seq_len, args.threads, args.runs, args.bundle, Path(scratch))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    print(format_profile(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
