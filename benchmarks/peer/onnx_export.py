"""The ONNX Runtime side, built the way Hugging Face Optimum builds it, from the same Google checkpoint.

    python -m benchmarks.peer.onnx_export CHECKPOINT_DIR OUT_DIR [--opset 14]

1. transformers (4.x) `BertModel`, weights from the Google TF checkpoint through
   `load_tf_weights_in_bert` (an independent mapping from edgebert's), with `hidden_act="gelu_new"`
   (Google's "gelu" is the tanh approximation, which HF calls gelu_new) and eager attention (the
   classic pattern ORT's fusions match);
2. `torch.onnx.export` with the TorchScript exporter (what Optimum's exporter calls), int64 inputs
   input_ids / attention_mask / token_type_ids with dynamic batch and sequence axes, outputs
   last_hidden_state and pooler_output -> `model.onnx`;
3. `onnxruntime.transformers.optimizer.optimize_model(model_type="bert", num_heads, hidden_size)`
   (python fusions on top of ORT's basic level, as ORT's transformer docs show) -> `model.opt.onnx`,
   with the fused operators counted (Attention, SkipLayerNormalization, FastGelu/Gelu,
   EmbedLayerNormalization);
4. `onnxruntime.quantization.quantize_dynamic(weight_type=QInt8)` of the optimized graph ->
   `model.opt.int8.onnx` (the fused ops become QAttention, DynamicQuantizeMatMul and
   QEmbedLayerNormalization). `DefaultTensorType=FLOAT` is passed because ONNX shape inference cannot
   type the outputs of the com.microsoft fused ops (quantize_dynamic otherwise stops with "Unable to
   find data type for weight_name=...").

Prints one JSON line: the files, their sizes, the op counts of each graph and the fusion counts. Runs in
its own process so that torch never shares a process with a measured engine.
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import time
from pathlib import Path

INPUTS = ("input_ids", "attention_mask", "token_type_ids")
OUTPUTS = ("last_hidden_state", "pooler_output")
QUANTIZED_OPS = ("QEmbedLayerNormalization", "QAttention", "DynamicQuantizeMatMul", "MatMulInteger",
                 "DynamicQuantizeLinear")


def op_counts(model) -> dict[str, int]:
    return dict(collections.Counter(node.op_type for node in model.graph.node).most_common())


def export(checkpoint_dir: Path, out_dir: Path, opset: int = 14, seq_len: int = 128) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("USE_TF", "0")  # transformers: the torch classes only (TF still reads the checkpoint)
    import onnx
    import torch
    import transformers
    from onnxruntime.quantization import QuantType, quantize_dynamic
    from onnxruntime.transformers.optimizer import optimize_model

    from benchmarks.peer.torch_export import load_transformers_bert

    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    model, config, google_act = load_transformers_bert(checkpoint_dir)

    raw_path, opt_path, int8_path = out_dir / "model.onnx", out_dir / "model.opt.onnx", out_dir / "model.opt.int8.onnx"
    example = tuple(torch.ones(1, seq_len, dtype=torch.long) if name != "token_type_ids"
                    else torch.zeros(1, seq_len, dtype=torch.long) for name in INPUTS)
    axes = {name: {0: "batch", 1: "sequence"} for name in (*INPUTS, "last_hidden_state")}
    axes["pooler_output"] = {0: "batch"}
    import warnings
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, example, str(raw_path), input_names=list(INPUTS), output_names=list(OUTPUTS),
                          dynamic_axes=axes, opset_version=opset, do_constant_folding=True, dynamo=False)
    exported = time.perf_counter()

    optimized = optimize_model(str(raw_path), model_type="bert", num_heads=config.num_attention_heads,
                               hidden_size=config.hidden_size)
    fused = {name: count for name, count in optimized.get_fused_operator_statistics().items() if count}
    optimized.save_model_to_file(str(opt_path))
    quantize_dynamic(str(opt_path), str(int8_path), weight_type=QuantType.QInt8,
                     extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
    raw_ops, opt_ops, int8_ops = (op_counts(onnx.load(str(p))) for p in (raw_path, opt_path, int8_path))
    layers = config.num_hidden_layers
    attention_fused = opt_ops.get("Attention", 0) == layers
    return {
        "exporter": f"torch.onnx.export (TorchScript, opset {opset}) of transformers BertModel "
                    "(load_tf_weights_in_bert, eager attention)",
        "hidden_act": {"google": google_act, "transformers": config.hidden_act},
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "onnx": onnx.__version__, "onnxruntime": _ort_version()},
        "optimizer": "onnxruntime.transformers.optimizer.optimize_model(model_type='bert', "
                     f"num_heads={config.num_attention_heads}, hidden_size={config.hidden_size})",
        "quantizer": "onnxruntime.quantization.quantize_dynamic(weight_type=QInt8, per_channel=False)",
        "files": {"raw": str(raw_path), "float": str(opt_path), "int8": str(int8_path)},
        "bytes": {"raw": raw_path.stat().st_size, "float": opt_path.stat().st_size, "int8": int8_path.stat().st_size},
        "fusions": fused,
        "attention_fused": attention_fused,
        "attention_note": (f"Attention fused in all {layers} layers" if attention_fused else
                           f"Attention fused in {opt_ops.get('Attention', 0)} of {layers} layers: ORT's "
                           "FusionAttention did not match this export's attention subgraph"),
        "ops": {"raw": raw_ops, "float": opt_ops, "int8": int8_ops},
        "quantized_ops": {name: int8_ops[name] for name in QUANTIZED_OPS if name in int8_ops},
        "seconds": {"export": round(exported - started, 2), "total": round(time.perf_counter() - started, 2)},
    }


def _ort_version() -> str:
    import onnxruntime
    return onnxruntime.__version__


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--opset", type=int, default=14)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args(argv)
    sys.stdout.flush()
    real_stdout = os.dup(1)
    os.dup2(2, 1)  # library chatter to stderr; the JSON line alone on stdout
    try:
        info = export(args.checkpoint_dir, args.out_dir, args.opset, args.seq_len)
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
        os.close(real_stdout)
    print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
