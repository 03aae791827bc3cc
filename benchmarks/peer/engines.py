"""The engines a worker can hold: each is imported (`import_runtime`), then loaded (`load`), then called
with one int32 [1, S] feed dict, returning {"pooled_output", "sequence_output"} as numpy arrays.

What one call covers, per engine (timed by the worker around `__call__`):

- tf-float: the tf.function over the Keras model, fed the numpy arrays (TensorFlow converts them), with
  `.numpy()` on both outputs;
- ort-*: `InferenceSession.run` on int64 inputs (converted once, ahead of time: a user's tokenizer
  would hand int64 straight to ORT), outputs are numpy already;
- edgebert-*: `edgebert.interpreter.TFLiteModel.__call__`, the path `edgebert bench` times;
- torch-float, torch-dynamic-int8: transformers BertModel.__call__ under torch.inference_mode() on int64
  torch tensors (made ahead of time), `.numpy()` on both outputs; the int8 one after
  torch.ao.quantization.quantize_dynamic({nn.Linear}, qint8);
- executorch-xnnpack-int8: executorch.runtime's Method.execute on int64 torch tensors, `.numpy()` out;
- edgebert-dynamic-int8-cached: the same call on a TFLiteModel opened with weight_cache=FILE, which runs
  LiteRT's CompiledModel (inputs written into its buffers, `run_by_name`, outputs read back) with
  XNNPACK's packed weights memory-mapped from FILE (the worker reports FILE, its bytes and whether the
  load found it warm).

Threads: TF intra-op = t, inter-op = 1 (set right after TensorFlow is imported, before it initializes);
ORT SessionOptions.intra_op_num_threads = t, inter_op_num_threads = 1, sequential execution; LiteRT
num_threads = t (XNNPACK; CpuOptions.num_threads for the CompiledModel); torch.set_num_threads(t),
set_num_interop_threads(1); ExecuTorch's process-wide thread pool reset to t threads
(portable_lib._unsafe_reset_threadpool, the only knob its Python runtime has).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np


class Engine:
    name = "?"
    runtime = "?"
    call_path = "?"

    def __init__(self, spec: dict):
        self.spec = spec
        self.threads = int(spec["threads"])

    def import_runtime(self) -> None:
        """Import what the engine needs; done before the memory baseline, reported on its own."""

    def load(self) -> None:
        raise NotImplementedError

    def prepare_feed(self, feed: dict[str, np.ndarray]):
        return feed

    def __call__(self, feed) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def facts(self) -> dict:
        """Anything the engine can tell about how it ran (partitions, op lists), after the runs."""
        return {}


class TFKerasEngine(Engine):
    """converters.model.build_bert + set_google_weights, from the checkpoint, in a tf.function."""
    call_path = ("tf.function(lambda inputs: model(inputs, training=False), input_signature=[dict of int32 "
                 "[1,S] TensorSpecs], jit_compile=False); numpy in, .numpy() out")

    def import_runtime(self):
        import os
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        from converters.tf_import import tf, tf_keras
        # Before TensorFlow initializes its runtime (the first op or device query); it refuses afterwards.
        tf.config.threading.set_intra_op_parallelism_threads(self.threads)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        import converters.model  # noqa: F401
        self.tf = tf
        self.runtime = f"tensorflow {tf.__version__} (tf_keras {tf_keras.__version__})"

    def load(self):
        import gc

        from converters.model import INPUT_NAMES, build_bert, set_google_weights
        from converters.sources import load_source

        tf = self.tf
        source = load_source(self.spec["checkpoint"])
        seq_len = self.spec["seq_len"]  # None: any length (the real-text set runs each text at its own)
        model = build_bert(source.config, seq_len)
        set_google_weights(model, source.config, source.weights, source=str(source.path))
        del source
        gc.collect()
        specs = {name: tf.TensorSpec([1, seq_len], tf.int32, name=name) for name in INPUT_NAMES}
        self.model = model
        self.function = tf.function(lambda inputs: model(inputs, training=False), input_signature=[specs],
                                    jit_compile=False)
        self.parameter_bytes = int(sum(np.prod(w.shape) * 4 for w in model.weights))

    def __call__(self, feed):
        outputs = self.function(feed)
        return {"pooled_output": outputs["pooled_output"].numpy(),
                "sequence_output": outputs["sequence_output"].numpy()}

    def facts(self):
        return {"tf_intra_op_threads": self.tf.config.threading.get_intra_op_parallelism_threads(),
                "tf_inter_op_threads": self.tf.config.threading.get_inter_op_parallelism_threads(),
                "parameter_bytes": self.parameter_bytes}


class OrtEngine(Engine):
    call_path = ("InferenceSession.run(output names, int64 feeds), CPUExecutionProvider, graph optimization "
                 "ORT_ENABLE_ALL")
    OUTPUTS = {"last_hidden_state": "sequence_output", "pooler_output": "pooled_output"}

    def import_runtime(self):
        import onnxruntime
        self.ort = onnxruntime
        self.runtime = f"onnxruntime {onnxruntime.__version__}"

    def load(self):
        ort = self.ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        self.session = ort.InferenceSession(self.spec["model"], options, providers=["CPUExecutionProvider"])
        self.input_types = {i.name: (np.int64 if i.type == "tensor(int64)" else np.int32)
                            for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]

    def prepare_feed(self, feed):
        return {name: np.ascontiguousarray(feed[name], dtype=dtype) for name, dtype in self.input_types.items()}

    def __call__(self, feed):
        values = self.session.run(self.output_names, feed)
        return {self.OUTPUTS[name]: value for name, value in zip(self.output_names, values)}

    def facts(self):
        return {"providers": self.session.get_providers(),
                "input_dtypes": {name: np.dtype(dtype).name for name, dtype in self.input_types.items()}}


class TFLiteEngine(Engine):
    call_path = "edgebert.interpreter.TFLiteModel.__call__ (signature runner, XNNPACK default delegate)"

    def import_runtime(self):
        from edgebert.interpreter import find_runtime
        self.found = find_runtime("auto")
        self.runtime = self.found.describe()

    def load(self):
        from edgebert.interpreter import TFLiteModel
        self.model = TFLiteModel(self.spec["model"], num_threads=self.threads, runtime=self.found.name)

    def prepare_feed(self, feed):
        """A text cut to its own length is padded to the shortest of the model's length buckets that holds
        it, as edgebert.tokenizer.encode(..., buckets=model.lengths) pads it on a device."""
        from edgebert.tokenizer import bucket_for

        width = feed["input_ids"].shape[1]
        lengths = self.model.lengths
        if len(lengths) > 1 and width not in lengths:
            extra = bucket_for(width, lengths, lengths[-1]) - width
            feed = {name: np.pad(value, ((0, 0), (0, extra))) for name, value in feed.items()}  # [PAD] is id 0
        return {name: np.ascontiguousarray(value, dtype=np.int32) for name, value in feed.items()}

    def __call__(self, feed):
        outputs = self.model(**feed)
        return {"pooled_output": outputs["pooled_output"], "sequence_output": outputs["sequence_output"]}

    def facts(self):
        """XNNPACK's partitions (the ops each took over) and the ops left to LiteRT's builtin kernels."""
        try:
            ops = self.model.interpreter._get_ops_details()
        except (AttributeError, ValueError, RuntimeError):
            return {}
        partitions, outside = delegate_coverage(ops)
        return {"xnnpack_partitions": len(partitions), "partition_ops": partitions, "ops_outside_xnnpack": outside}


class CachedTFLiteEngine(TFLiteEngine):
    """The same model.tflite through TFLiteModel(weight_cache=FILE): CompiledModel + XNNPACK's weight cache."""
    call_path = ("edgebert.interpreter.TFLiteModel.__call__ with weight_cache=FILE (LiteRT CompiledModel.run_by_name, "
                 "XNNPACK's packed weights memory-mapped from FILE)")

    def import_runtime(self):
        from edgebert.interpreter import weight_cache_supported
        super().import_runtime()
        if weight_cache_supported(self.found):  # otherwise load() says why, in edgebert's words
            # CompiledModel's bindings are a native library of their own (~2 MB RSS): imported before the
            # memory baseline, like the interpreter, so that the growth figure is the model's alone.
            import ai_edge_litert.compiled_model  # noqa: F401

    def load(self):
        from edgebert.interpreter import TFLiteModel
        self.cache = Path(self.spec["weight_cache"])
        self.cache_before = _file_state(self.cache)
        self.model = TFLiteModel(self.spec["model"], num_threads=self.threads, runtime=self.found.name,
                                 weight_cache=self.cache)

    def facts(self):
        """Warm: the file was there before the load and is untouched after every call (XNNPACK rewrites a
        cache it cannot use, so a file that merely existed does not prove the load mapped it)."""
        after = _file_state(self.cache)
        return {"weight_cache": {"file": str(self.cache), "bytes": after[0] if after else None,
                                 "warm": self.cache_before is not None and self.cache_before == after}}


class TorchEngine(Engine):
    """transformers BertModel, eager, from the saved model (config.json + model.safetensors); with
    spec["quantize"] the route Hugging Face tutorials show, torch.ao.quantization.quantize_dynamic of every
    nn.Linear to qint8 (deprecated in torch 2.13, still what people run)."""
    call_path = ("BertModel(input_ids=, attention_mask=, token_type_ids=) under torch.inference_mode(), int64 torch "
                 "tensors in (made ahead of time), .numpy() out")

    def import_runtime(self):
        import os
        os.environ.setdefault("USE_TF", "0")
        import torch
        import transformers
        from transformers import BertModel  # noqa: F401 - transformers imports lazily: before the baseline
        torch.set_num_threads(self.threads)
        torch.set_num_interop_threads(1)
        self.torch = torch
        self.runtime = f"torch {torch.__version__} (transformers {transformers.__version__}, eager)"

    def load(self):
        import warnings

        from transformers import BertModel
        model = BertModel.from_pretrained(self.spec["model"], attn_implementation="eager").eval()
        if self.spec.get("quantize"):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao.quantization's deprecation notice
                model = self.torch.ao.quantization.quantize_dynamic(model, {self.torch.nn.Linear},
                                                                     dtype=self.torch.qint8)
        self.model = model

    def prepare_feed(self, feed):
        return {name: self.torch.from_numpy(np.ascontiguousarray(value, dtype=np.int64)) for name, value in feed.items()}

    def __call__(self, feed):
        with self.torch.inference_mode():
            outputs = self.model(**feed, return_dict=True)
        return {"pooled_output": outputs.pooler_output.numpy(), "sequence_output": outputs.last_hidden_state.numpy()}

    def facts(self):
        dynamic = sum(type(m).__module__.startswith("torch.ao.nn.quantized.dynamic") for m in self.model.modules())
        return {"torch_threads": self.torch.get_num_threads(), "quantized_engine": self.torch.backends.quantized.engine,
                "dynamic_int8_linear_modules": dynamic}


class ExecuTorchEngine(Engine):
    """The .pte of benchmarks.peer.torch_export (XNNPACK delegate, dynamic int8), run through executorch.runtime."""
    call_path = ("executorch.runtime Method.execute([input_ids, attention_mask, token_type_ids]) on int64 torch "
                 "tensors (made ahead of time), .numpy() out")

    def import_runtime(self):
        import torch
        from executorch.extension.pybindings import portable_lib
        from executorch.runtime import Runtime
        from executorch.version import __version__
        # XNNPACK's thread pool is ExecuTorch's process-wide one (one thread per core by default).
        portable_lib._unsafe_reset_threadpool(self.threads)
        self.torch, self.portable_lib = torch, portable_lib
        self.runtime_handle = Runtime.get()
        self.runtime = f"executorch {__version__} (XNNPACK delegate; torch {torch.__version__})"

    def load(self):
        self.program = self.runtime_handle.load_program(Path(self.spec["model"]))
        self.method = self.program.load_method("forward")

    def prepare_feed(self, feed):
        return [self.torch.from_numpy(np.ascontiguousarray(feed[name], dtype=np.int64))
                for name in ("input_ids", "attention_mask", "token_type_ids")]

    def __call__(self, feed):
        sequence, pooled = self.method.execute(feed)
        return {"pooled_output": pooled.numpy(), "sequence_output": sequence.numpy()}

    def facts(self):
        return {"threadpool_threads": self.portable_lib._threadpool_get_thread_count()}


def _file_state(path: Path) -> tuple[int, int] | None:
    """(bytes, mtime in ns), or None when there is no such file."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return None
    return stat.st_size, stat.st_mtime_ns


def delegate_coverage(ops: list[dict]) -> tuple[list[dict], dict]:
    """After delegation the node list holds the original nodes plus one DELEGATE node per partition. A
    partition covers the original nodes between its inputs and outputs: walk back from its outputs through
    the producing nodes, stopping at its inputs. Returns ([ops per partition], ops outside every one)."""
    import collections

    producer = {int(t): op for op in ops if op["op_name"] != "DELEGATE" for t in op["outputs"]}
    covered, partitions = set(), []
    for delegate in (op for op in ops if op["op_name"] == "DELEGATE"):
        stop, seen = {int(t) for t in delegate["inputs"]}, set()
        stack = [int(t) for t in delegate["outputs"]]
        while stack:
            tensor = stack.pop()
            if tensor in stop or tensor not in producer or producer[tensor]["index"] in seen:
                continue
            seen.add(producer[tensor]["index"])
            stack.extend(int(t) for t in producer[tensor]["inputs"] if t >= 0)
        covered |= seen
        partitions.append(dict(collections.Counter(op["op_name"] for op in ops if op["index"] in seen).most_common()))
    outside = collections.Counter(op["op_name"] for op in ops if op["op_name"] != "DELEGATE" and op["index"] not in covered)
    return partitions, dict(outside.most_common())


def make_engine(spec: dict) -> Engine:
    kind = spec["kind"]
    engine = {"tf": TFKerasEngine, "ort": OrtEngine, "tflite": TFLiteEngine, "tflite-cached": CachedTFLiteEngine,
              "torch": TorchEngine, "executorch": ExecuTorchEngine}[kind](spec)
    engine.name = spec["engine"]
    return engine
