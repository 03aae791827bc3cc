"""One engine in one fresh process, driven over stdin/stdout by the orchestrator (JSON lines).

    python -m benchmarks.peer.worker        (then one request per line on stdin)

The first line is the spec {"engine", "kind": tf|ort|torch|executorch|tflite|tflite-cached|roofline, "threads", "model" or
"checkpoint", "seq_len", "inputs" (an .npz of int32 [N, S] input_ids / attention_mask / token_type_ids and
int32 [N] lengths), "warmup", "trim" (each text cut to its own length: the real-text set); tflite-cached adds
"weight_cache", the XNNPACK cache file; torch adds "quantize"}. The worker imports the runtime,
takes the memory baseline (edgebert.bench's helpers: VmRSS, with the VmHWM peak mark reset through
/proc/self/clear_refs), loads the model, makes the first call and the warm-up calls, and answers
{"ready": ...}. Then, per request:

    {"cmd": "run", "n": k, "warm": w}     w untimed calls, then k timed calls -> {"timings_ms": [...]}
    {"cmd": "outputs", "count": c, "path": P}   outputs of the first c inputs, saved to P (.npz)
    {"cmd": "finish"}                      -> {"memory": {...}, "facts": {...}} and exit

Inputs are used in order, cycling, one per call, so that every engine sees the same sentences in the
same order. Native libraries' output goes to stderr; stdout carries only the protocol.
The roofline worker instead times single FULLY_CONNECTED layers (benchmarks.peer.roofline) and answers once.
"""
from __future__ import annotations

import json
import os
import sys
import time


def _reply(channel, message: dict) -> None:
    channel.write(json.dumps(message) + "\n")
    channel.flush()


def _rss_breakdown() -> dict | None:
    """What the resident memory is, in MB (Linux): anonymous vs file-backed pages, and how much of each
    sits in transparent huge pages, which fill a whole 2 MB page whatever part of it is used."""
    import re
    try:
        status = open("/proc/self/status").read()
        rollup = open("/proc/self/smaps_rollup").read()
    except OSError:
        return None
    fields = dict(re.findall(r"^(\w+):\s+(\d+) kB", status + rollup, re.M))
    return {name: round(int(fields[name]) / 1024, 2)
            for name in ("RssAnon", "RssFile", "AnonHugePages", "FilePmdMapped") if name in fields}


def _padded(outputs: dict, width: int) -> dict:
    """sequence_output zero-padded to `width` tokens (a text run at its own length), so that the outputs of
    texts of different lengths stack; the agreement figures read only the real tokens."""
    import numpy as np
    sequence = outputs["sequence_output"]
    if sequence.shape[1] < width:
        sequence = np.pad(sequence, ((0, 0), (0, width - sequence.shape[1]), (0, 0)))
    return {**outputs, "sequence_output": sequence}


def serve(spec: dict, requests, channel) -> int:
    import numpy as np

    from edgebert.bench import _Memory  # the bench's own memory helpers (VmRSS / VmHWM / clear_refs)

    if spec["kind"] == "roofline":
        from benchmarks.peer.roofline import time_fc_models
        _reply(channel, {"timed": time_fc_models(spec["models"], int(spec["threads"]), int(spec["runs"]))})
        return 0

    from benchmarks.peer.engines import make_engine

    before_import = _Memory().current()
    engine = make_engine(spec)
    engine.import_runtime()
    with np.load(spec["inputs"]) as data:  # each data[name] access decompresses anew: once per array
        arrays = {name: data[name] for name in ("input_ids", "attention_mask", "token_type_ids")}
        lengths = data["lengths"] if "lengths" in data.files else None
    width = arrays["input_ids"].shape[1]
    # "trim": each text at its own length (the real-text set), else every row padded to the file's width
    ends = [int(n) for n in lengths] if spec.get("trim") and lengths is not None else [width] * len(arrays["input_ids"])
    raw_feeds = [{name: np.ascontiguousarray(value[i:i + 1, :ends[i]]) for name, value in arrays.items()}
                 for i in range(len(arrays["input_ids"]))]
    del arrays
    memory = _Memory()  # baseline: runtime imported, inputs read, nothing loaded; the peak mark is reset here

    start = time.perf_counter_ns()
    engine.load()
    load_ms = (time.perf_counter_ns() - start) / 1e6
    feeds = [engine.prepare_feed(feed) for feed in raw_feeds]  # ORT: int64, known once the session is up
    counter = 0

    def next_feed():
        nonlocal counter
        feed = feeds[counter % len(feeds)]
        counter += 1
        return feed

    start = time.perf_counter_ns()
    engine(next_feed())
    first_ms = (time.perf_counter_ns() - start) / 1e6
    for _ in range(int(spec.get("warmup", 5))):
        engine(next_feed())
    after_load = memory.current()
    _reply(channel, {"ready": True, "pid": os.getpid(), "runtime": engine.runtime, "call_path": engine.call_path,
                     "load_ms": round(load_ms, 3), "first_inference_ms": round(first_ms, 3),
                     "distinct_inputs": len(feeds), "feed_lengths": [min(ends), max(ends)]})

    for line in requests:
        if not line.strip():
            continue
        request = json.loads(line)
        command = request["cmd"]
        if command == "run":
            for _ in range(int(request.get("warm", 0))):
                engine(next_feed())
            timings = np.empty(int(request["n"]), np.int64)
            for index in range(len(timings)):
                feed = next_feed()
                start = time.perf_counter_ns()
                engine(feed)
                timings[index] = time.perf_counter_ns() - start
            _reply(channel, {"timings_ms": [round(t / 1e6, 5) for t in timings.tolist()]})
        elif command == "outputs":
            outputs = [_padded(engine(feeds[i % len(feeds)]), width) for i in range(int(request["count"]))]
            np.savez(request["path"], **{name: np.concatenate([o[name] for o in outputs]).astype(np.float32)
                                         for name in ("pooled_output", "sequence_output")})
            _reply(channel, {"saved": request["path"]})
        elif command == "finish":
            peak, end = memory.peak(), memory.current()
            baseline = memory.baseline

            def diff(a, b):
                return None if a is None or b is None else round(a - b, 2)
            _reply(channel, {"memory": {
                "baseline_rss_mb": None if baseline is None else round(baseline, 2),
                "peak_rss_mb": None if peak is None else round(peak, 2),
                "growth_mb": diff(peak, baseline),
                "after_load_rss_mb": None if after_load is None else round(after_load, 2),
                "end_rss_mb": None if end is None else round(end, 2),
                "resident_growth_mb": diff(end, baseline),
                "runtime_import_mb": diff(baseline, before_import),
                "method": memory.method(), "breakdown_at_end": _rss_breakdown()},
                "facts": engine.facts(), "calls": counter})
            return 0
        else:
            _reply(channel, {"error": f"unknown command {command!r}"})
    return 0


def main() -> int:
    sys.stdout.flush()
    channel = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # anything native that writes to fd 1 lands on stderr
    spec = json.loads(sys.stdin.readline())
    try:
        return serve(spec, sys.stdin, channel)
    except Exception as error:
        message = " ".join(f"{type(error).__name__}: {error}".split())[:800]
        _reply(channel, {"error": message})
        raise


if __name__ == "__main__":
    sys.exit(main())
