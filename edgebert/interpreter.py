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


class TFLiteModel:
    """A loaded model, called with a dict of int32 [1, S] inputs, returning a dict of outputs."""

    def __init__(self, model_path: str | Path, *, num_threads: int | None = None, runtime: str = "auto",
                 use_xnnpack: bool = True):
        self.path = Path(model_path)
        self.runtime = find_runtime(runtime)
        kwargs = {"model_path": str(self.path), "num_threads": num_threads}
        if not use_xnnpack:
            resolver = self.runtime.module.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES
            kwargs["experimental_op_resolver_type"] = resolver
        try:
            with native_output_silenced():  # LiteRT announces its XNNPACK delegate on stderr
                self.interpreter = self.runtime.module.Interpreter(**kwargs)
                signatures = self.interpreter.get_signature_list()
                self._runner = self.interpreter.get_signature_runner(SIGNATURE) if SIGNATURE in signatures else None
        except (ValueError, RuntimeError) as error:
            raise BundleError(f"not a loadable TFLite model ({str(error).strip().splitlines()[0]})",
                              self.path) from None
        if SIGNATURE not in signatures:
            raise BundleError(f"model has no {SIGNATURE!r} signature (has {sorted(signatures)})", self.path)
        self.input_names = tuple(sorted(signatures[SIGNATURE]["inputs"]))
        self.output_names = tuple(sorted(signatures[SIGNATURE]["outputs"]))
        self._delegate_applied = False

    def __call__(self, **inputs: np.ndarray) -> dict[str, np.ndarray]:
        # Fed by name: the interpreter's tensor order is not the signature's.
        feed = {name: np.asarray(value, dtype=np.int32) for name, value in inputs.items()}
        if not self._delegate_applied:  # the first call applies XNNPACK, which LiteRT announces
            with native_output_silenced():
                outputs = self._runner(**feed)
            self._delegate_applied = True
            return outputs
        return self._runner(**feed)

    def delegate_partitions(self) -> int | None:
        """How many partitions of the graph a delegate took over (XNNPACK, the default delegate, is applied
        lazily by the first call, which replaces each run of nodes it accepts by one DELEGATE node):
        0 means every operator runs on the builtin kernels. Meaningful after the first call; None when
        this runtime cannot list its nodes."""
        try:
            ops = self.interpreter._get_ops_details()
        except (AttributeError, ValueError, RuntimeError):
            return None
        return sum(op["op_name"] == "DELEGATE" for op in ops)

    def op_names(self) -> list[str]:
        """The distinct operators in the graph (to show a model uses builtin ops only)."""
        # After the first call XNNPACK's DELEGATE nodes stand in the plan for the ops they took over.
        return sorted({op["op_name"] for op in self.interpreter._get_ops_details()} - {"DELEGATE"})
