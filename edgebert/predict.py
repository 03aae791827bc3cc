"""Run a bundle on texts: label probabilities for classifier bundles, embeddings for encoder bundles.

Each text is tokenized with the bundle's own tokenizer.json (a fixed bundle pads to its length, a dynamic
one uses the text's own length) and run alone (the models take batch 1).

Classifier result: {"text", "label", "probability", "probabilities" {label: p, highest first}, "logits"}.
Encoder result: {"text", "dim", "norm" (of pooled_output), "head" (its first 4 values), "tokens",
"pooled_output" [H], "mean_sequence_output" [H] (sequence_output averaged over the real tokens)}.
A sentence pair is given as a (first, second) tuple and reported as [first, second].
"""
from __future__ import annotations

import os
import reprlib

import numpy as np

from edgebert.errors import BundleError, UsageError


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


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.asarray(logits, dtype=np.float64) - np.max(logits)
    exp = np.exp(shifted)
    return exp / exp.sum()


def predict(bundle_dir: str | os.PathLike, texts: list, *, threads: int | None = None,
            runtime: str = "auto") -> list[dict]:
    """One result per text (see the module docstring)."""
    from edgebert import tokenizer as tokenization
    from edgebert.bundle import read_bundle
    from edgebert.interpreter import TFLiteModel

    texts = check_texts(texts)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise UsageError(f"--threads must be an integer of at least 1, got {threads!r}")
    bundle = read_bundle(bundle_dir)
    head = bundle.manifest.get("head")
    if head not in ("classifier", "encoder"):
        raise BundleError(f"manifest head is {head!r} (expected 'classifier' or 'encoder')",
                          bundle.path / "manifest.json")
    tokenizer = tokenization.load_tokenizer(bundle.tokenizer_path)
    model = TFLiteModel(bundle.model_path, num_threads=threads, runtime=runtime)
    results = []
    for text in texts:
        encoded = tokenization.encode(tokenizer, [text], bundle.seq_len)
        outputs = model(**encoded)
        shown = list(text) if isinstance(text, tuple) else text
        if head == "classifier":
            results.append(_classify(shown, outputs, bundle))
        else:
            results.append(_embed(shown, outputs, encoded["attention_mask"][0], bundle))
    return results


def _classify(text, outputs: dict, bundle) -> dict:
    if "logits" not in outputs:
        raise BundleError(f"classifier model has no 'logits' output (has {sorted(outputs)})", bundle.model_path)
    logits = np.asarray(outputs["logits"], dtype=np.float64).reshape(-1)
    labels = bundle.labels or [str(index) for index in range(len(logits))]
    if len(labels) != len(logits):
        raise BundleError(f"manifest has {len(labels)} labels but the model gives {len(logits)} logits",
                          bundle.path / "manifest.json")
    probabilities = softmax(logits)
    ranked = sorted(zip(labels, probabilities.tolist()), key=lambda item: -item[1])
    return {"text": text, "label": ranked[0][0], "probability": ranked[0][1],
            "probabilities": dict(ranked), "logits": logits.tolist()}


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


def describe(result: dict) -> str:
    """One terminal line: `label (p=0.93)  text` or `dim=128 |v|=5.12 [v0, v1, v2, v3 ...]  text`."""
    text = result["text"]
    shown = "\t".join(text) if isinstance(text, list) else text
    if "label" in result:
        return f"{result['label']} (p={result['probability']:.2f})  {shown}"
    values = ", ".join(f"{value:.4f}" for value in result["head"])
    more = " ..." if result["dim"] > len(result["head"]) else ""
    return f"dim={result['dim']} |v|={result['norm']:.4f} [{values}{more}]  {shown}"
