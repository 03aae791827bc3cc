"""The PyTorch side: transformers' BertModel from the same Google checkpoint, saved for the PyTorch engines,
and lowered to ExecuTorch with XNNPACK and dynamic int8.

    python -m benchmarks.peer.torch_export CHECKPOINT_DIR OUT_DIR [--seq-len 128]

1. transformers (4.x) `BertModel` through `load_tf_weights_in_bert` (as benchmarks.peer.onnx_export loads
   it: `hidden_act="gelu_new"`, Google's tanh GELU; eager attention), saved with `save_pretrained` to
   OUT_DIR/hf (config.json + model.safetensors): the torch-float and torch-dynamic-int8 workers load it
   from there without TensorFlow, as a user's `BertModel.from_pretrained` does;
2. ExecuTorch's documented XNNPACK route: `torch.export.export` (input_ids / attention_mask /
   token_type_ids int64 [1, seq] with seq a dynamic dimension 2..S), `XNNPACKQuantizer` with
   `get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)` through torchao's
   `prepare_pt2e` / one calibration call / `convert_pt2e`, `torch.export.export` again,
   `executorch.exir.to_edge_transform_and_lower(partitioner=[XnnpackPartitioner()])`, `.to_executorch()`
   -> OUT_DIR/model.xnnpack-int8.pte, with the ops left outside the XNNPACK delegate counted.

Prints one JSON line (files, bytes, delegate facts, seconds). A failed ExecuTorch step (not installed, an
export error) is reported in the line as "executorch_error"; the saved model is still there for the
PyTorch engines. Runs in its own process so that torch never shares a process with a measured engine.
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
PTE_NAME = "model.xnnpack-int8.pte"


def load_transformers_bert(checkpoint_dir: Path):
    """transformers BertModel (eval) with the Google checkpoint's weights, and its config."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("USE_TF", "0")  # the torch classes only (TF still reads the checkpoint)
    from transformers import BertConfig, BertForPreTraining
    from transformers.models.bert.modeling_bert import load_tf_weights_in_bert

    from edgebert.quiet import native_output_silenced

    config = BertConfig.from_json_file(str(checkpoint_dir / "bert_config.json"))
    google_act = config.hidden_act
    if google_act == "gelu":
        config.hidden_act = "gelu_new"  # Google's modeling.py gelu is the tanh form
    config._attn_implementation = "eager"
    with native_output_silenced():
        pretraining = BertForPreTraining(config)
        load_tf_weights_in_bert(pretraining, config, str(checkpoint_dir / "bert_model.ckpt"))
    return pretraining.bert.eval(), config, google_act


def tuple_outputs(model):
    """BertModel as export wants it: three positional int64 inputs, a (sequence_output, pooled_output) tuple."""
    import torch

    class TupleOutputs(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, token_type_ids):
            outputs = self.inner(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                 return_dict=False)
            return outputs[0], outputs[1]

    return TupleOutputs(model).eval()


def _op_name(target) -> str:
    """'aten.view_copy.default' -> 'view_copy' (edge dialect ops and plain callables alike)."""
    name = getattr(target, "__name__", None) or str(target)
    parts = [part for part in name.split(".") if part not in ("aten", "default", "Tensor", "Scalar", "dim_order_ops")]
    return parts[0] if parts else name


def export_executorch(model, path: Path, seq_len: int) -> dict:
    """The .pte of the model, dynamic int8 on XNNPACK, for any sequence length 2..seq_len."""
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from executorch.exir import to_edge_transform_and_lower
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    started = time.perf_counter()
    wrapped = tuple_outputs(model)
    example = (torch.ones(1, seq_len, dtype=torch.long), torch.ones(1, seq_len, dtype=torch.long),
               torch.zeros(1, seq_len, dtype=torch.long))
    seq = torch.export.Dim("seq", min=2, max=seq_len)
    dynamic = {name: {1: seq} for name in INPUTS}
    quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True))
    with torch.no_grad():
        prepared = prepare_pt2e(torch.export.export(wrapped, example, dynamic_shapes=dynamic).module(), quantizer)
        prepared(*example)  # dynamic activations: the call only fixes the graph, no ranges are kept
        quantized = convert_pt2e(prepared)
        lowered = to_edge_transform_and_lower(torch.export.export(quantized, example, dynamic_shapes=dynamic),
                                              partitioner=[XnnpackPartitioner()])
    graph = lowered.exported_program().graph_module.graph
    calls = [node for node in graph.nodes if node.op == "call_function"]
    delegates = sum("executorch_call_delegate" in str(node.target) for node in calls)
    outside = collections.Counter(_op_name(node.target) for node in calls
                                  if "executorch_call_delegate" not in str(node.target)
                                  and "getitem" not in str(node.target))
    program = lowered.to_executorch()
    path.write_bytes(program.buffer)
    return {"file": str(path), "bytes": path.stat().st_size, "xnnpack_delegates": delegates,
            "ops_outside_xnnpack": dict(outside.most_common()), "dynamic_seq": [2, seq_len],
            "seconds": round(time.perf_counter() - started, 2),
            "route": "torch.export (dynamic seq) -> XNNPACKQuantizer(get_symmetric_quantization_config("
                     "is_per_channel=True, is_dynamic=True)) via torchao prepare_pt2e/convert_pt2e -> "
                     "to_edge_transform_and_lower([XnnpackPartitioner()]) -> to_executorch()"}


def export(checkpoint_dir: Path, out_dir: Path, seq_len: int = 128) -> dict:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("USE_TF", "0")  # transformers: the torch classes only (TF still reads the checkpoint)
    import torch
    import transformers

    started = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    model, config, google_act = load_transformers_bert(checkpoint_dir)
    hf_dir = out_dir / "hf"
    model.save_pretrained(str(hf_dir), safe_serialization=True)
    info = {"hf_dir": str(hf_dir), "hf_bytes": sum(p.stat().st_size for p in hf_dir.iterdir() if p.is_file()),
            "hidden_act": {"google": google_act, "transformers": config.hidden_act},
            "versions": {"torch": torch.__version__, "transformers": transformers.__version__}}
    try:
        import executorch.version
        info["versions"]["executorch"] = executorch.version.__version__
        info["executorch"] = export_executorch(model, out_dir / PTE_NAME, seq_len)
    except Exception as error:  # noqa: BLE001 - reported per engine, the PyTorch engines still run
        info["executorch_error"] = " ".join(f"{type(error).__name__}: {error}".split())[:600]
    info["seconds"] = round(time.perf_counter() - started, 2)
    return info


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--seq-len", type=int, default=128)
    args = parser.parse_args(argv)
    sys.stdout.flush()
    real_stdout = os.dup(1)
    os.dup2(2, 1)  # library chatter to stderr; the JSON line alone on stdout
    try:
        info = export(args.checkpoint_dir, args.out_dir, args.seq_len)
    finally:
        sys.stdout.flush()
        os.dup2(real_stdout, 1)
        os.close(real_stdout)
    print(json.dumps(info), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
