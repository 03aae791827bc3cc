"""Time a bundle with a bare ai_edge_litert Interpreter loop: an independent check on `edgebert bench`.

Nothing of edgebert's runner is used (no TFLiteModel, no signature runner call): the interpreter is
built directly, the signature's input/output tensor indices are looked up once, and each timed run is
set_tensor for every input + invoke() + get_tensor for every output, timed with perf_counter_ns. The
inputs are the same as the bench's: samples/sentences.txt tokenized with the bundle's tokenizer.json
(edgebert.tokenizer, the only edgebert code used), one sentence per call, cycled in the same order.

    python benchmarks/plain_loop.py BUNDLE [--runs 50] [--warmup 5] [--threads 1] [--no-xnnpack] [--json]

Prints the median latency in ms (with --json, one JSON line: median_ms, mean_ms, runs, peak_rss_mb).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edgebert import tokenizer as tokenization  # noqa: E402
from edgebert.samples import load_sentences  # noqa: E402


def plain_loop(bundle: Path, runs: int, warmup: int, threads: int, xnnpack: bool = True) -> dict:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    manifest = json.loads((bundle / "manifest.json").read_text())
    seq_len = manifest["recipe"]["seq_len"]
    seq_len = None if seq_len == "dynamic" else int(seq_len)
    tokenizer = tokenization.load_tokenizer(bundle / "tokenizer.json")
    sentences = load_sentences(limit=1 + warmup + runs)
    feeds = [tokenization.encode(tokenizer, [sentence], seq_len) for sentence in sentences]
    order = [feeds[i % len(feeds)] for i in range(1 + warmup + runs)]

    kwargs = {} if xnnpack else {"experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
    interpreter = Interpreter(model_path=str(bundle / "model.tflite"), num_threads=threads, **kwargs)
    runner = interpreter.get_signature_runner("serving_default")  # only to read the tensor indices by name
    inputs = {name: detail["index"] for name, detail in runner.get_input_details().items()}
    outputs = [detail["index"] for detail in runner.get_output_details().values()]
    del runner  # a live runner holds the native wrapper, which makes Interpreter.invoke() refuse to run
    interpreter.allocate_tensors()
    shape = None

    def call(feed):
        nonlocal shape
        if feed["input_ids"].shape != shape:  # dynamic bundles: resize to this sentence's length
            for name, index in inputs.items():
                interpreter.resize_tensor_input(index, feed[name].shape)
            interpreter.allocate_tensors()
            shape = feed["input_ids"].shape
        for name, index in inputs.items():
            interpreter.set_tensor(index, feed[name])
        interpreter.invoke()
        return [interpreter.get_tensor(index) for index in outputs]

    calls = iter(order)
    call(next(calls))  # first inference (applies XNNPACK)
    for _ in range(warmup):
        call(next(calls))
    timings = np.empty(runs, np.int64)
    for index in range(runs):
        feed = next(calls)
        start = time.perf_counter_ns()
        call(feed)
        timings[index] = time.perf_counter_ns() - start
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"median_ms": float(np.median(timings)) / 1e6, "mean_ms": float(timings.mean()) / 1e6, "runs": runs,
            "peak_rss_mb": (maxrss if sys.platform == "darwin" else maxrss * 1024) / 1e6}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--no-xnnpack", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args(argv)
    result = plain_loop(args.bundle, args.runs, args.warmup, args.threads, not args.no_xnnpack)
    print(json.dumps(result) if args.json else f"{result['median_ms']:.4f} ms median over {args.runs} runs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
