"""The `edgebert evaluate` command: a thin layer over edgebert.evaluate, for the device side.

Imported by `edgebert.cli` at start-up, so it imports only click at module level. edgebert.evaluate
imports numpy, edgebert and edgebert.tasks only (never TensorFlow), so the command runs wherever the
device-side install does. Library errors become one `error: ...` line through the group in edgebert.cli.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click


class _ExampleProgress:
    """A click progress bar on stderr over the examples, started by the first report."""

    def __init__(self):
        self.bar = None

    def __call__(self, done: int, total: int):
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="evaluating", file=sys.stderr)
            self.bar.__enter__()
        self.bar.update(done - self.bar.pos)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


@click.command("evaluate")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--task", "task_file", required=True, type=click.Path(path_type=Path), metavar="DEV.tsv",
              help="A labelled GLUE-style TSV (SST-2, CoLA, MRPC shapes are detected).")
@click.option("--limit", type=int, default=None, help="Score only the first N examples.")
@click.option("--text-columns", default=None, metavar="COLUMNS",
              help="Text column(s): a name or 0-based index, two comma-separated for pairs (default: detected).")
@click.option("--label-column", default=None, metavar="COLUMN",
              help="Label column: a name or 0-based index (default: detected).")
@click.option("--threads", type=int, default=None, help="Interpreter threads (default: the runtime's choice).")
@click.option("--json", "as_json", is_flag=True,
              help="Print the whole result as JSON (per-example predictions and their sha256 included).")
def evaluate(bundle, task_file, limit, text_columns, label_column, threads, as_json):
    """Score a classifier BUNDLE's model.tflite on a labelled task file (accuracy, F1, Matthews).

    Each example is tokenized with the bundle's own tokenizer at its sequence length and run through the
    device's TFLite interpreter; the argmax of the logits is scored with the task's GLUE metrics. Needs
    only the device-side install (no TensorFlow).
    """
    from edgebert.evaluate import (describe, evaluate_bundle, load_eval_task, parse_column, parse_columns,
                                     predictions_sha256)
    from edgebert.errors import UsageError

    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be a positive integer, got {limit}")
    task = load_eval_task(task_file, text_columns=parse_columns(text_columns), label_column=parse_column(label_column))
    with _ExampleProgress() as progress:
        result = evaluate_bundle(bundle, task, limit=limit, progress=progress, num_threads=threads)
    if as_json:
        click.echo(json.dumps({**result, "predictions_sha256": predictions_sha256(result["predictions"])}, indent=2))
        return
    click.echo(describe(result))
