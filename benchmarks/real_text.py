"""Real text: fixed length 128 against length buckets and dynamic length, and the [CLS]-only last layer.

    python -m benchmarks.real_text --out DIR [--variants tiny,mini,small,medium]
                                   [--texts ../shared/data/glue/SST-2/dev.tsv] [--threads 1] [--rounds 2]
                                   [--buckets 16,32,64,128]

For each variant it writes a random-weight classifier checkpoint in Google's layout (2 labels; the
real uncased vocabulary when ../shared/data has it, so that texts get their real lengths) and converts
it, dynamic int8, four ways:

    128 full     --seq-len 128 --last-layer full     every text padded to 128, the whole last layer
    128          --seq-len 128                      the [CLS]-only last layer (the default for classifiers)
    dynamic      --seq-len dynamic                  each text at its own length (XNNPACK plans again
                                                    whenever the shape changes)
    buckets      --seq-len 16,32,64,128             each text at the shortest bucket that holds it
                                                    (--buckets: other lengths, the longest 128)

Each bundle is measured by `edgebert bench --per-text` in a fresh process on every text of --texts
(3 passes; a text's latency is the median of its passes), bundles interleaved over --rounds rounds;
the figure is the median over rounds of the mean latency per text. The fixed-shape p50 at 128 (the
bench's own timed runs) gives the [CLS]-only layer's speed-up at 128. Ratios come from one run on
one machine; the CPU's facts are printed with them. Writes DIR/results.json and DIR/results.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "data"
DEFAULT_TEXTS = SHARED / "glue" / "SST-2" / "dev.tsv"
REAL_VOCAB = SHARED / "vocab" / "bert_uncased_vocab.txt"
DEFAULT_BUCKETS = "16,32,64,128"
EXPORTS = {"128 full": ("128", "full"), "128": ("128", "auto"), "dynamic": ("dynamic", "auto"),
           "buckets": (DEFAULT_BUCKETS, "auto")}


def sentences(path: Path) -> list[str]:
    """The first column of a GLUE TSV (header skipped), or every line of a plain text file."""
    lines = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if path.suffix == ".tsv":
        return [line.split("\t")[0] for line in lines[1:]]
    return lines


def build_bundles(variant_name: str, out: Path, log, buckets: str = DEFAULT_BUCKETS) -> dict[str, Path]:
    """The variant's four bundles under out (reused when present); `buckets`: the bucket lengths."""
    from converters.config import BertConfig
    from converters.google_checkpoint import write_random_checkpoint
    from converters.pipeline import ConvertOptions, LastLayer, convert, parse_seq_lens
    from converters.vocab import synthetic_vocab
    from edgebert.variants import parse_variant

    variant = parse_variant(variant_name)
    checkpoint = out / f"{variant.nickname}.ckpt"
    if not (checkpoint / "bert_config.json").is_file():
        vocab = REAL_VOCAB.read_text(encoding="utf-8").splitlines() if REAL_VOCAB.is_file() else synthetic_vocab(None)
        config = BertConfig.from_variant(variant, vocab_size=len(vocab))
        write_random_checkpoint(config, checkpoint, vocab, seed=0, num_labels=2)
    bundles = {}
    for name, (lengths, last_layer) in {**EXPORTS, "buckets": (buckets, "auto")}.items():
        suffix = f"-{lengths.replace(',', '-')}" if name == "buckets" and lengths != DEFAULT_BUCKETS else ""
        target = out / f"{variant.nickname}.{name.replace(' ', '-')}{suffix}"
        if not (target / "manifest.json").is_file():
            log(f"converting {variant.nickname} ({name})")
            seq_len, buckets = parse_seq_lens(lengths)
            convert(checkpoint, target, ConvertOptions(seq_len=seq_len, buckets=buckets,
                                                       last_layer=LastLayer(last_layer)))
        bundles[name] = target
    return bundles


def measure(bundles: dict[str, dict[str, Path]], texts: Path, threads: int, rounds: int, log) -> dict:
    """{variant: {export: {"per_text_mean_ms": [...], "p50_ms": [...], "per_text": last record}}}."""
    from edgebert.bench import bench_in_fresh_process

    figures = {variant: {name: {"per_text_mean_ms": [], "p50_ms": []} for name in exports}
               for variant, exports in bundles.items()}
    for round_index in range(rounds):
        for variant, exports in bundles.items():
            for name, bundle in exports.items():
                log(f"round {round_index + 1}/{rounds}: {variant} {name}")
                result = bench_in_fresh_process(bundle, threads=threads, runs=100, warmup=10, inputs_file=texts,
                                                per_text=True)
                if "error" in result:
                    raise SystemExit(f"error: {bundle}: {result['error']}")
                cell = figures[variant][name]
                cell["per_text_mean_ms"].append(result["per_text"]["latency_ms"]["mean"])
                cell["p50_ms"].append(result["latency_ms"]["p50"])
                cell["per_text"] = result["per_text"]
                cell["model_bytes"] = result["bundle"]["model_bytes"]
                cell.setdefault("anon_growth_mb", []).append(result["memory"]["anon_growth_mb"])
    return figures


def summarize(figures: dict) -> list[dict]:
    rows = []
    for variant, exports in figures.items():
        mean = {name: statistics.median(cell["per_text_mean_ms"]) for name, cell in exports.items()}
        p50 = {name: statistics.median(cell["p50_ms"]) for name, cell in exports.items()}
        rows.append({"variant": variant, "per_text_mean_ms": mean, "fixed_p50_ms": p50,
                     "bytes": {name: cell["model_bytes"] for name, cell in exports.items()},
                     "anon_growth_mb": {name: statistics.median(cell["anon_growth_mb"]) for name, cell in exports.items()
                                        if None not in cell["anon_growth_mb"]},
                     "lengths": exports["buckets"]["per_text"]["lengths"],
                     "tokens_mean": exports["buckets"]["per_text"]["tokens_mean"],
                     "buckets_vs_128": mean["128"] / mean["buckets"],
                     "buckets_vs_128_full": mean["128 full"] / mean["buckets"],
                     "buckets_vs_dynamic": mean["dynamic"] / mean["buckets"],
                     "cls_only_at_128": p50["128 full"] / p50["128"],
                     "bucket_bytes": exports["buckets"]["model_bytes"] / exports["128"]["model_bytes"]})
    return rows


def _anon(row: dict, name: str) -> str:
    value = row["anon_growth_mb"].get(name)
    return "-" if value is None else f"{value:.1f}"


def markdown(rows: list[dict], facts: dict, texts: int, threads: int, rounds: int) -> str:
    lines = [f"Mean latency per text over {texts} texts, dynamic int8, {threads} thread(s), median of {rounds} "
             "rounds (ms):", "",
             "| variant | 128, full last layer | 128 | dynamic | buckets | buckets vs 128 | buckets vs dynamic "
             "| [CLS]-only at 128 (p50) | bucket bytes | anon MB, 128 → buckets |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for row in rows:
        mean = row["per_text_mean_ms"]
        lines.append(f"| {row['variant']} | {mean['128 full']:.3f} | {mean['128']:.3f} | {mean['dynamic']:.3f} | "
                     f"{mean['buckets']:.3f} | {row['buckets_vs_128']:.2f}× ({row['buckets_vs_128_full']:.2f}× "
                     f"vs full) | {row['buckets_vs_dynamic']:.2f}× | {row['cls_only_at_128']:.2f}× "
                     f"({row['fixed_p50_ms']['128 full']:.3f} → {row['fixed_p50_ms']['128']:.3f}) | "
                     f"{row['bucket_bytes']:.3f}× | {_anon(row, '128')} → {_anon(row, 'buckets')} |")
    first = rows[0]
    spread = ", ".join(f"{count} at {length}" for length, count in first["lengths"].items())
    lines += ["", f"Texts: {first['tokens_mean']:.1f} word pieces on average; buckets took {spread}.",
              f"CPU: {facts.get('cpu_model', '?')}; features {facts.get('cpu_features', '?')}; "
              f"int8 kernels {facts.get('int8_kernels', '?')}."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--variants", default="tiny,mini,small,medium")
    parser.add_argument("--texts", type=Path, default=DEFAULT_TEXTS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--buckets", default=DEFAULT_BUCKETS,
                        help=f"the bucketed bundle's lengths, comma-separated, the longest 128 (default {DEFAULT_BUCKETS})")
    args = parser.parse_args(argv)
    if args.buckets.split(",")[-1] != "128":
        raise SystemExit(f"error: --buckets {args.buckets}: the longest length must be 128, as the bundles it is "
                         "compared with")
    if not args.texts.is_file():
        raise SystemExit(f"error: {args.texts}: no such file (give --texts, one sentence per line or a GLUE TSV)")

    from edgebert import cpu_features
    from edgebert.device_info import device_facts

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)

    args.out.mkdir(parents=True, exist_ok=True)
    texts = sentences(args.texts)
    bundles = {name: build_bundles(name, args.out, log, args.buckets) for name in args.variants.split(",")}
    with tempfile.TemporaryDirectory(prefix="edgebert-real-text-") as scratch:
        text_file = Path(scratch) / "texts.txt"
        text_file.write_text("\n".join(texts) + "\n", encoding="utf-8")
        figures = measure(bundles, text_file, args.threads, args.rounds, log)
    rows = summarize(figures)
    facts = {**device_facts(), **cpu_features.device_facts()}
    report = markdown(rows, facts, len(texts), args.threads, args.rounds)
    (args.out / "results.json").write_text(json.dumps({"device": facts, "texts": str(args.texts), "rows": rows,
                                                       "raw": figures}, indent=2) + "\n")
    (args.out / "results.md").write_text(report)
    print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
