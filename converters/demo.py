"""The offline demo: a BERT-Tiny-shaped random checkpoint through every export mode, each bundle
validated and run by the interpreter, summarised in one table. Nothing is downloaded."""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from converters.config import BertConfig
from converters.export import QuantizeMode
from converters.google_checkpoint import write_random_checkpoint
from converters.pipeline import ConvertOptions, convert
from converters.sources import load_source
from converters.vocab import synthetic_vocab
from edgebert.bench import bench_in_fresh_process
from edgebert.errors import ConversionError
from edgebert.variants import parse_variant


@dataclass(frozen=True)
class DemoRow:
    mode: str
    bundle: Path
    model_bytes: int
    pooled_min_cosine: float
    sequence_min_cosine: float
    latency_ms_p50: float
    convert_seconds: float


def _p50_in_fresh_process(bundle_dir: Path, runs: int) -> float:
    """Timed as `edgebert bench` times it: in a process of its own, not in this one, which holds
    TensorFlow and the converter's leftovers (measured here: ~25 % slower for BERT-Tiny)."""
    result = bench_in_fresh_process(bundle_dir, runs=runs)
    if "error" in result:
        raise ConversionError(f"the bundle was written but could not be timed: {result['error']}", bundle_dir)
    return result["latency_ms"]["p50"]


def run_demo(out_dir: Path, variant_name: str = "tiny", modes=tuple(QuantizeMode), seq_len: int = 128,
             runs: int = 50, log: Callable[[str], None] = lambda m: None) -> list[DemoRow]:
    variant = parse_variant(variant_name)
    config = BertConfig.from_variant(variant)
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgebert-demo-") as scratch:
        checkpoint = Path(scratch) / variant.name
        log(f"writing a random {variant.short_name} checkpoint in Google's layout")
        write_random_checkpoint(config, checkpoint, synthetic_vocab(config.vocab_size), seed=0)
        source = load_source(checkpoint)
        for mode in modes:
            mode = QuantizeMode(mode)
            bundle_dir = Path(out_dir) / f"{variant.short_name}.{mode.value}.s{seq_len}"
            log(f"[{mode.value}] converting")
            result = convert(checkpoint, bundle_dir, ConvertOptions(quantize=mode, seq_len=seq_len, force=True),
                             source=source)
            outputs = result.manifest["validation"]["outputs"]
            log(f"[{mode.value}] timing {runs} runs")
            rows.append(DemoRow(mode.value, bundle_dir, result.manifest["sizes"]["model_bytes"],
                                outputs["pooled_output"]["min_cosine"], outputs["sequence_output"]["min_cosine"],
                                _p50_in_fresh_process(bundle_dir, runs), result.seconds))
    return rows


def format_table(rows: list[DemoRow]) -> str:
    baseline = next((row for row in rows if row.mode == "float32"), rows[0])
    header = ("| mode | model bytes | size vs float32 | pooled cos (min) | sequence cos (min) "
              "| latency p50 (1 thread) | speed-up vs float32 |")
    lines = [header, "|---|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {row.mode} | {row.model_bytes:,} | {row.model_bytes / baseline.model_bytes:.2f}x "
                     f"| {row.pooled_min_cosine:.6f} | {row.sequence_min_cosine:.6f} | {row.latency_ms_p50:.2f} ms "
                     f"| {baseline.latency_ms_p50 / row.latency_ms_p50:.2f}x |")
    return "\n".join(lines)
