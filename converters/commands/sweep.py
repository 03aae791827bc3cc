"""`edgebert sweep`: every variant x mode x thread count, converted, validated and benchmarked
(converters.sweep); TensorFlow is imported when the command runs."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from converters.commands import converters_or_exit
from edgebert.cli import int_list, say


@click.command()
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
@click.option("--ray", "ray_address", default=None, metavar="ADDRESS",
              help="Convert and measure each cell on a Ray cluster: auto, HOST:PORT of its head, or local.")
@click.option("--cpus-per-trial", type=int, default=None,
              help="With --ray: CPUs each cell asks Ray for (default and least: its thread count).")
def sweep(out_dir, variant_names, modes, thread_counts, seq_len, runs, warmup, checkpoints, download, ray_address,
          cpus_per_trial):
    """Convert, validate and benchmark every variant x mode x thread count, one variant in memory at a time.

    Uses the real checkpoint when given (--checkpoints), cached (edgebert fetch) or --download; otherwise
    a random one in Google's layout, marked as such in the results. Interrupted or failed cells are
    redone on the next run; unchanged finished cells are skipped. Then `edgebert report DIR`.
    With --ray each cell is a Ray task on the cluster; the files are the same either way.
    """
    from edgebert.errors import UsageError
    from edgebert.variants import parse_variant_list

    variants = parse_variant_list(variant_names)
    threads = int_list(thread_counts, "--threads")
    if cpus_per_trial is not None and not ray_address:
        raise UsageError("--cpus-per-trial goes with --ray")
    if ray_address:  # before TensorFlow's import: no cluster at the address fails in seconds
        from converters.distributed import connect

        connect(ray_address, say)
    converters_or_exit()
    from converters.export import QuantizeMode
    from converters.sweep import SweepPlan, run_sweep
    from edgebert.bench import format_table

    plan = SweepPlan(variants=tuple(variants), modes=tuple(QuantizeMode.parse(m.strip()) for m in modes.split(",")
                                                          if m.strip()),
                     threads=tuple(threads), seq_len=seq_len, runs=runs, warmup=warmup, checkpoints=checkpoints,
                     download=download)
    cells = None
    if ray_address:
        from converters.distributed import RayCells

        cells = RayCells(cpus_per_cell=cpus_per_trial, log=say)
    results = run_sweep(plan, out_dir, log=say, cells=cells)
    click.echo(format_table(results))
    failed = sum(1 for result in results["results"] if "error" in result)
    click.echo(f"\n{len(results['results'])} cells, {failed} failed; results in {out_dir / 'results.json'}")
    if failed:
        sys.exit(1)
