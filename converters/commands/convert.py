"""`edgebert random-checkpoint`, `convert`, `recipes` and `demo`: from a checkpoint to a bundle.

Thin commands over converters.pipeline, converters.recipes and converters.demo. This module imports
only click and edgebert at module level; the converter (and TensorFlow) is imported when a command
runs, after `converters_or_exit` has checked that it is installed.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

from converters.commands import converters_or_exit
from edgebert.cli import ProgressBar, say
from edgebert.errors import UsageError

# tests/test_arm64.py: tflite-runtime 2.14's int8 FULLY_CONNECTED kernels crash with 2 to ~24 input rows on
# a CPU with the dot-product extension (emulated Cortex-A76); a bundle's rows are its tokens.
SHORTEST_SAFE_COMPAT_LEN = 32


@click.command("random-checkpoint")
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
    converters_or_exit()
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


@click.command()
@click.argument("source")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), help="Bundle directory to write.")
@click.option("--quantize", default="dynamic-int8", show_default=True,
              help="float32, float16, dynamic-int8, int8 (full integer, calibrated on real text) or dynamic-int4 "
                   "(int4 weights per channel, int8 activations at run time; by ai-edge-quantizer).")
@click.option("--mixed-precision", type=click.Choice(["on", "off"]), default="on", show_default=True,
              help="When an export misses its mode's validation thresholds, raise the precision of the fewest, most "
                   "sensitive layers (int4 -> int8 -> float32) until it passes (dynamic-int8, dynamic-int4; for "
                   "int8, the dense layers keep int8 activations and every other op runs float32). off: refuse "
                   "such an export.")
@click.option("--mixed-precision-budget", type=float, default=None, metavar="SHARE",
              help="Largest share of the layers' weights (at float32 size) the search may keep in float32 "
                   "(default 0.25); if no mix within it passes, nothing is written.")
@click.option("--equalize", type=click.Choice(["auto", "off", "rotate"]), default="auto", show_default=True,
              help="auto: a dynamic-int8 or dynamic-int4 export that misses its thresholds is made again with "
                   "outlier equalization (smoothing, value rotation, GPTQ; same float function, less quantization "
                   "error) before the mixed-precision search raises any layer. rotate: always equalize, rotating "
                   "the dense layers' inputs at run time instead of smoothing them: closer to float, about a "
                   "fifth slower on MiniLM. off: never.")
@click.option("--seq-len", default="128", show_default=True,
              help="Fixed sequence length, 'dynamic', or comma-separated lengths (e.g. 16,32,64,128): length "
                   "buckets, one signature per length in one model.tflite sharing the weights; each text runs "
                   "at the shortest that holds it, the longest is serving_default.")
@click.option("--last-layer", type=click.Choice(["auto", "cls", "full"]), default="auto", show_default=True,
              help="cls: compute the last layer for the [CLS] row alone (same outputs, less work), for outputs "
                   "that read nothing else (a classifier, CLS pooling); auto does so wherever it can; full never.")
@click.option("--head", type=click.Choice(["auto", "encoder", "classifier", "sentence-embedding"]), default="auto",
              show_default=True, help="auto: classifier when the checkpoint has one, the sentence embedding for a "
                                      "sentence-transformers folder, else encoder.")
@click.option("--compat", default=None, help="tflite-runtime-2.14: a dynamic-int8 model old runtimes load.")
@click.option("--calibration", "calibration_file", type=click.Path(path_type=Path), default=None,
              help="Calibration text, one sentence per line, for int8 and for outlier equalization's smoothing "
                   "and GPTQ (default: samples/).")
@click.option("--validation", "validation_file", type=click.Path(path_type=Path), default=None, metavar="PATH",
              help="Text to validate the export on, one per line (up to 256; default: 32 texts of samples/): "
                   "the thresholds, and the mixed-precision search, then hold for text like yours, such as "
                   "a search's short queries. Outlier equalization calibrates on other text.")
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
                   "(edgebert recipes) or a .toml file. --quantize/--seq-len/--compat/--last-layer given here override it.")
@click.option("--task", "task_file", type=click.Path(path_type=Path), default=None, metavar="TRAIN.tsv",
              help="With --recipe: the training data for its fine-tuning and pruning steps.")
@click.option("--dev", "dev_file", type=click.Path(path_type=Path), default=None, metavar="DEV.tsv",
              help="With --recipe: early stopping, and the bundle's evaluation (as --eval).")
@click.option("--corpus", "corpus_files", multiple=True, type=click.Path(path_type=Path),
              help="With --recipe: text for vocabulary trimming (default: the --task texts). Repeatable.")
@click.option("--keep-work", is_flag=True, help="With --recipe: keep DIR.recipe-work (each step's checkpoint).")
@click.option("--force", is_flag=True, help="Replace DIR if it exists.")
@click.pass_context
def convert(ctx, source, out_dir, quantize, mixed_precision, mixed_precision_budget, equalize, seq_len, last_layer, head, compat,
            calibration_file, validation_file, labels, lowercase, eval_file,
            eval_text_columns, eval_label_column, recipe, task_file, dev_file, corpus_files, keep_work, force):
    """Convert SOURCE into a validated TFLite bundle at DIR.

    SOURCE is a Google checkpoint directory or zip, a Hugging Face directory (config.json +
    model.safetensors), or a variant name such as bert-mini (fetched into the cache). With --recipe,
    the recipe's steps run first (resumable: rerun the same command after an interruption).
    """
    converters_or_exit()
    from converters.export import Compat, QuantizeMode
    from converters.pipeline import ConvertOptions, convert as run_convert, describe_validation, parse_seq_lens
    from edgebert.evaluate import describe as describe_evaluation, parse_column, parse_columns
    from edgebert.bundle import output_lock

    ctx.with_resource(output_lock(out_dir))  # held until the command ends: one writer per output at a time

    precision = {"mixed_precision": mixed_precision == "on" if given(ctx, "mixed_precision") else None,
                 "mixed_precision_budget": mixed_precision_budget}
    common = dict(head=head, calibration_file=calibration_file, validation_file=validation_file,
                  labels=tuple(labels.split(",")) if labels else (), lowercase=lowercase, force=force,
                  eval_file=eval_file, equalize=equalize != "off", rotate=equalize == "rotate",
                  eval_text_columns=parse_columns(eval_text_columns), eval_label_column=parse_column(eval_label_column))
    if recipe is None:
        if task_file or dev_file or corpus_files or keep_work:
            raise UsageError("--task, --dev, --corpus and --keep-work go with --recipe")
        longest, buckets = parse_seq_lens(seq_len)
        options = ConvertOptions(quantize=QuantizeMode.parse(quantize), seq_len=longest, buckets=buckets,
                                 last_layer=last_layer, compat=Compat.parse(compat), **{k: v for k, v in precision.items() if v is not None},
                                 **common)
        with ProgressBar(f"downloading {source}") as progress:
            result = run_convert(source, out_dir, options, log=say, fetch_progress=progress)
    else:
        from converters.commands.train import epoch_progress
        from converters.recipes import RecipeInputs, convert_options, load_recipe, run_recipe

        chosen_recipe = load_recipe(recipe)
        chosen = {name: value if given(ctx, name) else None
                  for name, value in (("quantize", quantize), ("seq_len", seq_len), ("compat", compat),
                                      ("last_layer", last_layer))}
        chosen.update(precision)
        options = convert_options(chosen_recipe, chosen, **common)
        inputs = RecipeInputs(task=task_file, dev=dev_file, corpus=tuple(corpus_files))
        say(f"recipe {chosen_recipe.summary()}")
        with ProgressBar(f"downloading {source}") as progress:
            result = run_recipe(chosen_recipe, source, out_dir, inputs, options, log=say,
                                progress=epoch_progress(say), fetch_progress=progress, keep_work=keep_work)
    manifest = result.manifest
    if options.compat is not None and (options.seq_len is None or options.seq_len < SHORTEST_SAFE_COMPAT_LEN):
        say(f"note: tflite-runtime 2.14 crashed on fewer than {SHORTEST_SAFE_COMPAT_LEN} tokens on an emulated "
            "Cortex-A76 (Raspberry Pi 5); there, use --seq-len 32 or more, or ai-edge-litert (README: Raspberry Pi)")
    unused = manifest["source"]["unused_variables"]
    if unused:
        say(f"note: {len(unused)} checkpoint variables not used by the export "
             f"(e.g. {', '.join(unused[:2])}); listed in manifest.json")
    say(f"validated: {describe_validation(manifest)}")
    if "evaluation" in manifest:
        say(f"evaluated: {describe_evaluation(manifest['evaluation'])}")
    click.echo(f"{out_dir}  ({manifest['sizes']['model_bytes']:,} bytes, {manifest['recipe']['quantize']}, "
               f"{result.seconds:.1f} s)")


def given(ctx, name: str) -> bool:
    """Whether the command line set this option (a recipe's value wins over an option's default)."""
    return ctx.get_parameter_source(name) is not click.core.ParameterSource.DEFAULT


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the recipes as JSON.")
def recipes(as_json):
    """List the shipped recipes for `edgebert convert --recipe NAME` (their TOML files are in
    converters/recipes/; copy one to make your own)."""
    converters_or_exit()
    from converters.recipes import shipped_recipes

    found = shipped_recipes()
    if as_json:
        click.echo(json.dumps([{"name": r.name, "description": r.description, "path": str(r.path),
                                "steps": [{"kind": s.kind, **s.options} for s in r.steps], "convert": r.convert}
                               for r in found], indent=2))
        return
    for recipe in found:
        click.echo(f"{recipe.summary()}\n    {recipe.description}")


@click.command()
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
    converters_or_exit()
    from converters.demo import format_table, run_demo
    from converters.export import QuantizeMode

    chosen = [QuantizeMode.parse(part.strip()) for part in modes.split(",") if part.strip()]
    if not chosen:
        raise UsageError(f"--modes names no quantization mode (choose from {', '.join(m.value for m in QuantizeMode)})")
    rows = run_demo(out_dir, variant, modes=tuple(dict.fromkeys(chosen)), runs=runs, log=say)
    click.echo(format_table(rows))
    click.echo(f"\nbundles in {out_dir}/ (random weights: the figures show fidelity and speed, not accuracy)")
