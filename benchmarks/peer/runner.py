"""The orchestrator: artifacts per variant, persistent workers per (engine, threads), rounds, results.

See the package docstring for what is measured. Per variant:

1. a random checkpoint in Google's layout (write_random_checkpoint + synthetic_vocab, fixed seed);
2. edgebert's float32 and dynamic-int8 bundles (converters.pipeline.convert, validated as always);
3. the ONNX float and dynamic-int8 models (benchmarks.peer.onnx_export, in its own process);
4. the inputs: samples/sentences.txt tokenized with the bundle's tokenizer.json at seq S, saved once;
5. one worker per (engine, threads), started one after another, each answering "ready" after its load,
   first call and warm-up. An engine the installed runtime cannot run (the weight cache without
   ai-edge-litert's CompiledModel) is skipped, with the reason, instead. Before the first cached-engine
   worker, a throwaway worker of the same spec builds the weight cache (its cold load is recorded), so
   every measured worker maps a warm cache, as a deployed app does from its second start on;
6. `rounds` rounds: each round every worker makes one untimed call then runs/rounds timed calls, the
   engine order rotated by one each round, with a short pause between engines so that one runtime's
   spinning threads never overlap the next one's timed calls;
7. each worker's outputs on the first `agree_examples` inputs, compared with tf-float's (cosine of
   pooled_output per example, max |diff|; per-token cosine of sequence_output over real tokens);
8. each worker's memory (baseline before the load, peak after every call), then it exits.

The roofline layers (benchmarks.peer.roofline) are timed at the end, in a fresh LiteRT-only process per
thread count.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from benchmarks.peer import (
    EDGEBERT_FLOAT32,
    EDGEBERT_INT8,
    EDGEBERT_INT8_CACHED,
    ENGINES,
    EXECUTORCH_INT8,
    ORT_FLOAT,
    ORT_INT8,
    PEER_SCHEMA,
    RATIO_BASE_ENGINE,
    REFERENCE_ENGINE,
    TF_FLOAT,
    TORCH_FLOAT,
    TORCH_INT8,
    roofline,
)

REPO = Path(__file__).resolve().parents[2]
SWITCH_PAUSE_S = 0.2
# The engines that run an edgebert bundle, and the bundle each runs.
BUNDLE_OF = {EDGEBERT_FLOAT32: EDGEBERT_FLOAT32, EDGEBERT_INT8: EDGEBERT_INT8, EDGEBERT_INT8_CACHED: EDGEBERT_INT8}
# The real-text set's weight-cache engine: length buckets up to S, since LiteRT 2.3's CompiledModel, which
# the weight cache needs, aborts on a dynamic-length model ("Failed to allocate tensors").
REAL_TEXT_BUCKETS = (16, 32, 64)
FLOAT_ENGINES = (TF_FLOAT, ORT_FLOAT, TORCH_FLOAT, EDGEBERT_FLOAT32)
TORCH_ENGINES = (TORCH_FLOAT, TORCH_INT8, EXECUTORCH_INT8)  # need benchmarks.peer.torch_export's artifacts


@dataclass
class Settings:
    variants: list  # edgebert.variants.Variant or converters.config.BertConfig (tests)
    threads: list[int]
    runs: int = 30
    rounds: int = 5
    warmup: int = 5
    seq_len: int = 128
    seed: int = 0
    agree_examples: int = 16
    roofline_shapes: tuple = roofline.DEFAULT_SHAPES
    roofline_runs: int = 20
    reuse: bool = False
    timeout_s: float = 900.0
    engines: tuple = ENGINES
    text: Path | None = None  # the real-text set: each text at its own length (see the package docstring)
    vocab: Path | None = None  # the random checkpoint's vocabulary (default: the synthetic one)

    @property
    def bundle_seq_len(self) -> int | None:
        """The other engines' length: fixed S, or any (None) for the real-text set."""
        return None if self.text else self.seq_len

    @property
    def cache_buckets(self) -> tuple[int, ...]:
        """The weight-cache engine's shorter lengths on the real-text set: LiteRT's CompiledModel, which the
        cache needs, aborts on a dynamic-length model, so that engine runs length buckets up to S (each
        text at the shortest that holds it); the other edgebert engines run the dynamic-length bundle,
        which is faster from Mini up (README: Real text)."""
        return tuple(length for length in REAL_TEXT_BUCKETS if length < self.seq_len) if self.text else ()

    def describe(self) -> dict:
        return {"threads": self.threads, "runs": self.runs, "rounds": self.rounds, "warmup": self.warmup,
                "seq_len": self.seq_len, "batch": 1, "seed": self.seed, "agree_examples": self.agree_examples,
                "roofline_shapes": [list(s) for s in self.roofline_shapes], "roofline_runs": self.roofline_runs,
                "engines": list(self.engines), "text": str(self.text) if self.text else None,
                "vocab": str(self.vocab) if self.vocab else "synthetic",
                "inputs": (f"{self.text}: every text at its own length (no padding; edgebert's weight-cache engine "
                           "pads it to its length bucket), tokenized with the bundle's tokenizer.json, cycled in order"
                           if self.text else
                           f"samples/sentences.txt, tokenized with the bundle's tokenizer.json, padded to "
                           f"{self.seq_len}, cycled in order"),
                "alternation": "rounds; each round every (engine, threads) worker makes 1 untimed call then "
                               "runs/rounds timed calls; engine order rotated by one each round"}


# --- workers --------------------------------------------------------------------------------------------

class WorkerError(RuntimeError):
    pass


@dataclass
class Worker:
    engine: str
    threads: int
    process: subprocess.Popen
    log_path: Path
    timeout_s: float
    ready: dict = field(default_factory=dict)

    @classmethod
    def start(cls, spec: dict, log_path: Path, timeout_s: float) -> Worker:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
        env.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with open(log_path, "w") as log:  # the child keeps its own copy of the descriptor
            process = subprocess.Popen([sys.executable, "-m", "benchmarks.peer.worker"], stdin=subprocess.PIPE,
                                       stdout=subprocess.PIPE, stderr=log, text=True, cwd=str(REPO), env=env)
        worker = cls(spec["engine"], int(spec["threads"]), process, log_path, timeout_s)
        worker.send(spec)
        return worker

    def send(self, message: dict) -> None:
        try:
            self.process.stdin.write(json.dumps(message) + "\n")
            self.process.stdin.flush()
        except (BrokenPipeError, OSError):
            raise WorkerError(self._why("exited early")) from None

    def receive(self) -> dict:
        ready, _, _ = select.select([self.process.stdout], [], [], self.timeout_s)
        if not ready:
            self.kill()
            raise WorkerError(f"{self.engine} worker timed out after {self.timeout_s:g} s")
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=30)
            raise WorkerError(self._why(f"exited with code {self.process.returncode}"))
        reply = json.loads(line)
        if "error" in reply:
            raise WorkerError(f"{self.engine} worker: {reply['error']}")
        return reply

    def ask(self, message: dict) -> dict:
        self.send(message)
        return self.receive()

    def _why(self, what: str) -> str:
        try:
            lines = [line.strip() for line in self.log_path.read_text(errors="replace").splitlines() if line.strip()]
        except OSError:
            lines = []
        return f"{self.engine} worker {what}: {lines[-1][:400] if lines else 'no message'} (log: {self.log_path})"

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=30)

    def close(self) -> None:
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.kill()


# --- artifacts ------------------------------------------------------------------------------------------

def variant_config(variant):
    from converters.config import BertConfig
    if isinstance(variant, BertConfig):
        return variant
    return BertConfig.from_variant(variant)


def variant_label(variant) -> str:
    from converters.config import BertConfig
    if isinstance(variant, BertConfig):
        return f"custom-L{variant.num_layers}-H{variant.hidden_size}-A{variant.num_heads}-I{variant.intermediate_size}"
    return variant.nickname or variant.short_name


def make_artifacts(variant, root: Path, settings: Settings, log: Callable[[str], None]) -> dict:
    """Checkpoint, bundles, ONNX models and inputs of one variant under root (reused with settings.reuse)."""
    from converters.google_checkpoint import write_random_checkpoint
    from converters.pipeline import ConvertOptions, convert
    from converters.vocab import synthetic_vocab
    from edgebert import samples
    from edgebert import tokenizer as tokenization
    from edgebert.bench import weight_cache_file
    from edgebert.bundle import read_bundle
    from edgebert.quiet import native_output_silenced
    from edgebert.tokenizer import read_vocab

    config = variant_config(variant)
    vocab = read_vocab(settings.vocab) if settings.vocab else synthetic_vocab(config.vocab_size)
    if len(vocab) != config.vocab_size:
        raise ValueError(f"{settings.vocab} has {len(vocab)} tokens; the model's vocab_size is {config.vocab_size}")
    root.mkdir(parents=True, exist_ok=True)
    checkpoint = root / "checkpoint"
    stamp = {"seed": settings.seed, "config": config.to_dict(), "seq_len": settings.seq_len,
             "bundle_seq_len": settings.bundle_seq_len, "cache_buckets": list(settings.cache_buckets),
             "vocab": str(settings.vocab)}
    stamp_path = root / "artifacts.json"
    reuse = settings.reuse and stamp_path.is_file() and json.loads(stamp_path.read_text()).get("stamp") == stamp
    if not reuse:
        shutil.rmtree(root, ignore_errors=True)
        root.mkdir(parents=True)
        log("  random checkpoint (Google layout)")
        write_random_checkpoint(config, checkpoint, vocab, seed=settings.seed)
    artifacts = {"checkpoint": str(checkpoint), "bundles": {}, "convert_seconds": {}}
    exports = [(EDGEBERT_FLOAT32, "float32", settings.bundle_seq_len, ()),
               (EDGEBERT_INT8, "dynamic-int8", settings.bundle_seq_len, ())]
    if settings.cache_buckets and EDGEBERT_INT8_CACHED in settings.engines:
        exports.append((EDGEBERT_INT8_CACHED, "dynamic-int8", settings.seq_len, settings.cache_buckets))
    for engine, mode, seq_len, buckets in exports:
        if engine == EDGEBERT_FLOAT32 and engine not in settings.engines:
            continue  # the int8 bundle is always made: its tokenizer.json tokenizes the inputs for every engine
        out = root / f"bundle.{mode}{'.buckets' if buckets else ''}"
        if not (reuse and (out / "manifest.json").is_file()):
            log(f"  converting the {mode} bundle{' (length buckets)' if buckets else ''}")
            started = time.perf_counter()
            with native_output_silenced():
                convert(checkpoint, out, ConvertOptions(quantize=mode, seq_len=seq_len, buckets=buckets,
                                                        validation_size=16, force=True))
            artifacts["convert_seconds"][mode] = round(time.perf_counter() - started, 1)
        artifacts["bundles"][engine] = str(out)

    exports = (("onnx", "ONNX", "benchmarks.peer.onnx_export", (ORT_FLOAT, ORT_INT8),
                "ONNX export (torch) + ORT BERT fusions + quantize_dynamic"),
               ("torch", "PyTorch", "benchmarks.peer.torch_export", TORCH_ENGINES,
                "transformers BertModel saved + ExecuTorch export (XNNPACK, dynamic int8)"))
    for key, what, module, engines, message in exports:
        if not any(engine in settings.engines for engine in engines):
            continue
        info = root / key / "export.json"
        if not (reuse and info.is_file()):
            log(f"  {message}")
            error = _export_in_subprocess(module, checkpoint, root / key, settings)
            if error:
                artifacts[f"{key}_error"] = f"{what} export failed ({error})"
        if info.is_file():
            artifacts[key] = json.loads(info.read_text())

    bundle_dir = Path(artifacts["bundles"][EDGEBERT_INT8])
    # Named by the model's sha, as `edgebert bench --weight-cache` names it: a reused work dir never maps
    # packed weights of an older conversion.
    cached_bundle = Path(bundle_of(EDGEBERT_INT8_CACHED, artifacts))
    artifacts["weight_cache"] = str(weight_cache_file(root / "weight-cache", read_bundle(cached_bundle)))
    tokenizer = tokenization.load_tokenizer(bundle_dir / "tokenizer.json")
    sentences = load_texts(settings.text) if settings.text else samples.load_sentences()
    encoded = tokenization.encode(tokenizer, sentences, settings.seq_len)
    lengths = encoded["attention_mask"].sum(1).astype(np.int32)
    inputs = root / "inputs.npz"
    np.savez(inputs, **encoded, lengths=lengths)
    artifacts["inputs"] = str(inputs)
    artifacts["inputs_facts"] = {"file": str(settings.text or samples.samples_dir() / "sentences.txt"),
                                 "sentences": len(sentences), "tokens_mean": round(float(lengths.mean()), 2),
                                 "tokens_p50": float(np.percentile(lengths, 50)),
                                 "tokens_p90": float(np.percentile(lengths, 90)), "tokens_min": int(lengths.min()),
                                 "tokens_max": int(lengths.max()),
                                 "truncated_at_seq_len": int((lengths >= settings.seq_len).sum()),
                                 "per_text_length": bool(settings.text),
                                 # the mean over the texts of one forward pass's MACs at the length it runs at
                                 "macs_mean": round(float(np.mean([roofline.bert_macs(
                                     config.num_layers, config.hidden_size, config.intermediate_size,
                                     int(n) if settings.text else settings.seq_len)["total"] for n in lengths]))),
                                 "tokenizer": str(bundle_dir / "tokenizer.json")}
    stamp_path.write_text(json.dumps({"stamp": stamp}))
    return artifacts


def _export_in_subprocess(module: str, checkpoint: Path, out_dir: Path, settings: Settings) -> str | None:
    """Run an export module (`python -m MODULE CHECKPOINT OUT --seq-len S`) in its own process, which
    prints its facts as a JSON line; keep that line as OUT/export.json. Returns why it failed, or None."""
    done = subprocess.run([sys.executable, "-m", module, str(checkpoint), str(out_dir), "--seq-len", str(settings.seq_len)],
                          capture_output=True, text=True, cwd=str(REPO), env={**os.environ, "PYTHONPATH": str(REPO)},
                          timeout=settings.timeout_s, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = [line for line in done.stderr.splitlines() if line.strip()][-3:]
        return f"exit {done.returncode}: {' | '.join(tail)[:600]}"
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "export.json").write_text(lines[-1])
    return None


def load_texts(path: Path) -> list[str]:
    """The texts of a GLUE-style .tsv (single-sentence tasks: SST-2, CoLA) or of a file with one per line."""
    from edgebert import samples
    from edgebert.tasks import load_task

    path = Path(path)
    if path.suffix == ".tsv":
        texts = load_task(path).texts
        if texts and not isinstance(texts[0], str):
            raise ValueError(f"{path}: sentence pairs; the real-text set takes single sentences")
        return list(texts)
    return samples.load_sentences(path)


def bundle_of(engine: str, artifacts: dict) -> str:
    """The bundle an edgebert engine runs: its own (the weight cache's length buckets on the real-text
    set), else the one BUNDLE_OF names."""
    return artifacts["bundles"].get(engine) or artifacts["bundles"][BUNDLE_OF[engine]]


def model_bytes(engine: str, artifacts: dict, ready_facts: dict) -> int | None:
    if engine in BUNDLE_OF:
        return (Path(bundle_of(engine, artifacts)) / "model.tflite").stat().st_size
    if engine in (ORT_FLOAT, ORT_INT8) and "onnx" in artifacts:
        return artifacts["onnx"]["bytes"]["float" if engine == ORT_FLOAT else "int8"]
    if engine == TF_FLOAT:
        return ready_facts.get("parameter_bytes")
    torch = artifacts.get("torch") or {}
    if engine in (TORCH_FLOAT, TORCH_INT8) and torch:
        return torch["hf_bytes"]  # the float safetensors the user loads; quantize_dynamic runs after loading
    if engine == EXECUTORCH_INT8 and "executorch" in torch:
        return torch["executorch"]["bytes"]
    return None


def worker_spec(engine: str, threads: int, artifacts: dict, settings: Settings) -> dict:
    spec = {"engine": engine, "threads": threads, "seq_len": settings.bundle_seq_len, "inputs": artifacts["inputs"],
            "warmup": settings.warmup, "trim": bool(settings.text)}
    if engine in TORCH_ENGINES:
        torch = artifacts.get("torch")
        if not torch:
            raise WorkerError(artifacts.get("torch_error", "no PyTorch export"))
        if engine == EXECUTORCH_INT8:
            if "executorch" not in torch:
                raise WorkerError(f"ExecuTorch export failed: {torch.get('executorch_error', 'no .pte')}")
            spec.update(kind="executorch", model=torch["executorch"]["file"])
        else:
            spec.update(kind="torch", model=torch["hf_dir"], quantize=engine == TORCH_INT8)
    elif engine == TF_FLOAT:
        spec.update(kind="tf", checkpoint=artifacts["checkpoint"])
    elif engine in (ORT_FLOAT, ORT_INT8):
        if "onnx" not in artifacts:
            raise WorkerError(artifacts.get("onnx_error", "no ONNX model"))
        spec.update(kind="ort", model=artifacts["onnx"]["files"]["float" if engine == ORT_FLOAT else "int8"])
    else:
        spec.update(kind="tflite", model=str(Path(bundle_of(engine, artifacts)) / "model.tflite"))
        if engine == EDGEBERT_INT8_CACHED:
            spec.update(kind="tflite-cached", weight_cache=artifacts["weight_cache"])
    return spec


def skip_reason(engine: str, per_text: bool = False) -> str | None:
    """Why the installed runtime cannot run this engine, or None. Asked in this process, which is the
    workers' Python, so that a missing feature is a recorded skip rather than a failed worker."""
    if engine != EDGEBERT_INT8_CACHED:
        return None
    from edgebert.errors import RuntimeNotAvailableError
    from edgebert.interpreter import find_runtime, weight_cache_supported
    try:
        runtime = find_runtime("auto")
    except RuntimeNotAvailableError:
        return None  # its worker fails as the other edgebert engines' do, with the same message
    if weight_cache_supported(runtime):
        return None
    return (f"{runtime.describe()} has no XNNPACK weight cache "
            "(needs ai-edge-litert with CompiledModel's CpuOptions.xnnpack_weight_cache_path)")


def build_weight_cache(spec: dict, log_path: Path, timeout_s: float) -> dict | None:
    """Write the spec's weight cache with one throwaway load and first call in a worker of its own, so
    that the measured workers load it warm. Returns that cold load's times, or None when the cache file
    was already there (a --reuse run)."""
    if Path(spec["weight_cache"]).is_file():
        return None
    worker = Worker.start({**spec, "warmup": 0}, log_path, timeout_s)
    try:
        ready = worker.receive()
        worker.ask({"cmd": "finish"})
        worker.close()
    finally:
        worker.kill()
    return {"load_ms": ready["load_ms"], "first_inference_ms": ready["first_inference_ms"],
            "load_to_first_output_ms": round(ready["load_ms"] + ready["first_inference_ms"], 3)}


# --- statistics -----------------------------------------------------------------------------------------

def latency(timings: list[float]) -> dict:
    values = np.asarray(timings, np.float64)
    p50, p90, p99 = np.percentile(values, [50, 90, 99])
    return {"p50": round(float(p50), 4), "p90": round(float(p90), 4), "p99": round(float(p99), 4),
            "mean": round(float(values.mean()), 4), "min": round(float(values.min()), 4),
            "max": round(float(values.max()), 4), "runs": len(values)}


def agreement(reference: dict, outputs: dict, mask: np.ndarray) -> dict:
    """Pooled: per-example cosine (min, mean) and max |diff|; sequence: per-token cosine over real tokens."""
    def cosines(a, b):
        a, b = a.astype(np.float64), b.astype(np.float64)
        denominator = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
        return (a * b).sum(-1) / np.maximum(denominator, 1e-30)
    pooled = cosines(reference["pooled_output"], outputs["pooled_output"])
    tokens = cosines(reference["sequence_output"], outputs["sequence_output"])[mask.astype(bool)]
    return {"pooled_min_cosine": float(pooled.min()), "pooled_mean_cosine": float(pooled.mean()),
            "pooled_max_abs_diff": float(np.abs(reference["pooled_output"] - outputs["pooled_output"]).max()),
            "sequence_min_cosine": float(tokens.min()), "sequence_mean_cosine": float(tokens.mean()),
            "sequence_max_abs_diff": float(np.abs(reference["sequence_output"] - outputs["sequence_output"])
                                           [mask.astype(bool)].max()),
            "examples": len(pooled)}


def max_abs_diff(outputs: dict | None, other: dict | None) -> float | None:
    """Largest |difference| over both outputs (the cached engine against the uncached one), or None."""
    if outputs is None or other is None:
        return None
    return float(max(np.abs(outputs[name] - other[name]).max() for name in ("pooled_output", "sequence_output")))


# --- one variant ----------------------------------------------------------------------------------------

def measure_variant(variant, artifacts: dict, settings: Settings, work: Path, log: Callable[[str], None]) -> dict:
    label = variant_label(variant)
    logs = work / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    workers: list[Worker] = []
    cells: dict[tuple[str, int], dict] = {}
    try:
        for engine in settings.engines:
            skipped = skip_reason(engine, per_text=bool(settings.text))
            for threads in settings.threads:
                key = (engine, threads)
                cells[key] = {"engine": engine, "threads": threads, "timings_ms": [], "round_p50_ms": []}
                if skipped:
                    cells[key]["skipped"] = skipped
                    log(f"  {engine} t{threads}: skipped: {skipped}")
                    continue
                try:
                    spec = worker_spec(engine, threads, artifacts, settings)
                    if "weight_cache" in spec:
                        cells[key]["cold_load"] = build_weight_cache(spec, logs / f"{label}.{engine}.cache-build.log",
                                                                     settings.timeout_s)
                    worker = Worker.start(spec, logs / f"{label}.{engine}.t{threads}.log", settings.timeout_s)
                    worker.ready = worker.receive()
                    workers.append(worker)
                    cells[key].update(ready=worker.ready)
                    log(f"  {engine} t{threads}: loaded in {worker.ready['load_ms']:.0f} ms "
                        f"(first call {worker.ready['first_inference_ms']:.1f} ms)")
                except WorkerError as error:
                    cells[key]["error"] = str(error)
                    log(f"  {engine} t{threads}: FAILED: {error}")
        per_round = [settings.runs // settings.rounds + (1 if r < settings.runs % settings.rounds else 0)
                     for r in range(settings.rounds)]
        for round_index, count in enumerate(per_round):
            if count == 0:
                continue
            shift = round_index % max(1, len(workers))
            for worker in workers[shift:] + workers[:shift]:
                cell = cells[(worker.engine, worker.threads)]
                if "error" in cell:
                    continue
                time.sleep(SWITCH_PAUSE_S)
                try:
                    timings = worker.ask({"cmd": "run", "n": count, "warm": 1})["timings_ms"]
                except WorkerError as error:
                    cell["error"] = str(error)
                    continue
                cell["timings_ms"].extend(timings)
                cell["round_p50_ms"].append(round(float(np.median(timings)), 4))
            log(f"  round {round_index + 1}/{settings.rounds} done")
        outputs = {}
        for worker in workers:
            cell = cells[(worker.engine, worker.threads)]
            if "error" in cell:
                worker.kill()
                continue
            path = work / f"{label}.{worker.engine}.t{worker.threads}.outputs.npz"
            try:
                worker.ask({"cmd": "outputs", "count": settings.agree_examples, "path": str(path)})
                final = worker.ask({"cmd": "finish"})
                worker.close()
            except WorkerError as error:
                cell["error"] = str(error)
                continue
            with np.load(path) as data:
                outputs[(worker.engine, worker.threads)] = {name: data[name] for name in data.files}
            path.unlink()
            cell["memory"], cell["facts"], cell["calls"] = final["memory"], final["facts"], final["calls"]
    finally:
        for worker in workers:
            worker.kill()

    with np.load(artifacts["inputs"]) as data:
        count = settings.agree_examples
        index = np.arange(count) % len(data["attention_mask"])
        mask = data["attention_mask"][index]
    reference_key = next(((REFERENCE_ENGINE, t) for t in settings.threads if (REFERENCE_ENGINE, t) in outputs), None)
    rows = []
    for (engine, threads), cell in cells.items():
        row = {"engine": engine, "threads": threads}
        if "skipped" in cell:
            rows.append({**row, "skipped": cell["skipped"]})
            continue
        if "error" in cell or not cell["timings_ms"]:
            row["error"] = cell.get("error", "no timings")
            rows.append(row)
            continue
        ready, facts = cell["ready"], dict(cell.get("facts", {}))
        # Load + first call: the classic interpreter packs the weights for XNNPACK in its first call,
        # the CompiledModel at load, so only the sum compares the two edgebert int8 engines.
        row.update(runtime=ready["runtime"], call_path=ready["call_path"], load_ms=ready["load_ms"],
                   first_inference_ms=ready["first_inference_ms"],
                   load_to_first_output_ms=round(ready["load_ms"] + ready["first_inference_ms"], 3),
                   feed_lengths=ready.get("feed_lengths"),  # [shortest, longest] input length the engine ran
                   latency_ms=latency(cell["timings_ms"]), round_p50_ms=cell["round_p50_ms"],
                   memory=cell.get("memory"), facts=facts)
        cache = facts.pop("weight_cache", None)  # a row field of its own, not one of the engine's facts
        if cache:
            row["weight_cache"] = {**cache, "cold_load": cell.get("cold_load"),
                                   "max_abs_diff_vs_uncached": max_abs_diff(outputs.get((engine, threads)),
                                                                            outputs.get((EDGEBERT_INT8, threads)))}
        row["model_bytes"] = model_bytes(engine, artifacts, facts)
        memory = row["memory"] or {}
        if row["model_bytes"] and memory.get("growth_mb") is not None:
            row["growth_over_model_bytes"] = round(memory["growth_mb"] * 1e6 / row["model_bytes"], 3)
            row["resident_growth_over_model_bytes"] = round(memory["resident_growth_mb"] * 1e6 / row["model_bytes"], 3)
        if reference_key and (engine, threads) in outputs:
            row["agreement"] = agreement(outputs[reference_key], outputs[(engine, threads)], mask)
            row["agreement"]["reference"] = f"{reference_key[0]} t{reference_key[1]}"
        rows.append(row)
    # Ratios: each engine's p50 over edgebert dynamic-int8's at the same thread count (>1: edgebert faster).
    for row in rows:
        base = next((r for r in rows if r["engine"] == RATIO_BASE_ENGINE and r["threads"] == row["threads"]
                     and "latency_ms" in r), None)
        if base and "latency_ms" in row:
            row["p50_over_edgebert_int8"] = round(row["latency_ms"]["p50"] / base["latency_ms"]["p50"], 3)
            row["mean_over_edgebert_int8"] = round(row["latency_ms"]["mean"] / base["latency_ms"]["mean"], 3)
    return {"variant": label, "config": variant_config(variant).to_dict(), "rows": rows,
            "artifacts": {"checkpoint": artifacts["checkpoint"], "bundles": artifacts["bundles"],
                          "onnx": artifacts.get("onnx"), "onnx_error": artifacts.get("onnx_error"),
                          "torch": artifacts.get("torch"), "torch_error": artifacts.get("torch_error"),
                          "inputs": artifacts["inputs_facts"], "convert_seconds": artifacts["convert_seconds"]}}


def bundle_ops(bundle_dir: str) -> list[str]:
    manifest = json.loads((Path(bundle_dir) / "manifest.json").read_text())
    return manifest.get("ops", [])


# --- the roofline ---------------------------------------------------------------------------------------

def bert_shapes(configs: list, seq_len: int) -> list[tuple[int, int, int]]:
    """The FULLY_CONNECTED shapes inside each variant (and the fused-QKV shape), timed next to the
    roofline shapes to estimate how much of a bundle's time its dense layers take."""
    shapes = []
    for config in configs:
        h, i = config.hidden_size, config.intermediate_size
        for shape in ((seq_len, h, h), (seq_len, h, 3 * h), (seq_len, h, i), (seq_len, i, h)):
            if shape not in shapes:
                shapes.append(shape)
    return shapes


def measure_roofline(settings: Settings, configs: list, work: Path, log: Callable[[str], None]) -> dict:
    log("roofline: single FULLY_CONNECTED layers, float32 and dynamic int8, LiteRT + XNNPACK")
    roof_shapes = list(settings.roofline_shapes)
    inner_shapes = [s for s in bert_shapes(configs, settings.seq_len) if s not in roof_shapes]
    models = roofline.build_fc_models(roof_shapes + inner_shapes, work / "roofline")
    timed = []
    for threads in settings.threads:
        worker = Worker.start({"engine": "roofline", "kind": "roofline", "threads": threads, "models": models,
                               "runs": settings.roofline_runs},
                              work / "logs" / f"roofline.t{threads}.log", settings.timeout_s)
        try:
            timed.extend(worker.receive()["timed"])
            worker.close()
        finally:
            worker.kill()
    for row in timed:
        row["role"] = "roofline" if tuple(row["shape"]) in roof_shapes else "bert-layer"
    best = {}
    for threads in settings.threads:
        for mode in ("dynamic-int8", "float32"):
            candidates = [r for r in timed if r["role"] == "roofline"] or timed
            top = roofline.best(candidates, mode, threads)
            if top:
                best[f"{mode}/t{threads}"] = {"shape": top["shape"], "gmacs": top["gmacs"], "p50_ms": top["p50_ms"]}
    from edgebert import cpu_features
    return {"layers": timed, "best": best, **cpu_features.device_facts(),
            "method": "one FULLY_CONNECTED [M,K]x[K,N] + bias per model, converted by TF (Optimize.DEFAULT for "
                      "dynamic int8), bare Interpreter.invoke() timed (median of runs), GMAC/s = M*K*N / p50"}


def add_fractions(variant_result: dict, roof: dict, settings: Settings) -> None:
    """MACs, achieved GMAC/s and the fraction of the best dynamic-int8 (or float32) layer throughput, and
    an estimate of the time the variant's dense layers alone take (from the timed BERT-shaped layers).
    On the real-text set the texts have different lengths: achieved = the mean MACs per text over the mean
    latency, and there is no dense-layer estimate (its layers are timed at seq S)."""
    config = variant_result["config"]
    h, i, n = config["hidden_size"], config["intermediate_size"], config["num_layers"]
    s = settings.seq_len
    macs = roofline.bert_macs(n, h, i, s)
    variant_result["macs"] = macs
    per_text = bool(settings.text)
    macs_per_call = (variant_result["artifacts"]["inputs"].get("macs_mean") or macs["total"]) if per_text \
        else macs["total"]
    by_shape = {(tuple(r["shape"]), r["mode"], r["threads"]): r["p50_ms"] for r in roof["layers"]}
    for row in variant_result["rows"]:
        if "latency_ms" not in row:
            continue
        seconds = row["latency_ms"]["mean" if per_text else "p50"] / 1e3
        row["achieved_gmacs"] = round(macs_per_call / seconds / 1e9, 2)
        mode = "float32" if row["engine"] in FLOAT_ENGINES else "dynamic-int8"
        best_int8 = roof["best"].get(f"dynamic-int8/t{row['threads']}")
        if best_int8:
            row["roofline_fraction_int8"] = round(row["achieved_gmacs"] / best_int8["gmacs"], 4)
        best_mode = roof["best"].get(f"{mode}/t{row['threads']}")
        if best_mode:
            row["roofline_fraction_own_mode"] = round(row["achieved_gmacs"] / best_mode["gmacs"], 4)
        if row["engine"] in BUNDLE_OF and not per_text:
            t = row["threads"]
            parts = [by_shape.get(((s, h, h), mode, t)), by_shape.get(((s, h, i), mode, t)),
                     by_shape.get(((s, i, h), mode, t)), by_shape.get(((s, h, 3 * h), mode, t))]
            if all(p is not None for p in parts):
                hh, hi, ih, h3 = parts
                dense_ms = n * (4 * hh + hi + ih)
                fused_ms = n * (h3 + hh + hi + ih)
                row["dense_layers_estimate_ms"] = round(dense_ms, 4)
                row["dense_share_of_p50"] = round(dense_ms / row["latency_ms"]["p50"], 3)
                row["non_dense_ms"] = round(row["latency_ms"]["p50"] - dense_ms, 4)
                row["dense_with_fused_qkv_estimate_ms"] = round(fused_ms, 4)


# --- the whole run --------------------------------------------------------------------------------------

def versions() -> dict:
    from importlib import metadata
    found = {}
    for name in ("tensorflow", "tf-keras", "ai-edge-litert", "onnxruntime", "onnx", "torch", "transformers",
                 "executorch", "torchao", "numpy", "tokenizers"):
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def run_peer(settings: Settings, out: Path, log: Callable[[str], None] = print) -> dict:
    from benchmarks.peer.report import write_outputs
    from edgebert import cpu_features
    from edgebert.device_info import device_facts

    out = Path(out)
    work = out / "work"
    work.mkdir(parents=True, exist_ok=True)
    started = time.time()
    results = {"schema": PEER_SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
               "device": {**device_facts(), **cpu_features.device_facts()},
               "versions": versions(), "settings": settings.describe(),
               "engines": {}, "variants": [], "roofline": None}
    configs = []
    for variant in settings.variants:
        label = variant_label(variant)
        log(f"{label}: preparing")
        artifacts = make_artifacts(variant, work / label, settings, log)
        log(f"{label}: measuring {len(settings.engines)} engines x threads {settings.threads}, "
            f"{settings.runs} runs in {settings.rounds} rounds")
        result = measure_variant(variant, artifacts, settings, work, log)
        result["bundle_ops"] = {engine: bundle_ops(path) for engine, path in artifacts["bundles"].items()}
        results["variants"].append(result)
        configs.append(variant_config(variant))
        for row in result["rows"]:
            if "call_path" in row:
                results["engines"].setdefault(row["engine"], {"runtime": row["runtime"], "call_path": row["call_path"]})
        write_outputs(results, out, final=False)
    results["roofline"] = measure_roofline(settings, configs, work, log)
    for result in results["variants"]:
        add_fractions(result, results["roofline"], settings)
    results["seconds"] = round(time.time() - started, 1)
    write_outputs(results, out, final=True)
    return results

