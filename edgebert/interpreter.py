"""Run a `.tflite` model by signature with whichever TFLite interpreter the device has.

Order of preference: ai-edge-litert (current), tflite-runtime (old Pi images), and `tensorflow.lite`
only when neither exists, because importing TensorFlow costs ~600 MB and would distort any memory
figure. The runtime used and its version travel with every result.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgebert.errors import BundleError, RuntimeNotAvailableError, UsageError
from edgebert.quiet import native_output_silenced

SIGNATURE = "serving_default"


def signature_for(length: int | None, longest: int | None) -> str:
    """The signature of one length in a model with length buckets: the longest is `serving_default`
    (what a runner that knows nothing of buckets calls), each shorter one `seq_<length>`."""
    return SIGNATURE if length == longest else f"seq_{length}"

RUNTIMES = ("ai-edge-litert", "tflite-runtime", "tensorflow")
_MODULES = {"ai-edge-litert": ("ai_edge_litert.interpreter", "ai_edge_litert"),
            "tflite-runtime": ("tflite_runtime.interpreter", "tflite_runtime"),
            "tensorflow": ("tensorflow.lite.python.interpreter", "tensorflow")}


@dataclass(frozen=True)
class Runtime:
    name: str
    version: str
    module: object

    def describe(self) -> str:
        return f"{self.name} {self.version}"


def find_runtime(preference: str = "auto") -> Runtime:
    """The first importable interpreter, or the one asked for."""
    if preference != "auto" and preference not in RUNTIMES:
        raise UsageError(f"unknown runtime {preference!r} (choose from auto, {', '.join(RUNTIMES)})")
    candidates = RUNTIMES if preference == "auto" else (preference,)
    for name in candidates:
        module_name, package = _MODULES[name]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            continue
        version = getattr(importlib.import_module(package), "__version__", "unknown")
        return Runtime(name, version, module)
    wanted = "any of " + ", ".join(RUNTIMES) if preference == "auto" else preference
    raise RuntimeNotAvailableError(f"no TFLite interpreter found ({wanted}); "
                                   "install one with: pip install ai-edge-litert")


class _CachedWeightsRunner:
    """LiteRT's CompiledModel with XNNPACK's weight cache: the weights XNNPACK packs at load time go to
    a file once and are memory-mapped from it afterwards. The classic Interpreter packs them into
    anonymous memory beside the mapped model, so a model costs about twice its bytes in RSS; with the
    cache it costs about its bytes, and a warm load skips the packing. `runner(signature)` gives a
    callable like a signature runner, with its own input and output buffers."""

    def __init__(self, model_path: Path, cache_file: Path, num_threads: int | None):
        from ai_edge_litert.compiled_model import CompiledModel
        from ai_edge_litert.hardware_accelerator import HardwareAccelerator
        from ai_edge_litert.options import CpuOptions, Options

        cache_file.parent.mkdir(parents=True, exist_ok=True)
        cpu = CpuOptions(num_threads=num_threads or 0, xnnpack_weight_cache_path=str(cache_file))
        self.model = CompiledModel.from_file(str(model_path), options=Options(
            hardware_accelerators=HardwareAccelerator.CPU, cpu_options=cpu))
        self.signatures = self.model.get_signature_list()

    def runner(self, signature: str) -> "_CachedSignature":
        return _CachedSignature(self.model, signature)


class _CachedSignature:
    """One signature of a CompiledModel, called like a signature runner; its buffers are made again
    only when the input shape changes (a dynamic-length model)."""

    def __init__(self, model, signature: str):
        self.model, self.signature = model, signature
        self._buffers_for(None)

    def _buffers_for(self, shapes: dict | None):
        model, signature = self.model, self.signature
        if shapes:
            for name, shape in shapes.items():
                model.resize_input_tensor_by_name(signature, name, list(shape))
        self.shapes = {n: tuple(d["shape"]) for n, d in model.get_input_tensor_details(signature).items()}
        details = model.get_output_tensor_details(signature)
        integer = sorted(name for name, detail in details.items() if detail.get("dtype", "float32") != "float32")
        if integer:  # CompiledModel gives no quantization parameters to dequantize them with
            raise ValueError(f"output {integer[0]!r} is {details[integer[0]]['dtype']}: the weight cache "
                             "runs models with float outputs only; run it without the weight cache")
        self.outputs = {n: tuple(d["shape"]) for n, d in details.items()}
        self.inputs = {n: model.create_input_buffer_by_name(signature, n) for n in self.shapes}
        self.results = {n: model.create_output_buffer_by_name(signature, n) for n in self.outputs}

    def get_input_details(self) -> dict:
        return {name: {"shape": np.asarray(shape)} for name, shape in self.shapes.items()}

    def bare_invoke(self) -> None:
        """Run on the inputs already written (for the benchmark's Python-overhead figure)."""
        self.model.run_by_name(self.signature, self.inputs, self.results)

    def __call__(self, **feed: np.ndarray) -> dict[str, np.ndarray]:
        if any(tuple(feed[name].shape) != shape for name, shape in self.shapes.items()):
            self._buffers_for({name: value.shape for name, value in feed.items()})
        for name, buffer in self.inputs.items():
            buffer.write(np.ascontiguousarray(feed[name], dtype=np.int32))
        self.model.run_by_name(self.signature, self.inputs, self.results)
        return {name: self.results[name].read(int(np.prod(shape)), np.float32).reshape(shape)
                for name, shape in self.outputs.items()}


def weight_cache_supported(runtime: Runtime) -> bool:
    if runtime.name != "ai-edge-litert":
        return False
    try:
        from ai_edge_litert.cpu_options import CpuOptions
    except ImportError:
        return False
    return "xnnpack_weight_cache_path" in getattr(CpuOptions, "__dataclass_fields__", {})


def _first_line(error: BaseException) -> str:
    lines = str(error).strip().splitlines()
    return lines[0][:300] if lines else type(error).__name__


def _integer_outputs(runner) -> dict[str, tuple[float, int]]:
    """Output name -> (scale, zero point) for each output the model stores as quantized integers. Our
    exports end in float, but a full-integer model from another tool (ai-edge-quantizer's static recipes
    keep the last op's int8 or int16 output) does not, and its raw integers read as values are wrong:
    their softmax overflows, and a zero point skews every cosine."""
    details = runner.get_output_details() if hasattr(runner, "get_output_details") else {}
    quantized = {}
    for name, detail in details.items():
        parameters = detail.get("quantization_parameters") or {}
        scales, zero_points = parameters.get("scales", ()), parameters.get("zero_points", ())
        if np.issubdtype(np.dtype(detail.get("dtype", np.float32)), np.integer) and len(scales) == 1:
            quantized[name] = (float(scales[0]), int(zero_points[0]))
    return quantized


class TFLiteModel:
    """A loaded model, called with a dict of int32 [1, S] inputs, returning a dict of outputs.

    A model with length buckets (one signature per fixed length, edgebert.interpreter.signature_for)
    runs each input on the signature of its length: `lengths` lists them, shortest first, and the
    caller pads each text to the shortest that holds it (edgebert.tokenizer.encode's `buckets`).
    Any other input goes to `serving_default`.

    `weight_cache` (a file path; ai-edge-litert only) runs it through LiteRT's CompiledModel with
    XNNPACK's weight cache there (see _CachedWeightsRunner); the operator listing is then unavailable."""

    def __init__(self, model_path: str | Path, *, num_threads: int | None = None, runtime: str = "auto",
                 use_xnnpack: bool = True, weight_cache: str | Path | None = None):
        self.path = Path(model_path)
        self.runtime = find_runtime(runtime)
        self.weight_cache = Path(weight_cache) if weight_cache else None
        self.interpreter = None
        if self.weight_cache:
            self._open_with_weight_cache(num_threads, use_xnnpack)
        else:
            self._open(num_threads, use_xnnpack)
        self._delegate_applied = False

    def _open(self, num_threads: int | None, use_xnnpack: bool) -> None:
        kwargs = {"model_path": str(self.path), "num_threads": num_threads}
        if not use_xnnpack:
            resolver = self.runtime.module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            kwargs["experimental_op_resolver_type"] = resolver
        try:
            with native_output_silenced():  # LiteRT announces its XNNPACK delegate on stderr
                self.interpreter = self.runtime.module.Interpreter(**kwargs)
                signatures = self.interpreter.get_signature_list()
                self._check_signatures(signatures)
                self._runners = {name: self.interpreter.get_signature_runner(name) for name in signatures}
                self._index_lengths(signatures)
        except BundleError:
            raise
        except Exception as error:  # noqa: BLE001 - whatever a damaged file makes the loader raise
            raise BundleError(f"not a loadable TFLite model ({_first_line(error)})",
                              self.path) from None

    def _open_with_weight_cache(self, num_threads: int | None, use_xnnpack: bool) -> None:
        if not use_xnnpack:
            raise UsageError("the XNNPACK weight cache needs XNNPACK (drop --no-xnnpack)")
        if not weight_cache_supported(self.runtime):
            raise UsageError(f"the XNNPACK weight cache needs ai-edge-litert with CompiledModel "
                             f"(this is {self.runtime.describe()})")
        try:
            with native_output_silenced():  # LiteRT lists the accelerators it could not load
                compiled = _CachedWeightsRunner(self.path, self.weight_cache, num_threads)
                signatures = compiled.signatures
                self._check_signatures(signatures)
                self._runners = {name: compiled.runner(name) for name in signatures}
                self._index_lengths(signatures)
        except BundleError:
            raise
        except Exception as error:  # noqa: BLE001 - whatever a damaged file makes the loader raise
            raise BundleError(f"not a loadable TFLite model ({_first_line(error)})",
                              self.path) from None

    def _check_signatures(self, signatures: dict) -> None:
        if SIGNATURE not in signatures:
            raise BundleError(f"model has no {SIGNATURE!r} signature (has {sorted(signatures)})", self.path)
        self.input_names = tuple(sorted(signatures[SIGNATURE]["inputs"]))
        self.output_names = tuple(sorted(signatures[SIGNATURE]["outputs"]))

    def _index_lengths(self, signatures: dict) -> None:
        """Fixed length -> runner, over the signatures with serving_default's inputs and outputs; and for
        every runner, the integer outputs its calls dequantize."""
        self._runner = self._runners[SIGNATURE]
        self._by_length = {}
        for name, runner in self._runners.items():
            same_io = ("input_ids" in self.input_names
                       and tuple(sorted(signatures[name]["inputs"])) == self.input_names
                       and tuple(sorted(signatures[name]["outputs"])) == self.output_names)
            shape = [int(v) for v in runner.get_input_details()["input_ids"]["shape"]] if same_io else []
            if len(shape) == 2 and shape[1] > 0 and (name == SIGNATURE or shape[1] not in self._by_length):
                self._by_length[shape[1]] = runner
        if len(self._by_length) == 1 and not self._fixed_serving_default():
            self._by_length = {}  # a dynamic serving_default reports its placeholder shape [1, 1]
        self._dequantize = {id(runner): _integer_outputs(runner) for runner in self._runners.values()}

    def _fixed_serving_default(self) -> bool:
        details = self._runner.get_input_details()["input_ids"]
        signature = details.get("shape_signature")
        return signature is None or all(int(v) > 0 for v in signature)

    @property
    def lengths(self) -> tuple[int, ...]:
        """The fixed lengths the model has a signature for, shortest first; () for a dynamic model."""
        return tuple(sorted(self._by_length))

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        # Fed by name: the interpreter's tensor order is not the signature's.
        feed = {name: np.asarray(value, dtype=np.int32) for name, value in inputs.items()}
        try:
            runner = self.runner_for(feed)
            if not self._delegate_applied:  # the first call applies XNNPACK, which LiteRT announces
                with native_output_silenced():
                    outputs = runner(**feed)
                self._delegate_applied = True
            else:
                outputs = runner(**feed)
        except (ValueError, RuntimeError, TypeError, OverflowError, KeyError, IndexError) as error:
            # e.g. "gather index out of bounds" (ids past the vocabulary), or a damaged model's tensor index
            # that its native wrapper cannot even take (TypeError)
            reason = " ".join(str(error).split())[:300] or type(error).__name__
            raise BundleError(f"the model failed to run on this input ({reason})", self.path) from None
        for name, (scale, zero_point) in self._dequantize[id(runner)].items():
            outputs[name] = (outputs[name].astype(np.float32) - zero_point) * scale
        return outputs

    def runner_for(self, feed: dict):
        """The signature runner an input goes to: the bucket of its length, else serving_default."""
        width = np.shape(feed["input_ids"])[-1] if "input_ids" in feed else None
        return self._by_length.get(width, self._runner)

    def delegate_partitions(self) -> int | None:
        """How many partitions of the graph a delegate took over (XNNPACK, the default delegate, is applied
        lazily by the first call, which replaces each run of nodes it accepts by one DELEGATE node):
        0 means every operator runs on the builtin kernels. Meaningful after the first call; None when
        this runtime cannot list its nodes."""
        if self.interpreter is None:  # CompiledModel (weight cache) does not list its nodes
            return None
        try:
            ops = self.interpreter._get_ops_details()
        except (AttributeError, ValueError, RuntimeError):
            return None
        return sum(op["op_name"] == "DELEGATE" for op in ops)

    def op_names(self) -> list[str]:
        """The distinct operators in the graph (to show a model uses builtin ops only)."""
        # After the first call XNNPACK's DELEGATE nodes stand in the plan for the ops they took over.
        return sorted({op["op_name"] for op in self.interpreter._get_ops_details()} - {"DELEGATE"})
