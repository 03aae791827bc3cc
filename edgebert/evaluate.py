"""Task accuracy measured by running the exported `.tflite`, exactly as a device would.

`evaluate_bundle(bundle_dir, task_data)` opens a classifier bundle, tokenizes each example of a labelled
GLUE-style task (`edgebert.tasks.load_task`; a path or a loaded `TaskData`) with the bundle's own
tokenizer.json at the bundle's sequence length (each text alone, as `edgebert predict` does), runs
model.tflite with the device-side interpreter, takes the argmax of its `probabilities` (of an older
bundle's `logits`: the same class) and scores it with the task's metrics. `edgebert convert --eval
DEV.tsv` runs the same code on the freshly exported model before the bundle is written and records
`manifest_record(result)` under the manifest's "evaluation".

Result: {"task" (e.g. "SST-2"; None for a file of no known GLUE task), "kind" ("single"/"pair"),
"file", "file_sha256", "examples", "examples_in_file", "seq_len", "metrics" {name: value},
"predictions" [class index per example], "measured_with": "model.tflite", "runtime"}. The manifest's
record replaces "predictions" by "predictions_sha256" (`predictions_sha256`: the sha256 of the indices
written as JSON without spaces, e.g. "[0,2,1]"), so two bundles' answers can be compared cheaply.

Device side: this module imports only numpy and edgebert, never TensorFlow.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from edgebert import tokenizer as tokenization
from edgebert.bundle import MANIFEST_FILE, file_sha256, read_bundle
from edgebert.errors import BundleError, UsageError
from edgebert.interpreter import TFLiteModel
from edgebert.scores import LOGITS, PROBABILITIES, class_probabilities
from edgebert.tasks import TaskData, load_task, metrics

MEASURED_WITH = "model.tflite"


def parse_columns(text: str | None) -> tuple[str | int, ...] | None:
    """'sentence' or 'sentence1,sentence2' or '0,1' -> column names / 0-based indices (None: detect)."""
    if text is None:
        return None
    parts = [part.strip() for part in str(text).split(",")]
    if not all(parts) or len(parts) > 2:
        raise UsageError(f"text columns must be one or two comma-separated names or 0-based indices, got {text!r}")
    return tuple(parse_column(part) for part in parts)


def parse_column(text: str | int | None) -> str | int | None:
    """A column name, or a 0-based index when it is all digits."""
    if text is None or isinstance(text, int):
        return text
    text = text.strip()
    return int(text) if text.isascii() and text.isdigit() else text


def load_eval_task(path: str | os.PathLike, *, text_columns=None, label_column=None) -> TaskData:
    """A labelled task file (columns detected unless given); an unlabelled one is a UsageError."""
    data = load_task(path, text_columns=text_columns, label_column=label_column)
    if data.labels is None:
        raise UsageError("has no label column (a GLUE test file?): evaluation needs a labelled file such as "
                         "dev.tsv", data.path)
    return data


def check_task_fits(task_data: TaskData, num_labels: int, model: str | os.PathLike) -> None:
    """The task's labels must be the classifier's: the same count for a known GLUE task, and every label
    a class the classifier has for any file. `model` names the bundle or source in the messages."""
    if task_data.labels is None:
        raise UsageError("has no label column (a GLUE test file?): evaluation needs a labelled file such as "
                         "dev.tsv", task_data.path)
    if not num_labels:
        raise UsageError("has no classifier head (an encoder gives no labels to score); evaluation needs a "
                         "classifier", model)
    if task_data.task is not None and task_data.num_labels != num_labels:
        raise UsageError(f"is {task_data.task} with {task_data.num_labels} labels "
                         f"({', '.join(task_data.label_names)}) but the classifier of {model} has {num_labels}",
                         task_data.path)
    high = int(np.argmax(task_data.labels))
    if task_data.labels[high] >= num_labels:
        raise UsageError(f"line {task_data.line_numbers[high]}: label {task_data.labels[high]} is out of range "
                         f"for the classifier of {model}, which has {num_labels} labels", task_data.path)


def predictions_sha256(predictions: list[int]) -> str:
    return hashlib.sha256(json.dumps([int(p) for p in predictions], separators=(",", ":")).encode()).hexdigest()


def _check_limit(limit) -> None:
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise UsageError(f"--limit must be a positive integer, got {limit!r}")


def evaluate_model(model_path: str | os.PathLike, tokenizer_path: str | os.PathLike, seq_len: int | None,
                   task_data: TaskData, *, num_labels: int, limit: int | None = None,
                   progress: Callable[[int, int], None] | None = None, num_threads: int | None = None) -> dict:
    """Run a classifier .tflite on the task's examples (see the module docstring for the result); a
    model with length buckets runs each text at the shortest of its lengths that holds it."""
    _check_limit(limit)
    check_task_fits(task_data, num_labels, model_path)
    tokenizer = tokenization.load_tokenizer(tokenizer_path)
    model = TFLiteModel(model_path, num_threads=num_threads)
    texts = task_data.texts[:limit] if limit else task_data.texts
    total, step = len(texts), max(1, len(texts) // 100)
    predictions = []
    for done, text in enumerate(texts, start=1):
        outputs = model(**tokenization.encode(tokenizer, [text], seq_len, buckets=model.lengths))
        scores = class_probabilities(outputs, model_path)
        if scores.size != num_labels:
            raise BundleError(f"model gives {scores.size} scores but the classifier has {num_labels} labels",
                              model_path)
        predictions.append(int(np.argmax(scores)))
        if progress is not None and (done % step == 0 or done == total):
            progress(done, total)
    return {"task": task_data.task, "kind": task_data.kind.value, "file": str(task_data.path),
            "file_sha256": file_sha256(task_data.path), "examples": total, "examples_in_file": len(task_data),
            "seq_len": seq_len or "dynamic",
            "metrics": metrics(task_data, task_data.labels[:total], predictions),
            "predictions": predictions, "measured_with": MEASURED_WITH, "runtime": model.runtime.describe()}


def bundle_num_labels(bundle) -> int:
    """The classifier's label count from the manifest's I/O contract; a UsageError for an encoder bundle."""
    if bundle.manifest.get("head") != "classifier":
        raise UsageError(f"is an {bundle.manifest.get('head') or 'unknown-head'} bundle with no classifier head "
                         "(no labels to score); evaluation needs a classifier bundle", bundle.path)
    for output in bundle.manifest.get("io", {}).get("outputs", []):
        if output.get("name") in (PROBABILITIES, LOGITS) and output.get("shape"):
            return int(output["shape"][-1])
    raise BundleError(f"classifier manifest has no {PROBABILITIES!r} (or older {LOGITS!r}) output in io.outputs",
                      bundle.path / MANIFEST_FILE)


def evaluate_bundle(bundle_dir: str | os.PathLike, task_data: TaskData | str | os.PathLike, *,
                    limit: int | None = None, progress: Callable[[int, int], None] | None = None,
                    num_threads: int | None = None) -> dict:
    """The bundle's metrics on a labelled task (a TaskData, or a TSV path read with detected columns)."""
    _check_limit(limit)
    bundle = read_bundle(bundle_dir)
    num_labels = bundle_num_labels(bundle)
    if not isinstance(task_data, TaskData):
        task_data = load_eval_task(task_data)
    check_task_fits(task_data, num_labels, bundle.path)
    return evaluate_model(bundle.model_path, bundle.tokenizer_path, bundle.seq_len, task_data, num_labels=num_labels,
                          limit=limit, progress=progress, num_threads=num_threads)


def manifest_record(result: dict) -> dict:
    """The result without the per-example predictions, with their sha256 instead."""
    record = {name: value for name, value in result.items() if name != "predictions"}
    record["predictions_sha256"] = predictions_sha256(result["predictions"])
    return record


def describe(result: dict) -> str:
    """One line: `SST-2 dev.tsv, 872 examples: accuracy 0.8234 (model.tflite, ai-edge-litert 1.4.0)`."""
    figures = ", ".join(f"{name} {value:.4f}" for name, value in result["metrics"].items())
    task = f"{result['task']} " if result.get("task") else ""
    return (f"{task}{Path(result['file']).name}, {result['examples']:,} examples: {figures} "
            f"({result['measured_with']}, {result['runtime']})")
