"""Measure bundles on the device: latency, load time, memory. One result per bundle, per edgebert.results.

`bench_bundle` measures one bundle in the current process. `bench_in_fresh_process` runs it in a new
Python process (`python -m edgebert.bench '<json options>'`), so every bundle starts from the same clean
baseline and its memory figures are its own; `bench_many` does that for a list of bundles and returns a
results file. Nothing here imports TensorFlow (unless runtime="tensorflow" is asked for), and every
result says whether the process had it loaded (`tensorflow_imported`).

What is measured, in order, in one process:

1. memory baseline: the runtime module is imported first (its import is reported separately as
   `memory.runtime_import_mb`), then the peak-RSS mark is reset (Linux: "5" written to
   /proc/self/clear_refs, so VmHWM counts from here) and VmRSS is the baseline. Where /proc is missing
   (macOS) the baseline and peak are `resource.getrusage().ru_maxrss` (kilobytes on Linux, bytes on
   macOS), which cannot be reset; `memory.method` says which was used. MB here are 10^6 bytes.
2. the bundle is read and the inputs prepared: REAL text (samples/sentences.txt, or one sentence per line
   of `inputs_file`), tokenized with the bundle's own tokenizer.json, one [1, S] input per sentence,
   cycled run by run (never zeros). A fixed bundle uses its S; a dynamic bundle uses `seq_len` when given
   (padded to it), else each sentence's own length (`settings.seq_len` is then "dynamic").
3. `load_ms`: constructing the TFLiteModel (interpreter + signature runner); `first_inference_ms`: the
   first call, which allocates the tensors and applies XNNPACK.
4. `warmup` calls (not recorded), then `runs` calls, each timed with perf_counter_ns around
   `TFLiteModel.__call__` (what an app calling edgebert pays). Stats over all runs, outliers kept:
   mean, std (sample), min, p50/p90/p99 (numpy's linear percentiles), max; throughput = 1000 / mean.
5. `python_overhead_ms`: the Python side of that call path. Building a trivial .tflite needs TensorFlow,
   which the device side may not import, so instead it is measured on the SAME model: up to 20 pairs of
   (a full `TFLiteModel.__call__`, then a bare `interpreter.invoke()` on the inputs that call just set),
   timed back to back; the overhead is the median of the per-pair differences (clamped at 0). It covers
   feeding by name (dtype conversion, resize/allocate checks, set_tensor copies) and copying the outputs
   out, i.e. everything but the native graph execution. `invoke_p50_ms` is the bare invoke's median.
6. `xnnpack_applied`: whether the default delegate took any part of the graph, read from the graph
   itself after the first call: XNNPACK replaces each run of nodes it accepts by a DELEGATE node
   (`TFLiteModel.delegate_partitions`, also reported as `xnnpack_partitions`). With `xnnpack=False` the
   interpreter uses the builtin op resolver without default delegates and this is False.
7. peak RSS (VmHWM) and its growth over the baseline; and, after the timed runs, the growth of anonymous
   memory (RssAnon: the heap, XNNPACK's packed weights included, which a phone cannot reclaim) apart
   from file-backed pages (RssFile: the mapped model, which the kernel may drop and read again).
8. with `per_text=True`: every text of the inputs is timed PER_TEXT_PASSES times, each at the length it
   gets (its own bucket in a model with length buckets, its own length in a dynamic model, S otherwise);
   a text's latency is the median of its passes, and `per_text` gives the mean, p50 and p90 over the
   texts with the mean tokens and how many texts each length took: what a stream of real text costs.
9. with `soak=N`, after all of the above: N more calls on the SAME model (real text, cycled), with RSS
   sampled about every N/200 calls (`SOAK_SAMPLES`): VmRSS, and from Linux's /proc/self/status RssAnon
   (the heap: what a leak grows) and RssFile (mapped files, which the page cache decides). The first 10 %
   of the calls settle caches and allocator pools; `soak.growth_mb` is each figure's change over the last
   90 % (last sample minus the sample at 10 %), `max_growth_mb` its highest point over that reference,
   and `slope_kb_per_1000` the least-squares slope of the last 90 %'s samples. The p50 latency of the
   first and the last 10 % of the calls shows a slowdown, if any. `soak_summary` does the arithmetic.
   With length buckets the lengths take turns (`soak_order`): the length changes on every call, and
   `soak.lengths` and `soak.length_changes` say so.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

from edgebert.errors import BundleError, EdgebertError, UsageError
from edgebert.results import BENCH_SCHEMA, check_result

DEFAULTS = {"threads": 1, "runs": 50, "warmup": 5, "seq_len": None, "xnnpack": True, "runtime": "auto",
            "inputs_file": None, "weight_cache": None, "soak": None, "per_text": False}
OVERHEAD_PAIRS = 20
MB = 1e6
SOAK_SAMPLES = 200  # RSS samples over a soak (about one every N/200 calls)
SOAK_SETTLE = 0.1  # the share of a soak's calls before the reference sample
PER_TEXT_PASSES = 3  # timings of each text in per-text mode; its latency is their median
_RUNTIME_CHOICES = ("auto", "ai-edge-litert", "tflite-runtime", "tensorflow")


# --- options and bundles, checked before anything is measured -------------------------------------------

def check_options(*, threads=1, runs=50, warmup=5, seq_len=None, xnnpack=True, runtime="auto",
                  inputs_file=None, weight_cache=None, soak=None, per_text=False) -> dict:
    """The options as a plain dict, or a one-line UsageError for a value that cannot work."""
    def integer(name, value, least):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise UsageError(f"--{name.replace('_', '-')} must be an integer of at least {least}, got {value!r}")
    integer("threads", threads, 1)
    integer("runs", runs, 1)
    integer("warmup", warmup, 0)
    if seq_len is not None:
        integer("seq_len", seq_len, 3)
    if soak is not None:
        integer("soak", soak, 10)
    if runtime not in _RUNTIME_CHOICES:
        raise UsageError(f"unknown runtime {runtime!r} (choose from {', '.join(_RUNTIME_CHOICES)})")
    if weight_cache is not None and not xnnpack:
        raise UsageError("--weight-cache caches XNNPACK's packed weights; it cannot go with --no-xnnpack")
    if weight_cache is not None and Path(weight_cache).exists() and not Path(weight_cache).is_dir():
        raise UsageError(f"--weight-cache must be a directory: {weight_cache} is a file")
    return {"threads": threads, "runs": runs, "warmup": warmup, "seq_len": seq_len, "xnnpack": bool(xnnpack),
            "runtime": runtime, "inputs_file": None if inputs_file is None else os.fspath(inputs_file),
            "weight_cache": None if weight_cache is None else os.fspath(weight_cache), "soak": soak,
            "per_text": bool(per_text)}


def weight_cache_file(cache_dir, bundle) -> Path:
    """One cache file per model (by content): packed weights of another model must never be mapped."""
    from edgebert.bundle import MODEL_FILE

    return Path(cache_dir) / f"{bundle.manifest['files'][MODEL_FILE]['sha256'][:32]}.xnnpack-cache"


def _manifest_value(bundle, *keys):
    value = bundle.manifest
    try:
        for key in keys:
            value = value[key]
    except (KeyError, TypeError, IndexError):
        raise BundleError(f"manifest lacks {'.'.join(map(str, keys))}", bundle.path / "manifest.json") from None
    return value


def bundle_facts(bundle) -> dict:
    """The `bundle` block of a result, from the manifest (a manifest missing a key is a BundleError)."""
    seq_len = _manifest_value(bundle, "recipe", "seq_len")
    if not (seq_len == "dynamic" or (isinstance(seq_len, int) and seq_len > 0)):
        raise BundleError(f"manifest recipe.seq_len is {seq_len!r} (expected a length or 'dynamic')",
                          bundle.path / "manifest.json")
    source = bundle.manifest.get("source") or {}
    return {"path": str(Path(bundle.path).resolve()), "name": Path(bundle.path).resolve().name,
            "model_bytes": bundle.model_path.stat().st_size,
            "model_sha256": (bundle.manifest.get("files", {}).get("model.tflite") or {}).get("sha256"),
            "quantize": _manifest_value(bundle, "recipe", "quantize"), "seq_len": seq_len,
            "head": _manifest_value(bundle, "head"), "variant": source.get("variant"),
            "layers": _manifest_value(bundle, "model", "num_layers"),
            "hidden": _manifest_value(bundle, "model", "hidden_size"),
            "heads": _manifest_value(bundle, "model", "num_heads"),
            "parameters": (bundle.manifest.get("sizes") or {}).get("parameters"),
            "random_weights": source.get("random_weights"),
            "compat": (bundle.manifest.get("recipe") or {}).get("compat")}


def resolve_seq_len(bundle, seq_len: int | None) -> int | None:
    """The length to feed: a fixed bundle's own (a different --seq-len is an error), or for a dynamic
    bundle the one asked for (None: each sentence's own length)."""
    fixed = bundle_facts(bundle)["seq_len"]
    if fixed != "dynamic":
        if seq_len is not None and seq_len != fixed:
            raise UsageError(f"bundle has a fixed sequence length of {fixed}; --seq-len {seq_len} needs a bundle "
                             "converted with --seq-len dynamic", bundle.path)
        return fixed
    if seq_len is None:
        return None
    limit = min(512, int(_manifest_value(bundle, "model", "max_positions")))
    if not 3 <= seq_len <= limit:
        raise UsageError(f"--seq-len {seq_len} is outside 3..{limit} for this model", bundle.path)
    return seq_len


def _open_checked(bundle_dir, options: dict):
    """Read the bundle and check every option against it, before anything is timed or spawned."""
    from edgebert.bundle import read_bundle
    from edgebert.samples import load_sentences

    bundle = read_bundle(bundle_dir)
    bundle_facts(bundle)
    length = resolve_seq_len(bundle, options["seq_len"])
    load_sentences(options["inputs_file"], limit=1)  # a missing or empty file fails here, in one line
    return bundle, length


# --- memory ---------------------------------------------------------------------------------------------

def _proc_status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        return None
    return None


def _proc_status_fields(fields: tuple[str, ...]) -> dict[str, int] | None:
    """Several /proc/self/status figures (kB) from one read, or None where there is no such file."""
    found = {}
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                name, _, rest = line.partition(":")
                if name in fields:
                    found[name] = int(rest.split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return found if len(found) == len(fields) else None


def _maxrss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # Windows
        return None
    value = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return value if sys.platform == "darwin" else value * 1024


def _reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, when the process may write its clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        return True
    except OSError:
        return False


class _Memory:
    def __init__(self):
        self.proc = _proc_status_kb("VmRSS") is not None
        self.reset = self.proc and _reset_peak()
        self.baseline = self.current()
        self.baseline_kinds = _proc_status_fields(("RssAnon", "RssFile"))

    def growth_by_kind(self) -> dict:
        """Anonymous memory (the heap: what the interpreter allocates, packed weights included; a phone
        cannot reclaim it) and file-backed pages (the mapped model, which the kernel can drop and read
        again), each now against the baseline, in MB; None without /proc."""
        now = _proc_status_fields(("RssAnon", "RssFile"))
        if now is None or self.baseline_kinds is None:
            return {"anon_growth_mb": None, "file_growth_mb": None}
        return {"anon_growth_mb": _round((now["RssAnon"] - self.baseline_kinds["RssAnon"]) * 1024 / MB, 2),
                "file_growth_mb": _round((now["RssFile"] - self.baseline_kinds["RssFile"]) * 1024 / MB, 2)}

    def current(self) -> float | None:
        kb = _proc_status_kb("VmRSS") if self.proc else None
        if kb is not None:
            return kb * 1024 / MB
        maxrss = _maxrss_bytes()
        return None if maxrss is None else maxrss / MB

    def peak(self) -> float | None:
        kb = _proc_status_kb("VmHWM") if self.proc else None
        if kb is not None:
            return kb * 1024 / MB
        maxrss = _maxrss_bytes()
        return None if maxrss is None else maxrss / MB

    def method(self) -> str:
        if self.proc:
            return "VmRSS/VmHWM, peak reset by clear_refs" if self.reset else "VmRSS/VmHWM (peak not resettable)"
        return "ru_maxrss" if _maxrss_bytes() is not None else "unavailable"


# --- one bundle, in this process ------------------------------------------------------------------------

def _ms(ns) -> float:
    return float(ns) / 1e6


def _round(value: float | None, digits: int = 4):
    return None if value is None else round(float(value), digits)


def latency_stats(timings_ms) -> dict:
    """mean, std (sample), min, p50, p90, p99, max of the runs, outliers kept."""
    import numpy as np

    values = np.asarray(timings_ms, dtype=np.float64)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"mean": _round(values.mean()), "std": _round(values.std(ddof=1) if len(values) > 1 else 0.0),
            "min": _round(values.min()), "p50": _round(p50), "p90": _round(p90), "p99": _round(p99),
            "max": _round(values.max())}


def _prepare_inputs(bundle, seq_len: int | None, inputs_file, count: int | None):
    """One feed dict per sentence (int32 [1, S] each: S is the bundle's length, or the shortest of its
    length buckets that holds the sentence), the tokenizer's median time per text, mean tokens."""
    import numpy as np

    from edgebert import tokenizer as tokenization
    from edgebert.samples import load_sentences

    tokenizer = tokenization.load_tokenizer(bundle.tokenizer_path)
    sentences = load_sentences(inputs_file, limit=None if count is None else max(1, count))
    buckets = bundle.seq_lens if seq_len == bundle.seq_len else ()
    feeds, took, tokens = [], [], []
    for sentence in sentences:
        start = time.perf_counter_ns()
        encoded = tokenization.encode(tokenizer, [sentence], seq_len, buckets=buckets)
        took.append(time.perf_counter_ns() - start)
        feeds.append({name: np.ascontiguousarray(value) for name, value in encoded.items()})
        tokens.append(int(encoded["attention_mask"].sum()))
    return feeds, _ms(np.median(took)), float(np.mean(tokens))


def bench_bundle(bundle_dir, *, threads: int = 1, runs: int = 50, warmup: int = 5, seq_len: int | None = None,
                 xnnpack: bool = True, runtime: str = "auto", inputs_file=None, weight_cache=None,
                 soak: int | None = None, per_text: bool = False) -> dict:
    """Measure one bundle in this process; return one result (see the module docstring and edgebert.results)."""
    import numpy as np

    from edgebert.bundle import read_bundle
    from edgebert.interpreter import TFLiteModel, find_runtime

    options = check_options(threads=threads, runs=runs, warmup=warmup, seq_len=seq_len, xnnpack=xnnpack,
                            runtime=runtime, inputs_file=inputs_file, weight_cache=weight_cache, soak=soak,
                            per_text=per_text)
    before_runtime = _Memory().current()
    found = find_runtime(runtime)  # imported before the baseline: its cost is reported on its own
    memory = _Memory()

    bundle = read_bundle(bundle_dir)
    facts = bundle_facts(bundle)
    length = resolve_seq_len(bundle, seq_len)
    feeds, tokenize_ms, tokens_mean = _prepare_inputs(bundle, length, inputs_file,
                                                       runs + warmup + 1 + (soak or 0))
    order = [feeds[i % len(feeds)] for i in range(1 + warmup + runs)]  # a different sentence each call
    cycle = iter(order)

    cache = weight_cache_file(weight_cache, bundle) if weight_cache else None
    cache_was_warm = bool(cache and cache.is_file())
    start = time.perf_counter_ns()
    model = TFLiteModel(bundle.model_path, num_threads=threads, runtime=found.name, use_xnnpack=xnnpack,
                        weight_cache=cache)
    load_ns = time.perf_counter_ns() - start

    feed = next(cycle)
    start = time.perf_counter_ns()
    model(**feed)
    first_ns = time.perf_counter_ns() - start
    partitions = model.delegate_partitions()

    for _ in range(warmup):
        model(**next(cycle))

    timings = np.empty(runs, dtype=np.int64)
    for index in range(runs):
        feed = next(cycle)
        start = time.perf_counter_ns()
        model(**feed)
        timings[index] = time.perf_counter_ns() - start
    latency = latency_stats(timings / 1e6)

    overhead_ms, invoke_ms = _python_overhead(model, order[1:], min(runs, OVERHEAD_PAIRS))
    peak = memory.peak()
    by_kind = memory.growth_by_kind()  # after the timed runs, before per-text and soak calls add theirs
    texts = None
    if per_text:  # every text of the file, not only the first runs + warmup + 1 of them
        every_text = _prepare_inputs(bundle, length, inputs_file, None)[0]
        texts = per_text_latency(model, every_text, PER_TEXT_PASSES)
    soaked = None if soak is None else run_soak(model, feeds, soak)
    mean = latency["mean"]
    result = {
        "bundle": facts,
        "settings": {"threads": threads, "runs": runs, "warmup": warmup, "xnnpack": bool(xnnpack),
                     "seq_len": length if length is not None else "dynamic",
                     **({"seq_lens": list(bundle.seq_lens)} if length == bundle.seq_len and
                        len(bundle.seq_lens) > 1 else {}),
                     "inputs": options["inputs_file"] or "samples/sentences.txt",
                     "distinct_inputs": len(feeds), "tokens_mean": _round(tokens_mean, 2),
                     "weight_cache": (None if cache is None else
                                      {"file": str(cache), "warm": cache_was_warm,
                                       "bytes": cache.stat().st_size if cache.is_file() else None}),
                     **({"soak": soak} if soak is not None else {})},
        "runtime": {"name": found.name, "version": found.version},
        "xnnpack_applied": None if partitions is None else partitions > 0,
        "xnnpack_partitions": partitions,
        "load_ms": _round(_ms(load_ns)),
        "first_inference_ms": _round(_ms(first_ns)),
        "latency_ms": latency,
        "throughput_per_s": _round(1000.0 / mean, 2) if mean else None,
        "python_overhead_ms": _round(overhead_ms),
        "invoke_p50_ms": _round(invoke_ms),
        "tokenize_ms": _round(tokenize_ms),
        "memory": {"baseline_rss_mb": _round(memory.baseline, 2), "peak_rss_mb": _round(peak, 2),
                   "growth_mb": _round(None if peak is None or memory.baseline is None else peak - memory.baseline, 2),
                   "runtime_import_mb": _round(None if before_runtime is None or memory.baseline is None
                                               else memory.baseline - before_runtime, 2),
                   **by_kind,
                   "method": memory.method()},
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "pid": os.getpid(),
        "tensorflow_imported": tensorflow_imported(),
        **({"per_text": texts} if texts is not None else {}),
        **({"soak": soaked} if soaked is not None else {}),
    }
    return check_result(result)


def per_text_latency(model, feeds: list, passes: int) -> dict:
    """Each feed timed `passes` times, pass after pass over all of them; a text's latency is the median
    of its passes (module docstring, step 8)."""
    import numpy as np

    timings = np.empty((passes, len(feeds)), dtype=np.int64)
    for repeat in range(passes):
        for index, feed in enumerate(feeds):
            start = time.perf_counter_ns()
            model(**feed)
            timings[repeat, index] = time.perf_counter_ns() - start
    per_text = np.median(timings, axis=0) / 1e6
    p50, p90 = np.percentile(per_text, [50, 90])
    widths = [int(feed["input_ids"].shape[-1]) for feed in feeds]
    return {"texts": len(feeds), "passes": passes,
            "tokens_mean": _round(np.mean([int(feed["attention_mask"].sum()) for feed in feeds]), 2),
            "lengths": {str(width): widths.count(width) for width in sorted(set(widths))},
            "latency_ms": {"mean": _round(per_text.mean()), "p50": _round(p50), "p90": _round(p90)}}


# --- the soak: many calls on one model, memory sampled along the way -------------------------------------

_SOAK_FIELDS = ("VmRSS", "RssAnon", "RssFile")
_SOAK_NAMES = {"VmRSS": "rss", "RssAnon": "anon", "RssFile": "file"}


def run_soak(model, feeds: list, calls: int) -> dict:
    """`calls` inferences on `model`, cycling through `feeds`, sampling RSS (module docstring, step 8)."""
    import numpy as np

    every = max(1, calls // SOAK_SAMPLES)
    # [calls done, VmRSS kB, RssAnon kB, RssFile kB], allocated up front: the sampler itself must not grow
    samples = np.full((calls // every + 2, 1 + len(_SOAK_FIELDS)), -1, dtype=np.int64)
    taken = 0

    def sample(done: int):
        nonlocal taken
        status = _proc_status_fields(_SOAK_FIELDS)
        if status is not None:
            samples[taken] = (done, *(status[field] for field in _SOAK_FIELDS))
            taken += 1

    order = soak_order(feeds, calls)
    # Filled now, not reserved: np.empty leaves the pages untouched, and the kernel would map them in
    # during the soak, 8 bytes a call, which the soak would report as the model's growth.
    timings = np.full(calls, -1, dtype=np.int64)
    sample(0)
    for index in range(calls):
        feed = feeds[order[index]]
        start = time.perf_counter_ns()
        model(**feed)
        timings[index] = time.perf_counter_ns() - start
        if (index + 1) % every == 0 or index + 1 == calls:
            sample(index + 1)
    tenth = max(1, int(calls * SOAK_SETTLE))
    widths = [_width(feeds[i]) for i in order]
    lengths = {} if len(set(widths)) < 2 else {  # length buckets: how many calls each took, how often it changed
        "lengths": {str(w): widths.count(w) for w in sorted(set(widths))},
        "length_changes": sum(a != b for a, b in zip(widths, widths[1:]))}
    return {**soak_summary(samples[:taken].tolist(), calls),
            "p50_first_ms": _round(_ms(np.median(timings[:tenth]))),
            "p50_last_ms": _round(_ms(np.median(timings[-tenth:]))), **lengths}


def _width(feed: dict) -> int | None:
    ids = feed.get("input_ids")
    return None if ids is None else int(ids.shape[-1])


def soak_order(feeds: list, calls: int) -> list[int]:
    """Which feed each soak call runs. One width (a single-length bundle): the feeds in turn. Several
    (length buckets, each feed padded to its own): the widths take turns, shortest to longest, each
    cycling through its own feeds, so the length changes on every call and the switching between the
    model's signatures is what the soak exercises."""
    groups: dict = {}
    for index, feed in enumerate(feeds):
        groups.setdefault(_width(feed), []).append(index)
    if len(groups) < 2:
        return [index % len(feeds) for index in range(calls)]
    turns = [groups[width] for width in sorted(groups)]
    return [turns[index % len(turns)][(index // len(turns)) % len(turns[index % len(turns)])]
            for index in range(calls)]


def soak_summary(samples: list, calls: int) -> dict:
    """The soak's memory figures from its samples [calls done, VmRSS kB, RssAnon kB, RssFile kB]: for
    each of rss, anon and file, the change over the last 90 % of the calls (last sample minus the first
    sample at or after 10 %), the highest point over that reference, and the least-squares slope of the
    last 90 %'s samples in kB per 1,000 calls. Without /proc (no samples) every figure is None."""
    import numpy as np

    base = {"calls": calls, "samples": len(samples), "settle_calls": int(calls * SOAK_SETTLE),
            "method": "/proc/self/status VmRSS, RssAnon, RssFile" if samples else "unavailable"}
    if len(samples) < 2:
        return {**base, **{key: {name: None for name in _SOAK_NAMES.values()}
                           for key in ("start_mb", "growth_mb", "max_growth_mb", "slope_kb_per_1000")}}
    table = np.asarray(samples, dtype=np.float64)
    after = table[table[:, 0] >= calls * SOAK_SETTLE]
    if len(after) < 2:
        after = table[-2:]
    reference, last = after[0], after[-1]
    figures = {"start_mb": {}, "growth_mb": {}, "max_growth_mb": {}, "slope_kb_per_1000": {}}
    for column, field in enumerate(_SOAK_FIELDS, start=1):
        name = _SOAK_NAMES[field]
        figures["start_mb"][name] = _round(reference[column] * 1024 / MB, 3)
        figures["growth_mb"][name] = _round((last[column] - reference[column]) * 1024 / MB, 3)
        figures["max_growth_mb"][name] = _round((after[:, column].max() - reference[column]) * 1024 / MB, 3)
        spread = after[:, 0] - after[:, 0].mean()
        slope = float((spread * (after[:, column] - after[:, column].mean())).sum() / (spread ** 2).sum())
        figures["slope_kb_per_1000"][name] = _round(slope * 1000, 3)
    return {**base, **figures, "series": [[int(v) for v in row] for row in table[:: max(1, len(table) // 50)]]}


def _python_overhead(model, feeds: list, pairs: int) -> tuple[float, float]:
    """(median of [full call - bare invoke] per pair, median bare invoke), in ms; see the module docstring."""
    import numpy as np

    calls, invokes = np.empty(pairs, np.int64), np.empty(pairs, np.int64)
    for index in range(pairs):
        feed = feeds[index % len(feeds)]
        invoke = _bare_invoke(model, feed)
        start = time.perf_counter_ns()
        model(**feed)
        calls[index] = time.perf_counter_ns() - start
        start = time.perf_counter_ns()
        invoke()  # the same inputs, already set by the call above
        invokes[index] = time.perf_counter_ns() - start
    return max(0.0, _ms(np.median(calls - invokes))), _ms(np.median(invokes))


def _bare_invoke(model, feed: dict) -> Callable[[], None]:
    """The native Invoke of the subgraph of the signature `feed` goes to, as its runner calls it.

    (`Interpreter.invoke()` refuses to run while a signature runner holds the native wrapper: its
    reference-count safety check counts the runner's reference as an outstanding numpy buffer.)"""
    runner = model.runner_for(feed)
    if hasattr(runner, "bare_invoke"):  # CompiledModel with the weight cache
        return runner.bare_invoke
    wrapper = getattr(runner, "_interpreter_wrapper", None) or model.interpreter._interpreter
    subgraph = getattr(runner, "_subgraph_index", None)
    if subgraph is None:
        return wrapper.Invoke
    return lambda: wrapper.Invoke(subgraph)


def tensorflow_imported() -> bool:
    return any(name == "tensorflow" or name.startswith("tensorflow.") or name == "tf_keras" for name in sys.modules)


# --- one bundle, in a fresh process ---------------------------------------------------------------------

def failed_result(bundle_dir, error: str) -> dict:
    path = Path(bundle_dir).resolve()
    line = " ".join(str(error).split()) or "unknown failure"
    return {"bundle": {"path": str(path), "name": path.name}, "error": line[:500]}


def _last_line(text: str) -> str:
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    return lines[-1] if lines else ""


def _worker_env() -> dict:
    """This process's environment, with this edgebert's checkout first on the worker's path."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([root] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    return env


def bench_in_fresh_process(bundle_dir, *, timeout: float | None = None, python: str | None = None,
                           **options) -> dict:
    """bench_bundle in a new `python -m edgebert.bench` process; return its result.

    A bad bundle or option raises (BundleError / UsageError) before anything is spawned. A worker that
    fails (non-zero exit, killed, no JSON, timeout) gives a failed result {"bundle", "error"} instead.
    `python` runs the worker with another interpreter (a venv with tflite-runtime, say)."""
    options = check_options(**{**DEFAULTS, **options})
    _open_checked(bundle_dir, options)
    request = {"bundle_dir": str(Path(bundle_dir).resolve()), **options}
    command = [python or sys.executable, "-m", "edgebert.bench", json.dumps(request)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, errors="replace", timeout=timeout,
                              env=_worker_env(), stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        return failed_result(bundle_dir, f"benchmark worker timed out after {timeout:g} s")
    except OSError as error:
        return failed_result(bundle_dir, f"cannot start the benchmark worker {command[0]}: {error.strerror}")
    return _worker_result(bundle_dir, done)


def _worker_result(bundle_dir, done: subprocess.CompletedProcess) -> dict:
    if done.returncode < 0:
        try:
            name = signal.Signals(-done.returncode).name
        except ValueError:
            name = f"signal {-done.returncode}"
        return failed_result(bundle_dir, f"benchmark worker killed by {name}" +
                             (" (out of memory?)" if name == "SIGKILL" else ""))
    try:
        result = json.loads(_last_line(done.stdout))
        if not isinstance(result, dict):
            raise ValueError("not an object")
        check_result(result)
    except ValueError:
        why = _last_line(done.stderr) or _last_line(done.stdout) or "no output"
        return failed_result(bundle_dir, f"benchmark worker exited with code {done.returncode} "
                                         f"without a result: {why}")
    if "error" in result:
        return failed_result(bundle_dir, result["error"])
    if done.returncode != 0:
        return failed_result(bundle_dir, f"benchmark worker exited with code {done.returncode}: "
                                         f"{_last_line(done.stderr) or 'no message'}")
    return result


def bench_many(bundle_dirs, *, progress: Callable[[int, int, str | None], None] | None = None,
               timeout: float | None = None, python: str | None = None, **options) -> dict:
    """Each bundle in its own fresh process; the results file {"schema", "device", "results"}.

    Every bundle and option is checked first, so a bad one fails before anything is measured.
    `progress(done, total, name)` is called before each bundle and once at the end (name None)."""
    from edgebert import cpu_features  # the features that pick XNNPACK's int8 kernels, and their family
    from edgebert.device_info import device_facts

    options = check_options(**{**DEFAULTS, **options})
    bundle_dirs = [Path(path) for path in bundle_dirs]
    if not bundle_dirs:
        raise UsageError("no bundle to benchmark")
    for path in bundle_dirs:
        _open_checked(path, options)
    results = []
    for done, path in enumerate(bundle_dirs):
        if progress:
            progress(done, len(bundle_dirs), path.name)
        results.append(bench_in_fresh_process(path, timeout=timeout, python=python, **options))
    if progress:
        progress(len(bundle_dirs), len(bundle_dirs), None)
    return {"schema": BENCH_SCHEMA, "device": {**device_facts(), **cpu_features.device_facts()}, "results": results}


# --- the table ------------------------------------------------------------------------------------------

_COLUMNS = ("bundle", "mode", "seq", "thr", "MB", "load ms", "p50 ms", "p90 ms", "p99 ms", "inf/s", "peak MB",
            "growth MB", "anon MB", "xnnpack", "runtime")


def _fmt(value, spec: str) -> str:
    if value is None:
        return "-"
    return format(value, spec)


def format_table(results_file: dict) -> str:
    """A readable terminal table of a results file, one row per bundle, then the device."""
    rows = []
    for result in results_file.get("results", []):
        bundle = result.get("bundle", {})
        if "error" in result:
            rows.append((bundle.get("name", "?"), f"FAILED: {result['error']}"))
            continue
        memory, latency, settings = result["memory"], result["latency_ms"], result["settings"]
        applied = result.get("xnnpack_applied")
        seq = ",".join(map(str, settings["seq_lens"])) if settings.get("seq_lens") else str(settings.get("seq_len"))
        rows.append((bundle.get("name", "?"), str(bundle.get("quantize", "?")), seq,
                     str(settings.get("threads")), _fmt(bundle.get("model_bytes", 0) / MB, ".1f"),
                     _fmt(result["load_ms"], ".1f"), _fmt(latency["p50"], ".2f"), _fmt(latency["p90"], ".2f"),
                     _fmt(latency["p99"], ".2f"), _fmt(result["throughput_per_s"], ".1f"),
                     _fmt(memory.get("peak_rss_mb"), ".1f"), _fmt(memory.get("growth_mb"), ".1f"),
                     _fmt(memory.get("anon_growth_mb"), ".1f"),
                     "-" if applied is None else ("yes" if applied else "no"),
                     f"{result['runtime']['name']} {result['runtime']['version']}"))
    full = [row for row in rows if len(row) == len(_COLUMNS)]
    widths = [max([len(_COLUMNS[i])] + [len(row[i]) for row in full]) for i in range(len(_COLUMNS))]
    widths[0] = max([widths[0]] + [len(row[0]) for row in rows])
    left = {0, 1, 13, 14}

    def line(cells):
        return "  ".join(cell.ljust(widths[i]) if i in left else cell.rjust(widths[i])
                         for i, cell in enumerate(cells)).rstrip()
    lines = [line(_COLUMNS)]
    for row in rows:
        lines.append(line(row) if len(row) == len(_COLUMNS) else f"{row[0].ljust(widths[0])}  {row[1]}")
    soaked = [result for result in results_file.get("results", []) if result.get("soak")]
    if soaked:
        lines.append("")
    for result in soaked:
        lines.append(describe_soak(result["bundle"].get("name", "?"), result["soak"]))
    per_text = [result for result in results_file.get("results", []) if result.get("per_text")]
    if per_text:
        lines.append("")
    for result in per_text:
        lines.append(describe_per_text(result["bundle"].get("name", "?"), result["per_text"]))
    device = results_file.get("device") or {}
    if device:
        lines.append("")
        lines.append(f"device: {device.get('cpu_model', 'unknown')}, {device.get('cores', '?')} cores, "
                     f"{device.get('system', '?')} {device.get('machine', '?')}, Python {device.get('python', '?')}")
    return "\n".join(lines)


def describe_per_text(name: str, texts: dict) -> str:
    """One line: the latency per text of real text, each at the length it gets."""
    latency = texts["latency_ms"]
    lengths = ", ".join(f"{count} at {length}" for length, count in texts["lengths"].items())
    return (f"per text {name}: {texts['texts']:,} texts ({_fmt(texts['tokens_mean'], '.1f')} tokens on average; "
            f"{lengths}): mean {_fmt(latency['mean'], '.3f')} ms, p50 {_fmt(latency['p50'], '.3f')}, "
            f"p90 {_fmt(latency['p90'], '.3f')}")


def describe_soak(name: str, soak: dict) -> str:
    """One line: a soak's memory change over its last 90 % and its latency, first tenth against last."""
    growth, peak = soak["growth_mb"], soak["max_growth_mb"]
    if growth["anon"] is None:
        memory = "memory not measurable here (no /proc/self/status)"
    else:
        memory = (f"anonymous RSS {growth['anon']:+.2f} MB (max {peak['anon']:+.2f}), total RSS {growth['rss']:+.2f} MB "
                  f"(max {peak['rss']:+.2f}) over the last 90 %")
    turns = (f" (lengths {','.join(soak['lengths'])} in turn, {soak['length_changes']:,} changes)"
             if soak.get("lengths") else "")
    return (f"soak {name}: {soak['calls']:,} calls{turns}, {memory}; p50 {_fmt(soak.get('p50_first_ms'), '.2f')} ms "
            f"in the first 10 %, {_fmt(soak.get('p50_last_ms'), '.2f')} ms in the last")


# --- the worker: python -m edgebert.bench '<json options>' ----------------------------------------------

def _worker(argv: list[str]) -> int:
    """Read the options (JSON in argv[1], or on stdin for '-'), bench, print the result as the last
    stdout line. Library errors become a failed result (exit 3); anything else a traceback (exit 1)."""
    raw = sys.stdin.read() if len(argv) < 2 or argv[1] == "-" else argv[1]
    request = json.loads(raw)
    bundle_dir = request.pop("bundle_dir")
    # Native libraries may write to fd 1; keep the result line alone on the real stdout.
    sys.stdout.flush()
    real_stdout = os.dup(1)
    os.dup2(2, 1)
    try:
        try:
            result, code = bench_bundle(bundle_dir, **request), 0
        except EdgebertError as error:
            result, code = failed_result(bundle_dir, str(error)), 3
        sys.stdout.flush()
    finally:
        os.dup2(real_stdout, 1)
        os.close(real_stdout)
    print(json.dumps(result), flush=True)
    return code


if __name__ == "__main__":
    sys.exit(_worker(sys.argv))
