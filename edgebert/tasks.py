r"""GLUE-style classification tasks from TSV files, and the metrics GLUE scores them with.

`load_task(path)` reads one TSV into a `TaskData`: the texts (a str each, or an (a, b) tuple for
sentence-pair tasks), the integer labels (None for an unlabelled test file), the label names, the task
kind ("single" or "pair") and the names of the task's metrics. The columns come from the arguments
(`text_columns=`, `label_column=`, by header name or 0-based index), or are detected from GLUE's own
file shapes (fields separated by tabs):

- SST-2, accuracy: train/dev header `sentence label`; test header `index sentence`.
- CoLA, Matthews correlation: train/dev have no header, columns source, label, orig-label, sentence;
  test header `index sentence`.
- MRPC, F1 and accuracy: train/dev header `Quality #1 ID #2 ID #1 String #2 String`; test header
  `index #1 ID #2 ID #1 String #2 String`.

SST-2's and CoLA's test files look alike; the folder name (`.../CoLA/test.tsv`) or `task=` tells them
apart. Other headers with well-known column names (`sentence1 sentence2 label`, ...) load as tasks of
no known name, with accuracy (single) or F1 and accuracy (pairs).

Files are split on tabs only, with no quote handling (csv.QUOTE_NONE, as GLUE's own loaders read
them: MRPC and CoLA sentences carry unbalanced `"`), on \n only (a sentence may contain U+2028 or
\x0c), with a leading UTF-8 byte-order mark dropped (MRPC's train and dev files have one) and a
trailing \r removed. Blank lines are skipped. Any problem is one `SourceError` line naming the file
and, where there is one, the line: a missing column, a ragged row, a label that is not an integer or
is out of range, non-UTF-8 bytes (with the byte offset), an empty file. Bad arguments are `UsageError`s.

`metrics(task, labels, predictions)` computes accuracy, binary F1 (positive class 1) and Matthews
correlation in plain numpy.
"""
from __future__ import annotations

import os
import reprlib
from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

import numpy as np

from edgebert.errors import SourceError, UsageError


class TaskKind(str, Enum):
    SINGLE = "single"
    PAIR = "pair"


class Metric(str, Enum):
    ACCURACY = "accuracy"
    F1 = "f1"  # binary, positive class 1
    MATTHEWS = "matthews_correlation"


@dataclass(frozen=True)
class Layout:
    """Where the texts and the label sit in one known file shape."""

    header: tuple[str, ...] | None  # the exact first line; None: the file has no header
    width: int
    text_columns: tuple[int, ...]
    label_column: int | None  # None: an unlabelled (test) file


@dataclass(frozen=True)
class TaskSpec:
    name: str
    kind: TaskKind
    label_names: tuple[str, ...]
    metrics: tuple[Metric, ...]
    layouts: tuple[Layout, ...]


_SINGLE_TEST = Layout(("index", "sentence"), 2, (1,), None)
_MRPC_COLUMNS = ("#1 ID", "#2 ID", "#1 String", "#2 String")

TASKS: dict[str, TaskSpec] = {
    "sst-2": TaskSpec("SST-2", TaskKind.SINGLE, ("negative", "positive"), (Metric.ACCURACY,),
                      (Layout(("sentence", "label"), 2, (0,), 1), _SINGLE_TEST)),
    "cola": TaskSpec("CoLA", TaskKind.SINGLE, ("unacceptable", "acceptable"), (Metric.MATTHEWS,),
                     (Layout(None, 4, (3,), 1), _SINGLE_TEST)),
    "mrpc": TaskSpec("MRPC", TaskKind.PAIR, ("not_equivalent", "equivalent"), (Metric.F1, Metric.ACCURACY),
                     (Layout(("Quality", *_MRPC_COLUMNS), 5, (3, 4), 0),
                      Layout(("index", *_MRPC_COLUMNS), 5, (3, 4), None))),
}

# Metrics for data that is not a known GLUE task, by kind.
DEFAULT_METRICS = {TaskKind.SINGLE: (Metric.ACCURACY,), TaskKind.PAIR: (Metric.F1, Metric.ACCURACY)}

# Column names that other GLUE-like files use, tried when the header is not one of the known tasks'.
_TEXT_NAMES = (("sentence1", "sentence2"), ("question1", "question2"), ("question", "sentence"),
               ("#1 String", "#2 String"), ("sentence",), ("text",))
_LABEL_NAMES = ("label", "Quality", "is_duplicate")


@dataclass(frozen=True)
class TaskData:
    path: Path
    task: str | None  # "SST-2", "CoLA", "MRPC"; None when the file is not a known GLUE task
    kind: TaskKind
    texts: list  # str each (single) or (str, str) each (pair)
    labels: list[int] | None  # None: an unlabelled test file
    label_names: tuple[str, ...]
    metric_names: tuple[str, ...]
    line_numbers: list[int]  # the file line of each example (1-based), for messages

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


def task_spec(name: str) -> TaskSpec:
    """A known task by any spelling: "SST-2", "sst2", "cola", "MRPC"."""
    key = _normalise(name)
    for spec_key, spec in TASKS.items():
        if _normalise(spec_key) == key:
            return spec
    raise UsageError(f"unknown task {name!r} (known: {', '.join(s.name for s in TASKS.values())})")


def _normalise(name: str) -> str:
    return "".join(ch for ch in str(name).lower() if ch.isalnum())


def load_task(path: str | os.PathLike, *, text_columns: Sequence[str | int] | str | int | None = None,
              label_column: str | int | None = None, task: str | None = None,
              has_header: bool | None = None) -> TaskData:
    """Read a GLUE-style TSV. Columns are header names or 0-based indices; any not given are detected.

    `task` names a known GLUE task (its labels and metrics, and its file shapes for detection); without
    it the task is recognised from the header, from CoLA's headerless shape, or from the folder name
    (`.../SST-2/test.tsv`). `has_header` only matters when columns are given as indices for a file that
    is not a known shape; by default a first line whose label field is not an integer is a header.
    """
    path = Path(path)
    spec = task_spec(task) if task is not None else None
    if isinstance(text_columns, (str, int)):
        text_columns = (text_columns,)
    if text_columns is not None:
        text_columns = tuple(text_columns)
        if len(text_columns) not in (1, 2):
            raise UsageError(f"text_columns must name one column (single sentences) or two (sentence pairs), "
                             f"got {len(text_columns)}: {text_columns!r}")
    rows = _read_rows(path)
    first_number, first = rows[0]

    if text_columns is None and label_column is None and has_header is None:
        layout, detected = _detect(path, first, spec)
        spec = spec or detected
    else:
        layout = _explicit_layout(path, first, spec, text_columns, label_column, has_header)
    if spec is not None and len(layout.text_columns) != (2 if spec.kind is TaskKind.PAIR else 1):
        raise UsageError(f"{spec.name} is a {spec.kind.value}-text task, but {len(layout.text_columns)} "
                         "text column(s) were given", path)

    body = rows[1:] if layout.header is not None else rows
    if not body:
        raise SourceError(f"has a header (line {first_number}) but no examples", path)
    texts, labels, numbers = [], [], []
    header_names = layout.header or ()
    for number, fields in body:
        if len(fields) != layout.width:
            raise SourceError(f"line {number} has {len(fields)} tab-separated fields, expected {layout.width} "
                              f"(like line {first_number})", path)
        values = []
        for column in layout.text_columns:
            value = fields[column].strip()
            if not value:
                raise SourceError(f"line {number}: empty text in column {_column_name(column, header_names)}", path)
            values.append(value)
        texts.append(values[0] if len(values) == 1 else tuple(values))
        numbers.append(number)
        if layout.label_column is not None:
            labels.append(_parse_label(path, number, fields[layout.label_column],
                                       _column_name(layout.label_column, header_names), spec))

    kind = TaskKind.PAIR if len(layout.text_columns) == 2 else TaskKind.SINGLE
    if spec is not None:
        label_names, metric_names = spec.label_names, tuple(m.value for m in spec.metrics)
    else:
        label_names = tuple(str(i) for i in range(max(labels) + 1)) if labels else ()
        metric_names = tuple(m.value for m in DEFAULT_METRICS[kind])
    return TaskData(path=path, task=spec.name if spec else None, kind=kind, texts=texts,
                    labels=labels if layout.label_column is not None else None, label_names=label_names,
                    metric_names=metric_names, line_numbers=numbers)


def read_utf8(path: Path, kind: str = "task file", expected: str = "a TSV file") -> str:
    """The whole file as text (a UTF-8 byte-order mark dropped), or a one-line SourceError naming it:
    missing, a directory, unreadable, or not UTF-8 (with the offset and line of the first bad byte)."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise SourceError(f"{kind} not found", path) from None
    except IsADirectoryError:
        raise SourceError(f"is a directory, not {expected}", path) from None
    except OSError as error:
        raise SourceError(f"cannot read {kind}: {error.strerror}", path) from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise SourceError(f"not UTF-8 (bad byte 0x{data[error.start]:02x} at offset {error.start}, "
                          f"line {line})", path) from None


def _read_rows(path: Path) -> list[tuple[int, list[str]]]:
    """(line number, tab-separated fields) of every non-blank line."""
    text = read_utf8(path)
    rows = []
    for number, line in enumerate(text.split("\n"), start=1):
        line = line.removesuffix("\r")
        if line.strip():
            rows.append((number, line.split("\t")))
    if not rows:
        raise SourceError("task file is empty", path)
    return rows


def _detect(path: Path, first: list[str], spec: TaskSpec | None) -> tuple[Layout, TaskSpec | None]:
    """The layout (and the task) from the first line; a known task given by the caller narrows it."""
    candidates = [spec] if spec else list(TASKS.values())
    header = tuple(field.strip() for field in first)
    matches = [(s, layout) for s in candidates for layout in s.layouts if layout.header == header]
    if not matches:  # CoLA's labelled files have no header: source, label (0/1), orig-label, sentence
        matches = [(s, layout) for s in candidates for layout in s.layouts
                   if layout.header is None and len(first) == layout.width
                   and _is_int(first[layout.label_column])]
    if len(matches) > 1:  # `index  sentence` is the test file of both SST-2 and CoLA: ask the folder
        folder = _normalise(path.parent.name)
        by_folder = [(s, layout) for s, layout in matches if _normalise(s.name) == folder]
        if by_folder:
            matches = by_folder
        elif all(layout == matches[0][1] for _, layout in matches):
            return matches[0][1], None  # the same columns either way; only the task name is unknown
    if len(matches) == 1:
        return matches[0][1], matches[0][0]
    if spec is not None:
        shapes = "; ".join(_describe(layout) for layout in spec.layouts)
        raise SourceError(f"line 1 does not look like a {spec.name} file (expected {shapes}; "
                          f"got {_show_fields(first)})", path)
    layout = _detect_by_names(header)
    if layout is None:
        raise SourceError(f"cannot tell which columns hold the text and the label (line 1: {_show_fields(first)}); "
                          "pass text_columns= and label_column=, or task=", path)
    return layout, None


def _detect_by_names(header: tuple[str, ...]) -> Layout | None:
    for names in _TEXT_NAMES:
        if all(name in header for name in names):
            label = next((header.index(name) for name in _LABEL_NAMES if name in header), None)
            return Layout(header, len(header), tuple(header.index(name) for name in names), label)
    return None


def _explicit_layout(path: Path, first: list[str], spec: TaskSpec | None, text_columns, label_column,
                     has_header: bool | None) -> Layout:
    """The layout from the caller's columns (any not given are taken from the detected layout)."""
    detected = None
    if text_columns is None or label_column is None:
        try:
            detected, _ = _detect(path, first, spec)
        except SourceError:
            if text_columns is None:
                raise SourceError(f"cannot tell which columns hold the text (line 1: {_show_fields(first)}); "
                                  "pass text_columns=", path) from None
    named = any(isinstance(c, str) for c in (*(text_columns or ()), label_column))
    if has_header is None:
        if named:
            has_header = True
        elif detected is not None:
            has_header = detected.header is not None
        elif label_column is not None:
            has_header = not (isinstance(label_column, int) and 0 <= label_column < len(first)
                              and _is_int(first[label_column]))
        else:
            has_header = True  # GLUE convention: every file but CoLA's labelled ones has a header
    header = tuple(field.strip() for field in first) if has_header else None

    def index(column, role) -> int:
        if isinstance(column, bool) or not isinstance(column, (int, str)):
            raise UsageError(f"{role} must be a column name or a 0-based index, got {column!r}")
        if isinstance(column, int):
            if not 0 <= column < len(first):
                raise SourceError(f"{role} {column} is out of range: line 1 has {len(first)} fields "
                                  f"({_show_fields(first)})", path)
            return column
        if header is None:
            raise UsageError(f"{role} {column!r} is a name but the file has no header (has_header=False); "
                             "give a 0-based index", path)
        if column not in header:
            raise SourceError(f"column {column!r} ({role}) not found in the header on line 1 "
                              f"({_show_fields(first)})", path)
        return header.index(column)

    texts = (tuple(index(c, "text column") for c in text_columns) if text_columns is not None
             else detected.text_columns)
    if label_column is not None:
        label = index(label_column, "label column")
    else:
        label = detected.label_column if detected is not None else None
    if label is not None and label in texts:
        raise UsageError(f"column {_column_name(label, header or ())} cannot be both a text and the label", path)
    return Layout(header, len(first), texts, label)


def _parse_label(path: Path, number: int, text: str, column: str, spec: TaskSpec | None) -> int:
    value = text.strip()
    if not _is_int(value):
        raise SourceError(f"line {number}: label {value!r} in column {column} is not an integer", path)
    label = int(value)
    if spec is not None and not 0 <= label < len(spec.label_names):
        raise SourceError(f"line {number}: label {label} is out of range for {spec.name} "
                          f"(0..{len(spec.label_names) - 1}: {', '.join(spec.label_names)})", path)
    if label < 0:
        raise SourceError(f"line {number}: label {label} is negative (labels are class indices 0, 1, ...)", path)
    return label


def _is_int(text: str) -> bool:
    text = text.strip()
    return text.lstrip("-").isdigit() and text.lstrip("-").isascii()


def _column_name(column: int, header: tuple[str, ...]) -> str:
    return repr(header[column]) if header else f"{column} (0-based)"


def _show_fields(fields: list[str]) -> str:
    return " | ".join(reprlib.repr(field)[1:-1] for field in fields[:6]) + (" | ..." if len(fields) > 6 else "")


def _describe(layout: Layout) -> str:
    if layout.header is None:
        return f"{layout.width} columns without a header"
    return "header '" + "\\t".join(layout.header) + "'"


# --- metrics ------------------------------------------------------------------------------------------

def metric_names_for(task: str | TaskKind | TaskData) -> tuple[str, ...]:
    """The metrics of a TaskData, a known task name ("SST-2", "cola") or a kind ("single", "pair")."""
    if isinstance(task, TaskData):
        return task.metric_names
    if isinstance(task, TaskKind) or str(task) in {k.value for k in TaskKind}:
        return tuple(m.value for m in DEFAULT_METRICS[TaskKind(task)])
    try:
        return tuple(m.value for m in task_spec(task).metrics)
    except UsageError:
        raise UsageError(f"unknown task or kind {task!r} (known: single, pair, "
                         f"{', '.join(s.name for s in TASKS.values())})") from None


def metrics(task: str | TaskKind | TaskData, labels, predictions) -> dict[str, float]:
    """The task's metrics for integer labels and predicted class indices, e.g. {"f1": .., "accuracy": ..}."""
    names = metric_names_for(task)
    y_true, y_pred = _as_classes(labels, "labels"), _as_classes(predictions, "predictions")
    if len(y_true) != len(y_pred):
        raise UsageError(f"{len(y_true)} labels but {len(y_pred)} predictions")
    if not len(y_true):
        raise UsageError("no labels to score")
    functions = {Metric.ACCURACY.value: accuracy, Metric.F1.value: f1_binary,
                 Metric.MATTHEWS.value: matthews_correlation}
    return {name: functions[name](y_true, y_pred) for name in names}


def _as_classes(values, what: str) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 1:
        raise UsageError(f"{what} must be a flat sequence of class indices, got shape {array.shape}")
    whole = np.issubdtype(array.dtype, np.integer) or (
        np.issubdtype(array.dtype, np.number) and bool(np.all(array == np.round(array))))
    if array.size and not whole:
        raise UsageError(f"{what} must be integer class indices, got {reprlib.repr(list(array[:5]))}")
    return array.astype(np.int64)


def accuracy(labels, predictions) -> float:
    y_true, y_pred = np.asarray(labels), np.asarray(predictions)
    return float(np.mean(y_true == y_pred))


def f1_binary(labels, predictions, positive: int = 1) -> float:
    """F1 of the positive class; 0.0 when there are no true and no predicted positives (as sklearn)."""
    y_true, y_pred = np.asarray(labels) == positive, np.asarray(predictions) == positive
    true_pos = int(np.sum(y_true & y_pred))
    denominator = int(np.sum(y_true)) + int(np.sum(y_pred))
    return 2.0 * true_pos / denominator if denominator else 0.0


def matthews_correlation(labels, predictions) -> float:
    """Matthews correlation (multi-class form, which equals the binary phi coefficient for two classes);
    0.0 when it is undefined (all labels or all predictions one class), as sklearn."""
    y_true, y_pred = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
    classes, encoded = np.unique(np.concatenate([y_true, y_pred]), return_inverse=True)
    n_classes = len(classes)
    confusion = np.zeros((n_classes, n_classes), np.float64)
    np.add.at(confusion, (encoded[: len(y_true)], encoded[len(y_true):]), 1.0)
    t_sum, p_sum = confusion.sum(axis=1), confusion.sum(axis=0)  # per class: true count, predicted count
    correct, samples = np.trace(confusion), confusion.sum()
    covariance = correct * samples - t_sum @ p_sum
    denominator = np.sqrt((samples ** 2 - p_sum @ p_sum) * (samples ** 2 - t_sum @ t_sum))
    return float(covariance / denominator) if denominator else 0.0
