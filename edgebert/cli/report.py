"""`edgebert report`: the report package (and through it matplotlib) is imported when the command runs."""
from __future__ import annotations

from pathlib import Path

import click


@click.command()
@click.argument("sweep", metavar="DIR", type=click.Path(path_type=Path))
@click.option("--out", "out_dir", type=click.Path(path_type=Path), default=None,
              help="Directory for report.md and report.html (default: DIR, or the results file's directory).")
@click.option("--figures", is_flag=True, help="Also write every plot as a PNG file under figures/ (for a README).")
def report(sweep, out_dir, figures):
    """Write report.md and a self-contained report.html for the sweep in DIR.

    DIR is a sweep directory (its results.json) or a bench results JSON file. The report has the device
    facts, p50 latency and model size over the L x H grid of the BERT Miniatures per quantize mode and
    thread count (tables and heat maps), latency against parameters, latency against accuracy with its
    Pareto frontier when the results carry accuracy figures, and a table of every cell with its errors.
    The HTML page embeds its plots and loads nothing from the network. Needs matplotlib:
    pip install 'edgebert[report]'.
    """
    from edgebert.report import build_report

    md_path, html_path = build_report(sweep, out_dir, figures=figures)
    click.echo(str(md_path))
    click.echo(str(html_path))
