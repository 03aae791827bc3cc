"""The `edgebert` command: a thin layer over the library. Each command parses its options, calls one
library function and prints. Errors from the library become one line and a non-zero exit.

Converter commands import `converters` (and so TensorFlow) lazily, inside the command, so the device
side (variants, fetch) starts fast and runs where TensorFlow is not installed.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from edgebert import __version__
from edgebert.errors import EdgebertError, UsageError


class _OneLineError(click.ClickException):
    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file=None):
        click.echo(f"error: {self.message}", err=True)


class _Group(click.Group):
    """Turns library errors into `error: <file>: <problem>` and the error's exit code."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except EdgebertError as error:
            raise _OneLineError(str(error), error.exit_code) from None


def _converters_or_exit():
    """Import the converter, or explain the [convert] extra in one line."""
    try:
        import converters.tf_import  # noqa: F401
    except ImportError as error:
        raise UsageError(f"this command needs the converter ({error.name} is missing): "
                         "pip install 'edgebert[convert]'") from None


def _say(message: str) -> None:
    click.echo(message, err=True)


def _mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgebert")
def cli():
    """edgebert: BERT Miniatures from checkpoint to validated TFLite bundles for phones and Pis."""


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the catalog as JSON (with download URLs).")
@click.option("--urls", is_flag=True, help="Show each variant's download URL in the table.")
def variants(as_json, urls):
    """List the 24 BERT Miniatures: shapes, parameters, sizes and names."""
    from edgebert.variants import ALL_VARIANTS

    records = [{"name": v.name, "short_name": v.short_name, "nickname": v.nickname, "layers": v.layers,
                "hidden": v.hidden, "heads": v.heads, "intermediate": v.intermediate,
                "parameters": v.encoder_parameters, "float32_bytes": v.float32_bytes,
                "int8_bytes_estimate": v.int8_bytes, "url": v.url} for v in ALL_VARIANTS]
    if as_json:
        click.echo(json.dumps(records, indent=2))
        return
    header = f"{'name':<24}{'nickname':<9}{'L':>3}{'H':>5}{'A':>4}{'params':>13}{'float32':>11}{'int8 (est.)':>13}"
    click.echo(header + ("  url" if urls else ""))
    for r in records:
        line = (f"{r['name']:<24}{r['nickname'] or '':<9}{r['layers']:>3}{r['hidden']:>5}{r['heads']:>4}"
                f"{r['parameters']:>13,}{_mb(r['float32_bytes']):>11}{_mb(r['int8_bytes_estimate']):>13}")
        click.echo(line + (f"  {r['url']}" if urls else ""))


@cli.command()
@click.argument("name")
@click.option("--cache-dir", type=click.Path(path_type=Path), default=None,
              help="Where checkpoints are kept (default: $EDGEBERT_CACHE or ~/.cache/edgebert).")
@click.option("--force", is_flag=True, help="Download again even if the checkpoint is cached.")
def fetch(name, cache_dir, force):
    """Download Google's checkpoint zip for NAME (e.g. bert-mini) into the cache and extract it safely.

    Resumes an interrupted download. Prints the checkpoint directory, which `edgebert convert` takes.
    """
    from edgebert.fetch import fetch_checkpoint
    from edgebert.variants import parse_variant

    variant = parse_variant(name)
    with _ProgressBar(f"downloading {variant.name}.zip") as progress:
        directory = fetch_checkpoint(variant, cache_dir=cache_dir, progress=progress, force=force)
    click.echo(str(directory))


class _ProgressBar:
    """A click progress bar that starts when the first byte counts arrive (the total is known then)."""

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


@cli.command("random-checkpoint")
@click.argument("variant")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Directory to write.")
@click.option("--seed", default=0, show_default=True, help="Random seed for the weights.")
@click.option("--vocab", "vocab_file", type=click.Path(path_type=Path), default=None,
              help="vocab.txt to ship (default: a synthetic vocab laid out like BERT's uncased one).")
@click.option("--num-labels", default=0, show_default=True,
              help="Add a run_classifier head (output_weights/output_bias) with this many labels.")
@click.option("--force", is_flag=True, help="Replace DIR if it exists.")
def random_checkpoint(variant, out_dir, seed, vocab_file, num_labels, force):
    """Write a random-weight checkpoint of VARIANT in Google's exact layout (for tests and demos)."""
    from edgebert.variants import parse_variant

    parsed = parse_variant(variant)
    _converters_or_exit()
    from converters.config import BertConfig
    from converters.google_checkpoint import write_random_checkpoint
    from converters.vocab import synthetic_vocab
    from edgebert.tokenizer import read_vocab

    vocab = read_vocab(vocab_file) if vocab_file else synthetic_vocab()
    config = BertConfig.from_variant(parsed, vocab_size=len(vocab))
    if num_labels < 0:
        raise UsageError(f"--num-labels must be 0 or more, got {num_labels}")
    write_random_checkpoint(config, out_dir, vocab, seed=seed, num_labels=num_labels, force=force)
    click.echo(str(out_dir))


@cli.command()
@click.argument("source")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Bundle directory to write.")
@click.option("--quantize", default="dynamic-int8", show_default=True,
              help="float32, float16, dynamic-int8 or int8 (full integer, calibrated on real text).")
@click.option("--seq-len", default="128", show_default=True, help="Fixed sequence length, or 'dynamic'.")
@click.option("--head", type=click.Choice(["auto", "encoder", "classifier"]), default="auto", show_default=True,
              help="auto: classifier when the checkpoint has one, else encoder.")
@click.option("--compat", default=None, help="tflite-runtime-2.14: a dynamic-int8 model old runtimes load.")
@click.option("--calibration", "calibration_file", type=click.Path(path_type=Path), default=None,
              help="int8 calibration text, one sentence per line (default: samples/).")
@click.option("--labels", default=None, help="Comma-separated label names for a classifier.")
@click.option("--uncased/--cased", "lowercase", default=None,
              help="Override the casing inferred from the checkpoint.")
@click.option("--eval", "eval_file", type=click.Path(path_type=Path), default=None, metavar="DEV.tsv",
              help="Score the exported model.tflite on this labelled GLUE-style TSV; the metrics go into "
                   "the manifest (\"evaluation\").")
@click.option("--eval-text-columns", default=None, metavar="COLUMNS",
              help="--eval's text column(s): a name or 0-based index, two comma-separated for pairs "
                   "(default: detected).")
@click.option("--eval-label-column", default=None, metavar="COLUMN",
              help="--eval's label column, a name or 0-based index (default: detected).")
@click.option("--recipe", default=None, metavar="NAME|FILE",
              help="Run a recipe's steps (fine-tune, prune, trim) before the export: a shipped name "
                   "(edgebert recipes) or a .toml file. --quantize/--seq-len/--compat given here override it.")
@click.option("--task", "task_file", type=click.Path(path_type=Path), default=None, metavar="TRAIN.tsv",
              help="With --recipe: the training data for its fine-tuning and pruning steps.")
@click.option("--dev", "dev_file", type=click.Path(path_type=Path), default=None, metavar="DEV.tsv",
              help="With --recipe: early stopping, and the bundle's evaluation (as --eval).")
@click.option("--corpus", "corpus_files", multiple=True, type=click.Path(path_type=Path),
              help="With --recipe: text for vocabulary trimming (default: the --task texts). Repeatable.")
@click.option("--keep-work", is_flag=True, help="With --recipe: keep DIR.recipe-work (each step's checkpoint).")
@click.option("--force", is_flag=True, help="Replace DIR if it exists.")
@click.pass_context
def convert(ctx, source, out_dir, quantize, seq_len, head, compat, calibration_file, labels, lowercase, eval_file,
            eval_text_columns, eval_label_column, recipe, task_file, dev_file, corpus_files, keep_work, force):
    """Convert SOURCE into a validated TFLite bundle at DIR.

    SOURCE is a Google checkpoint directory or zip, a Hugging Face directory (config.json +
    model.safetensors), or a variant name such as bert-mini (fetched into the cache). With --recipe,
    the recipe's steps run first (resumable: rerun the same command after an interruption).
    """
    _converters_or_exit()
    from converters.export import Compat, QuantizeMode
    from edgebert.evaluate import describe as describe_evaluation, parse_column, parse_columns
    from converters.pipeline import ConvertOptions, convert as run_convert, describe_validation, parse_seq_len

    common = dict(head=head, calibration_file=calibration_file, labels=tuple(labels.split(",")) if labels else (),
                  lowercase=lowercase, force=force, eval_file=eval_file,
                  eval_text_columns=parse_columns(eval_text_columns), eval_label_column=parse_column(eval_label_column))
    if recipe is None:
        if task_file or dev_file or corpus_files or keep_work:
            raise UsageError("--task, --dev, --corpus and --keep-work go with --recipe")
        options = ConvertOptions(quantize=QuantizeMode.parse(quantize), seq_len=parse_seq_len(seq_len),
                                 compat=Compat.parse(compat), **common)
        with _ProgressBar(f"downloading {source}") as progress:
            result = run_convert(source, out_dir, options, log=_say, fetch_progress=progress)
    else:
        from converters.recipes import RecipeInputs, convert_options, load_recipe, run_recipe
        from edgebert.train_cli import epoch_progress

        chosen_recipe = load_recipe(recipe)
        given = lambda name: ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT  # noqa: E731
        chosen = {name: value if given(name) else None
                  for name, value in (("quantize", quantize), ("seq_len", seq_len), ("compat", compat))}
        options = convert_options(chosen_recipe, chosen, **common)
        inputs = RecipeInputs(task=task_file, dev=dev_file, corpus=tuple(corpus_files))
        _say(f"recipe {chosen_recipe.summary()}")
        with _ProgressBar(f"downloading {source}") as progress:
            result = run_recipe(chosen_recipe, source, out_dir, inputs, options, log=_say,
                                progress=epoch_progress(_say), fetch_progress=progress, keep_work=keep_work)
    manifest = result.manifest
    unused = manifest["source"]["unused_variables"]
    if unused:
        _say(f"note: {len(unused)} checkpoint variables not used by the export "
             f"(e.g. {', '.join(unused[:2])}); listed in manifest.json")
    _say(f"validated: {describe_validation(manifest)}")
    if "evaluation" in manifest:
        _say(f"evaluated: {describe_evaluation(manifest['evaluation'])}")
    click.echo(f"{out_dir}  ({manifest['sizes']['model_bytes']:,} bytes, {manifest['recipe']['quantize']}, "
               f"{result.seconds:.1f} s)")


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the recipes as JSON.")
def recipes(as_json):
    """List the shipped recipes for `edgebert convert --recipe NAME` (their TOML files are in
    converters/recipes/; copy one to make your own)."""
    _converters_or_exit()
    from converters.recipes import shipped_recipes

    found = shipped_recipes()
    if as_json:
        click.echo(json.dumps([{"name": r.name, "description": r.description, "path": str(r.path),
                                "steps": [{"kind": s.kind, **s.options} for s in r.steps], "convert": r.convert}
                               for r in found], indent=2))
        return
    for recipe in found:
        click.echo(f"{recipe.summary()}\n    {recipe.description}")


@cli.command()
@click.option("--out", "out_dir", default="edgebert-demo", show_default=True, type=click.Path(path_type=Path),
              help="Where the demo's bundles go (its own bundles there are replaced).")
@click.option("--variant", default="tiny", show_default=True, help="Shape of the random checkpoint.")
@click.option("--runs", default=50, show_default=True, help="Timed runs per bundle.")
@click.option("--modes", default="float32,float16,dynamic-int8,int8", show_default=True,
              help="Comma-separated quantization modes to convert and time.")
def demo(out_dir, variant, runs, modes):
    """Offline, end to end: a random BERT-Tiny-shaped checkpoint in Google's layout, converted in each
    of --modes (all four by default), validated against the float model, run by the interpreter, and
    summarised in a table."""
    if runs < 1:
        raise UsageError(f"--runs must be at least 1, got {runs}")
    _converters_or_exit()
    from converters.demo import format_table, run_demo
    from converters.export import QuantizeMode

    chosen = [QuantizeMode.parse(part.strip()) for part in modes.split(",") if part.strip()]
    if not chosen:
        raise UsageError(f"--modes names no quantization mode (choose from {', '.join(m.value for m in QuantizeMode)})")
    rows = run_demo(out_dir, variant, modes=tuple(dict.fromkeys(chosen)), runs=runs, log=_say)
    click.echo(format_table(rows))
    click.echo(f"\nbundles in {out_dir}/ (random weights: the figures show fidelity and speed, not accuracy)")


@cli.command()
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Sweep directory (checkpoints, bundles, per-cell results); a rerun resumes it.")
@click.option("--variants", "variant_names", default="all", show_default=True,
              help="'all' or a comma-separated list of names (tiny,mini,L-6_H-256,...).")
@click.option("--quantize", "modes", default="float32,dynamic-int8", show_default=True,
              help="Comma-separated quantization modes.")
@click.option("--threads", "thread_counts", default="1", show_default=True, help="Comma-separated thread counts.")
@click.option("--seq-len", default=128, show_default=True, help="Fixed sequence length of every bundle.")
@click.option("--runs", default=30, show_default=True, help="Timed runs per cell.")
@click.option("--warmup", default=5, show_default=True, help="Untimed warm-up runs per cell.")
@click.option("--checkpoints", type=click.Path(path_type=Path), default=None,
              help="Directory with real checkpoints as <google name>/ or <google name>.zip.")
@click.option("--download", is_flag=True, help="Fetch real checkpoints that are neither given nor cached.")
def sweep(out_dir, variant_names, modes, thread_counts, seq_len, runs, warmup, checkpoints, download):
    """Convert, validate and benchmark every variant x mode x thread count, one variant in memory at a time.

    Uses the real checkpoint when given (--checkpoints), cached (edgebert fetch) or --download; otherwise
    a random one in Google's layout, marked as such in the results. Interrupted or failed cells are
    redone on the next run; unchanged finished cells are skipped. Then `edgebert report DIR`.
    """
    from edgebert.variants import parse_variant_list

    variants = parse_variant_list(variant_names)
    threads = _int_list(thread_counts, "--threads")
    _converters_or_exit()
    from converters.export import QuantizeMode
    from converters.sweep import SweepPlan, run_sweep
    from edgebert.bench import format_table

    plan = SweepPlan(variants=tuple(variants), modes=tuple(QuantizeMode.parse(m.strip()) for m in modes.split(",")
                                                          if m.strip()),
                     threads=tuple(threads), seq_len=seq_len, runs=runs, warmup=warmup, checkpoints=checkpoints,
                     download=download)
    results = run_sweep(plan, out_dir, log=_say)
    click.echo(format_table(results))
    failed = sum(1 for result in results["results"] if "error" in result)
    click.echo(f"\n{len(results['results'])} cells, {failed} failed; results in {out_dir / 'results.json'}")
    if failed:
        sys.exit(1)


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"{option} must be comma-separated whole numbers, got {text!r}") from None
    if not values:
        raise UsageError(f"{option} names no value")
    return values


# Commands that live beside their library code. Their modules import nothing heavy at module level,
# so `edgebert --help` stays fast and TensorFlow-free.
from edgebert.report_cli import report  # noqa: E402
cli.add_command(report)
from edgebert.bench_cli import bench as _bench_command, predict as _predict_command  # noqa: E402
cli.add_command(_bench_command)
cli.add_command(_predict_command)
from edgebert.deploy_cli import deploy  # noqa: E402
cli.add_command(deploy)
from edgebert.prune_cli import prune  # noqa: E402
cli.add_command(prune)
from edgebert.trim_cli import trim_vocab  # noqa: E402
cli.add_command(trim_vocab)
from edgebert.evaluate_cli import evaluate  # noqa: E402
cli.add_command(evaluate)
from edgebert.train_cli import finetune  # noqa: E402
cli.add_command(finetune)
# (register new commands above this line)


def main():
    cli(prog_name="edgebert")


if __name__ == "__main__":
    main()
