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


def _activation(x, approximate_gelu, relu):
    return np.maximum(x, 0.0) if relu else _gelu(x, approximate_gelu)


def bert_forward(w, input_ids, attention_mask, token_type_ids, num_heads, approximate_gelu=True,
                 num_labels=0, relu=False):
    """One example: int arrays of shape (S,). Returns dict of float64 outputs. The feed-forward
    activation is GELU (tanh form when approximate_gelu, else erf), or relu when relu=True."""
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
        inner = _activation(dense(x, "intermediate/dense"), approximate_gelu, relu)
        x = _layer_norm(x + dense(inner, "output/dense"),
                        w[f"{g}/output/LayerNorm/gamma"], w[f"{g}/output/LayerNorm/beta"])
        layer += 1
    pooled = np.tanh(x[0] @ w["bert/pooler/dense/kernel"] + w["bert/pooler/dense/bias"])
    out = {"sequence_output": x, "pooled_output": pooled}
    if num_labels:
        out["logits"] = pooled @ w["output_weights"].T + w["output_bias"]
    return out


def sentence_pooling(sequence_output, attention_mask, mode, normalize):
    """sentence-transformers' Pooling and Normalize modules (their torch code, in numpy), for one example:
    sequence_output (S, H), attention_mask (S,) -> the sentence embedding (H,)."""
    x = np.asarray(sequence_output, np.float64)
    mask = np.asarray(attention_mask, np.float64)[:, None]  # (S, 1)
    if mode == "cls":
        pooled = x[0]
    elif mode == "mean":
        pooled = (x * mask).sum(0) / np.maximum(mask.sum(0), 1e-9)
    elif mode == "max":
        pooled = np.where(mask > 0, x, -1e9).max(0)
    else:
        raise ValueError(mode)
    if normalize:  # torch.nn.functional.normalize(p=2, eps=1e-12)
        pooled = pooled / max(np.linalg.norm(pooled), 1e-12)
    return pooled
