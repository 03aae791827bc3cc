"""The report's plots: heat maps over the L x H grid, latency against parameters, and latency against
accuracy with its Pareto frontier. matplotlib's object API with the Agg canvas (no pyplot, no global
backend switch), imported only when a report is built."""
from __future__ import annotations

import base64
import io
import math

from edgebert.errors import UsageError
from edgebert.report.model import (
    FAILED,
    FAILED_COLOR,
    MISSING_COLOR,
    NA,
    RANDOM_NOTE,
    Cell,
    accuracy_points,
    accuracy_sets,
    axes,
    grid_values,
    group_label,
    groups,
    in_group,
    modes,
    pareto,
    size_cells,
    threads_text,
)

# --- plots ---------------------------------------------------------------------------------------------

def _matplotlib():
    try:
        import matplotlib  # noqa: F401
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise UsageError(f"the HTML report needs matplotlib ({error.name or 'matplotlib'} is missing): "
                         "pip install 'edgebert[report]'") from None
    return Figure, FigureCanvasAgg


def _png(figure, canvas_class) -> str:
    canvas_class(figure)
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight", metadata={"Software": None})
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _log_scale(axis, suffix: str = "", scale: float = 1.0) -> None:
    """Label a log axis with plain numbers (1, 10, 100; 2 and 5 in between), not powers of ten."""
    from matplotlib.ticker import FuncFormatter

    def major(value, _):
        return f"{value / scale:g}{suffix}"

    def minor(value, _):
        lead = round(value / 10 ** math.floor(math.log10(value))) if value > 0 else 0
        return f"{value / scale:g}{suffix}" if lead in (2, 5) else ""

    axis.set_major_formatter(FuncFormatter(major))
    axis.set_minor_formatter(FuncFormatter(minor))


def _wide_range(values: list[float]) -> bool:
    """Whether the values span enough (more than 10x) to be read on a log scale."""
    return bool(values) and min(values) > 0 and max(values) / min(values) > 10


def _compact(value: float) -> str:
    return f"{value:.2f}" if value < 10 else f"{value:.1f}" if value < 100 else f"{value:.0f}"


def _heat_map(mpl, title: str, unit: str, cells: list[Cell], value, cmap_name: str, shared: list[float]) -> str:
    """One L x H heat map. Its colour scale spans `shared` (every map of the same figure kind), so
    colours compare across modes and thread counts; the numbers are written in the cells."""
    import numpy as np
    from matplotlib import colormaps
    from matplotlib.colors import LogNorm, Normalize
    from matplotlib.patches import Patch, Rectangle

    Figure, canvas = mpl
    layers, hidden = axes(cells)
    grid = grid_values(cells, value)
    values = np.full((len(layers), len(hidden)), np.nan)
    for (l, h), (status, number) in grid.items():
        if status == "ok":
            values[layers.index(l), hidden.index(h)] = number
    low, high = (min(shared), max(shared)) if shared else (0.0, 1.0)
    if _wide_range(shared):
        norm, scale = LogNorm(low, high), " (log colour scale)"
    else:
        norm, scale = Normalize(low, high if high > low else low + 1), ""
    cmap = colormaps[cmap_name].with_extremes(bad=MISSING_COLOR)

    figure = Figure(figsize=(6.2, 5.4))
    ax = figure.add_subplot()
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, norm=norm, aspect="auto")
    bar = figure.colorbar(image, ax=ax, shrink=0.85)
    bar.set_label(unit + scale)
    if scale:
        _log_scale(bar.ax.yaxis)
    ax.set_xticks(range(len(hidden)), [str(h) for h in hidden])
    ax.set_yticks(range(len(layers)), [str(l) for l in layers])
    ax.set_xlabel("hidden size H")
    ax.set_ylabel("layers L")
    ax.set_title(title)
    ax.set_xticks(np.arange(len(hidden) + 1) - 0.5, minor=True)
    ax.set_yticks(np.arange(len(layers) + 1) - 0.5, minor=True)
    ax.grid(which="minor", color="white", linewidth=1.5)
    ax.tick_params(which="minor", length=0)
    statuses = set()
    for (l, h), (status, number) in grid.items():
        y, x = layers.index(l), hidden.index(h)
        statuses.add(status)
        if status == "ok":
            red, green, blue, _ = cmap(norm(number))
            colour = "white" if 0.299 * red + 0.587 * green + 0.114 * blue < 0.5 else "black"
            ax.text(x, y, _compact(number), ha="center", va="center", fontsize=9, color=colour)
        elif status == FAILED:
            ax.add_patch(Rectangle((x - 0.5, y - 0.5), 1, 1, facecolor=FAILED_COLOR, edgecolor="white", linewidth=1.5))
            ax.text(x, y, FAILED, ha="center", va="center", fontsize=8, color="#9b1c1c")
        else:
            ax.text(x, y, NA, ha="center", va="center", fontsize=8, color="#555555")
    handles = [Patch(facecolor=MISSING_COLOR, label="n/a: not measured")] if NA in statuses else []
    handles += [Patch(facecolor=FAILED_COLOR, label="failed")] if FAILED in statuses else []
    if handles:
        ax.legend(handles=handles, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False,
                  fontsize=8)
    return _png(figure, canvas)


_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">")


def _series_style(index: int) -> dict:
    from matplotlib import colormaps

    return {"color": colormaps["tab10"](index % 10), "marker": _MARKERS[index % len(_MARKERS)]}


def _scatter(mpl, cells: list[Cell]) -> str | None:
    Figure, canvas = mpl
    usable = [c for c in cells if c.ok and c.p50 is not None and c.parameters]
    if not usable:
        return None
    figure = Figure(figsize=(8, 5.2))
    ax = figure.add_subplot()
    for index, group in enumerate(groups(cells)):
        members = sorted((c for c in usable if in_group(c, group)), key=lambda c: c.parameters)
        if members:
            ax.scatter([c.parameters for c in members], [c.p50 for c in members], s=42, alpha=0.85,
                       label=group_label(group), **_series_style(index))
    ax.set_xscale("log")
    _log_scale(ax.xaxis, "M", 1e6)
    log_y = _wide_range([c.p50 for c in usable])
    if log_y:
        ax.set_yscale("log")
        _log_scale(ax.yaxis)
    ax.set_xlabel("encoder parameters (log scale; M = million)")
    ax.set_ylabel("p50 latency (ms)" + (", log scale" if log_y else ""))
    ax.set_title("Latency vs parameters")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(title="mode, threads", fontsize=8, title_fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1),
              borderaxespad=0)
    return _png(figure, canvas)


def _pareto_plot(mpl, cells: list[Cell], task: str, metric: str) -> str:
    Figure, canvas = mpl
    points = accuracy_points(cells, task, metric)
    frontier = pareto(points)
    figure = Figure(figsize=(8, 5.2))
    ax = figure.add_subplot()
    for index, group in enumerate(groups(cells)):
        members = [(lat, acc) for lat, acc, c in points if in_group(c, group)]
        if members:
            ax.scatter(*zip(*members), s=42, alpha=0.6, label=group_label(group), **_series_style(index))
    xs, ys = [p[0] for p in frontier], [p[1] for p in frontier]
    ax.plot(xs, ys, drawstyle="steps-post", color="black", linewidth=1.5, zorder=3, label="Pareto frontier")
    ax.scatter(xs, ys, s=130, facecolors="none", edgecolors="black", linewidths=1.8, zorder=4)
    for latency, accuracy, cell in frontier:
        ax.annotate(f"{cell.label}, {cell.quantize}, {threads_text(cell.threads)}",
                    (latency, accuracy), textcoords="offset points", xytext=(9, 6), fontsize=7.5, zorder=5,
                    bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "edgecolor": "#999999", "alpha": 0.85})
    log_x = _wide_range([p[0] for p in points])
    if log_x:
        ax.set_xscale("log")
        _log_scale(ax.xaxis)
    ax.set_xlabel("p50 latency (ms)" + (", log scale" if log_x else ""))
    ax.set_ylabel(f"{task} {metric}")
    random = any(c.random_weights for _, _, c in points)
    ax.set_title(f"Latency vs {task} {metric}: Pareto frontier" + ("\n(" + RANDOM_NOTE + ")" if random else ""),
                 fontsize=10 if random else 12)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1), borderaxespad=0)
    return _png(figure, canvas)


def plot_sections(cells: list[Cell]) -> list[tuple[str, list[tuple[str, str]], bool]]:
    """[(section title, [(caption, base64 PNG), ...], wide), ...]; wide plots take a whole row."""
    mpl = _matplotlib()
    sections = []
    gridded = [c for c in cells if c.on_grid]
    if gridded:
        latencies = [c.p50 for c in gridded if c.ok and c.p50 is not None]
        sizes = [c.model_mb for c in gridded if c.ok and c.model_mb is not None]
        sections.append(("Latency over the L × H grid", [
            (f"p50 latency (ms), {group_label(g)}",
             _heat_map(mpl, f"p50 latency, {group_label(g)}", "p50 latency (ms)",
                       [c for c in gridded if in_group(c, g)], lambda c: c.p50, "YlOrRd", latencies))
            for g in groups(gridded)], False))
        sections.append(("Model size over the L × H grid", [
            (f"model size (MB), {mode}",
             _heat_map(mpl, f"model size, {mode}", "model size (MB)", size_cells(gridded, mode),
                       lambda c: c.model_mb, "Blues", sizes))
            for mode in modes(gridded)], False))
    scatter = _scatter(mpl, cells)
    if scatter:
        sections.append(("Latency vs parameters", [("p50 latency vs encoder parameters, one series per mode and "
                                                    "thread count", scatter)], True))
    pareto = [(f"p50 latency vs {task} {metric}; the frontier (black) holds the cells that no other cell "
               "beats on both", _pareto_plot(mpl, cells, task, metric)) for task, metric in accuracy_sets(cells)]
    if pareto:
        sections.append(("Latency vs accuracy", pareto, True))
    return sections

