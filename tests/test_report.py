"""`edgebert report`: a sweep's results.json (or a bench results file) -> report.md + self-contained report.html.

The sweeps here are synthetic results built by `result()` below, in the schema of edgebert/results.py
plus the sweep block; the figures in them are arbitrary and exist only to be found again in the right
cells of the report. One test renders the page in headless Chromium when it is installed.
"""
from __future__ import annotations

import base64
import html.parser
import io
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from edgebert.report import RANDOM_NOTE, build_report, load_sweep
from edgebert.results import BENCH_SCHEMA
from edgebert.variants import Variant
from cli_helpers import error_line, invoke

pytest.importorskip("matplotlib", reason="the report needs matplotlib: pip install 'edgebert[report]'")

REPO = Path(__file__).resolve().parent.parent
DEVICE = {"cpu_model": "Test CPU @ 2.0GHz", "cores": 4, "machine": "aarch64", "system": "Linux",
          "release": "6.1.0", "python": "3.11.7", "numpy": "2.0.0", "hostname": "pi-test"}
PNG = "data:image/png;base64,"
FAIL_MESSAGE = "interpreter failed: XNNPACK delegate could not be applied (test)"


def result(layers: int, hidden: int, quantize: str, threads: int, p50: float, *, failed: str | None = None,
           accuracy: float | None = None, sweep: bool = True, random_weights: bool = True) -> dict:
    """One result in the bench schema (+ the sweep block); a failed one as the schema's failed shape."""
    variant = Variant(layers, hidden)
    name = f"{variant.short_name}.{quantize}.s128"
    model_bytes = variant.float32_bytes if quantize == "float32" else variant.int8_bytes
    block = {"variant": variant.name, "layers": layers, "hidden": hidden, "quantize": quantize, "threads": threads,
             "random_weights": random_weights, "status": "failed" if failed else "ok", "error": failed,
             "accuracy": None if accuracy is None else {"task": "SST-2", "metric": "accuracy", "value": accuracy}}
    if failed:
        out = {"bundle": {"path": f"/sweep/bundles/{name}", "name": name}, "error": failed}
    else:
        out = {
            "bundle": {"path": f"/sweep/bundles/{name}", "name": name, "model_bytes": model_bytes,
                       "model_sha256": "0" * 64, "quantize": quantize, "seq_len": 128, "head": "encoder",
                       "variant": variant.name, "layers": layers, "hidden": hidden, "heads": variant.heads,
                       "parameters": variant.encoder_parameters, "random_weights": random_weights},
            "settings": {"threads": threads, "runs": 20, "warmup": 3, "xnnpack": True, "seq_len": 128,
                         "inputs": "samples/sentences.txt"},
            "runtime": {"name": "ai-edge-litert", "version": "1.2.0"}, "xnnpack_applied": True,
            "load_ms": 12.5, "first_inference_ms": 30.0,
            "latency_ms": {"mean": p50 * 1.05, "std": p50 / 10, "min": p50 * 0.9, "p50": p50, "p90": p50 * 1.2,
                           "p99": p50 * 1.5, "max": p50 * 2},
            "throughput_per_s": 1000 / (p50 * 1.05), "python_overhead_ms": 0.02,
            "memory": {"baseline_rss_mb": 40.0, "peak_rss_mb": 40.0 + model_bytes / 1e6 * 1.5,
                       "growth_mb": model_bytes / 1e6 * 1.5},
            "timestamp": "2025-01-01T00:00:00Z"}
    if sweep:
        out["sweep"] = block
    return out


SHAPES = [(2, 128), (4, 256), (4, 512), (6, 256)]
MODES = ["float32", "dynamic-int8"]
THREADS = [1, 4]


def latency(layers, hidden, quantize, threads) -> float:
    """Arbitrary distinct figures: each (shape, mode, threads) gets its own."""
    return round(layers * hidden / 100 / threads * (1.0 if quantize == "float32" else 0.6) + 0.123, 3)


def sweep_results(with_accuracy: bool) -> list[dict]:
    results = []
    for quantize in MODES:
        for threads in THREADS:
            for layers, hidden in SHAPES:
                if (layers, hidden, quantize, threads) == (6, 256, "dynamic-int8", 4):
                    results.append(result(layers, hidden, quantize, threads, 0, failed=FAIL_MESSAGE))
                    continue
                accuracy = 0.70 + layers * hidden / 20000 if with_accuracy else None
                results.append(result(layers, hidden, quantize, threads, latency(layers, hidden, quantize, threads),
                                      accuracy=accuracy))
    return results


def write_sweep(directory: Path, results: list[dict]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "results.json").write_text(json.dumps({"schema": BENCH_SCHEMA, "device": DEVICE, "results": results}))
    return directory






def md_table(markdown: str, heading: str) -> list[list[str]]:
    """The rows (header first, separator dropped) of the table under the Markdown heading `heading`."""
    lines = markdown.splitlines()
    start = lines.index(heading) + 1
    while not lines[start].startswith("|"):
        start += 1
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        if not all(set(cell) <= set("-:") for cell in cells):
            rows.append(cells)
    return rows


def grid_value(markdown: str, heading: str, layers: int, hidden: int) -> str:
    header, *rows = md_table(markdown, heading)
    row = next(r for r in rows if r[0] == str(layers))
    return row[header.index(str(hidden))]


def png_count(page: str) -> int:
    return len(re.findall(r'<img [^>]*src="data:image/png;base64,[A-Za-z0-9+/=]{200,}"', page))


def external_references(page: str) -> list[str]:
    return re.findall(r"""(?:src|href|url)\s*[=(]\s*["']?\s*(?:https?:)?//""", page, re.IGNORECASE)


@pytest.fixture
def sweep_dir(tmp_path):
    return write_sweep(tmp_path / "sweep", sweep_results(with_accuracy=True))


@pytest.fixture
def small_sweep(tmp_path):
    """Two cells, one mode, one thread count: for the tests of the command's plumbing."""
    return write_sweep(tmp_path / "sweep", [result(2, 128, "dynamic-int8", 1, 1.5), result(4, 256, "dynamic-int8", 1, 4.0)])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """The report of the synthetic sweep, built once for the tests that only read it: (md, html) paths."""
    return build_report(write_sweep(tmp_path_factory.mktemp("report") / "sweep", sweep_results(with_accuracy=True)))


# --- the report ----------------------------------------------------------------------------------------

def test_report_command_writes_both_files_into_the_sweep_and_prints_their_paths(small_sweep):
    sweep_dir = small_sweep
    result = invoke("report", sweep_dir)
    assert result.exit_code == 0, result.output
    assert result.stderr == ""
    assert result.stdout.splitlines() == [str(sweep_dir / "report.md"), str(sweep_dir / "report.html")]
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["report.html", "report.md", "results.json"]  # no temp files


def test_figures_option_writes_each_plot_as_a_png_file(small_sweep, tmp_path):
    result = invoke("report", small_sweep, "--out", tmp_path / "out", "--figures")
    assert result.exit_code == 0, result.output
    pngs = sorted((tmp_path / "out" / "figures").glob("*.png"))
    embedded = (tmp_path / "out" / "report.html").read_text().count("data:image/png;base64,")
    assert len(pngs) == embedded > 0
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert any(p.name.startswith("p50-latency-ms-") for p in pngs)


def test_markdown_grid_tables_hold_each_figure_in_its_cell(built):
    md_path, _ = built
    markdown = md_path.read_text()
    for key, value in DEVICE.items():
        assert str(value) in markdown, key
    assert "ai-edge-litert 1.2.0" in markdown
    assert f"**note:** {RANDOM_NOTE}" in markdown
    for quantize in MODES:
        for threads in THREADS:
            heading = f"### p50 latency (ms), {quantize}, {threads} thread{'s' if threads > 1 else ''}"
            header, *rows = md_table(markdown, heading)
            assert header == ["L \\ H", "128", "256", "512", "768"]
            assert [r[0] for r in rows] == ["2", "4", "6", "8", "10", "12"]
            for layers, hidden in SHAPES:
                expected = ("failed" if (layers, hidden, quantize, threads) == (6, 256, "dynamic-int8", 4)
                            else f"{latency(layers, hidden, quantize, threads):.2f}")
                assert grid_value(markdown, heading, layers, hidden) == expected
            assert grid_value(markdown, heading, 12, 768) == "n/a"
            assert grid_value(markdown, heading, 2, 256) == "n/a"
    # Spot checks with the figures written out: L=4, H=512, float32, 1 thread -> 4*512/100 + 0.123.
    assert grid_value(markdown, "### p50 latency (ms), float32, 1 thread", 4, 512) == "20.60"
    assert grid_value(markdown, "### p50 latency (ms), dynamic-int8, 4 threads", 2, 128) == "0.51"
    for quantize in MODES:
        heading = f"### model size (MB), {quantize}"
        for layers, hidden in SHAPES:
            v = Variant(layers, hidden)
            size = (v.float32_bytes if quantize == "float32" else v.int8_bytes) / 1e6
            assert grid_value(markdown, heading, layers, hidden) == f"{size:.1f}"
        assert grid_value(markdown, heading, 8, 512) == "n/a"
    # The model size of the failed cell (6/256 dynamic-int8, 4 threads) comes from its 1-thread run.
    assert grid_value(markdown, "### model size (MB), dynamic-int8", 6, 256) == f"{Variant(6, 256).int8_bytes / 1e6:.1f}"


def test_markdown_long_table_lists_every_cell_and_the_failure_with_its_error(built):
    md_path, _ = built
    header, *rows = md_table(md_path.read_text(), "## Every cell")
    assert header == ["variant", "nickname", "mode", "threads", "params", "MB", "p50 ms", "p90 ms", "p99 ms",
                      "peak RSS MB", "growth MB", "SST-2 accuracy", "status"]
    assert len(rows) == len(MODES) * len(THREADS) * len(SHAPES)
    column = {name: i for i, name in enumerate(header)}
    mini = next(r for r in rows if r[0] == "uncased_L-4_H-256_A-4" and r[2] == "float32" and r[3] == "4")
    v = Variant(4, 256)
    p50 = latency(4, 256, "float32", 4)
    assert mini[column["nickname"]] == "mini"
    assert mini[column["params"]] == f"{v.encoder_parameters:,}" == "11,170,560"
    assert mini[column["MB"]] == f"{v.float32_bytes / 1e6:.1f}"
    assert [mini[column[k]] for k in ("p50 ms", "p90 ms", "p99 ms")] == [f"{p50:.2f}", f"{p50 * 1.2:.2f}", f"{p50 * 1.5:.2f}"]
    assert mini[column["peak RSS MB"]] == f"{40 + v.float32_bytes / 1e6 * 1.5:.1f}"
    assert mini[column["SST-2 accuracy"]] == f"{0.70 + 4 * 256 / 20000:.4f}"
    assert mini[column["status"]] == "ok"
    failed = [r for r in rows if r[column["status"]] != "ok"]
    assert len(failed) == 1
    assert failed[0][:4] == ["uncased_L-6_H-256_A-4", "", "dynamic-int8", "4"]
    assert failed[0][column["status"]] == f"failed: {FAIL_MESSAGE}"
    assert failed[0][column["p50 ms"]] == ""


def test_markdown_pareto_table_keeps_only_undominated_cells(built):
    md_path, _ = built
    header, *rows = md_table(md_path.read_text(), "## Pareto frontier: p50 latency vs SST-2 accuracy")
    assert header == ["variant", "nickname", "mode", "threads", "p50 ms", "accuracy"]
    points = [(latency(l, h, q, t), 0.70 + l * h / 20000) for q in MODES for t in THREADS for l, h in SHAPES
              if (l, h, q, t) != (6, 256, "dynamic-int8", 4)]
    undominated = [p for p in points if not any(o != p and o[0] <= p[0] and o[1] >= p[1] for o in points)]
    assert [(float(r[4]), float(r[5])) for r in rows] == [(round(a, 2), round(b, 4)) for a, b in sorted(undominated)]
    latencies = [float(r[4]) for r in rows]
    accuracies = [float(r[5]) for r in rows]
    assert latencies == sorted(latencies) and accuracies == sorted(accuracies)


def test_html_is_self_contained_with_one_png_per_plot(built):
    _, html_path = built
    page = html_path.read_text()
    # 4 latency heat maps (2 modes x 2 thread counts) + 2 size heat maps (per mode) + 1 scatter + 1 Pareto.
    assert png_count(page) == page.count(PNG) == 8
    assert external_references(page) == []
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page and "<link" not in page
    assert "<style>" in page
    for caption in ("p50 latency (ms), dynamic-int8, 4 threads", "model size (MB), float32",
                    "p50 latency vs encoder parameters", "p50 latency vs SST-2 accuracy"):
        assert f'alt="{caption}' in page, caption
    assert FAIL_MESSAGE in page
    assert RANDOM_NOTE in page
    assert page.count("<table") == 1 + 4 + 2 + 1 + 1  # facts, latency grids, size grids, Pareto, every cell
    assert page.count(">failed: " + FAIL_MESSAGE + "<") == 1


def test_documents_equal_the_golden_ones_rendered_before_the_report_was_split(tmp_path):
    """tests/golden/ holds report.md and report.html as the single-module report rendered them for
    sweep_results(with_accuracy=True): the split into model/tables/markdown/html/figures changed no byte.
    The PNG payloads are left out (their bytes follow the installed matplotlib), the sweep's path is SWEEP."""
    sweep_dir = write_sweep(tmp_path / "sweep", sweep_results(with_accuracy=True))
    md_path, html_path = build_report(sweep_dir)
    markdown = md_path.read_text().replace(str(sweep_dir), "SWEEP")
    page = re.sub(r"data:image/png;base64,[A-Za-z0-9+/=]+", "data:image/png;base64,PNG",
                  html_path.read_text().replace(str(sweep_dir), "SWEEP"))
    assert markdown == (REPO / "tests" / "golden" / "report.md").read_text()
    assert page == (REPO / "tests" / "golden" / "report.html").read_text()


def test_without_accuracy_there_is_no_pareto_view_and_no_accuracy_column(tmp_path):
    sweep_dir = write_sweep(tmp_path / "sweep", sweep_results(with_accuracy=False))
    md_path, html_path = build_report(sweep_dir)
    markdown, page = md_path.read_text(), html_path.read_text()
    assert png_count(page) == 7
    assert "Pareto" not in markdown and "Pareto" not in page
    assert not any("accuracy" in name for name in md_table(markdown, "## Every cell")[0])


def test_out_option_writes_elsewhere_and_creates_the_directory(small_sweep, tmp_path):
    sweep_dir = small_sweep
    out = tmp_path / "reports" / "today"
    result = invoke("report", sweep_dir, "--out", out)
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [str(out / "report.md"), str(out / "report.html")]
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["results.json"]


def test_a_plain_bench_results_file_with_shapes_gets_heat_maps(tmp_path):
    results = [result(2, 128, "dynamic-int8", 1, 1.5, sweep=False), result(4, 256, "dynamic-int8", 1, 3.25, sweep=False)]
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"schema": BENCH_SCHEMA, "device": DEVICE, "results": results}))
    md_path, html_path = build_report(path)
    assert md_path == tmp_path / "report.md" and html_path == tmp_path / "report.html"
    markdown = md_path.read_text()
    assert grid_value(markdown, "### p50 latency (ms), dynamic-int8, 1 thread", 4, 256) == "3.25"
    assert png_count(html_path.read_text()) == 1 + 1 + 1  # latency heat map, size heat map, scatter
    assert RANDOM_NOTE in markdown


def test_a_plain_bench_results_file_without_shapes_gets_no_heat_maps(tmp_path):
    shapeless = []
    for layers, hidden, p50 in ((2, 128, 1.0), (4, 256, 2.0)):
        one = result(layers, hidden, "float16", 2, p50, sweep=False, random_weights=False)
        for key in ("variant", "layers", "hidden"):
            one["bundle"].pop(key)
        one["bundle"]["name"] = f"custom-{layers}.float16.s128"
        shapeless.append(one)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps({"schema": BENCH_SCHEMA, "device": DEVICE, "results": shapeless}))
    md_path, html_path = build_report(path)
    markdown, page = md_path.read_text(), html_path.read_text()
    assert "L × H" not in markdown and "heat" not in page
    assert png_count(page) == 1  # the scatter only
    assert RANDOM_NOTE not in markdown
    names = [row[0] for row in md_table(markdown, "## Every cell")[1:]]
    assert names == ["custom-2.float16.s128", "custom-4.float16.s128"]


def test_error_text_is_escaped_and_nan_figures_are_not_available(tmp_path):
    message = "cannot reach https://example.com/x.zip | <b>offline</b> & retrying"
    nan = result(2, 128, "int8", 1, 1.0)
    nan["latency_ms"]["p99"] = float("nan")
    sweep_dir = write_sweep(tmp_path / "sweep", [nan, result(4, 256, "int8", 1, 0, failed=message)])
    md_path, html_path = build_report(sweep_dir)
    header, *rows = md_table(md_path.read_text(), "## Every cell")
    assert rows[0][header.index("p99 ms")] == "n/a"
    assert rows[1][header.index("status")] == "failed: " + message.replace("|", "\\|")
    page = html_path.read_text()
    assert "failed: cannot reach https://example.com/x.zip | &lt;b&gt;offline&lt;/b&gt; &amp; retrying" in page
    assert "<b>offline" not in page and external_references(page) == []


def test_load_sweep_returns_one_cell_per_result(sweep_dir):
    sweep = load_sweep(sweep_dir)
    assert sweep["path"] == sweep_dir / "results.json" and sweep["device"] == DEVICE
    cells = sweep["cells"]
    assert len(cells) == 16 and sum(not c.ok for c in cells) == 1
    (failed,) = [c for c in cells if not c.ok]
    assert (failed.layers, failed.hidden, failed.quantize, failed.threads, failed.error) == (
        6, 256, "dynamic-int8", 4, FAIL_MESSAGE)


# --- bad input -----------------------------------------------------------------------------------------

def snapshot(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.parametrize("damage, message", [
    ("missing-dir", "{path}: no such sweep directory or results file"),
    ("no-results-file", "{path}/results.json: results file not found"),
    ("corrupt", "{path}/results.json: unreadable results JSON (Expecting ',' delimiter: line 1 column 14 (char 13))"),
    ("wrong-schema", "{path}/results.json: not an edgebert results file (schema 'something/2', expected 'edgebert.bench/1')"),
    ("missing-key", "{path}/results.json: result lacks 'latency_ms'"),
    ("not-objects", "{path}/results.json: a result is not an object (got int)"),
    ("bad-number", "{path}/results.json: result 0: latency_ms.p50 is not a number ('fast')"),
    ("bad-sweep", "{path}/results.json: result 0: 'sweep' is not an object"),
    ("empty", "{path}/results.json: no results to report"),
])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, damage, message):
    path = tmp_path / "sweep"
    good = {"schema": BENCH_SCHEMA, "device": DEVICE, "results": [result(2, 128, "float32", 1, 1.0)]}
    if damage != "missing-dir":
        path.mkdir()
    text = {
        "corrupt": '{"schema": 1 "x"}',
        "wrong-schema": json.dumps({**good, "schema": "something/2"}),
        "missing-key": json.dumps({**good, "results": [{k: v for k, v in good["results"][0].items() if k != "latency_ms"}]}),
        "not-objects": json.dumps({**good, "results": [1]}),
        "bad-number": json.dumps({**good, "results": [{**good["results"][0],
                                                       "latency_ms": {**good["results"][0]["latency_ms"], "p50": "fast"}}]}),
        "bad-sweep": json.dumps({**good, "results": [{**good["results"][0], "sweep": ["x"]}]}),
        "empty": json.dumps({**good, "results": []}),
    }.get(damage)
    if text is not None:
        (path / "results.json").write_text(text)
    before = snapshot(tmp_path)
    line = error_line(invoke("report", path), 1)
    expected = f"error: {message.format(path=path)}"
    assert line == expected
    assert snapshot(tmp_path) == before


def test_missing_matplotlib_is_one_line_naming_the_extra(small_sweep, monkeypatch):
    sweep_dir = small_sweep
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    line = error_line(invoke("report", sweep_dir), 2)
    assert line == ("error: the HTML report needs matplotlib (matplotlib is missing): "
                    "pip install 'edgebert[report]'")
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["results.json"]


def test_report_has_help_and_the_cli_does_not_import_matplotlib():
    result = invoke("report", "--help")
    assert result.exit_code == 0
    assert "Usage: edgebert report [OPTIONS] DIR" in result.stdout and "--out" in result.stdout
    assert "pip install 'edgebert[report]'" in result.stdout
    probe = "import sys, edgebert.cli; print(sorted(m for m in ('matplotlib', 'edgebert.report') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


# --- rendering in a browser ----------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--hide-scrollbars"]


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_report_renders_in_headless_chromium(built, tmp_path):
    import matplotlib.image
    import numpy as np

    _, html_path = built
    url = html_path.resolve().as_uri()
    shot = tmp_path / "shot.png"
    common = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}"]
    subprocess.run([*common, f"--screenshot={shot}", "--window-size=1200,3000", url],
                   capture_output=True, timeout=60, check=False)
    assert shot.exists(), "chromium wrote no screenshot"
    assert shot.stat().st_size > 50_000
    pixels = matplotlib.image.imread(shot)[..., :3]
    assert pixels.shape[:2] == (3000, 1200)
    assert pixels.std() > 0.05  # not a blank page
    # The top of the page holds plots: many distinct colours, not just text on white.
    top = (pixels[:1500] * 255).astype(np.uint8).reshape(-1, 3)
    assert len(np.unique(top, axis=0)) > 200

    dom = subprocess.run([*common, "--dump-dom", url], capture_output=True, text=True, timeout=60, check=False).stdout
    assert png_count(dom) == 8
    assert "Every cell" in dom and FAIL_MESSAGE in dom


# Appended to a copy of the page: once every image has loaded, record what the browser decoded.
DECODE_PROBE = """<script>
window.addEventListener("load", () => {
  for (const img of document.images) {
    img.setAttribute("data-natural", img.complete + "x" + img.naturalWidth + "x" + img.naturalHeight);
  }
  document.body.setAttribute("data-probed", "yes");
});
</script>"""


class _Tables(html.parser.HTMLParser):
    """Each <table> of a page as {caption, rows of cell texts}."""

    def __init__(self):
        super().__init__()
        self.tables, self.in_cell, self.in_caption = [], False, False

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append({"caption": "", "rows": []})
        elif tag == "tr":
            self.tables[-1]["rows"].append([])
        elif tag in ("td", "th"):
            self.tables[-1]["rows"][-1].append("")
            self.in_cell = True
        elif tag == "caption":
            self.in_caption = True

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.in_cell = False
        elif tag == "caption":
            self.in_caption = False

    def handle_data(self, data):
        if self.in_caption:
            self.tables[-1]["caption"] += data
        elif self.in_cell:
            self.tables[-1]["rows"][-1][-1] += data


@pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
def test_chromium_decodes_every_figure_and_its_tables_hold_the_results(built, tmp_path):
    """What a person sees: each embedded PNG decoded by the browser to its real size, and the grid tables
    in the rendered DOM holding the p50 of each cell of results.json."""
    import matplotlib.image

    _, html_path = built
    probed = tmp_path / "probed.html"
    probed.write_text(html_path.read_text().replace("</body>", DECODE_PROBE + "</body>"))
    command = [CHROMIUM, *CHROMIUM_FLAGS, f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000",
               "--dump-dom", probed.resolve().as_uri()]
    dom = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False).stdout
    assert 'data-probed="yes"' in dom, "the page's load event never fired"
    decoded = re.findall(r'<img [^>]*alt="([^"]*)"[^>]*data-natural="([^"]*)"', dom)
    assert len(decoded) == 8
    page = html_path.read_text()
    for caption, natural in decoded:
        complete, width, height = natural.split("x")
        payload = re.search(r'alt="' + re.escape(caption) + r'" src="data:image/png;base64,([^"]+)"', page).group(1)
        expected_height, expected_width = matplotlib.image.imread(io.BytesIO(base64.b64decode(payload))).shape[:2]
        assert (complete, int(width), int(height)) == ("true", expected_width, expected_height), caption

    parser = _Tables()
    parser.feed(dom)
    grids = {table["caption"]: table["rows"] for table in parser.tables if table["caption"].startswith("p50 latency")}
    results = json.loads((html_path.parent / "results.json").read_text())["results"]
    checked = 0
    for item in results:
        if "error" in item:
            continue
        block = item["sweep"]
        threads = block["threads"]
        caption = f"p50 latency (ms), {block['quantize']}, {threads} thread{'s' if threads > 1 else ''}"
        header, *rows = grids[caption]
        row = next(r for r in rows if r[0] == str(block["layers"]))
        assert row[header.index(str(block["hidden"]))] == f"{item['latency_ms']['p50']:.2f}", caption
        checked += 1
    assert checked == 15
