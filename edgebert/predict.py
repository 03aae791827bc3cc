"""Run a bundle on texts: label probabilities for classifier bundles, embeddings for encoder and
sentence-embedding bundles, and semantic search (`rank`) with a sentence-embedding bundle.

Each text is tokenized with the bundle's own tokenizer.json (a fixed bundle pads to its length, a dynamic
one uses the text's own length) and run alone (the models take batch 1).

Classifier result: {"text", "label", "probability", "probabilities" {label: p, highest first}}, and "logits"
for an older bundle whose model gives logits (a classifier's model.tflite gives `probabilities`, the
softmax in the graph that MediaPipe's TextClassifier also reads: edgebert.scores).
Encoder result: {"text", "dim", "norm" (of pooled_output), "head" (its first 4 values), "tokens",
"pooled_output" [H], "mean_sequence_output" [H] (sequence_output averaged over the real tokens)}.
Sentence-embedding result: {"text", "dim", "norm", "head", "tokens", "sentence_embedding" [H],
"pooling" (the manifest's record: pooling mode, normalize)}: what SentenceTransformer.encode gives.
A sentence pair is given as a (first, second) tuple and reported as [first, second].

`predict`, `embed` and `rank` run the model in this process. A bundle's files are checked first (sizes,
sha256, manifest, tokenizer), so a damaged bundle is a one-line BundleError naming the file; but a model
whose manifest was re-sealed to match it can still crash the native interpreter, which takes the calling
process down. For bundles from elsewhere pass `isolated=True`: the model then runs in a child process
(edgebert.isolated), a crash is a BundleError, and `timeout` (seconds) stops one that runs too long.
"""
from __future__ import annotations

import os
import reprlib

import numpy as np

from edgebert.errors import BundleError, UsageError
from edgebert.scores import LOGITS, PROBABILITIES, class_probabilities, softmax  # noqa: F401 - softmax: API


def check_texts(texts) -> list:
    """A list of non-empty str, or of (str, str) pairs with both parts non-empty; else a UsageError."""
    if isinstance(texts, (str, bytes)) or not hasattr(texts, "__iter__"):
        raise UsageError(f"texts must be a list of str or of (str, str) pairs, got {reprlib.repr(texts)}")
    texts = list(texts)
    if not texts:
        raise UsageError("no text to predict")
    pairs = isinstance(texts[0], tuple)
    for index, text in enumerate(texts):
        parts = text if pairs and isinstance(text, tuple) else (text,)
        if pairs != isinstance(text, tuple) or (pairs and len(text) != 2):
            raise UsageError(f"text {index + 1} must be {'a (str, str) pair' if pairs else 'a str'} like text 1, "
                             f"got {reprlib.repr(text)}")
        for part in parts:
            if not isinstance(part, str):
                raise UsageError(f"text {index + 1} must be str, got {type(part).__name__} {reprlib.repr(part)}")
            if not part.strip():
                raise UsageError(f"text {index + 1} is empty")
    return texts


HEADS = ("classifier", "encoder", "sentence-embedding")


class _Runner:
    """A bundle, its tokenizer and its loaded model: texts in, output dicts out."""

    def __init__(self, bundle_dir: str | os.PathLike, threads: int | None, runtime: str):
        from edgebert import tokenizer as tokenization
        from edgebert.bundle import read_bundle
        from edgebert.interpreter import TFLiteModel

        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise UsageError(f"--threads must be an integer of at least 1, got {threads!r}")
        self.bundle = read_bundle(bundle_dir)
        self.head = self.bundle.manifest.get("head")
        if self.head not in HEADS:
            raise BundleError(f"manifest head is {self.head!r} (expected one of {', '.join(map(repr, HEADS))})",
                              self.bundle.path / "manifest.json")
        self._encode = tokenization.encode
        self.tokenizer = tokenization.load_tokenizer(self.bundle.tokenizer_path)
        self.model = TFLiteModel(self.bundle.model_path, num_threads=threads, runtime=runtime)

    def __call__(self, text) -> tuple[dict, dict]:
        """(the model's outputs, the encoded inputs) for one text or pair; a model with length buckets
        gets it at the shortest length that holds it."""
        encoded = self._encode(self.tokenizer, [text], self.bundle.seq_len, buckets=self.model.lengths)
        return self.model(**encoded), encoded


def _in_child(job: str, bundle_dir, arguments: dict, timeout: float | None):
    """Run edgebert.isolated's `job` on the bundle in a child process (the files checked here first)."""
    from edgebert.bundle import read_bundle
    from edgebert.isolated import run

    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or
                                not timeout > 0):
        raise UsageError(f"timeout must be a positive number of seconds, got {timeout!r}")
    checked = read_bundle(bundle_dir)  # a bad file is refused before the model runs
    return run(job, {"bundle": os.fspath(bundle_dir), **arguments}, model_path=checked.model_path, timeout=timeout)


def predict(bundle_dir: str | os.PathLike, texts: list, *, threads: int | None = None,
            runtime: str = "auto", isolated: bool = False, timeout: float | None = None) -> list[dict]:
    """One result per text (see the module docstring; `isolated`, `timeout`: run in a child process)."""
    texts = check_texts(texts)
    if isolated:
        return _in_child("predict", bundle_dir, {"texts": texts, "threads": threads, "runtime": runtime}, timeout)
    runner = _Runner(bundle_dir, threads, runtime)
    results = []
    for text in texts:
        outputs, encoded = runner(text)
        shown = list(text) if isinstance(text, tuple) else text
        mask = encoded["attention_mask"][0]
        if runner.head == "classifier":
            results.append(_classify(shown, outputs, runner.bundle))
        elif runner.head == "sentence-embedding":
            results.append(_sentence(shown, outputs, mask, runner.bundle))
        else:
            results.append(_embed(shown, outputs, mask, runner.bundle))
    return results


def _classify(text, outputs: dict, bundle) -> dict:
    probabilities = class_probabilities(outputs, bundle.model_path)
    labels = bundle.labels or [str(index) for index in range(len(probabilities))]
    if len(labels) != len(probabilities):
        raise BundleError(f"manifest has {len(labels)} labels but the model gives {len(probabilities)} scores",
                          bundle.path / "manifest.json")
    ranked = sorted(zip(labels, probabilities.tolist()), key=lambda item: -item[1])
    result = {"text": text, "label": ranked[0][0], "probability": ranked[0][1], "probabilities": dict(ranked)}
    if LOGITS in outputs and PROBABILITIES not in outputs:
        result[LOGITS] = np.asarray(outputs[LOGITS], dtype=np.float64).reshape(-1).tolist()
    return result


def _embed(text, outputs: dict, mask: np.ndarray, bundle) -> dict:
    missing = [name for name in ("pooled_output", "sequence_output") if name not in outputs]
    if missing:
        raise BundleError(f"encoder model lacks output(s) {', '.join(missing)} (has {sorted(outputs)})",
                          bundle.model_path)
    pooled = np.asarray(outputs["pooled_output"], dtype=np.float64).reshape(-1)
    sequence = np.asarray(outputs["sequence_output"], dtype=np.float64)[0]  # (seq, hidden)
    real = mask[: len(sequence)].astype(bool)
    mean = sequence[real].mean(axis=0) if real.any() else np.zeros(sequence.shape[-1])
    return {"text": text, "dim": int(pooled.size), "norm": float(np.linalg.norm(pooled)),
            "head": pooled[:4].tolist(), "tokens": int(real.sum()), "pooled_output": pooled.tolist(),
            "mean_sequence_output": mean.tolist()}


def _sentence_output(outputs: dict, bundle) -> np.ndarray:
    if "sentence_embedding" not in outputs:
        raise BundleError(f"sentence-embedding model has no 'sentence_embedding' output (has {sorted(outputs)})",
                          bundle.model_path)
    return np.asarray(outputs["sentence_embedding"], dtype=np.float32).reshape(-1)  # (H,)


def _sentence(text, outputs: dict, mask: np.ndarray, bundle) -> dict:
    vector = _sentence_output(outputs, bundle).astype(np.float64)
    return {"text": text, "dim": int(vector.size), "norm": float(np.linalg.norm(vector)), "head": vector[:4].tolist(),
            "tokens": int(mask.sum()), "sentence_embedding": vector.tolist(),
            "pooling": dict(bundle.manifest.get("sentence_embedding") or {})}


def _sentence_runner(bundle_dir, threads: int | None, runtime: str) -> _Runner:
    runner = _Runner(bundle_dir, threads, runtime)
    if runner.head != "sentence-embedding":
        raise UsageError(f"is {'an' if runner.head == 'encoder' else 'a'} {runner.head} bundle; sentence embeddings "
                         "need a bundle converted from a sentence-transformers model (head 'sentence-embedding')",
                         runner.bundle.path)
    return runner


def embed(bundle_dir: str | os.PathLike, texts: list[str], *, threads: int | None = None,
          runtime: str = "auto", isolated: bool = False, timeout: float | None = None) -> np.ndarray:
    """The sentence embeddings of `texts` from a sentence-embedding bundle: float32 [N, H], row i for text i."""
    texts = check_texts(texts)
    if isolated:
        return np.asarray(_in_child("embed", bundle_dir, {"texts": texts, "threads": threads, "runtime": runtime},
                                    timeout), dtype=np.float32)
    runner = _sentence_runner(bundle_dir, threads, runtime)
    return np.stack([_sentence_output(runner(text)[0], runner.bundle) for text in texts])  # (N, H)


def _unit(vectors: np.ndarray) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def rank(bundle_dir: str | os.PathLike, query: str, texts: list[str], *, threads: int | None = None,
         runtime: str = "auto", isolated: bool = False, timeout: float | None = None) -> list[tuple[float, str]]:
    """Semantic search on the device: every text with the cosine of its sentence embedding to the query's,
    most similar first (ties keep the input order). Needs a sentence-embedding bundle."""
    if not isinstance(query, str):
        raise UsageError(f"the query must be a str, got {type(query).__name__} {reprlib.repr(query)}")
    if not query.strip():
        raise UsageError("the query is empty")
    texts = check_texts(texts)
    if isinstance(texts[0], tuple):
        raise UsageError("rank compares single texts, not (str, str) pairs")
    if isolated:
        ranked = _in_child("rank", bundle_dir, {"query": query, "texts": texts, "threads": threads,
                                                "runtime": runtime}, timeout)
        return [(float(score), text) for score, text in ranked]
    runner = _sentence_runner(bundle_dir, threads, runtime)
    vector = lambda text: _sentence_output(runner(text)[0], runner.bundle)  # noqa: E731
    target = _unit(vector(query))  # (H,)
    scores = _unit(np.stack([vector(text) for text in texts])) @ target  # (N,)
    order = sorted(range(len(texts)), key=lambda index: -scores[index])
    return [(float(scores[index]), texts[index]) for index in order]


def describe(result: dict) -> str:
    """One terminal line: `label (p=0.93)  text`, `dim=128 |v|=5.12 [v0, v1, v2, v3 ...]  text` (pooled
    output), or `sentence_embedding dim=384 |v|=1.0000 [...]  text`."""
    text = result["text"]
    shown = "\t".join(text) if isinstance(text, list) else text
    if "label" in result:
        return f"{result['label']} (p={result['probability']:.2f})  {shown}"
    values = ", ".join(f"{value:.4f}" for value in result["head"])
    more = " ..." if result["dim"] > len(result["head"]) else ""
    kind = "sentence_embedding " if "sentence_embedding" in result else ""
    return f"{kind}dim={result['dim']} |v|={result['norm']:.4f} [{values}{more}]  {shown}"


def describe_ranking(score: float, text: str) -> str:
    """One terminal line of a `rank` result: `0.8123  text`."""
    return f"{score:.4f}  {text}"
