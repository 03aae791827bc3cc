"""report.html: one self-contained page (inline CSS, plots as base64 PNG data URIs)."""
from __future__ import annotations

import html

from edgebert.report.figures import plot_sections
from edgebert.report.model import accuracy_sets
from edgebert.report.tables import TITLE, Table, build_grid_tables, device_facts, long_table, pareto_table, report_notes


def _html_table(table: Table, css: str = "", caption: bool = True) -> str:
    esc = html.escape
    head = "".join(f'<th class="{"num" if n else ""}">{esc(h)}</th>' for h, n in zip(table.headers, table.numeric))
    body = []
    for r, row in enumerate(table.rows):
        tds = []
        for i, value in enumerate(row):
            names = " ".join(filter(None, ["num" if table.numeric[i] else "",
                                           table.classes[r][i] if table.classes else ""]))
            tag = "th" if css == "grid" and i == 0 else "td"
            tds.append(f'<{tag} class="{names}">{esc(value)}</{tag}>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    title = f"<caption>{esc(table.title)}</caption>" if caption else ""
    return f'<table class="{css}">{title}<thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'



CSS = """
:root { color-scheme: light; }
body { font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif;
       color: #1f2328; background: #f6f8fa; margin: 0; }
main { max-width: 1280px; margin: 0 auto; padding: 24px 28px 48px; background: #fff; }
h1 { font-size: 26px; margin: 0 0 12px; }
h2 { font-size: 20px; margin: 32px 0 12px; padding-bottom: 4px; border-bottom: 1px solid #d0d7de; }
.facts { border-collapse: collapse; margin: 8px 0 16px; }
.facts th { text-align: left; padding: 2px 16px 2px 0; color: #57606a; font-weight: 600; }
.facts td { padding: 2px 0; }
.note { background: #fff8c5; border: 1px solid #d4a72c; border-radius: 6px; padding: 8px 12px; margin: 8px 0; }
.figs { display: grid; grid-template-columns: repeat(auto-fill, minmax(520px, 1fr)); gap: 18px; }
figure { margin: 0; padding: 10px; border: 1px solid #d0d7de; border-radius: 8px; background: #fff; }
figure img { display: block; width: 100%; height: auto; }
figure.wide { grid-column: 1 / -1; }
figure.wide img { max-width: 920px; margin: 0 auto; }
figcaption { font-size: 13px; color: #57606a; margin-top: 6px; }
.tables { display: grid; grid-template-columns: repeat(auto-fill, minmax(380px, 1fr)); gap: 18px; }
table.data, table.grid { border-collapse: collapse; font-size: 13px; }
caption { text-align: left; font-weight: 600; padding: 4px 0; }
table.data th, table.data td, table.grid th, table.grid td { border: 1px solid #d0d7de; padding: 3px 8px; }
thead th { background: #f0f3f6; text-align: left; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
td.na { background: #eeeeee; color: #6e7781; }
td.failed, th.failed { background: #fde8e6; color: #8b1a12; }
.scroll { overflow-x: auto; }
table.long { font-size: 12.5px; }
table.long td { white-space: nowrap; padding: 3px 6px; }
table.long thead th { padding: 3px 6px; vertical-align: bottom; }
table.long td:last-child { white-space: normal; min-width: 180px; }
""".strip()


def render_html(sweep: dict, sections: list | None = None) -> str:
    """The page; `sections` are `plot_sections(cells)` when the caller already has them."""
    cells, esc = sweep["cells"], html.escape
    if sections is None:
        sections = plot_sections(cells)  # first: a missing matplotlib fails before anything else happens
    facts = "".join(f"<tr><th>{esc(k)}</th><td>{esc(v)}</td></tr>" for k, v in device_facts(sweep))
    notes = "".join(f'<p class="note"><strong>note:</strong> {esc(n)}</p>' for n in report_notes(cells, heat_maps=True))
    parts = [f"<h1>{TITLE}</h1>", f'<table class="facts">{facts}</table>', notes]
    for title, figures, wide in sections:
        parts.append(f"<h2>{esc(title)}</h2><div class=\"figs\">")
        for caption, png in figures:
            parts.append(f'<figure class="{"wide" if wide else ""}"><img alt="{esc(caption)}" src="data:image/png;base64,{png}">'
                         f"<figcaption>{esc(caption)}</figcaption></figure>")
        parts.append("</div>")
    grid_tables = build_grid_tables(cells)
    if grid_tables:
        parts.append('<h2>Over the L × H grid</h2><div class="tables">')
        parts += [_html_table(t, "grid") for t in grid_tables]
        parts.append("</div>")
    for task, metric in accuracy_sets(cells):
        table = pareto_table(cells, task, metric)
        parts.append(f"<h2>{esc(table.title)}</h2>" + _html_table(table, "data", caption=False))
    long = long_table(cells)
    parts.append(f'<h2>{esc(long.title)}</h2><div class="scroll">{_html_table(long, "data long", caption=False)}</div>')
    body = "\n".join(parts)
    return (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
            f"<title>{TITLE}: {esc(sweep['path'].parent.name or str(sweep['path']))}</title>\n"
            f"<style>\n{CSS}\n</style>\n</head>\n<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n")

