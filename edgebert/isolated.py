"""Run the native part of a command in a child process, so that a bundle from elsewhere cannot take the
command down with it.

A damaged or hostile model.tflite whose manifest was re-sealed to match (so the size and sha256 checks of
edgebert.bundle pass) can make the native TFLite interpreter crash (SIGSEGV, SIGABRT, SIGBUS) or loop.
`edgebert predict`, `rank` and `evaluate` (and edgebert.predict's functions given `isolated=True`) therefore
load and run the model in `python -m edgebert.isolated`
(`edgebert bench` already measures each bundle in a worker of its own): the parent reads the bundle's files
(pure Python, every failure a one-line error), starts the child with the job as JSON on its stdin, relays
its progress, and turns every way the child can end into the command's usual one line:

- a library error (BundleError, UsageError, ...) -> the same message and exit code;
- killed by a signal -> `<model.tflite>: the TFLite interpreter crashed on this model (SIGSEGV, ...`, exit 1;
- still running after `timeout` seconds -> killed (with its process group), `... timed out after N s`;
- any other failure -> `... the worker failed: <its last line>`.

Ctrl-C in the parent kills the child too. The child writes its protocol lines (JSON, one per line:
{"progress": [done, total]}, then {"result": ...} or {"error": {...}}) to a private copy of its stdout;
whatever native code prints goes to its stderr, which the parent keeps for the message.
"""
from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from edgebert.errors import BundleError, EdgebertError


class ChildError(EdgebertError):
    """An error the child reported: its one-line message, with its exit code."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


# --- the jobs the child runs ----------------------------------------------------------------------------

def _predict_module():
    """edgebert.predict, looked up by name: it calls back into this module (`isolated=True`), and the
    layering contracts forbid an import cycle, so the child side names it as the CLI's table does."""
    import importlib

    return importlib.import_module("edgebert.predict")


def _predict_job(bundle: str, texts: list, threads=None, runtime: str = "auto", progress=None):
    predict = _predict_module().predict
    texts = [tuple(text) if isinstance(text, list) else text for text in texts]  # pairs arrive as lists
    return predict(bundle, texts, threads=threads, runtime=runtime)


def _rank_job(bundle: str, query: str, texts: list, threads=None, runtime: str = "auto", progress=None):
    rank = _predict_module().rank
    return [[score, text] for score, text in rank(bundle, query, texts, threads=threads, runtime=runtime)]


def _embed_job(bundle: str, texts: list, threads=None, runtime: str = "auto", progress=None):
    embed = _predict_module().embed
    return embed(bundle, texts, threads=threads, runtime=runtime).tolist()


def _evaluate_job(bundle: str, task: str, text_columns=None, label_column=None, limit=None, threads=None,
                  progress=None):
    from edgebert.evaluate import evaluate_bundle, load_eval_task

    task_data = load_eval_task(task, text_columns=None if text_columns is None else tuple(text_columns),
                               label_column=label_column)
    return evaluate_bundle(bundle, task_data, limit=limit, progress=progress, num_threads=threads)


def _golden_outputs_job(bundle: str, threads=None, progress=None) -> list[dict]:
    """The model's outputs for each golden.json example's ids, {"outputs": {name: values}}, or {"error": "..."}
    for an example whose ids are malformed or that the model fails on (for device_tests)."""
    import numpy as np

    from edgebert.bundle import GOLDEN_FILE, read_bundle
    from edgebert.interpreter import TFLiteModel

    checked = read_bundle(bundle)
    examples = checked.golden.get("examples") or []
    if not isinstance(examples, list):
        raise BundleError(f"examples is {type(examples).__name__}, not a list", checked.path / GOLDEN_FILE)
    model = TFLiteModel(checked.model_path, num_threads=threads)
    results = []
    for example in examples:
        try:
            feed = {name: np.asarray([example[name]], dtype=np.int32)
                    for name in ("input_ids", "attention_mask", "token_type_ids")}
            results.append({"outputs": {name: np.asarray(value).tolist() for name, value in model(**feed).items()}})
        except (EdgebertError, KeyError, TypeError, ValueError, OverflowError) as error:
            results.append({"error": " ".join(str(error).split())[:300] or type(error).__name__})
    return results


JOBS: dict[str, Callable] = {"predict": _predict_job, "rank": _rank_job, "embed": _embed_job, "evaluate": _evaluate_job,
                             "golden_outputs": _golden_outputs_job}


# --- the parent -----------------------------------------------------------------------------------------

def _child_env() -> dict:
    """This process's environment, with this edgebert's checkout first on the child's path."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def _signal_name(returncode: int) -> str:
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def run(job: str, arguments: dict, *, model_path: str | os.PathLike, timeout: float | None = None,
        progress: Callable[[int, int], None] | None = None, python: str | None = None):
    """Run JOBS[job](**arguments) in a child process and return its (JSON) result; see the module
    docstring for what each way of ending becomes. `model_path` is the file named when the child crashes
    or hangs."""
    if job not in JOBS:
        raise ValueError(f"unknown job {job!r}")
    request = json.dumps({"job": job, "arguments": arguments, "progress": progress is not None})
    process = subprocess.Popen([python or sys.executable, "-m", "edgebert.isolated"], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_child_env(),
                               start_new_session=True)
    lines: queue.Queue = queue.Queue()
    stderr: list[bytes] = []
    readers = [threading.Thread(target=lambda: [lines.put(line) for line in process.stdout] + [lines.put(None)],
                                daemon=True),
               threading.Thread(target=lambda: stderr.extend(process.stderr), daemon=True)]
    for reader in readers:
        reader.start()
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        try:
            process.stdin.write(request.encode("utf-8"))
            process.stdin.close()
        except BrokenPipeError:  # the child is already gone: its exit status says why
            pass
        reply = None
        while True:
            try:
                line = lines.get(timeout=None if deadline is None else max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                raise BundleError(f"timed out after {timeout:g} s (the interpreter was stopped; a damaged model "
                                  "can make it loop)", model_path) from None
            if line is None:
                break
            try:
                message = json.loads(line)
            except ValueError:
                continue
            if isinstance(message, dict) and "progress" in message and progress is not None:
                progress(*message["progress"])
            elif isinstance(message, dict) and ("result" in message or "error" in message):
                reply = message
        remaining = None if deadline is None else max(0.1, deadline - time.monotonic())
        try:
            process.wait(timeout=remaining)
        except subprocess.TimeoutExpired:
            raise BundleError(f"timed out after {timeout:g} s", model_path) from None
    finally:
        if process.poll() is None:  # a timeout, Ctrl-C, or any error here: never leave the child running
            try:
                os.killpg(process.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
            process.wait()
        for reader in readers:
            reader.join(timeout=5)
    if reply is not None and "error" in reply:
        error = reply["error"]
        raise ChildError(str(error.get("message") or "unknown error"), int(error.get("exit_code") or 1))
    if process.returncode < 0:
        raise BundleError(f"the TFLite interpreter crashed on this model ({_signal_name(process.returncode)}, in a "
                          "child process): a damaged model, or a fault of this runtime", model_path)
    if reply is None or process.returncode != 0:
        why = _last_line(b"".join(stderr).decode("utf-8", "replace")) or "no output"
        raise ChildError(f"{model_path}: the worker failed (exit {process.returncode}): {why}", 1)
    return reply["result"]


# --- the child: python -m edgebert.isolated < request ----------------------------------------------------

def _child() -> int:
    sys.stdout.flush()
    channel = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)  # native libraries that print to stdout must not break the protocol

    def send(message: dict) -> None:
        channel.write(json.dumps(message) + "\n")
        channel.flush()

    request = json.loads(sys.stdin.read())
    arguments = dict(request["arguments"])
    if request.get("progress"):
        arguments["progress"] = lambda done, total: send({"progress": [done, total]})
    try:
        result = JOBS[request["job"]](**arguments)
    except EdgebertError as error:
        send({"error": {"message": str(error), "exit_code": error.exit_code}})
        return 0
    except Exception as error:  # noqa: BLE001 - a bug: reported in one line, the traceback on stderr
        import traceback

        traceback.print_exc()
        first = str(error).strip().splitlines()[0] if str(error).strip() else ""
        send({"error": {"message": f"internal error: {type(error).__name__}: {first}", "exit_code": 1}})
        return 0
    send({"result": result})
    return 0


if __name__ == "__main__":
    sys.exit(_child())
