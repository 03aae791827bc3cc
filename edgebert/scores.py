"""A classifier's scores, from its model's outputs for one text.

A classifier bundle's model.tflite gives `probabilities` [1, num_labels]: a SOFTMAX of the logits,
appended in the graph by `edgebert convert` (converters/mediapipe_metadata.py), the scores MediaPipe's
TextClassifier reports too. Bundles converted before the softmax went into the graph give `logits`;
their probabilities are the softmax computed here. predict, evaluate, export-mediapipe and the
converter's validation all read a classifier through these names.

Device side: numpy only.
"""
from __future__ import annotations

import os

import numpy as np

from edgebert.errors import BundleError

PROBABILITIES, LOGITS = "probabilities", "logits"


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.asarray(logits, dtype=np.float64) - np.max(logits)
    exp = np.exp(shifted)
    return exp / exp.sum()


def class_probabilities(outputs: dict, where: str | os.PathLike) -> np.ndarray:
    """A classifier's probabilities (float64 [num_labels]) from its model's outputs for one text: its
    `probabilities`, or the softmax of an older model's `logits`. `where` names the model in the error."""
    if PROBABILITIES in outputs:
        return np.asarray(outputs[PROBABILITIES], dtype=np.float64).reshape(-1)
    if LOGITS in outputs:
        return softmax(np.asarray(outputs[LOGITS], dtype=np.float64).reshape(-1))
    raise BundleError(f"classifier model has neither a {PROBABILITIES!r} nor a {LOGITS!r} output "
                      f"(has {sorted(outputs)})", where)
