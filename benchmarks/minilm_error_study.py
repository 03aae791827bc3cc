"""Where int8 loses all-MiniLM-L6-v2's sentence embedding, and what wins it back: a numpy study.

    python -m benchmarks.minilm_error_study [--configs NAME,...] [--out FILE]

MiniLM's default dynamic-int8 export misses issue 11's target (min cosine >= 0.999 against float over
the 872 SST-2 dev sentences, at <= 1.15x the all-int8 bytes and <= 1.1x its latency). This study
replays the export's arithmetic in numpy, quantizer by quantizer, on the real weights and the real
sentences, so each error source can be switched on alone and each remedy tried before it is built
into the converter:

    W rtn       dense weights rounded per output channel to int8 (what both quantizers do)
    A           each dense layer's input quantized per row to asymmetric int8 at run time (XNNPACK's
                dynamic int8 "qd8" path)
    emb         the word embeddings per tensor (TensorFlow converter) or per row (ai-edge-quantizer)
    gptq        GPTQ: weights rounded column by column, the error pushed onto the columns not yet
                rounded through the inverse Hessian of the layer's inputs (256 sample sentences,
                edgebert's calibration default); each row's largest weight is kept exact, so the
                per-channel scale a quantizer recomputes from the result is unchanged
    sq          SmoothQuant (alpha 0.5): input channels divided by s, weight rows multiplied by s
    had         a block-diagonal Hadamard rotation (blocks of the largest power of two that divides
                the width, as ai-edge-quantizer's HADAMARD_ROTATION) of each dense input, its inverse
                folded into the weights
    split       LLM.int8()'s decomposition: a dense input's k largest channels (by their peak on the
                calibration sentences) multiplied in float, the others zeroed before the int8 quantization

The float reference is the same numpy graph unquantized; the all-int8 row (0.99384) is within 0.00012
of the exported all-int8 `.tflite`'s measured min cosine (0.99396). Figures: min and mean cosine over the 872 sentences. Single-threaded BLAS
(OPENBLAS_NUM_THREADS=1): with two cores shared, threaded BLAS ran 30x slower here.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
import numpy as np  # noqa: E402

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue" / "SST-2" / "dev.tsv"
CALIBRATION_SENTENCES = 256
KINDS = {"qkv": ("query", "key", "value"), "attention_output": ("attention/output/dense",),
         "intermediate": ("intermediate/dense",), "output": ("output/dense",)}


def _erf(x):
    """erf to ~1e-7 (Numerical Recipes' erfc), vectorized: math.erf per element is far too slow."""
    a = np.abs(x)
    t = 1.0 / (1.0 + 0.5 * a)
    poly = -a * a - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (-0.82215223 + t * 0.17087277))))))))
    return np.sign(x) * (1 - t * np.exp(poly))


def _layer_norm(x, gamma, beta, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def sentence_embedding(w, ids, heads, dense, embeddings=None, capture=None):
    """MiniLM's mean-pooled, L2-normalized embedding of one text (its real tokens only); `dense(name, x)`
    computes every dense layer, so a quantizer can stand in for any of them."""
    seq = len(ids)
    table = w["bert/embeddings/word_embeddings"] if embeddings is None else embeddings
    x = table[ids] + w["bert/embeddings/token_type_embeddings"][0] + w["bert/embeddings/position_embeddings"][:seq]
    x = _layer_norm(x, w["bert/embeddings/LayerNorm/gamma"], w["bert/embeddings/LayerNorm/beta"])
    layer = 0
    while f"bert/encoder/layer_{layer}/attention/self/query/kernel" in w:
        g = f"bert/encoder/layer_{layer}"

        def layer_dense(t, part, g=g):
            if capture is not None:
                capture.setdefault(f"{g}/{part}", []).append(t)
            return dense(f"{g}/{part}", t)

        hidden = x.shape[-1]
        size = hidden // heads
        split = lambda t: t.reshape(seq, heads, size).transpose(1, 0, 2)  # noqa: E731
        q, k, v = (split(layer_dense(x, f"attention/self/{n}")) for n in ("query", "key", "value"))
        context = (_softmax(q @ k.transpose(0, 2, 1) / math.sqrt(size)) @ v).transpose(1, 0, 2).reshape(seq, hidden)
        x = _layer_norm(x + layer_dense(context, "attention/output/dense"),
                        w[f"{g}/attention/output/LayerNorm/gamma"], w[f"{g}/attention/output/LayerNorm/beta"])
        inner = layer_dense(x, "intermediate/dense")
        inner = 0.5 * inner * (1 + _erf(inner / math.sqrt(2)))
        x = _layer_norm(x + layer_dense(inner, "output/dense"),
                        w[f"{g}/output/LayerNorm/gamma"], w[f"{g}/output/LayerNorm/beta"])
        layer += 1
    pooled = x.mean(0)
    return pooled / np.linalg.norm(pooled)


def channel_scales(kernel, levels=127):
    """Per output channel symmetric scales of a Keras kernel [in, out]: int8 (levels 127) or int4 (7)."""
    return np.maximum(np.abs(kernel).max(0), 1e-12) / float(levels)


def round_to_nearest(kernel, levels=127):
    scale = channel_scales(kernel, levels)
    return np.clip(np.round(kernel / scale), -levels, levels) * scale


def dynamic_int8(x):
    """A layer input as XNNPACK's dynamic int8 sees it: per row, asymmetric, range including 0."""
    low = np.minimum(x.min(-1, keepdims=True), 0)
    high = np.maximum(x.max(-1, keepdims=True), 0)
    scale = np.maximum(high - low, 1e-12) / 255.0
    zero = np.round(-128 - low / scale)
    return (np.clip(np.round(x / scale) + zero, -128, 127) - zero) * scale


def gptq(kernel, hessian, damp=0.01, levels=127):
    """GPTQ on a Keras kernel [in, out] with the per-channel scales of round-to-nearest (int8, or int4 with
    levels 7); columns in order
    of decreasing Hessian diagonal; each output channel's largest weight held exact so the scales a
    quantizer recomputes from the result are these."""
    w = kernel.T.astype(np.float64).copy()  # [out, in]
    scale = channel_scales(kernel, levels).astype(np.float64)
    h = hessian.astype(np.float64).copy()
    dead = np.diag(h) == 0
    h[dead, dead] = 1
    w[:, dead] = 0
    h += damp * np.mean(np.diag(h)) * np.eye(len(h))
    order = np.argsort(-np.diag(h))
    w, h = w[:, order], h[order][:, order]
    rows = np.arange(w.shape[0])
    largest = np.abs(w).argmax(1)
    kept = w[rows, largest].copy()
    upper = np.linalg.cholesky(np.linalg.inv(h)).T
    out = np.zeros_like(w)
    for i in range(w.shape[1]):
        out[:, i] = np.clip(np.round(w[:, i] / scale), -levels, levels) * scale
        error = (w[:, i] - out[:, i]) / upper[i, i]
        w[:, i + 1:] -= np.outer(error, upper[i, i + 1:])
        w[rows, largest] = kept
    return out[:, np.argsort(order)].T.astype(np.float32)


def block_hadamard(width, block=None):
    """Orthonormal block-diagonal Hadamard matrix: blocks of `block`, by default the largest power of two
    dividing width."""
    from converters.outliers import block_hadamard as blocks

    return blocks(width, block or int(np.gcd(width, 2 ** 30)))


class Study:
    def __init__(self, log):
        from converters.pipeline import bundle_tokenizer
        from converters.real_weights import fetch_real_model
        from converters.sources import load_source
        from edgebert import samples
        from edgebert import tokenizer as tokenization

        source = load_source(fetch_real_model())
        self.w = {k: np.asarray(v, np.float32) for k, v in source.weights.items()}
        self.heads = source.config.num_heads
        tokenizer = bundle_tokenizer(source, 128)

        def ids(text):
            encoded = tokenization.encode(tokenizer, [text], 128)
            return [i for i, m in zip(encoded["input_ids"][0], encoded["attention_mask"][0]) if m]

        dev = [line.split("\t")[0] for line in DEV.read_text(encoding="utf-8").splitlines()[1:]]
        self.dev = [ids(text) for text in dev]
        self.calibration = [ids(text) for text in samples.load_sentences(limit=CALIBRATION_SENTENCES)]
        self.names = sorted({k[:-len("/kernel")] for k in self.w if k.endswith("/kernel") and "/encoder/" in k})
        self.log = log
        started = time.time()
        self.reference = self.embed(self.float_dense)
        log(f"float reference over {len(self.dev)} sentences in {time.time() - started:.0f} s")
        self._inputs = None

    def kernel(self, name):
        return self.w[f"{name}/kernel"]

    def float_dense(self, name, x):
        return x @ self.kernel(name) + self.w[f"{name}/bias"]

    def embed(self, dense, embeddings=None):
        return np.stack([sentence_embedding(self.w, ids, self.heads, dense, embeddings) for ids in self.dev])

    def inputs(self):
        """Every dense layer's float inputs on the calibration sentences."""
        if self._inputs is None:
            self._inputs = {}
            for ids in self.calibration:
                sentence_embedding(self.w, ids, self.heads, self.float_dense, capture=self._inputs)
        return self._inputs

    def hessians(self, transform):
        return {n: sum((transform[n](x)).T.astype(np.float64) @ transform[n](x) for x in self.inputs()[n])
                for n in self.names}

    def outlier_channels(self, name, count):
        """The `count` input channels of a dense layer with the largest magnitude on the calibration
        sentences: what LLM.int8()'s decomposition keeps in float, the rest going int8."""
        peak = np.abs(np.concatenate(self.inputs()[name])).max(0)
        return np.sort(np.argsort(-peak)[:count])

    def smoothing(self, alpha=0.5):
        """SmoothQuant's per-input-channel s, one per input tensor (query, key and value share it)."""
        peak = {n: np.abs(np.concatenate(self.inputs()[n])).max(0) for n in self.names}
        scales = {}
        for name in self.names:
            group = [n for n in self.names if n.rsplit("/", 1)[0] == name.rsplit("/", 1)[0]] \
                if "/attention/self/" in name else [name]
            weight_peak = np.max(np.stack([np.abs(self.kernel(n)).max(1) for n in group]), 0)
            scales[name] = (np.maximum(peak[name], 1e-5) ** alpha
                            / np.maximum(weight_peak, 1e-5) ** (1 - alpha)).astype(np.float32)
        return scales


def _rotated(study, names):
    rotation = {n: block_hadamard(study.kernel(n).shape[0]) for n in names}
    return rotation, {n: rotation[n].T @ study.kernel(n) for n in names}


def configs(study):
    """name -> (dense function, word-embedding table or None), built lazily."""
    s = study
    bias = lambda n: s.w[f"{n}/bias"]  # noqa: E731
    table = lambda: s.w["bert/embeddings/word_embeddings"]  # noqa: E731

    def rtn():
        weights = {n: round_to_nearest(s.kernel(n)) for n in s.names}
        return lambda n, x: dynamic_int8(x) @ weights[n] + bias(n), None

    def only_weights(levels=127):
        weights = {n: round_to_nearest(s.kernel(n), levels) for n in s.names}
        return lambda n, x: x @ weights[n] + bias(n), None

    def only_activations(kind=None):
        keys = KINDS[kind] if kind else ("",)
        return lambda n, x: (dynamic_int8(x) if any(n.endswith(k) for k in keys) else x) @ s.kernel(n) + bias(n), None

    def per_tensor_embeddings():
        scale = np.abs(table()).max() / 127
        return s.float_dense, np.round(table() / scale) * scale

    def per_row_embeddings(levels=127):
        return s.float_dense, round_to_nearest(table().T, levels).T

    def with_gptq(activations):
        weights = {n: gptq(s.kernel(n), h) for n, h in s.hessians({n: (lambda x: x) for n in s.names}).items()}
        quant = dynamic_int8 if activations else (lambda x: x)
        return lambda n, x: quant(x) @ weights[n] + bias(n), None

    def smoothquant(use_gptq):
        scales = s.smoothing()
        kernels = {n: s.kernel(n) * scales[n][:, None] for n in s.names}
        if use_gptq:
            hessians = s.hessians({n: (lambda x, n=n: x / scales[n]) for n in s.names})
            weights = {n: gptq(kernels[n], hessians[n]) for n in s.names}
        else:
            weights = {n: round_to_nearest(kernels[n]) for n in s.names}
        return lambda n, x: dynamic_int8(x / scales[n]) @ weights[n] + bias(n), None

    def hadamard(use_gptq, kinds=tuple(KINDS)):
        rotated_names = [n for n in s.names if any(n.endswith(k) for kind in kinds for k in KINDS[kind])]
        rotation, kernels = _rotated(s, rotated_names)
        transform = {n: (lambda x, n=n: x @ rotation[n]) if n in rotation else (lambda x: x) for n in s.names}
        kernels = {n: kernels.get(n, s.kernel(n)) for n in s.names}
        if use_gptq:
            hessians = s.hessians(transform)
            weights = {n: gptq(kernels[n], hessians[n]) for n in s.names}
        else:
            weights = {n: round_to_nearest(kernels[n]) for n in s.names}
        return lambda n, x: dynamic_int8(transform[n](x)) @ weights[n] + bias(n), None

    def plan(steps, levels=127, layers=None, elsewhere=None):
        """Per kind of dense input: ("sq", alpha) smooths it, ("had", block) rotates it, absent leaves it;
        with `layers` (indices), `steps` apply there and `elsewhere` in the other layers.
        GPTQ on every kernel, inputs int8. Rotating the attention output's input in head-sized blocks folds
        into the value layer (free at run time); smoothing costs an elementwise multiply (post-LayerNorm
        BERT adds the same tensor to its residual, so it cannot fold into the LayerNorm); any other
        rotation is a float matmul at run time. `equalized` is what converters/outliers.py exports."""
        transform, kernels, smoothing, outliers = {}, {}, {}, {}
        for n in s.names:
            kind = next((k for k, ends in KINDS.items() if any(n.endswith(e) for e in ends)), None)
            index = int(n.split("/layer_")[1].split("/")[0])
            step = (steps if layers is None or index in layers else elsewhere).get(kind)
            if step and step[0] == "split":
                channels = s.outlier_channels(n, step[1])
                mask = np.ones(s.kernel(n).shape[0], np.float32)
                mask[channels] = 0
                transform[n], kernels[n] = (lambda x, m=mask: x * m), s.kernel(n) * mask[:, None]
                outliers[n] = lambda x, c=channels, k=s.kernel(n)[channels]: x[:, c] @ k
            elif step and step[0] == "sq":
                if step[1] not in smoothing:
                    smoothing[step[1]] = s.smoothing(step[1])
                scale = smoothing[step[1]][n]
                transform[n], kernels[n] = (lambda x, c=scale: x / c), s.kernel(n) * scale[:, None]
            elif step and step[0] == "had":
                rotation = block_hadamard(s.kernel(n).shape[0], step[1])
                transform[n], kernels[n] = (lambda x, r=rotation: x @ r), rotation.T @ s.kernel(n)
            else:
                transform[n], kernels[n] = (lambda x: x), s.kernel(n)
        hessians = s.hessians(transform)
        weights = {n: gptq(kernels[n], hessians[n], levels=levels) for n in s.names}
        none = lambda x: 0.0  # noqa: E731
        return lambda n, x: dynamic_int8(transform[n](x)) @ weights[n] + bias(n) + outliers.get(n, none)(x), None

    equalized = {"qkv": ("sq", 0.5), "intermediate": ("sq", 0.5), "attention_output": ("had", 32)}
    return {
        "equalized (sq on LayerNorm outputs; had32 on attention output) + W gptq + A": lambda: plan(equalized),
        **{f"equalized + had{b} on output + W gptq + A": (lambda b=b: plan({**equalized, "output": ("had", b)}))
           for b in (16, 32, 64)},
        "had32 everywhere + W gptq + A": lambda: plan({k: ("had", 32) for k in KINDS}),
        **{f"equalized + output's {k} largest input channels float + W gptq + A":
           (lambda k=k: plan({**equalized, "output": ("split", k)})) for k in (4, 16)},
        "output's and intermediate's 16 largest input channels float; had32 on attention output + W gptq + A":
            lambda: plan({**equalized, "intermediate": ("split", 16), "output": ("split", 16)}),
        "16 largest input channels float everywhere + W gptq + A": lambda: plan({k: ("split", 16) for k in KINDS}),
        **{f"had{a} on LayerNorm outputs; had32 on attention output; had{b} on output + W gptq + A":
           (lambda a=a, b=b: plan({"qkv": ("had", a), "intermediate": ("had", a),
                                   "attention_output": ("had", 32), "output": ("had", b)}))
           for a, b in ((128, 512), (128, 128), (128, 64), (64, 128), (64, 64), (64, 32), (32, 64))},
        **{f"equalized; had64 on LayerNorm outputs and had32 on output in layer {i} only + W gptq + A":
           (lambda i=i: plan({**equalized, "qkv": ("had", 64), "intermediate": ("had", 64), "output": ("had", 32)},
                             layers={i}, elsewhere=equalized)) for i in range(6)},
        "sq on LayerNorm outputs and output; had32 on attention output + W gptq + A":
            lambda: plan({**equalized, "output": ("sq", 0.5)}),
        "sq 0.7 on LayerNorm outputs; had32 on attention output + W gptq + A":
            lambda: plan({**equalized, "qkv": ("sq", 0.7), "intermediate": ("sq", 0.7)}),
        "had32 on attention output (folds into value) + W gptq + A": lambda: plan({"attention_output": ("had", 32)}),
        "had32 on attention output + had16 on output + W gptq + A":
            lambda: plan({"attention_output": ("had", 32), "output": ("had", 16)}),
        "W rtn": only_weights,
        "W4 rtn (int4 weights per channel; activations float)": lambda: only_weights(7),
        "embeddings int4 per row": lambda: per_row_embeddings(7),
        "W4 gptq + A": lambda: plan({}, levels=7),
        "had128 on LayerNorm outputs; had32 on attention output; had128 on output + W4 gptq + A":
            lambda: plan({"qkv": ("had", 128), "intermediate": ("had", 128), "attention_output": ("had", 32),
                          "output": ("had", 128)}, levels=7),
        "A": only_activations,
        **{f"A on {kind} only": (lambda kind=kind: only_activations(kind)) for kind in KINDS},
        "W rtn + A (all-int8 today)": rtn,
        "embeddings per tensor": per_tensor_embeddings,
        "embeddings per row": per_row_embeddings,
        "W gptq": lambda: with_gptq(False),
        "W gptq + A": lambda: with_gptq(True),
        "sq + W rtn + A": lambda: smoothquant(False),
        "sq + W gptq + A": lambda: smoothquant(True),
        "had + W rtn + A": lambda: hadamard(False),
        "had + W gptq + A": lambda: hadamard(True),
        "had on qkv and intermediate + W gptq + A": lambda: hadamard(True, ("qkv", "intermediate")),
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.minilm_error_study", description=__doc__.split("\n")[0])
    parser.add_argument("--configs", default="", help="comma-separated config names (default: all)")
    parser.add_argument("--out", type=Path, help="write the markdown table here too")
    args = parser.parse_args(argv)
    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    if not DEV.is_file():
        print(f"error: {DEV}: not found (the shared SST-2 data)", file=sys.stderr)
        return 2
    known = list(configs(None))
    wanted = [c.strip() for c in args.configs.split(",") if c.strip()] or known
    unknown = [c for c in wanted if c not in known]
    if unknown:
        print(f"error: unknown config {unknown[0]!r}; known: {', '.join(known)}", file=sys.stderr)
        return 2
    study = Study(log)
    table = configs(study)
    lines = ["| quantized | min cosine | mean cosine |", "|---|---:|---:|"]
    for name in wanted:
        started = time.time()
        dense, embeddings = table[name]()
        cosine = (study.embed(dense, embeddings) * study.reference).sum(1)
        lines.append(f"| {name} | {cosine.min():.5f} | {cosine.mean():.5f} |")
        log(f"{lines[-1]}  ({time.time() - started:.0f} s)")
        if args.out:
            args.out.write_text("\n".join(lines) + "\n", encoding="utf-8")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
