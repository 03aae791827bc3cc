"""`edgebert bench`, `predict`, `rank` and `evaluate`: running bundles on this device, as thin commands
over edgebert.bench, edgebert.predict and edgebert.evaluate.

numpy, tokenizers and the interpreter are imported inside the commands, so `edgebert bench --help` is
fast. Library errors (BundleError, UsageError, ...) become one `error: ...` line through the group in
edgebert.cli.
"""
from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

import click

from edgebert.errors import OutputError, UsageError

RUNTIME_CHOICES = ("auto", "ai-edge-litert", "tflite-runtime", "tensorflow")


class _BundleProgress:
    """A click progress bar on stderr over the bundles, naming the one being measured."""

    def __init__(self):
        self.bar = None

    def __call__(self, done: int, total: int, name: str | None):
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="benchmarking", file=sys.stderr,
                                         item_show_func=lambda item: item)
            self.bar.__enter__()
        self.bar.update(done - self.bar.pos, current_item=name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


def _check_json_target(path: Path) -> None:
    """Refuse, before minutes of measuring, a --json path that cannot be written."""
    if path.is_dir():
        raise OutputError("is a directory (--json takes a file name)", path)
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"cannot write here ({parent} is not a writable directory)", path)


def write_json_atomically(path: Path, data) -> None:
    """Write JSON to a temporary file beside `path`, then rename it into place."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent if str(path.parent) else ".")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as file:
            json.dump(data, file, indent=2)
            file.write("\n")
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        try:
            os.unlink(temporary)
        except OSError:
            pass
        raise


@click.command("bench")
@click.argument("bundles", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--threads", default=1, show_default=True, type=int, help="Interpreter threads (at least 1).")
@click.option("--runs", default=50, show_default=True, type=int, help="Timed inferences per bundle (at least 1).")
@click.option("--warmup", default=5, show_default=True, type=int,
              help="Untimed inferences before the timed ones (0 or more).")
@click.option("--seq-len", default=None, type=int,
              help="Input length for dynamic bundles (default: each sentence's own length); a fixed bundle "
                   "only accepts its own.")
@click.option("--no-xnnpack", is_flag=True, help="Run on the builtin kernels, without the XNNPACK delegate.")
@click.option("--runtime", type=click.Choice(RUNTIME_CHOICES), default="auto", show_default=True,
              help="Interpreter to use; auto prefers ai-edge-litert, then tflite-runtime, then tensorflow.")
@click.option("--inputs", "inputs_file", type=click.Path(path_type=Path), default=None,
              help="Text to feed, one sentence per line (default: the repository's samples/sentences.txt).")
@click.option("--weight-cache", type=click.Path(path_type=Path), default=None, metavar="DIR",
              help="Run with XNNPACK's weight cache in DIR (ai-edge-litert): packed weights are written to a file "
                   "once and memory-mapped after, so a model costs about its own bytes of RAM and loads faster.")
@click.option("--json", "json_out", type=click.Path(path_type=Path), default=None,
              help="Also write the results file (schema edgebert.bench/1) here, atomically.")
@click.option("--timeout", default=None, type=float,
              help="Seconds allowed per bundle before its worker is stopped and reported as failed.")
@click.option("--soak", default=None, type=int, metavar="N",
              help="After the timed runs, N more inferences on the same interpreter with RSS sampled along the "
                   "way; reports the anonymous and total RSS growth over the last 90 % (a leak check).")
@click.option("--per-text", is_flag=True,
              help="Also time every text of --inputs (3 passes), each at the length it gets: its own length "
                   "bucket, or its own length in a dynamic bundle; reports mean, p50 and p90 per text.")
def bench(bundles, threads, runs, warmup, seq_len, no_xnnpack, runtime, inputs_file, weight_cache, json_out, timeout,
          soak, per_text):
    """Measure each BUNDLE's latency, load time and memory, each in its own fresh process.

    Feeds real tokenized sentences, times warm runs one by one, and prints a table (p50/p90/p99
    latency, throughput, peak RSS and its growth, whether XNNPACK took the graph). Every bundle and
    option is checked before anything is measured.
    """
    from edgebert.bench import bench_many, check_options, format_table

    check_options(threads=threads, runs=runs, warmup=warmup, seq_len=seq_len, xnnpack=not no_xnnpack,
                  runtime=runtime, inputs_file=inputs_file, weight_cache=weight_cache, soak=soak, per_text=per_text)
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout must be a positive number of seconds, got {timeout:g}")
    if json_out is not None:
        _check_json_target(json_out)
    with _BundleProgress() as progress:
        results = bench_many(bundles, progress=progress, timeout=timeout, threads=threads, runs=runs,
                             warmup=warmup, seq_len=seq_len, xnnpack=not no_xnnpack, runtime=runtime,
                             inputs_file=inputs_file, weight_cache=weight_cache, soak=soak, per_text=per_text)
    click.echo(format_table(results))
    if json_out is not None:
        write_json_atomically(json_out, results)
    failed = [result for result in results["results"] if "error" in result]
    if failed:
        click.echo(f"error: {len(failed)} of {len(results['results'])} benchmarks failed "
                   f"(first: {failed[0]['bundle']['name']}: {failed[0]['error']})", err=True)
        sys.exit(1)


def _stdin_lines() -> list[str]:
    data = click.get_binary_stream("stdin").read()
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise UsageError(f"stdin is not UTF-8 (bad byte at offset {error.start})") from None
    lines = [line.rstrip("\r") for line in text.split("\n")]
    lines = [line for line in lines if line.strip()]
    if not lines:
        raise UsageError("no text on stdin (pass TEXT arguments, or one text per line on stdin)")
    return lines


def _pairs(texts: list[str]) -> list[tuple[str, str]]:
    pairs = []
    for index, text in enumerate(texts, start=1):
        fields = text.split("\t")
        if len(fields) != 2 or not all(field.strip() for field in fields):
            raise UsageError(f"text {index} is not 'first<TAB>second': {text[:60]!r}")
        pairs.append((fields[0].strip(), fields[1].strip()))
    return pairs


@click.command("predict")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("texts", nargs=-1, metavar="[TEXT]...")
@click.option("--pair", is_flag=True, help="Each text is a sentence pair: first<TAB>second.")
@click.option("--json", "as_json", is_flag=True,
              help="Print a JSON list: label probabilities (and logits, from an older bundle that gives them), "
                   "or the full embedding vectors.")
@click.option("--threads", default=None, type=int, help="Interpreter threads (default: the runtime's choice).")
@click.option("--timeout", default=None, type=float,
              help="Seconds allowed for loading and running the model before it is stopped (default: no limit).")
def predict(bundle, texts, pair, as_json, threads, timeout):
    """Run BUNDLE on each TEXT (or on each line of stdin when no TEXT, or '-', is given).

    A classifier bundle prints `label (p=0.93)  text`; an encoder bundle prints the pooled embedding's
    size, norm and first values: `dim=128 |v|=5.1234 [v0, v1, v2, v3 ...]  text`. The model runs in a
    child process, so a damaged model that crashes the interpreter is one error line.
    """
    from edgebert.bundle import read_bundle
    from edgebert.isolated import run as run_isolated
    from edgebert.predict import check_texts, describe

    _check_timeout(timeout)
    lines = _stdin_lines() if not texts or list(texts) == ["-"] else list(texts)
    inputs = check_texts(_pairs(lines) if pair else lines)
    checked = read_bundle(bundle)  # the files, in this process: a bad one is refused before the model runs
    results = run_isolated("predict", {"bundle": str(bundle), "texts": inputs, "threads": threads},
                           model_path=checked.model_path, timeout=timeout)
    if as_json:
        click.echo(json.dumps(results, indent=2))
        return
    for result in results:
        click.echo(describe(result))


def _check_timeout(timeout: float | None) -> None:
    if timeout is not None and not timeout > 0:
        raise UsageError(f"--timeout must be a positive number of seconds, got {timeout:g}")


def _text_lines(path: Path) -> list[str]:
    """The non-empty lines of a UTF-8 text file, or a one-line error naming it."""
    from edgebert.errors import SourceError

    try:
        text = path.read_bytes().decode("utf-8-sig")
    except FileNotFoundError:
        raise SourceError("not found (--texts takes a file with one text per line)", path) from None
    except IsADirectoryError:
        raise SourceError("is a directory (--texts takes a file with one text per line)", path) from None
    except UnicodeDecodeError as error:
        raise SourceError(f"is not UTF-8 (bad byte at offset {error.start})", path) from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise SourceError("has no text (one text per line)", path)
    return lines


@click.command("rank")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.argument("query")
@click.option("--texts", "texts_file", required=True, type=click.Path(path_type=Path), metavar="FILE",
              help="The texts to rank, one per line (UTF-8).")
@click.option("--top", type=int, default=None, help="Print only the N most similar texts.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {score, text}, most similar first.")
@click.option("--threads", default=None, type=int, help="Interpreter threads (default: the runtime's choice).")
@click.option("--timeout", default=None, type=float,
              help="Seconds allowed for loading and running the model before it is stopped (default: no limit).")
def rank(bundle, query, texts_file, top, as_json, threads, timeout):
    """Rank the texts of FILE by the cosine of their sentence embedding to QUERY's (semantic search).

    BUNDLE must be a sentence-embedding bundle (a sentence-transformers model converted with `edgebert
    convert`). Prints `score  text`, most similar first. Runs on the device, without TensorFlow. The model
    runs in a child process, as for predict.
    """
    from edgebert.predict import describe_ranking, rank as run_rank

    if top is not None and top < 1:
        raise UsageError(f"--top must be at least 1, got {top}")
    _check_timeout(timeout)
    ranked = run_rank(bundle, query, _text_lines(texts_file), threads=threads, isolated=True, timeout=timeout)[:top]
    if as_json:
        click.echo(json.dumps([{"score": score, "text": text} for score, text in ranked], indent=2))
        return
    for score, text in ranked:
        click.echo(describe_ranking(score, text))


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
@click.option("--timeout", default=None, type=float,
              help="Seconds allowed for the whole evaluation before the model is stopped (default: no limit).")
def evaluate(bundle, task_file, limit, text_columns, label_column, threads, as_json, timeout):
    """Score a classifier BUNDLE's model.tflite on a labelled task file (accuracy, F1, Matthews).

    Each example is tokenized with the bundle's own tokenizer at its sequence length and run through the
    device's TFLite interpreter; the most probable label is scored with the task's GLUE metrics. Needs
    only the device-side install (no TensorFlow). The model runs in a child process, so a damaged model
    that crashes the interpreter is one error line.
    """
    from edgebert.bundle import read_bundle
    from edgebert.evaluate import describe, load_eval_task, parse_column, parse_columns, predictions_sha256
    from edgebert.isolated import run as run_isolated

    if threads is not None and threads < 1:
        raise UsageError(f"--threads must be at least 1, got {threads}")
    if limit is not None and limit < 1:
        raise UsageError(f"--limit must be a positive integer, got {limit}")
    _check_timeout(timeout)
    columns, label = parse_columns(text_columns), parse_column(label_column)
    load_eval_task(task_file, text_columns=columns, label_column=label)  # a bad file fails here, at once
    checked = read_bundle(bundle)
    with _ExampleProgress() as progress:
        result = run_isolated("evaluate", {"bundle": str(bundle), "task": str(task_file), "text_columns": columns,
                                           "label_column": label, "limit": limit, "threads": threads},
                              model_path=checked.model_path, timeout=timeout, progress=progress)
    if as_json:
        click.echo(json.dumps({**result, "predictions_sha256": predictions_sha256(result["predictions"])}, indent=2))
        return
    click.echo(describe(result))
