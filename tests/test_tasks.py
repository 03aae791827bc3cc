"""GLUE-style TSV tasks: detection, explicit columns, every way a file can be broken, and the metrics."""
import math

import numpy as np
import pytest
from conftest import SHARED_DATA, needs_shared

from edgebert.tasks import (
    TaskKind,
    accuracy,
    f1_binary,
    load_task,
    matthews_correlation,
    metric_names_for,
    metrics,
    task_spec,
)
from edgebert.errors import SourceError, UsageError

GLUE = SHARED_DATA / "glue"


def _write(tmp_path, text, name="data.tsv", folder=None, raw=False):
    directory = tmp_path / folder if folder else tmp_path
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_bytes(text if raw else text.encode("utf-8"))
    return path


def _error(call, *args, **kwargs) -> str:
    with pytest.raises((SourceError, UsageError)) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- the real GLUE files -------------------------------------------------------------------------------

REAL = [("SST-2", "train", 67349, True), ("SST-2", "dev", 872, True), ("SST-2", "test", 1821, False),
        ("CoLA", "train", 8551, True), ("CoLA", "dev", 1043, True), ("CoLA", "test", 1063, False),
        ("MRPC", "train", 3668, True), ("MRPC", "dev", 408, True), ("MRPC", "test", 1725, False)]


@needs_shared(GLUE)
@pytest.mark.parametrize("task,split,rows,labelled", REAL, ids=[f"{t}-{s}" for t, s, _, _ in REAL])
def test_real_glue_files_are_detected(task, split, rows, labelled):
    data = load_task(GLUE / task / f"{split}.tsv")
    assert data.task == task and len(data) == rows == len(data.line_numbers)
    assert data.kind == ("pair" if task == "MRPC" else "single")
    assert data.metric_names == {"SST-2": ("accuracy",), "CoLA": ("matthews_correlation",),
                                 "MRPC": ("f1", "accuracy")}[task]
    assert data.num_labels == 2
    if labelled:
        assert set(data.labels) == {0, 1} and len(data.labels) == rows
    else:
        assert data.labels is None
    for text in data.texts:
        segments = text if data.kind == "pair" else (text,)
        assert all(isinstance(s, str) and s and s == s.strip() and "\t" not in s for s in segments)


@needs_shared(GLUE)
def test_real_glue_quotes_and_byte_order_mark_are_kept_as_text():
    mrpc = load_task(GLUE / "MRPC" / "dev.tsv")  # starts with a UTF-8 BOM; an unbalanced quote in row 1
    first = "He said the foodservice pie business doesn't fit the company's long-term growth strategy."
    assert mrpc.texts[0] == (first, '"The foodservice pie business does not fit our long-term growth strategy.')
    assert mrpc.labels[:2] == [1, 0] and mrpc.line_numbers[0] == 2
    cola = load_task(GLUE / "CoLA" / "dev.tsv")  # no header: the first line is an example
    assert cola.texts[0] == "The sailors rode the breeze clear of the rocks." and cola.line_numbers[0] == 1
    sst = load_task(GLUE / "SST-2" / "dev.tsv")
    assert sst.texts[0] == "it 's a charming and often affecting journey ." and sst.labels[0] == 1


@needs_shared(GLUE)
def test_real_glue_with_explicit_columns_gives_the_same_data():
    detected = load_task(GLUE / "MRPC" / "dev.tsv")
    by_name = load_task(GLUE / "MRPC" / "dev.tsv", text_columns=["#1 String", "#2 String"], label_column="Quality")
    by_index = load_task(GLUE / "MRPC" / "dev.tsv", text_columns=[3, 4], label_column=0, task="mrpc")
    assert by_name.texts == detected.texts == by_index.texts
    assert by_name.labels == detected.labels == by_index.labels
    assert by_name.task is None and by_index.task == "MRPC"  # names alone do not say which task


# --- detection on small files ---------------------------------------------------------------------------

def test_sst2_shape(tmp_path):
    path = _write(tmp_path, "sentence\tlabel\na \"quoted thing \t1\nbad film \t0\n")
    data = load_task(path)
    assert (data.task, data.kind, data.texts, data.labels) == ("SST-2", TaskKind.SINGLE, ['a "quoted thing', "bad film"], [1, 0])
    assert data.label_names == ("negative", "positive") and data.line_numbers == [2, 3]


def test_cola_shape_without_header(tmp_path):
    path = _write(tmp_path, "gj04\t1\t\tThe cat sat.\ngj04\t0\t*\tCat the sat.\n")
    data = load_task(path)
    assert (data.task, data.texts, data.labels, data.metric_names) == (
        "CoLA", ["The cat sat.", "Cat the sat."], [1, 0], ("matthews_correlation",))


def test_mrpc_shape_with_bom_and_crlf(tmp_path):
    text = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\r\n1\t1\t2\tA said.\tB said.\r\n0\t3\t4\tC.\tD.\r\n"
    data = load_task(_write(tmp_path, text))
    assert (data.task, data.kind, data.texts, data.labels) == ("MRPC", "pair", [("A said.", "B said."), ("C.", "D.")], [1, 0])


@pytest.mark.parametrize("folder,task", [("SST-2", "SST-2"), ("sst2", "SST-2"), ("CoLA", "CoLA"), ("other", None)])
def test_single_sentence_test_files_take_the_task_from_the_folder(tmp_path, folder, task):
    data = load_task(_write(tmp_path, "index\tsentence\n0\tone .\n1\ttwo .\n", "test.tsv", folder))
    assert (data.task, data.texts, data.labels) == (task, ["one .", "two ."], None)


def test_task_argument_picks_the_task_of_an_ambiguous_test_file(tmp_path):
    path = _write(tmp_path, "index\tsentence\n0\tone .\n", "test.tsv")
    assert load_task(path, task="cola").task == "CoLA"
    assert load_task(path, task="SST2").metric_names == ("accuracy",)


def test_other_glue_like_headers_are_recognised_by_column_names(tmp_path):
    path = _write(tmp_path, "id\tsentence1\tsentence2\tlabel\n7\tA.\tB.\t2\n8\tC.\tD.\t0\n")
    data = load_task(path)
    assert (data.task, data.kind, data.texts, data.labels) == (None, "pair", [("A.", "B."), ("C.", "D.")], [2, 0])
    assert data.label_names == ("0", "1", "2") and data.metric_names == ("f1", "accuracy")


def test_explicit_columns_by_name_and_index(tmp_path):
    path = _write(tmp_path, "score\ttext\textra\n2\thello there\tx\n0\tgood bye\ty\n")
    by_name = load_task(path, text_columns="text", label_column="score")
    assert (by_name.texts, by_name.labels, by_name.kind, by_name.task) == (["hello there", "good bye"], [2, 0], "single", None)
    by_index = load_task(path, text_columns=[1], label_column=0)  # header detected: 'score' is no integer
    assert (by_index.texts, by_index.labels) == (by_name.texts, by_name.labels)
    headerless = _write(tmp_path, "2\thello there\n0\tgood bye\n", "plain.tsv")
    assert load_task(headerless, text_columns=1, label_column=0).labels == [2, 0]
    assert load_task(headerless, text_columns=1).texts == ["good bye"]  # no label: a header assumed
    assert load_task(headerless, text_columns=1, has_header=False).texts == ["hello there", "good bye"]
    unlabelled = load_task(path, text_columns=["text", "extra"])
    assert unlabelled.kind == "pair" and unlabelled.labels is None and unlabelled.texts[0] == ("hello there", "x")


def test_blank_lines_are_skipped_and_line_numbers_kept(tmp_path):
    data = load_task(_write(tmp_path, "sentence\tlabel\n\none\t1\n   \ntwo\t0"))
    assert data.texts == ["one", "two"] and data.line_numbers == [3, 5]


# --- broken files: one line, naming the file and the line ---------------------------------------------

def test_missing_column_names_the_column_and_the_line(tmp_path):
    path = _write(tmp_path, "sentence\tlabel\nfine\t1\n")
    message = _error(load_task, path, text_columns="text", label_column="label")
    assert message == (f"{path}: column 'text' (text column) not found in the header on line 1 "
                       "(sentence | label)")
    assert "'polarity'" in _error(load_task, path, label_column="polarity")
    assert "label column 5 is out of range: line 1 has 2 fields" in _error(load_task, path, text_columns=0, label_column=5)


def test_unknown_header_asks_for_the_columns(tmp_path):
    path = _write(tmp_path, "a\tb\nx\ty\n")
    assert _error(load_task, path) == (f"{path}: cannot tell which columns hold the text and the label "
                                       "(line 1: a | b); pass text_columns= and label_column=, or task=")


def test_file_of_another_task_is_refused(tmp_path):
    path = _write(tmp_path, "sentence\tlabel\nfine\t1\n")
    assert _error(load_task, path, task="mrpc").startswith(f"{path}: line 1 does not look like a MRPC file")


@pytest.mark.parametrize("label,problem", [
    ("2", "line 3: label 2 is out of range for SST-2 (0..1: negative, positive)"),
    ("pos", "line 3: label 'pos' in column 'label' is not an integer"),
    ("1.0", "line 3: label '1.0' in column 'label' is not an integer"),
    ("", "line 3: label '' in column 'label' is not an integer"),
])
def test_bad_labels_name_the_line(tmp_path, label, problem):
    path = _write(tmp_path, f"sentence\tlabel\nfine\t1\nnext\t{label}\n")
    assert _error(load_task, path) == f"{path}: {problem}"


def test_negative_label_of_an_unknown_task(tmp_path):
    path = _write(tmp_path, "text\tlabel\nfine\t-1\n")
    assert _error(load_task, path) == f"{path}: line 2: label -1 is negative (labels are class indices 0, 1, ...)"


def test_ragged_row(tmp_path):
    path = _write(tmp_path, "sentence\tlabel\nfine\t1\nbroken\n")
    assert _error(load_task, path) == f"{path}: line 3 has 1 tab-separated fields, expected 2 (like line 1)"
    cola = _write(tmp_path, "gj04\t1\t\tOne.\ngj04\t1\tTwo.\n", "cola.tsv")
    assert _error(load_task, cola) == f"{cola}: line 2 has 3 tab-separated fields, expected 4 (like line 1)"


def test_non_utf8_gives_the_byte_offset(tmp_path):
    path = _write(tmp_path, b"sentence\tlabel\ncaf\xe9\t1\n", raw=True)
    assert _error(load_task, path) == f"{path}: not UTF-8 (bad byte 0xe9 at offset 18, line 2)"


@pytest.mark.parametrize("text", ["", "\n\n  \n", "\ufeff"])
def test_empty_file(tmp_path, text):
    path = _write(tmp_path, text)
    assert _error(load_task, path) == f"{path}: task file is empty"


def test_header_without_examples_and_empty_text(tmp_path):
    path = _write(tmp_path, "sentence\tlabel\n")
    assert _error(load_task, path) == f"{path}: has a header (line 1) but no examples"
    path = _write(tmp_path, "sentence\tlabel\n \t1\n", "blank.tsv")
    assert _error(load_task, path) == f"{path}: line 2: empty text in column 'sentence'"


def test_missing_file_and_bad_arguments(tmp_path):
    assert _error(load_task, tmp_path / "nope.tsv") == f"{tmp_path / 'nope.tsv'}: task file not found"
    path = _write(tmp_path, "sentence\tlabel\nfine\t1\n")
    assert _error(load_task, path, task="qqp") == "unknown task 'qqp' (known: SST-2, CoLA, MRPC)"
    assert "must name one column" in _error(load_task, path, text_columns=[0, 1, 1])
    assert "cannot be both a text and the label" in _error(load_task, path, text_columns=1, label_column=1)
    three = _write(tmp_path, "a\tb\tlabel\nx\ty\t1\n", "three.tsv")
    assert _error(load_task, three, text_columns=["a", "b"], label_column="label", task="sst-2") == (
        f"{three}: SST-2 is a single-text task, but 2 text column(s) were given")
    assert "is a name but the file has no header" in _error(load_task, path, text_columns="sentence", has_header=False)


# --- metrics ---------------------------------------------------------------------------------------------

def _mcc_binary(y, p):
    tp = sum(1 for a, b in zip(y, p) if a == 1 and b == 1)
    tn = sum(1 for a, b in zip(y, p) if a == 0 and b == 0)
    fp = sum(1 for a, b in zip(y, p) if a == 0 and b == 1)
    fn = sum(1 for a, b in zip(y, p) if a == 1 and b == 0)
    denominator = math.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    return (tp * tn - fp * fn) / denominator if denominator else 0.0


def test_metrics_on_a_worked_example():
    labels = [1, 1, 1, 0, 0, 0, 1, 0]
    preds = [1, 0, 1, 0, 1, 0, 1, 0]  # tp 3, fn 1, fp 1, tn 3
    assert accuracy(labels, preds) == 0.75
    assert f1_binary(labels, preds) == pytest.approx(0.75)  # precision 3/4, recall 3/4
    assert matthews_correlation(labels, preds) == pytest.approx((9 - 1) / 16)
    assert metrics("MRPC", labels, preds) == {"f1": pytest.approx(0.75), "accuracy": 0.75}
    assert metrics("cola", labels, np.array(preds)) == {"matthews_correlation": pytest.approx(0.5)}
    assert metrics("sst-2", labels, preds) == {"accuracy": 0.75}
    assert metrics("single", labels, preds) == {"accuracy": 0.75}
    assert list(metrics(TaskKind.PAIR, labels, preds)) == ["f1", "accuracy"]


def test_matthews_matches_the_binary_formula_on_random_labels():
    rng = np.random.default_rng(0)
    for _ in range(50):
        n = int(rng.integers(1, 40))
        y, p = rng.integers(0, 2, n).tolist(), rng.integers(0, 2, n).tolist()
        assert matthews_correlation(y, p) == pytest.approx(_mcc_binary(y, p), abs=1e-12)


def test_metric_edge_cases():
    assert matthews_correlation([1, 1, 1], [1, 1, 1]) == 0.0  # undefined: one class only
    assert matthews_correlation([0, 1, 0, 1], [0, 1, 0, 1]) == 1.0
    assert matthews_correlation([0, 1, 0, 1], [1, 0, 1, 0]) == -1.0
    assert matthews_correlation([0, 1, 2], [0, 1, 2]) == pytest.approx(1.0)  # multi-class form
    assert f1_binary([0, 0], [0, 0]) == 0.0  # no positives at all
    assert f1_binary([1, 1], [0, 0]) == 0.0
    assert metrics("sst-2", np.array([1.0, 0.0]), [1, 1]) == {"accuracy": 0.5}  # whole floats are fine


def test_metric_errors():
    assert _error(metrics, "sst-2", [1, 0], [1]) == "2 labels but 1 predictions"
    assert _error(metrics, "sst-2", [], []) == "no labels to score"
    assert "must be integer class indices" in _error(metrics, "sst-2", [1, 0], [0.7, 0.2])
    assert "flat sequence" in _error(metrics, "sst-2", [1, 0], [[0.3, 0.7], [0.9, 0.1]])
    assert _error(metrics, "qqp", [1], [1]) == "unknown task or kind 'qqp' (known: single, pair, SST-2, CoLA, MRPC)"


def test_metric_names_follow_the_loaded_data(tmp_path):
    data = load_task(_write(tmp_path, "gj04\t1\t\tThe cat sat.\ngj04\t0\t*\tCat the sat.\n"))
    assert metric_names_for(data) == ("matthews_correlation",)
    assert metrics(data, data.labels, [1, 1]) == {"matthews_correlation": 0.0}
    assert task_spec("Co-LA").name == "CoLA"
