"""What a `.tflite` holds, read on the device: its TFLite Model Metadata (what MediaPipe Tasks read), the
files packed with it, its signatures, inputs, outputs and operators. No TensorFlow, no MediaPipe.

A `.tflite` is a FlatBuffer (schema "TFL3"). Its `metadata` vector names buffers: `min_runtime_version`
(a string), `CONVERSION_METADATA`, and, when MediaPipe's writers have run, `TFLITE_METADATA`: a second
FlatBuffer in the TFLite Model Metadata schema ("M001"; the tflite_support / MediaPipe
`metadata_schema.fbs`) that names the model, its input and output tensors, the input process units (a
BertTokenizer and its vocab file) and the associated files (labels, vocab). The associated files
themselves are a zip archive appended to the model file. Both FlatBuffers are read here by a small
reader of the format (tables, vtables, strings, vectors, unions) that knows only the fields it shows;
the operator list and signatures come from the device's interpreter.
"""
from __future__ import annotations

import io
import os
import struct
import zipfile
from collections import Counter
from pathlib import Path

from edgebert.errors import BundleError, UsageError

MODEL_IDENTIFIER, METADATA_IDENTIFIER = b"TFL3", b"M001"
METADATA_NAME = "TFLITE_METADATA"
TENSOR_TYPES = ("float32", "float16", "int32", "uint8", "int64", "string", "bool", "int16", "complex64", "int8",
                "float64", "complex128", "uint64", "resource", "variant", "uint32", "uint16", "int4", "bfloat16")
FILE_TYPES = ("UNKNOWN", "DESCRIPTIONS", "TENSOR_AXIS_LABELS", "TENSOR_VALUE_LABELS",
              "TENSOR_AXIS_SCORE_CALIBRATION", "VOCABULARY", "SCANN_INDEX_FILE")
PROCESS_UNITS = (None, "NormalizationOptions", "ScoreCalibrationOptions", "ScoreThresholdingOptions",
                 "BertTokenizerOptions", "SentencePieceTokenizerOptions", "RegexTokenizerOptions")


class _Corrupt(Exception):
    pass


class _Table:
    """One FlatBuffer table: `buf` is the whole buffer, `pos` the table's offset in it."""

    def __init__(self, buf: memoryview, pos: int):
        self.buf, self.pos = buf, pos
        vtable = pos - self._unpack("<i", pos)
        self.vtable, self.vtable_size = vtable, self._unpack("<H", vtable)

    def _unpack(self, fmt: str, at: int):
        size = struct.calcsize(fmt)
        if at < 0 or at + size > len(self.buf):
            raise _Corrupt(f"offset {at} out of bounds")
        return struct.unpack_from(fmt, self.buf, at)[0]

    def _field(self, index: int) -> int:
        """The field's offset from the table start, 0 when absent."""
        entry = 4 + 2 * index
        return self._unpack("<H", self.vtable + entry) if entry < self.vtable_size else 0

    def scalar(self, index: int, fmt: str, default=0):
        offset = self._field(index)
        return self._unpack(fmt, self.pos + offset) if offset else default

    def _target(self, index: int) -> int | None:
        offset = self._field(index)
        if not offset:
            return None
        at = self.pos + offset
        return at + self._unpack("<I", at)

    def string(self, index: int) -> str | None:
        at = self._target(index)
        if at is None:
            return None
        length = self._unpack("<I", at)
        if at + 4 + length > len(self.buf):
            raise _Corrupt("string out of bounds")
        return bytes(self.buf[at + 4: at + 4 + length]).decode("utf-8", errors="replace")

    def _vector(self, index: int) -> tuple[int, int]:
        at = self._target(index)
        if at is None:
            return 0, 0
        return at + 4, self._unpack("<I", at)

    def scalars(self, index: int, fmt: str) -> list:
        start, count = self._vector(index)
        size = struct.calcsize(fmt)
        return [self._unpack(fmt, start + i * size) for i in range(count)]

    def bytes_vector(self, index: int) -> memoryview:
        start, count = self._vector(index)
        if start + count > len(self.buf):
            raise _Corrupt("vector out of bounds")
        return self.buf[start: start + count]

    def tables(self, index: int) -> list["_Table"]:
        start, count = self._vector(index)
        return [_Table(self.buf, start + 4 * i + self._unpack("<I", start + 4 * i)) for i in range(count)]

    def strings(self, index: int) -> list[str]:
        start, count = self._vector(index)
        out = []
        for i in range(count):
            at = start + 4 * i
            at += self._unpack("<I", at)
            length = self._unpack("<I", at)
            out.append(bytes(self.buf[at + 4: at + 4 + length]).decode("utf-8", errors="replace"))
        return out

    def table(self, index: int) -> "_Table | None":
        at = self._target(index)
        return None if at is None else _Table(self.buf, at)


def _root(buf: memoryview) -> _Table:
    if len(buf) < 8:
        raise _Corrupt("too short")
    return _Table(buf, struct.unpack_from("<I", buf, 0)[0])


# --- the TFLite model ------------------------------------------------------------------------------------

def _tensor(tensor: _Table) -> dict:
    shape = tensor.scalars(0, "<i")
    signature = tensor.scalars(7, "<i") or shape
    kind = tensor.scalar(1, "<b")
    return {"name": tensor.string(3) or "", "dtype": TENSOR_TYPES[kind] if 0 <= kind < len(TENSOR_TYPES) else str(kind),
            "shape": signature}


def _buffer_bytes(data: memoryview, buffer: _Table) -> memoryview:
    """A buffer's bytes: inside the FlatBuffer, or (models over 2 GB) at offset/size in the file."""
    inline = buffer.bytes_vector(0)
    if len(inline):
        return inline
    offset, size = buffer.scalar(1, "<Q"), buffer.scalar(2, "<Q")
    if offset > 1 and offset + size <= len(data):
        return data[offset: offset + size]
    return data[0:0]


def read_tflite(data: bytes, where: str | os.PathLike) -> dict:
    """The facts of a .tflite file's bytes: schema version, description, subgraphs with their inputs and
    outputs, the metadata entries and their sizes, the TFLite Model Metadata and the packed files."""
    view = memoryview(data)
    try:
        if bytes(view[4:8]) != MODEL_IDENTIFIER:
            raise _Corrupt(f"file identifier is {bytes(view[4:8])!r}, not {MODEL_IDENTIFIER!r}")
        model = _root(view)
        buffers = model.tables(4)
        subgraphs = []
        for graph in model.tables(2):
            tensors = graph.tables(0)
            subgraphs.append({"name": graph.string(4) or "",
                              "inputs": [_tensor(tensors[i]) for i in graph.scalars(1, "<i")],
                              "outputs": [_tensor(tensors[i]) for i in graph.scalars(2, "<i")],
                              "operators": len(graph.tables(3))})
        entries, metadata, min_runtime = [], None, None
        for entry in model.tables(6):
            name, index = entry.string(0) or "", entry.scalar(1, "<I")
            payload = _buffer_bytes(view, buffers[index]) if index < len(buffers) else view[0:0]
            entries.append({"name": name, "bytes": len(payload)})
            if name == "min_runtime_version":
                min_runtime = bytes(payload).split(b"\0")[0].decode("ascii", errors="replace")
            elif name == METADATA_NAME:
                metadata = read_metadata(payload)
    except (_Corrupt, struct.error, IndexError, UnicodeDecodeError) as error:
        raise BundleError(f"not a readable TFLite model ({error})", where) from None
    info = {"version": model.scalar(0, "<I"), "description": model.string(3) or "", "subgraphs": subgraphs,
            "metadata_entries": entries, "min_runtime_version": min_runtime, "metadata": metadata,
            "packed_files": packed_files(data)}
    packed = info["packed_files"]
    if metadata is not None:
        metadata_entry = next(e["bytes"] for e in entries if e["name"] == METADATA_NAME)
        zipped = (len(data) - min(f["offset"] for f in packed)) if packed else 0
        info["metadata_bytes"] = metadata_entry + zipped
    return info


def packed_files(data: bytes) -> list[dict]:
    """The associated files MediaPipe's writers pack: a zip archive appended to the model."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            return [{"name": item.filename, "bytes": item.file_size, "offset": item.header_offset}
                    for item in archive.infolist()]
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return []


# --- TFLite Model Metadata (metadata_schema.fbs) ---------------------------------------------------------

def _associated(table: _Table, index: int) -> list[dict]:
    files = []
    for item in table.tables(index):
        kind = item.scalar(2, "<b")
        record = {"name": item.string(0) or "", "type": FILE_TYPES[kind] if 0 <= kind < len(FILE_TYPES) else str(kind)}
        if item.string(1):
            record["description"] = item.string(1)
        if item.string(3):
            record["locale"] = item.string(3)
        files.append(record)
    return files


def _process_units(table: _Table, index: int) -> list[dict]:
    units = []
    for unit in table.tables(index):
        kind = unit.scalar(0, "<B")
        name = PROCESS_UNITS[kind] if 0 <= kind < len(PROCESS_UNITS) else str(kind)
        record = {"type": name}
        options = unit.table(1)
        if options is not None and name in ("BertTokenizerOptions", "SentencePieceTokenizerOptions"):
            record["files"] = _associated(options, 0 if name == "BertTokenizerOptions" else 1)
        elif options is not None and name == "RegexTokenizerOptions":
            record["delim_regex_pattern"] = options.string(0)
            record["files"] = _associated(options, 1)
        elif options is not None and name == "ScoreThresholdingOptions":
            record["global_score_threshold"] = options.scalar(0, "<f")
        units.append(record)
    return units


def _tensor_metadata(tensor: _Table) -> dict:
    record = {"name": tensor.string(0) or ""}
    if tensor.string(1):
        record["description"] = tensor.string(1)
    stats = tensor.table(5)
    if stats is not None and (stats.scalars(0, "<f") or stats.scalars(1, "<f")):
        record["range"] = [stats.scalars(1, "<f"), stats.scalars(0, "<f")]
    if tensor.tables(4):
        record["process_units"] = _process_units(tensor, 4)
    if tensor.tables(6):
        record["files"] = _associated(tensor, 6)
    return record


def read_metadata(payload) -> dict:
    """A TFLITE_METADATA buffer: the ModelMetadata table, as plain data."""
    view = memoryview(bytes(payload))
    if bytes(view[4:8]) != METADATA_IDENTIFIER:
        raise _Corrupt(f"TFLITE_METADATA identifier is {bytes(view[4:8])!r}, not {METADATA_IDENTIFIER!r}")
    root = _root(view)
    subgraphs = []
    for graph in root.tables(3):
        subgraphs.append({
            "inputs": [_tensor_metadata(t) for t in graph.tables(2)],
            "outputs": [_tensor_metadata(t) for t in graph.tables(3)],
            "input_process_units": _process_units(graph, 5),
            "output_process_units": _process_units(graph, 6),
            "files": _associated(graph, 4),
        })
    return {"name": root.string(0) or "", "description": root.string(1) or "", "version": root.string(2),
            "author": root.string(4), "license": root.string(5), "min_parser_version": root.string(7),
            "files": _associated(root, 6), "subgraphs": subgraphs}


# --- the interpreter's view and the whole inspection -----------------------------------------------------

def _interpreter_view(model_path: Path, runtime: str) -> dict:
    from edgebert.interpreter import find_runtime
    from edgebert.quiet import native_output_silenced

    found = find_runtime(runtime)
    try:
        with native_output_silenced():
            interpreter = found.module.Interpreter(model_path=str(model_path))
            signatures = interpreter.get_signature_list()
            details = {}
            for key in signatures:
                runner = interpreter.get_signature_runner(key)
                details[key] = {
                    "inputs": {n: _detail(d) for n, d in sorted(runner.get_input_details().items())},
                    "outputs": {n: _detail(d) for n, d in sorted(runner.get_output_details().items())}}
            ops = [op["op_name"] for op in interpreter._get_ops_details()]
    except (ValueError, RuntimeError) as error:
        raise BundleError(f"not a loadable TFLite model ({str(error).strip().splitlines()[0]})", model_path) from None
    return {"runtime": found.describe(), "signatures": details, "ops": ops}


def _detail(detail: dict) -> dict:
    shape = detail.get("shape_signature")
    if shape is None or not len(shape):
        shape = detail.get("shape", [])
    dtype = detail.get("dtype")
    return {"dtype": getattr(dtype, "__name__", str(dtype)), "shape": [int(v) for v in shape]}


def inspect_model(path: str | os.PathLike, *, runtime: str = "auto") -> dict:
    """Everything `edgebert inspect` shows, for a bundle directory or a .tflite file."""
    path = Path(path)
    manifest = None
    if path.is_dir():
        from edgebert.bundle import MODEL_FILE, read_bundle

        bundle = read_bundle(path)
        manifest, model_path = bundle.manifest, path / MODEL_FILE
    elif path.is_file():
        model_path = path
    else:
        raise UsageError("no such file or bundle directory", path)
    try:
        data = model_path.read_bytes()
    except OSError as error:
        raise BundleError(f"cannot read: {error.strerror}", model_path) from None
    info = {"file": str(model_path), "bytes": len(data), **read_tflite(data, model_path)}
    try:
        info.update(_interpreter_view(model_path, runtime))
    except BundleError as error:  # e.g. an operator version this runtime predates: the file facts still stand
        from edgebert.interpreter import find_runtime

        info.update(runtime=find_runtime(runtime).describe(), signatures={}, ops=[], interpreter_error=error.problem)
    if manifest is not None:
        info["bundle"] = {"name": manifest.get("name"), "head": manifest.get("head"),
                          "labels": manifest.get("labels") or [], "mediapipe": manifest.get("mediapipe")}
    return info


# --- text ------------------------------------------------------------------------------------------------

def _shape(shape: list[int]) -> str:
    return "[" + ", ".join("S" if v == -1 else str(v) for v in shape) + "]"


def _files(files: list[dict]) -> str:
    return ", ".join(f"{f['name']} ({f['type']})" for f in files)


def describe(info: dict) -> str:
    """The inspection as terminal lines."""
    lines = [f"{info['file']}: {info['bytes']:,} bytes, TFLite schema v{info['version']}, "
             f"{len(info['subgraphs'])} subgraph{'s' if len(info['subgraphs']) != 1 else ''}"
             + (f", min runtime {info['min_runtime_version']}" if info.get("min_runtime_version") else "")]
    metadata = info.get("metadata")
    if metadata is None:
        lines.append("metadata: none (MediaPipe Tasks cannot load this file)")
    else:
        lines.append(f"metadata: {metadata['name']!r} (parser >= {metadata['min_parser_version']}), "
                     f"{info['metadata_bytes']:,} bytes with its packed files")
        if metadata["description"]:
            lines.append(f"  {metadata['description']}")
        for graph_index, graph in enumerate(metadata["subgraphs"]):
            model_inputs = info["subgraphs"][graph_index]["inputs"] if graph_index < len(info["subgraphs"]) else []
            for index, tensor in enumerate(graph["inputs"]):
                name = model_inputs[index]["name"] if index < len(model_inputs) else "?"
                lines.append(f"  input  {tensor['name']:<12} <- tensor {name}")
            for unit in graph["input_process_units"]:
                lines.append(f"  input process unit {unit['type']}" + (f": {_files(unit['files'])}" if unit.get("files") else ""))
            model_outputs = info["subgraphs"][graph_index]["outputs"] if graph_index < len(info["subgraphs"]) else []
            for index, tensor in enumerate(graph["outputs"]):
                name = model_outputs[index]["name"] if index < len(model_outputs) else "?"
                files = f", {_files(tensor['files'])}" if tensor.get("files") else ""
                lines.append(f"  output {tensor['name']:<12} <- tensor {name}{files}")
    if info["packed_files"]:
        lines.append("packed files: " + ", ".join(f"{f['name']} ({f['bytes']:,} bytes)" for f in info["packed_files"]))
    lines.append("metadata entries: " + (", ".join(f"{e['name']} ({e['bytes']:,} bytes)"
                                                   for e in info["metadata_entries"]) or "none"))
    for index, graph in enumerate(info["subgraphs"]):
        lines.append(f"subgraph {index}: {graph['operators']} operators")
        for kind in ("inputs", "outputs"):
            lines.append(f"  {kind + ':':<8} " + "; ".join(f"{t['name']} {t['dtype']} {_shape(t['shape'])}"
                                                       for t in graph[kind]))
    for key, signature in info["signatures"].items():
        lines.append(f"signature {key!r}")
        for kind in ("inputs", "outputs"):
            lines.append(f"  {kind + ':':<8} " + "; ".join(f"{name} {d['dtype']} {_shape(d['shape'])}"
                                                       for name, d in signature[kind].items()))
    counts = Counter(info["ops"])
    if info.get("interpreter_error"):
        lines.append(f"interpreter ({info['runtime']}): {info['interpreter_error']}")
    else:
        lines.append(f"ops ({info['runtime']}): {len(info['ops'])} nodes, {len(counts)} kinds: "
                     + ", ".join(f"{name} x{count}" for name, count in sorted(counts.items())))
    bundle = info.get("bundle")
    if bundle and bundle.get("mediapipe"):
        record = bundle["mediapipe"]
        what = f"MediaPipe: {record.get('task')}, output {record.get('output')}, length {record.get('seq_len')}, "
        what += f"runs {record['file']} as it is" if record.get("file") else \
            f"from the file `{record.get('export')}` writes"
        lines.append(what + (f" ({record['note']})" if record.get("note") else ""))
    return "\n".join(lines)
