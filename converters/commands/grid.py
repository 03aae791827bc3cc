"""`edgebert grid`: the BERT Miniatures' fine-tuning protocol over variants x tasks (converters.grid), on
this machine or on a Ray cluster; TensorFlow (and Ray) are imported when the command runs."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from converters.commands import converters_or_exit
from edgebert.cli import float_list, int_list, say
from edgebert.errors import UsageError


@click.command()
@click.option("--variants", "variant_names", default=None,
              help="'all' or a comma-separated list of names (tiny,mini,small,medium,L-6_H-256,...).")
@click.option("--models", "model_paths", default=None, metavar="PATH[,PATH...]",
              help="Also (or instead) run the grid on these checkpoints: any BERT-architecture model (Hugging Face or "
                   "sentence-transformers folder, Google checkpoint); listed beside the miniatures' table.")
@click.option("--tasks", "task_names", default="SST-2,CoLA,MRPC", show_default=True,
              help="Comma-separated task folders under --data.")
@click.option("--data", "data_dir", required=True, type=click.Path(path_type=Path),
              help="GLUE's layout: DATA/<task>/train.tsv and dev.tsv.")
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path),
              help="Grid directory (checkpoints, runs, bundles, grid.json, results.json, table.md); a rerun resumes it.")
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Run each search's trials on a Ray cluster: auto, HOST:PORT of its head, or local.")
@click.option("--cpus-per-trial", default=1, show_default=True, help="With --ray: CPUs each trial asks Ray for.")
@click.option("--storage", default=None, metavar="PATH|URI",
              help="With --ray: where Ray Tune keeps results and checkpoints (default: beside each cell's runs).")
@click.option("--batch-sizes", default="8,16,32,64,128", show_default=True, help="The search's batch sizes.")
@click.option("--learning-rates", default="3e-4,1e-4,5e-5,3e-5", show_default=True,
              help="The search's peak learning rates.")
@click.option("--epochs", default=4, show_default=True, help="Epochs per run (early stopping on dev).")
@click.option("--patience", default=2, show_default=True, help="Stop a run after this many epochs without dev improvement.")
@click.option("--max-seq-len", default=128, show_default=True, help="Sequence length for training and the bundles.")
@click.option("--max-train-examples", type=int, default=None, help="Train on a random subset (quick runs).")
@click.option("--seed", default=0, show_default=True)
@click.option("--teacher", default=None, metavar="PATH",
              help="Distil every cell from this classifier checkpoint (or .npy of logits); {task} in it stands for "
                   "the task's name, e.g. teachers/{task}.")
@click.option("--recipe", default=None, metavar="NAME|FILE",
              help="Export each cell's best run through this recipe (e.g. structured-50) instead of plain dynamic int8.")
@click.option("--checkpoints", type=click.Path(path_type=Path), default=None,
              help="Directory with real checkpoints as <google name>/ or <google name>.zip.")
@click.option("--download", is_flag=True, help="Fetch real checkpoints that are neither given nor cached.")
@click.option("--threads", default=1, show_default=True, help="Threads for each bundle's benchmark.")
@click.option("--runs", default=30, show_default=True, help="Timed benchmark runs per cell.")
@click.option("--restart", is_flag=True, help="Redo every cell, dropping its runs (also those with other inputs).")
def grid(variant_names, model_paths, task_names, data_dir, out_dir, ray_address, cpus_per_trial, storage, batch_sizes,
         learning_rates, epochs, patience, max_seq_len, max_train_examples, seed, teacher, recipe, checkpoints,
         download, threads, runs, restart):
    """Fine-tune each variant on each task over the BERT Miniatures' grid, export the best to int8, score and time it.

    For each (variant or model, task): the 20-run search (batch 8-128 x learning rate 3e-4-3e-5, 4 epochs, early
    stopping on dev), the best run on dev converted to dynamic int8 (or --recipe), scored from its
    .tflite on dev and benchmarked. Writes grid.json, results.json (`edgebert report OUT`) and table.md,
    the paper's table. With --ray the runs are Ray Tune trials; a rerun resumes either way.
    """
    from edgebert.variants import parse_variant_list

    if not variant_names and not model_paths:
        raise UsageError("give --variants, --models, or both")
    variants = parse_variant_list(variant_names) if variant_names else []
    models = tuple(Path(path.strip()) for path in (model_paths or "").split(",") if path.strip())
    tasks = tuple(name.strip() for name in task_names.split(",") if name.strip())
    sizes, rates = int_list(batch_sizes, "--batch-sizes"), float_list(learning_rates, "--learning-rates")
    if (storage or cpus_per_trial != 1) and not ray_address:
        raise UsageError("--storage and --cpus-per-trial go with --ray")
    if ray_address:
        from converters.distributed import parse_address

        parse_address(ray_address)
    converters_or_exit()
    from converters.commands.train import epoch_progress
    from converters.finetune import FinetuneOptions
    from converters.grid import TABLE_FILE, GridPlan, run_grid

    options = FinetuneOptions(epochs=epochs, patience=patience, max_seq_len=max_seq_len,
                              max_train_examples=max_train_examples, seed=seed)
    plan = GridPlan(variants=tuple(variants), models=models, tasks=tasks, data=data_dir, options=options, batch_sizes=tuple(sizes),
                    learning_rates=tuple(rates), teacher=teacher, recipe=recipe, checkpoints=checkpoints,
                    download=download, threads=threads, runs=runs)
    run_trials = None
    if ray_address:
        from converters.distributed import connect, tune_trials

        connect(ray_address, say)
        run_trials = tune_trials(storage=storage, cpus_per_trial=cpus_per_trial, log=say)
    result = run_grid(plan, out_dir, log=say, run_trials=run_trials, restart=restart, progress=epoch_progress(say))
    click.echo((out_dir / TABLE_FILE).read_text(encoding="utf-8"))
    failed = [cell for cell in result["cells"] if cell["status"] != "ok"]
    click.echo(f"{len(result['cells'])} cells, {len(failed)} failed; results in {out_dir / 'grid.json'}")
    if failed:
        sys.exit(1)
