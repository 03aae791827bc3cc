"""`edgebert variants` and `edgebert fetch`: the catalog of the 24 miniatures, and Google's checkpoints."""
from __future__ import annotations

import json
from pathlib import Path

import click

from edgebert.cli import ProgressBar, mb


@click.command()
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
                f"{r['parameters']:>13,}{mb(r['float32_bytes']):>11}{mb(r['int8_bytes_estimate']):>13}")
        click.echo(line + (f"  {r['url']}" if urls else ""))


@click.command()
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
    with ProgressBar(f"downloading {variant.name}.zip") as progress:
        directory = fetch_checkpoint(variant, cache_dir=cache_dir, progress=progress, force=force)
    click.echo(str(directory))
