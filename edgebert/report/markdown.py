"""report.md: the tables and notes as GitHub-flavoured Markdown."""
from __future__ import annotations

from edgebert.report.model import accuracy_sets
from edgebert.report.tables import TITLE, Table, build_grid_tables, device_facts, long_table, pareto_table, report_notes


def _markdown_cell(text: str) -> str:
    return text.replace("|", "\\|")


def _markdown_table(table: Table) -> str:
    lines = ["| " + " | ".join(_markdown_cell(h) for h in table.headers) + " |",
             "|" + "|".join("---:" if n else "---" for n in table.numeric) + "|"]
    lines += ["| " + " | ".join(_markdown_cell(v) for v in row) + " |" for row in table.rows]
    return "\n".join(lines)



def render_markdown(sweep: dict) -> str:
    cells = sweep["cells"]
    out = [f"# {TITLE}", "", "| fact | value |", "|---|---|"]
    out += [f"| {_markdown_cell(k)} | {_markdown_cell(v)} |" for k, v in device_facts(sweep)]
    out.append("")
    out += [f"> **note:** {note}" + "\n" for note in report_notes(cells)]
    grid_tables = build_grid_tables(cells)
    if grid_tables:
        out += ["## Over the L × H grid", ""]
        for table in grid_tables:
            out += [f"### {table.title}", "", _markdown_table(table), ""]
    for task, metric in accuracy_sets(cells):
        table = pareto_table(cells, task, metric)
        out += [f"## {table.title}", "", _markdown_table(table), ""]
    long = long_table(cells)
    out += [f"## {long.title}", "", _markdown_table(long), ""]
    return "\n".join(out)

