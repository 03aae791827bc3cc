"""The `edgebert` command: one click group whose commands are loaded from a table when they run.

Each command parses its options, calls one library function and prints; library errors become one
line on stderr and a non-zero exit, never a traceback. `COMMANDS` names each command's module and its
one-line help, so `edgebert --help` lists them all without importing any (click's "lazily loading
subcommands" pattern). The device's commands live in this package, one module per family; the
converter's live beside the converter, in `converters/commands/`, and import TensorFlow only when
they run. Nothing here imports `converters`: the table names its modules as strings.

The helpers below are the few that every command shares.
"""
from __future__ import annotations

import importlib
import sys

import click

from edgebert import __version__
from edgebert.errors import EdgebertError, UsageError

CONVERT_EXTRA = "pip install 'edgebert[convert]'"

# name -> ("module:function", one-line help), in the order `edgebert --help` and the README list them.
# The help must be the command's own first sentence: tests/test_cli.py compares the two.
COMMANDS = {
    "variants": ("edgebert.cli.catalog:variants",
                 "List the 24 BERT Miniatures: shapes, parameters, sizes and names."),
    "fetch": ("edgebert.cli.catalog:fetch",
              "Download Google's checkpoint zip for NAME (e.g. bert-mini) into the cache and extract it safely."),
    "random-checkpoint": ("converters.commands.convert:random_checkpoint",
                          "Write a random-weight checkpoint of VARIANT in Google's exact layout (for tests and "
                          "demos)."),
    "convert": ("converters.commands.convert:convert", "Convert SOURCE into a validated TFLite bundle at DIR."),
    "recipes": ("converters.commands.convert:recipes",
                "List the shipped recipes for `edgebert convert --recipe NAME` (their TOML files are in "
                "converters/recipes/; copy one to make your own)."),
    "demo": ("converters.commands.convert:demo",
             "Offline, end to end: a random BERT-Tiny-shaped checkpoint in Google's layout, converted in each of "
             "--modes (all four by default), validated against the float model, run by the interpreter, and "
             "summarised in a table."),
    "bench": ("edgebert.cli.inference:bench",
              "Measure each BUNDLE's latency, load time and memory, each in its own fresh process."),
    "predict": ("edgebert.cli.inference:predict",
                "Run BUNDLE on each TEXT (or on each line of stdin when no TEXT, or '-', is given)."),
    "rank": ("edgebert.cli.inference:rank",
             "Rank the texts of FILE by the cosine of their sentence embedding to QUERY's (semantic search)."),
    "inspect": ("edgebert.cli.inspection:inspect",
                "Show a model's TFLite metadata, packed files, signatures, inputs, outputs and operators."),
    "evaluate": ("edgebert.cli.inference:evaluate",
                 "Score a classifier BUNDLE's model.tflite on a labelled task file (accuracy, F1, Matthews)."),
    "sweep": ("converters.commands.sweep:sweep",
              "Convert, validate and benchmark every variant x mode x thread count, one variant in memory at a "
              "time."),
    "report": ("edgebert.cli.report:report", "Write report.md and a self-contained report.html for the sweep in DIR."),
    "deploy": ("edgebert.cli.deploy:deploy",
               "Copy BUNDLEs to a device over ssh or adb, benchmark them there and run the device tests there."),
    "finetune": ("converters.commands.train:finetune",
                 "Fine-tune SOURCE on a GLUE-style task and write the best epoch as a checkpoint."),
    "grid": ("converters.commands.grid:grid",
             "Fine-tune each variant on each task over the BERT Miniatures' grid, export the best to int8, score and "
             "time it."),
    "prune": ("converters.commands.shrink:prune",
              "Remove a classifier's least important attention heads, FFN neurons and whole layers."),
    "trim-vocab": ("converters.commands.shrink:trim_vocab",
                   "Trim SOURCE's vocabulary (and embedding rows) to the pieces a task's corpus uses."),
    "export-mediapipe": ("converters.commands.mediapipe:export_mediapipe",
                         "Write BUNDLE's model as a .tflite that MediaPipe Tasks' TextClassifier or TextEmbedder "
                         "runs with no app code."),
}


class _OneLineError(click.ClickException):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None):
        click.echo(f"error: {self.message}", err=True)


class _LazyGroup(click.Group):
    """Loads a command's module only when that command runs (or shows its own help), and turns library
    errors into `error: <file>: <problem>` with the error's exit code."""

    def list_commands(self, ctx):
        return list(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module_name, function = COMMANDS[name][0].split(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as error:
            if not module_name.startswith("converters."):
                raise
            # A device install (or a copy of edgebert/ alone) has no converter: say which extra brings it.
            missing = (error.name or module_name).split(".")[0]
            raise UsageError(f"this command needs the converter ({missing} is missing): {CONVERT_EXTRA}") from None
        return getattr(module, function)

    def format_commands(self, ctx, formatter):
        """The command list from the table's help, as click would shorten it, without importing a command."""
        limit = formatter.width - 6 - max(len(name) for name in COMMANDS)
        rows = [(name, click.utils.make_default_short_help(help_text, limit))
                for name, (_, help_text) in COMMANDS.items()]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgebertError as error:
            raise _OneLineError(str(error), error.exit_code) from None
        except KeyboardInterrupt:  # Ctrl-C: the shell's convention, 128 + SIGINT; outputs are atomic
            raise _OneLineError("interrupted", 130) from None


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgebert")
def cli():
    """edgebert: BERT Miniatures from checkpoint to validated TFLite bundles for phones and Pis."""


def main():
    cli(prog_name="edgebert")


# --- shared by the commands ----------------------------------------------------------------------------

def say(message: str) -> None:
    """Progress and notes go to stderr; stdout keeps the command's result."""
    click.echo(message, err=True)


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{option} must be comma-separated whole numbers, got {text!r}") from None
    if not values:
        raise UsageError(f"{option} names no value")
    return values


def float_list(text: str, option: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{option} must be comma-separated numbers, got {text!r}") from None
    if not values:
        raise UsageError(f"{option} names no value")
    return values


class ProgressBar:
    """A click progress bar on stderr that starts when the first counts arrive (the total is known then)."""

    def __init__(self, label: str):
        self.label, self.bar, self.shown = label, None, 0

    def __call__(self, done: int, total: int | None):
        if self.bar is None:
            self.bar = click.progressbar(length=total or 0, label=self.label, file=sys.stderr,
                                         show_pos=total is None)
            self.bar.__enter__()
        self.bar.update(done - self.shown)
        self.shown = done

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.__exit__(*exc)


if __name__ == "__main__":
    main()
