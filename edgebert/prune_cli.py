"""The `edgebert prune` command: a thin layer over converters.structured.

Imported by `edgebert.cli` at start-up, so it imports only click at module level; the converter (and
TensorFlow) is imported when the command runs. Library errors become one `error: ...` line through the
group in edgebert.cli.
"""
from __future__ import annotations

from pathlib import Path

import click

from edgebert.errors import UsageError


def _fraction(text: str, option: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise UsageError(f"{option} must be a fraction in [0, 1) such as 0.5, got {text!r}") from None
    if not 0.0 <= value < 1.0:  # also rejects nan and inf
        raise UsageError(f"{option} must be a fraction in [0, 1) such as 0.5, got {text!r}")
    return value


def _counts(values) -> str:
    return ",".join(str(v) for v in values)


@click.command("prune")
@click.argument("source")
@click.option("--task", "task_file", required=True, type=click.Path(path_type=Path), metavar="TRAIN.tsv",
              help="The task's labelled training TSV (GLUE-style, as `edgebert finetune` reads), on which "
                   "importance is measured.")
@click.option("--heads", "heads_fraction", default="0", show_default=True, metavar="FRACTION",
              help="Fraction of each layer's attention heads to remove, in [0, 1) (each layer keeps at least one).")
@click.option("--ffn", "ffn_fraction", default="0", show_default=True, metavar="FRACTION",
              help="Fraction of each layer's FFN neurons to remove, in [0, 1); the kept count is rounded up "
                   "to a multiple of 8.")
@click.option("--drop-layers", default=0, show_default=True,
              help="Also remove this many whole layers, those with the lowest importance.")
@click.option("--examples", default=2048, show_default=True,
              help="At most this many training examples to measure importance on (a fixed random subset).")
@click.option("--seq-len", type=int, default=None,
              help="Sequence length the examples are cut to (default: 128, or the model's positions if fewer).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path), metavar="DIR",
              help="Checkpoint directory to write (Google layout).")
@click.option("--force", is_flag=True, help="Replace DIR if it exists.")
def prune(source, task_file, heads_fraction, ffn_fraction, drop_layers, examples, seq_len, out_dir, force):
    """Remove a classifier's least important attention heads, FFN neurons and whole layers.

    Unlike sparsity, this makes the dense matrices smaller, which is what makes TFLite faster. SOURCE
    must have a classifier head for the task in TRAIN.tsv (fine-tune first with `edgebert finetune`).
    Importance is first-order Taylor (|sum of weight x gradient| per head and neuron) of the task loss
    on the training examples; every layer loses the same fraction. The result is a checkpoint
    directory at DIR: fine-tune it to recover accuracy (`edgebert finetune DIR --task TRAIN.tsv ...`),
    then `edgebert convert` it. Its bert_config.json records the per-layer shapes.
    """
    heads = _fraction(heads_fraction, "--heads")
    ffn = _fraction(ffn_fraction, "--ffn")
    if heads == 0 and ffn == 0 and drop_layers == 0:
        raise UsageError("nothing to prune: give --heads, --ffn or --drop-layers")
    from edgebert.cli import _converters_or_exit, _say

    _converters_or_exit()
    from converters.structured import prune_to_directory

    pruned, record = prune_to_directory(source, task_file, out_dir, heads_fraction=heads, ffn_fraction=ffn,
                                        drop_layers=drop_layers, max_examples=examples, seq_len=seq_len,
                                        force=force, log=_say)
    config = pruned.config
    layers = range(config.num_layers)
    removed = f", removed layers {_counts(record['removed_layers'])}" if record["removed_layers"] else ""
    click.echo(f"{out_dir}: heads per layer {_counts(config.heads_in(n) for n in layers)}, "
               f"FFN neurons per layer {_counts(config.intermediate_in(n) for n in layers)}{removed}, "
               f"parameters {record['parameters_before']:,} -> {record['parameters_after']:,}")
