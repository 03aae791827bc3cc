"""`edgebert finetune`: the training side of the converter, as one command, and the per-epoch progress
that `convert --recipe` shows too. TensorFlow is imported when the command runs, never at module level."""
from __future__ import annotations

from pathlib import Path

import click

from converters.commands import converters_or_exit
from edgebert.cli import float_list, int_list, say
from edgebert.errors import UsageError


class _EpochBar:
    """One progress bar per epoch on stderr, showing the running loss."""

    def __init__(self):
        self.bar = None
        self.loss = None
        self.stream = click.get_text_stream("stderr")
        self.interactive = self.stream.isatty()

    def start(self, epoch: int, epochs: int, steps: int):
        self.label, self.steps = f"epoch {epoch}/{epochs}", steps
        self.bar = click.progressbar(length=steps, label=self.label, file=self.stream,
                                     item_show_func=lambda _: f"loss {self.loss:.4f}" if self.loss is not None else "")
        self.bar.__enter__()

    def step(self, step: int, loss: float):
        self.loss = loss
        self.bar.update(1)
        # A log file gets no bar (click draws none off a terminal), so a long epoch logs every 10 %.
        tenth = max(self.steps // 10, 1)
        if not self.interactive and self.steps >= 100 and step % tenth == 0 and step < self.steps:
            click.echo(f"{self.label}: {step}/{self.steps} steps, loss {loss:.4f}", err=True)

    def end(self, record: dict):
        self.bar.__exit__(None, None, None)
        parts = [f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}"]
        parts += [f"dev {name} {value:.4f}" for name, value in record.get("dev", {}).items()]
        if "sparsity" in record:
            parts.append(f"sparsity {record['sparsity']:.1%}")
        parts.append(f"{record['seconds']:.0f} s" + ("  (best so far)" if record["best"] else ""))
        click.echo(", ".join(parts), err=True)


def epoch_progress(log):
    """The trainer's Progress, drawn as _EpochBar does (also used by `convert --recipe`)."""
    from converters.finetune import Progress

    bar = _EpochBar()
    return Progress(on_epoch_start=bar.start, on_step=bar.step, on_epoch_end=bar.end, log=log)


@click.command()
@click.argument("source")
@click.option("--task", "train_file", required=True, type=click.Path(path_type=Path),
              help="Training TSV (GLUE layout: SST-2, CoLA, MRPC, or a header naming sentence/label columns).")
@click.option("--dev", "dev_file", type=click.Path(path_type=Path), default=None,
              help="Dev TSV: scored after every epoch; the best epoch is kept (early stopping).")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Checkpoint directory to write, in the source's format (Hugging Face's for a Hugging Face "
                   "source, else Google's layout); `edgebert convert` reads it.")
@click.option("--text-columns", default=None, help="Text column(s) by header name or 0-based index, "
              "comma-separated (two for sentence pairs). Default: detected from the header.")
@click.option("--label-column", default=None, help="Label column by header name or index. Default: detected.")
@click.option("--epochs", default=4, show_default=True, help="Passes over the training data.")
@click.option("--batch-size", default="32", show_default=True,
              help="Batch size; several, comma-separated, run a search (with --learning-rate).")
@click.option("--learning-rate", default="1e-4", show_default=True,
              help="Peak learning rate; several, comma-separated, run a search.")
@click.option("--search", is_flag=True,
              help="Search the BERT Miniatures' grid: batch sizes 8,16,32,64,128 x learning rates 3e-4,1e-4,5e-5,3e-5.")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Run the search's trials on a Ray cluster: auto, HOST:PORT of its head, or local (a Ray started "
                   "here). Needs the [distributed] extra.")
@click.option("--cpus-per-trial", default=1, show_default=True, help="With --ray: CPUs each trial asks Ray for.")
@click.option("--storage", default=None, metavar="PATH|URI",
              help="With --ray: where Ray Tune keeps the trials' results and checkpoints (a path, or a URI such as "
                   "s3://bucket/dir that every node reaches). Default: OUT.search/ray.")
@click.option("--warmup", default=0.1, show_default=True, help="Fraction of steps with a linear warm-up.")
@click.option("--weight-decay", default=0.01, show_default=True, help="AdamW weight decay (not on biases, LayerNorms).")
@click.option("--dropout", default=0.1, show_default=True, help="Dropout while training.")
@click.option("--max-seq-len", default=128, show_default=True, help="Longer texts are truncated.")
@click.option("--patience", default=2, show_default=True, help="Stop after this many epochs without dev improvement.")
@click.option("--seed", default=0, show_default=True)
@click.option("--max-train-examples", type=int, default=None, help="Train on a random subset (quick runs).")
@click.option("--teacher", type=click.Path(path_type=Path), default=None,
              help="Distil from a classifier checkpoint fine-tuned on this task, or an .npy of its logits "
                   "(one row per training example).")
@click.option("--temperature", default=2.0, show_default=True, help="Distillation temperature.")
@click.option("--distill-weight", default=0.5, show_default=True,
              help="Weight of the teacher's soft loss (the rest is on the labels).")
@click.option("--prune", "prune_sparsity", type=float, default=None,
              help="Magnitude-prune the encoder's dense kernels to this sparsity while training (e.g. 0.5).")
@click.option("--prune-pattern", default="unstructured", show_default=True,
              help="unstructured, 2:4 (or any N:M; implies its sparsity) or block:RxC, e.g. block:1x4.")
@click.option("--prune-begin", default=0.0, show_default=True, help="Fraction of training when pruning starts.")
@click.option("--prune-end", default=0.7, show_default=True,
              help="Fraction of training when the target sparsity is reached (the rest recovers).")
@click.option("--prune-frequency", type=int, default=None, help="Steps between mask updates (default: ~20 updates).")
@click.option("--new-head", is_flag=True, help="Replace a classifier head trained for another task.")
@click.option("--work-dir", type=click.Path(path_type=Path), default=None,
              help="Per-epoch checkpoints, for resume (default: OUT.work beside OUT; removed when done).")
@click.option("--restart", is_flag=True,
              help="Ignore an interrupted run in the work directory (a search: OUT.search) and start over.")
@click.option("--force", is_flag=True, help="Replace OUT if it exists.")
def finetune(source, train_file, dev_file, out_dir, text_columns, label_column, epochs, batch_size,
             learning_rate, search, ray_address, cpus_per_trial, storage, warmup, weight_decay, dropout, max_seq_len,
             patience, seed, max_train_examples,
             teacher, temperature, distill_weight, prune_sparsity, prune_pattern, prune_begin, prune_end,
             prune_frequency, new_head, work_dir, restart, force):
    """Fine-tune SOURCE on a GLUE-style task and write the best epoch as a checkpoint.

    The standard BERT recipe: AdamW, linear warm-up then decay, 4 epochs, early stopping on --dev. A
    checkpoint is saved every epoch; rerun the same command after an interruption to resume. Add
    --teacher to distil, --prune to magnitude-prune. Then: edgebert convert OUT --out BUNDLE.
    """
    from edgebert.bundle import check_output_dir, output_lock
    check_output_dir(out_dir, force)  # before minutes of training (the library checks the rest before it too)
    # Held until the command ends: one writer per output (its OUT.work and OUT.search too) at a time.
    click.get_current_context().with_resource(output_lock(out_dir))
    if ray_address:
        from converters.distributed import parse_address

        parse_address(ray_address)
    elif storage or cpus_per_trial != 1:
        raise UsageError("--storage and --cpus-per-trial go with --ray")
    converters_or_exit()
    from converters.finetune import (MINIATURES_BATCH_SIZES, MINIATURES_LEARNING_RATES, FinetuneOptions,
                                     finetune as run_finetune, search as run_search)
    from converters.pruning import PruningSpec
    from converters.sources import load_source
    from edgebert.tasks import load_task

    columns = {"text_columns": [_column(c) for c in text_columns.split(",")] if text_columns else None,
               "label_column": _column(label_column) if label_column else None}
    train = load_task(train_file, **columns)
    dev = load_task(dev_file, **columns) if dev_file else None
    batch_sizes = list(MINIATURES_BATCH_SIZES) if search else int_list(batch_size, "--batch-size")
    learning_rates = list(MINIATURES_LEARNING_RATES) if search else float_list(learning_rate, "--learning-rate")
    pruning = None
    if prune_sparsity is not None or prune_pattern != "unstructured":
        schedule = {"begin": prune_begin, "end": prune_end, "frequency": prune_frequency}
        pruning = PruningSpec.parse(prune_sparsity, prune_pattern, **schedule)
    options = FinetuneOptions(epochs=epochs, batch_size=batch_sizes[0], learning_rate=learning_rates[0],
                              warmup=warmup, weight_decay=weight_decay, dropout=dropout, max_seq_len=max_seq_len,
                              patience=patience, seed=seed, max_train_examples=max_train_examples,
                              teacher=teacher, temperature=temperature, distill_weight=distill_weight,
                              pruning=pruning, new_head=new_head)
    if (ray_address or storage) and len(batch_sizes) * len(learning_rates) == 1:
        raise UsageError("--ray and --storage run a search's trials: add --search, or several --batch-size or "
                         "--learning-rate values")
    say(f"reading {source}")
    model_source = load_source(source)
    progress = epoch_progress(say)
    if len(batch_sizes) * len(learning_rates) > 1:
        if work_dir:
            raise UsageError("--work-dir applies to one run; a search keeps its runs in OUT.search")
        run_trials = None
        if ray_address:
            from converters.distributed import connect, tune_trials

            connect(ray_address, say)
            run_trials = tune_trials(storage=storage, cpus_per_trial=cpus_per_trial, log=say)
        result = run_search(model_source, train, dev, out_dir, options, batch_sizes, learning_rates,
                            progress=progress, force=force, restart=restart, run_trials=run_trials)
    else:
        result = run_finetune(model_source, train, dev, out_dir, options, work_dir=work_dir, progress=progress,
                              force=force, restart=restart)
    record = result.record
    scores = ", ".join(f"dev {name} {value:.4f}" for name, value in result.best_metrics.items()) or "no dev set"
    pruned = ""
    if record.get("pruning"):
        pruned = f", sparsity {record['pruning']['measured']['overall']:.1%}"
    click.echo(f"{out_dir}  (best epoch {record['best_epoch']} of {len(record['epochs'])}, {scores}{pruned}, "
               f"{record['seconds']:.0f} s)")


def _column(text: str):
    text = text.strip()
    return int(text) if text.isdigit() else text
