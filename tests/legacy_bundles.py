"""A classifier bundle as `edgebert convert` wrote them before issue 16 put the softmax into the graph:
model.tflite's signatures give `logits`, golden.json records logits, the manifest's I/O contract and
validation name `logits`, and the model carries no MediaPipe metadata. Made from a current bundle by
taking the SOFTMAX back out, so the tests can show such bundles still run."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np


def _without_softmax(data: bytes) -> bytes:
    from ai_edge_litert import schema_py_generated as schema
    from ai_edge_litert.tools import flatbuffer_utils

    model = flatbuffer_utils.read_model_from_bytearray(bytearray(data))
    for signature in model.signatureDefs:
        graph = model.subgraphs[signature.subgraphIndex]
        [output] = signature.outputs
        assert output.name in (b"probabilities", "probabilities"), output.name
        [softmax] = [op for op in graph.operators if [int(i) for i in op.outputs] == [int(output.tensorIndex)]]
        code = model.operatorCodes[softmax.opcodeIndex]
        assert flatbuffer_utils.get_builtin_code_from_operator_code(code) == schema.BuiltinOperator.SOFTMAX
        logits = int(softmax.inputs[0])
        graph.operators.remove(softmax)
        graph.outputs = np.array([logits], dtype=np.int32)
        output.name, output.tensorIndex = "logits", logits
    model.metadata = [entry for entry in model.metadata or [] if entry.name not in (b"TFLITE_METADATA", "TFLITE_METADATA")]
    for buffer in model.buffers:
        if buffer.data is not None and not isinstance(buffer.data, np.ndarray):
            buffer.data = np.frombuffer(bytes(buffer.data), np.uint8)
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def logits_bundle(bundle: Path, out: Path) -> Path:
    """A copy of the classifier `bundle` at `out` in the pre-softmax layout (see the module docstring)."""
    from edgebert.interpreter import TFLiteModel

    shutil.copytree(bundle, out)
    (out / "model.tflite").write_bytes(_without_softmax((bundle / "model.tflite").read_bytes()))
    model = TFLiteModel(out / "model.tflite")
    assert model.output_names == ("logits",)
    golden = json.loads((out / "golden.json").read_text())
    for example in golden["examples"]:
        feed = {name: np.asarray([example[name]], np.int32) for name in ("input_ids", "attention_mask", "token_type_ids")}
        example["outputs"] = {"logits": model(**feed)["logits"][0].tolist()}
    (out / "golden.json").write_text(json.dumps(golden, indent=2) + "\n")
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["io"]["outputs"] = [{**output, "name": "logits"} for output in manifest["io"]["outputs"]]
    for record in (manifest["validation"]["outputs"], manifest["validation"]["thresholds"]):
        record["logits"] = record.pop("probabilities")
    manifest["mediapipe"] = {**manifest["mediapipe"], "file": None, "export": "edgebert export-mediapipe BUNDLE --out FILE"}
    manifest["mediapipe"].pop("metadata_bytes", None)
    for name in manifest["files"]:
        data = (out / name).read_bytes()
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    manifest["sizes"]["model_bytes"] = manifest["files"]["model.tflite"]["bytes"]
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return out
