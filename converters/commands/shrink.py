"""`edgebert prune` and `edgebert trim-vocab`: smaller models from a checkpoint, as thin commands over
converters.structured and converters.vocab_trim. The converter (and TensorFlow) is imported when a
command runs; this module imports only click and edgebert.
"""
from __future__ import annotations

from pathlib import Path

import click

from converters.commands import converters_or_exit
from edgebert.cli import ProgressBar, say
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
              help="Checkpoint directory to write, in the source's format (Hugging Face's for a Hugging Face "
                   "source, else Google's layout).")
@click.option("--force", is_flag=True, help="Replace DIR if it exists.")
def prune(source, task_file, heads_fraction, ffn_fraction, drop_layers, examples, seq_len, out_dir, force):
    """Remove a classifier's least important attention heads, FFN neurons and whole layers.

    Unlike sparsity, this makes the dense matrices smaller, which is what makes TFLite faster. SOURCE
    must have a classifier head for the task in TRAIN.tsv (fine-tune first with `edgebert finetune`).
    Importance is first-order Taylor (|sum of weight x gradient| per head and neuron) of the task loss
    on the training examples; every layer loses the same fraction. The result is a checkpoint
    directory at DIR: fine-tune it to recover accuracy (`edgebert finetune DIR --task TRAIN.tsv ...`),
    then `edgebert convert` it. Its config (bert_config.json, or config.json for a Hugging Face source)
    records the per-layer shapes.
    """
    heads = _fraction(heads_fraction, "--heads")
    ffn = _fraction(ffn_fraction, "--ffn")
    if heads == 0 and ffn == 0 and drop_layers == 0:
        raise UsageError("nothing to prune: give --heads, --ffn or --drop-layers")
    from edgebert.bundle import output_lock
    click.get_current_context().with_resource(output_lock(out_dir))  # held until the command ends: one writer
    converters_or_exit()
    from converters.structured import prune_to_directory

    pruned, record = prune_to_directory(source, task_file, out_dir, heads_fraction=heads, ffn_fraction=ffn,
                                        drop_layers=drop_layers, max_examples=examples, seq_len=seq_len,
                                        force=force, log=say)
    config = pruned.config
    layers = range(config.num_layers)
    removed = f", removed layers {_counts(record['removed_layers'])}" if record["removed_layers"] else ""
    click.echo(f"{out_dir}: heads per layer {_counts(config.heads_in(n) for n in layers)}, "
               f"FFN neurons per layer {_counts(config.intermediate_in(n) for n in layers)}{removed}, "
               f"parameters {record['parameters_before']:,} -> {record['parameters_after']:,}")


def summary_line(out_dir: Path, report: dict) -> str:
    """The one stdout line: vocab rows, int8 embedding bytes, corpus coverage, texts re-segmented."""
    corpus = report["corpus"]
    return (f"{out_dir}  vocab {report['original_vocab_size']:,} -> {report['vocab_size']:,} tokens; "
            f"int8 embedding {report['embedding_int8_bytes_before']:,} -> {report['embedding_int8_bytes_after']:,} "
            f"bytes; corpus coverage {corpus['coverage']:.2%}; {corpus['texts_retokenized_differently']:,} of "
            f"{corpus['texts']:,} texts re-segmented"
            + ("; every label kept" if "kept_predictions" in report else ""))


@click.command("trim-vocab")
@click.argument("source")
@click.option("--corpus", "corpus_files", multiple=True, required=True, type=click.Path(path_type=Path),
              metavar="FILE", help="Task text: a GLUE-style TSV (texts only, labels ignored) or a .txt with one "
                                   "sentence per line. Repeat for several files.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Checkpoint directory to write, in the source's format (Hugging Face's for a Hugging Face "
                   "source, else Google's layout); `edgebert convert` takes it.")
@click.option("--max-tokens", type=int, default=None,
              help="Keep at most N vocab rows: specials and characters first, then the corpus's most "
                   "frequent pieces; rarer pieces are dropped and their words re-segmented.")
@click.option("--min-count", type=int, default=1, show_default=True,
              help="Keep only corpus pieces used at least K times.")
@click.option("--keep-characters", type=click.Choice(["all", "ascii", "none"]), default="all", show_default=True,
              help="Which single characters (and ##characters) to keep so unseen words still split "
                   "instead of becoming [UNK].")
@click.option("--keep-predictions", is_flag=True,
              help="For a fine-tuned classifier with --max-tokens or --min-count: keep every corpus text's "
                   "predicted label, giving back the dropped pieces whose loss changes one and dropping the "
                   "next rarest instead (a few rounds; checked with the float model).")
@click.option("--seq-len", type=int, default=128, show_default=True,
              help="With --keep-predictions: the sequence length the labels are checked at (the bundle's).")
@click.option("--force", is_flag=True, help="Replace DIR if it exists.")
def trim_vocab(source, corpus_files, out_dir, max_tokens, min_count, keep_characters, keep_predictions, seq_len,
               force):
    """Trim SOURCE's vocabulary (and embedding rows) to the pieces a task's corpus uses.

    Writes the smaller checkpoint to DIR, with a vocab-trim record that `edgebert convert` carries into
    the bundle's manifest. Without --max-tokens (and with --min-count 1) the corpus tokenizes exactly as
    before, so the converted model gives the same outputs on it; --max-tokens trades coverage for size,
    and --keep-predictions keeps a classifier's labels on the corpus within that budget.
    """
    from edgebert.bundle import check_output_dir, output_lock
    check_output_dir(out_dir, force)  # before minutes of work
    click.get_current_context().with_resource(output_lock(out_dir))  # held until the command ends: one writer
    if keep_predictions and seq_len < 3:
        raise click.UsageError(f"--seq-len must be at least 3 ([CLS], a piece, [SEP]), got {seq_len}")
    converters_or_exit()
    from converters.sources import load_source
    from converters.vocab_trim import load_corpus, trim_keeping_predictions, trim_vocabulary, write_trimmed

    texts = load_corpus(corpus_files)  # read first: a bad file fails at once
    say(f"read {len(texts):,} texts from {len(corpus_files)} corpus file(s)")
    say(f"reading {source}")
    with ProgressBar(f"downloading {source}") as progress:
        loaded = load_source(source, fetch_progress=progress)
    say(f"trimming the vocabulary of {loaded.config.vocab_size:,} tokens")
    options = {"keep_min_count": min_count, "keep_characters": keep_characters, "max_tokens": max_tokens}
    if keep_predictions:
        from converters.finetune import label_predictor

        if not loaded.num_labels:
            raise UsageError("has no classifier head: --keep-predictions needs a fine-tuned classifier "
                             "(edgebert finetune makes one)", loaded.path)
        trimmed, report = trim_keeping_predictions(loaded, texts, label_predictor(seq_len), log=say, **options)
    else:
        trimmed, report = trim_vocabulary(loaded, texts, **options)
    say(f"writing {out_dir}")
    write_trimmed(trimmed, report, out_dir, force=force)
    click.echo(summary_line(out_dir, report))
