"""peer.json and peer.md from a peer-benchmark results dict (schema edgebert.peer/1).

The JSON holds everything: {"schema", "created", "device" (edgebert.device_info's facts plus
edgebert.cpu_features': cpu_features, int8_kernels), "versions", "settings" (incl. text: the real-text file
or None), "engines" (runtime and exactly what one timed call covers, per engine), "variants": [{"variant",
"config", "macs", "artifacts" (incl. the ONNX fusion counts, the PyTorch/ExecuTorch export facts, the inputs'
length statistics and mean MACs per call), "bundle_ops", "rows": [one per engine x threads: latency_ms
{p50, p90, p99, mean, min, max, runs}, round_p50_ms, load_ms, first_inference_ms, load_to_first_output_ms,
memory {baseline_rss_mb, peak_rss_mb, growth_mb, end_rss_mb, resident_growth_mb, runtime_import_mb,
method, breakdown_at_end {RssAnon, RssFile, AnonHugePages, FilePmdMapped} (MB, Linux)}, model_bytes,
growth_over_model_bytes, agreement {pooled_min_cosine, pooled_max_abs_diff, sequence_min_cosine, ...},
p50_over_edgebert_int8, mean_over_edgebert_int8, achieved_gmacs (on the real-text set: mean MACs per text /
mean latency), roofline_fraction_int8, ...; the cached engine adds weight_cache {file, bytes, warm,
cold_load (the cache-building load's times, None when the file was already there),
max_abs_diff_vs_uncached}; or {"engine", "threads", "error"}, or {"engine", "threads", "skipped": why the
installed runtime cannot run it}]}], "roofline": {"layers", "best", "method", "cpu_features",
"int8_kernels" (the XNNPACK kernel family the roofline measured)}, "seconds"}.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from benchmarks.peer import EDGEBERT_INT8, EDGEBERT_INT8_CACHED, EXECUTORCH_INT8, INT8_PEERS, ORT_INT8, TF_FLOAT, TORCH_INT8

TARGETS = {"tf_float_ratio": 5.0, "ort_int8_ratio": 2.0, "medium_roofline": 0.60, "growth_over_model": 1.25}


def _fmt(value, spec: str = ".2f", suffix: str = "") -> str:
    if value is None:
        return "-"
    return format(value, spec) + suffix


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    right = ["---:" if i else "---" for i in range(len(header))]
    return ["| " + " | ".join(header) + " |", "| " + " | ".join(right) + " |"] + \
           ["| " + " | ".join(row) + " |" for row in rows]


def format_markdown(results: dict) -> str:
    device, settings = results.get("device", {}), results.get("settings", {})
    per_text = bool(settings.get("text"))
    stat = "mean" if per_text else "p50"  # the real-text set: mean latency per text (lengths differ)
    shape = "Each text at its own length" if per_text else f"Seq {settings.get('seq_len')}"
    lines = ["# Peer benchmark: edgebert vs TensorFlow float, ONNX Runtime, PyTorch and ExecuTorch", ""]
    lines.append(f"Device: {device.get('cpu_model', '?')}, {device.get('cores', '?')} cores, "
                 f"{device.get('system', '?')} {device.get('machine', '?')}, Python {device.get('python', '?')}; "
                 f"int8 kernels (XNNPACK): {device.get('int8_kernels', '?')} (CPU features: "
                 f"{device.get('cpu_features', '?')}). "
                 f"{shape}, batch 1, "
                 f"{settings.get('runs')} timed runs per cell in {settings.get('rounds')} alternating rounds, random "
                 f"weights (seed {settings.get('seed')}, vocab {settings.get('vocab', 'synthetic')}), inputs: "
                 f"{settings.get('inputs', 'real sentences from samples/')}.")
    versions = results.get("versions") or {}
    lines.append("Versions: " + ", ".join(f"{k} {v}" for k, v in versions.items() if v) + ".")
    lines.append("")
    for engine, facts in (results.get("engines") or {}).items():
        lines.append(f"- `{engine}`: {facts['runtime']}; one timed call = {facts['call_path']}")
    lines.append("")

    summary = []
    for variant in results.get("variants", []):
        config = variant["config"]
        lines.append(f"## {variant['variant']} (L{config['num_layers']} H{config['hidden_size']} "
                     f"A{config['num_heads']} I{config['intermediate_size']})")
        lines.append("")
        header = ["engine", "thr", "p50 ms", "p90 ms", "mean ms", f"x edgebert int8 ({stat})", "pooled cos (min)", "pooled max abs diff",
                  "model MB", "peak RSS MB", "peak growth MB", "growth / model", "resident growth / model",
                  "GMAC/s", "of int8 roofline"]
        rows = []
        for row in variant["rows"]:
            if "error" in row or "skipped" in row:
                why = f"FAILED: {row['error'][:150]}" if "error" in row else f"skipped: {row['skipped']}"
                rows.append([row["engine"], str(row["threads"]), why] + [""] * 12)
                continue
            agree, memory = row.get("agreement") or {}, row.get("memory") or {}
            is_reference = agree.get("reference") == f"{row['engine']} t{row['threads']}"
            rows.append([row["engine"], str(row["threads"]), _fmt(row["latency_ms"]["p50"], ".3f"),
                         _fmt(row["latency_ms"]["p90"], ".3f"), _fmt(row["latency_ms"]["mean"], ".3f"),
                         _fmt(row.get(f"{stat}_over_edgebert_int8"), ".2f", "x"),
                         "reference" if is_reference else _fmt(agree.get("pooled_min_cosine"), ".6f"),
                         "reference" if is_reference else _fmt(agree.get("pooled_max_abs_diff"), ".2e"),
                         _fmt(row["model_bytes"] / 1e6 if row.get("model_bytes") else None, ".1f"),
                         _fmt(memory.get("peak_rss_mb"), ".1f"), _fmt(memory.get("growth_mb"), ".1f"),
                         _fmt(row.get("growth_over_model_bytes"), ".2f", "x"),
                         _fmt(row.get("resident_growth_over_model_bytes"), ".2f", "x"),
                         _fmt(row.get("achieved_gmacs"), ".1f"),
                         _fmt(100 * row["roofline_fraction_int8"] if row.get("roofline_fraction_int8") is not None
                              else None, ".1f", " %")])
        lines += _table(header, rows) + [""]
        for threads in settings.get("threads", []):
            cells = {r["engine"]: r for r in variant["rows"] if r["threads"] == threads and "latency_ms" in r}
            base, tf_row, ort_row = cells.get(EDGEBERT_INT8), cells.get(TF_FLOAT), cells.get(ORT_INT8)
            cached = cells.get(EDGEBERT_INT8_CACHED) or {}
            ratio = f"{stat}_over_edgebert_int8"
            peers = [cells[name] for name in INT8_PEERS if name in cells and cells[name].get(ratio) is not None]
            best = min(peers, key=lambda row: row[ratio]) if peers else None
            if base:
                summary.append([variant["variant"], str(threads),
                                _fmt(tf_row.get(ratio) if tf_row else None, ".2f", "x"),
                                _fmt(ort_row.get(ratio) if ort_row else None, ".2f", "x"),
                                _fmt((cells.get(TORCH_INT8) or {}).get(ratio), ".2f", "x"),
                                _fmt((cells.get(EXECUTORCH_INT8) or {}).get(ratio), ".2f", "x"),
                                f"{best['engine']}: {best[ratio]:.2f}x" if best else "-",
                                _fmt(100 * base["roofline_fraction_int8"] if base.get("roofline_fraction_int8")
                                     is not None else None, ".1f", " %"),
                                _fmt(base.get("growth_over_model_bytes"), ".2f", "x"),
                                _fmt(base.get("resident_growth_over_model_bytes"), ".2f", "x"),
                                _fmt(cached.get("growth_over_model_bytes"), ".2f", "x"),
                                _fmt(cached.get("resident_growth_over_model_bytes"), ".2f", "x")])
        onnx = (variant.get("artifacts") or {}).get("onnx")
        if onnx:
            fusions = ", ".join(f"{k} {v}" for k, v in onnx["fusions"].items())
            quantized = ", ".join(f"{k} {v}" for k, v in onnx["quantized_ops"].items())
            lines.append(f"ONNX: {onnx['exporter']}; fusions by optimize_model: {fusions}; {onnx['attention_note']}; "
                         f"after quantize_dynamic: {quantized}.")
        elif (variant.get("artifacts") or {}).get("onnx_error"):
            lines.append(f"ONNX: {variant['artifacts']['onnx_error']}")
        lines += _torch_lines(variant.get("artifacts") or {})
        for row in variant["rows"]:
            facts = row.get("facts") or {}
            if "xnnpack_partitions" in facts:
                outside = ", ".join(f"{k} {v}" for k, v in facts["ops_outside_xnnpack"].items()) or "none"
                sizes = ", ".join(str(sum(p.values())) for p in facts.get("partition_ops", []))
                lines.append(f"{row['engine']} t{row['threads']}: {facts['xnnpack_partitions']} XNNPACK partition(s) "
                             f"of {sizes} ops; ops outside XNNPACK: {outside}.")
            if "weight_cache" in row:
                lines.append(_weight_cache_line(row, variant["rows"]))
        lines.append("")

    if summary:
        lines.append("## Against the issue's targets (edgebert dynamic int8)")
        lines.append("")
        lines.append(f"Ratios of {stat} latencies, measured side by side in this run on this machine "
                     f"({device.get('cpu_model', '?')}, int8 kernels {device.get('int8_kernels', '?')}); > 1: edgebert "
                     "faster. Issue 13's target: edgebert faster than every int8 peer at 1 thread.")
        lines.append("")
        lines += _table(["variant", "thr", f"TF float / edgebert (target >= {TARGETS['tf_float_ratio']:g}x)",
                         f"ORT int8 / edgebert (target >= {TARGETS['ort_int8_ratio']:g}x)",
                         "PyTorch quantize_dynamic / edgebert", "ExecuTorch XNNPACK int8 / edgebert",
                         "best int8 peer / edgebert (target > 1x)",
                         f"of int8 roofline (Medium target >= {100 * TARGETS['medium_roofline']:g} %)",
                         f"peak growth / model bytes (target <= {TARGETS['growth_over_model']:g}x)",
                         "resident growth / model bytes", "with weight cache: peak growth / model bytes",
                         "with weight cache: resident growth / model bytes"], summary)
        lines.append("")

    roof = results.get("roofline")
    if roof:
        lines.append("## Roofline: single FULLY_CONNECTED layers, LiteRT + XNNPACK")
        lines.append("")
        lines.append(f"int8 kernels measured: XNNPACK's {roof.get('int8_kernels', '?')} family on this CPU "
                     f"({device.get('cpu_model', '?')}; features: {roof.get('cpu_features', '?')}). "
                     "The same bundle runs other kernels on another CPU: compare ratios within one run.")
        lines.append("")
        lines.append(roof["method"] + ".")
        lines.append("")
        rows = [[key, "x".join(map(str, best["shape"])), _fmt(best["p50_ms"], ".3f"), _fmt(best["gmacs"], ".1f")]
                for key, best in roof["best"].items()]
        lines += _table(["best (mode/threads)", "shape MxKxN", "p50 ms", "GMAC/s"], rows) + [""]
        rows = [[r["role"], "x".join(map(str, r["shape"])), r["mode"], str(r["threads"]), _fmt(r["p50_ms"], ".3f"),
                 _fmt(r["gmacs"], ".1f")] for r in roof["layers"]]
        lines += _table(["role", "shape MxKxN", "mode", "thr", "p50 ms", "GMAC/s"], rows) + [""]
        rows = []
        for variant in results.get("variants", []):
            macs = variant.get("macs") or {}
            for row in variant["rows"]:
                if "dense_layers_estimate_ms" in row:
                    rows.append([variant["variant"], row["engine"], str(row["threads"]),
                                 _fmt(macs.get("total", 0) / 1e6, ".1f"), _fmt(row["latency_ms"]["p50"], ".3f"),
                                 _fmt(row["dense_layers_estimate_ms"], ".3f"),
                                 _fmt(100 * row["dense_share_of_p50"], ".0f", " %"), _fmt(row["non_dense_ms"], ".3f"),
                                 _fmt(row["dense_with_fused_qkv_estimate_ms"], ".3f")])
        if rows:
            lines.append("Where the time goes: the variant's own dense layers timed alone (L x (4 x HxH + HxI + IxH), "
                         "as separate FULLY_CONNECTED models) against the bundle's p50; the rest is attention "
                         "(float BATCH_MATMUL, softmax), LayerNorm, GELU, reshapes, embeddings and call overhead.")
            lines.append("")
            lines += _table(["variant", "engine", "thr", "MMAC", "p50 ms", "dense layers alone ms", "dense share",
                             "rest ms", "dense with fused QKV ms"], rows) + [""]
    return "\n".join(lines)


def _torch_lines(artifacts: dict) -> list[str]:
    """The PyTorch export: the saved model, and ExecuTorch's program with what its XNNPACK delegate took."""
    torch = artifacts.get("torch")
    if not torch:
        return [f"PyTorch: {artifacts['torch_error']}"] if artifacts.get("torch_error") else []
    executorch = torch.get("executorch")
    if not executorch:
        return [f"ExecuTorch: export failed: {torch.get('executorch_error', '?')}"]
    outside = ", ".join(f"{k} {v}" for k, v in executorch["ops_outside_xnnpack"].items()) or "none"
    return [f"ExecuTorch: {executorch['route']}; seq dim dynamic {executorch['dynamic_seq'][0]}.."
            f"{executorch['dynamic_seq'][1]}; {executorch['xnnpack_delegates']} XNNPACK delegate call(s); "
            f"ops outside XNNPACK: {outside}; .pte {executorch['bytes'] / 1e6:.2f} MB."]


def _weight_cache_line(row: dict, rows: list[dict]) -> str:
    """The cache file, whether the measured load found it warm, and load + first call: warm, cold (the load
    that built the cache) and the uncached engine's, since skipping the packing should also cut load time."""
    cache, threads = row["weight_cache"], row["threads"]
    uncached = next((r for r in rows if r["engine"] == EDGEBERT_INT8 and r["threads"] == threads
                     and "load_to_first_output_ms" in r), {})
    cold = cache.get("cold_load") or {}
    return (f"{row['engine']} t{threads}: weight cache {cache['file']} "
            f"({_fmt(cache['bytes'] / 1e6 if cache.get('bytes') else None, '.2f')} MB), "
            f"{'warm' if cache['warm'] else 'COLD (this load wrote it)'}; load + first call "
            f"{_fmt(row['load_to_first_output_ms'], '.1f')} ms (cold, building the cache: "
            f"{_fmt(cold.get('load_to_first_output_ms'), '.1f')} ms; {EDGEBERT_INT8}: "
            f"{_fmt(uncached.get('load_to_first_output_ms'), '.1f')} ms); outputs vs {EDGEBERT_INT8}: "
            f"max |diff| {_fmt(cache.get('max_abs_diff_vs_uncached'), '.2e')}.")


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(handle, "w") as file:
        file.write(text)
    os.replace(temp, path)


def write_outputs(results: dict, out: Path, final: bool) -> None:
    """DIR/peer.json and DIR/peer.md (rewritten after each variant, so a killed run keeps what it had)."""
    results = {**results, "complete": final}
    _write_atomically(Path(out) / "peer.json", json.dumps(results, indent=1) + "\n")
    _write_atomically(Path(out) / "peer.md", format_markdown(results) + "\n")
