"""The `edgebert trim-vocab` command: a thin layer over converters.vocab_trim.

Imported by `edgebert.cli` at start-up, so it imports only click at module level: the converter (and
TensorFlow with it) is imported when the command runs. Library errors become one `error: ...` line
through the group in edgebert.cli.
"""
from __future__ import annotations

from pathlib import Path

import click


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
              help="Checkpoint directory to write (Google layout; `edgebert convert` takes it).")
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
    from edgebert.bundle import check_output_dir
    from edgebert.cli import _ProgressBar, _converters_or_exit, _say

    check_output_dir(out_dir, force)  # before minutes of work
    if keep_predictions and seq_len < 3:
        raise click.UsageError(f"--seq-len must be at least 3 ([CLS], a piece, [SEP]), got {seq_len}")
    _converters_or_exit()
    from converters.sources import load_source
    from converters.vocab_trim import load_corpus, trim_keeping_predictions, trim_vocabulary, write_trimmed

    texts = load_corpus(corpus_files)  # read first: a bad file fails at once
    _say(f"read {len(texts):,} texts from {len(corpus_files)} corpus file(s)")
    _say(f"reading {source}")
    with _ProgressBar(f"downloading {source}") as progress:
        loaded = load_source(source, fetch_progress=progress)
    _say(f"trimming the vocabulary of {loaded.config.vocab_size:,} tokens")
    options = {"keep_min_count": min_count, "keep_characters": keep_characters, "max_tokens": max_tokens}
    if keep_predictions:
        from converters.finetune import label_predictor
        from edgebert.errors import UsageError

        if not loaded.num_labels:
            raise UsageError("has no classifier head: --keep-predictions needs a fine-tuned classifier "
                             "(edgebert finetune makes one)", loaded.path)
        trimmed, report = trim_keeping_predictions(loaded, texts, label_predictor(seq_len), log=_say, **options)
    else:
        trimmed, report = trim_vocabulary(loaded, texts, **options)
    _say(f"writing {out_dir}")
    write_trimmed(trimmed, report, out_dir, force=force)
    click.echo(summary_line(out_dir, report))
