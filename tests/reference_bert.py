"""An independent BERT forward pass in plain numpy, straight from Google's variable names.

It shares no code with `converters/model.py` (no Keras, no TensorFlow), so agreement between the two
is evidence that the weights are mapped and the graph is wired the way Google's modeling.py does it.
"""
import math

import numpy as np


def _layer_norm(x, gamma, beta, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _gelu(x, approximate):
    if approximate:
        return 0.5 * x * (1.0 + np.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def _softmax(x):
    x = x - x.max(-1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(-1, keepdims=True)


def bert_forward(w, input_ids, attention_mask, token_type_ids, num_heads, approximate_gelu=True,
                 num_labels=0):
    """One example: int arrays of shape (S,). Returns dict of float64 outputs."""
    w = {k: v.astype(np.float64) for k, v in w.items()}
    seq = len(input_ids)
    x = (w["bert/embeddings/word_embeddings"][input_ids]
         + w["bert/embeddings/token_type_embeddings"][token_type_ids]
         + w["bert/embeddings/position_embeddings"][:seq])
    x = _layer_norm(x, w["bert/embeddings/LayerNorm/gamma"], w["bert/embeddings/LayerNorm/beta"])
    bias = (1.0 - np.asarray(attention_mask, np.float64)) * -10000.0
    layer = 0
    while f"bert/encoder/layer_{layer}/attention/self/query/kernel" in w:
        g = f"bert/encoder/layer_{layer}"
        dense = lambda t, s: t @ w[f"{g}/{s}/kernel"] + w[f"{g}/{s}/bias"]  # noqa: E731
        hidden = x.shape[-1]
        d = hidden // num_heads
        heads = lambda t: t.reshape(seq, num_heads, d).transpose(1, 0, 2)  # noqa: E731
        q, k, v = (heads(dense(x, f"attention/self/{n}")) for n in ("query", "key", "value"))
        probs = _softmax(q @ k.transpose(0, 2, 1) / math.sqrt(d) + bias)
        context = (probs @ v).transpose(1, 0, 2).reshape(seq, hidden)
        x = _layer_norm(x + dense(context, "attention/output/dense"),
                        w[f"{g}/attention/output/LayerNorm/gamma"], w[f"{g}/attention/output/LayerNorm/beta"])
        inner = _gelu(dense(x, "intermediate/dense"), approximate_gelu)
        x = _layer_norm(x + dense(inner, "output/dense"),
                        w[f"{g}/output/LayerNorm/gamma"], w[f"{g}/output/LayerNorm/beta"])
        layer += 1
    pooled = np.tanh(x[0] @ w["bert/pooler/dense/kernel"] + w["bert/pooler/dense/bias"])
    out = {"sequence_output": x, "pooled_output": pooled}
    if num_labels:
        out["logits"] = pooled @ w["output_weights"].T + w["output_bias"]
    return out
