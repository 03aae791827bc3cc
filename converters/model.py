"""BERT as a tf_keras functional model, written to export cleanly to builtin TFLite ops.

Read bottom-up: embeddings, one attention step, the sentence-transformers poolings, the encoder layer,
then the model. Every Dense layer is a top-level layer of the functional graph (not hidden inside a
custom layer) so that tensorflow-model-optimization can wrap them for pruning with `clone_model`. The
few custom layers hold no trainable matrices. Shapes: B batch, S sequence, H hidden, N heads, D head size (H = N * D).
"""
from __future__ import annotations

import math

import numpy as np

from converters.config import Activation, BertConfig
from converters.outliers import hadamard, rotation_block
from converters.sentence_embedding import PoolingMode, SentencePooling
from converters.tf_import import tf, tf_keras

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
MASKED_SCORE = -10000.0  # what Google's modeling.py adds to scores of padding positions
# Full int8 quantizes the attention scores with the mask added: a -10000 bias stretches their int8 range
# so far that one step is ~40 and the real scores all round to the same value (a fine-tuned SST-2
# classifier's probabilities moved by 0.90). -30 already gives a padded key a softmax weight below
# e^-10 (scores differ by less than 20), far under int8's resolution of 1/256, and keeps a step near 0.2.
INT8_MASKED_SCORE = -30.0


@tf_keras.utils.register_keras_serializable("edgebert")
def gelu_tanh(x):
    return tf.nn.gelu(x, approximate=True)  # both GELUs become the builtin GELU op


@tf_keras.utils.register_keras_serializable("edgebert")
def gelu_erf(x):
    return tf.nn.gelu(x, approximate=False)


def _activation(kind: Activation):
    # Named, registered functions (not lambdas) so that a Dense layer survives clone_model, which
    # tensorflow-model-optimization's pruning wrappers go through.
    return {Activation.RELU: tf.nn.relu, Activation.GELU_TANH: gelu_tanh, Activation.GELU_ERF: gelu_erf}[kind]


@tf_keras.utils.register_keras_serializable("edgebert")
class PositionEmbedding(tf_keras.layers.Layer):
    """Adds the learned position vectors of positions 0..S-1 to the token embeddings.

    At a fixed length the converter folds the first S rows into a float constant of their own. A model
    with one signature per length (length buckets) would then carry one copy per length, so there
    (`shared_table`) the rows are gathered by position ids computed from the input ids, which the
    converter cannot fold: every signature reads the one table (int8 in a dynamic-int8 export, as the
    word embeddings are)."""

    def __init__(self, max_positions: int, hidden: int, shared_table: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.max_positions, self.hidden, self.shared_table = max_positions, hidden, shared_table

    def build(self, input_shape):
        self.table = self.add_weight("embeddings", shape=(self.max_positions, self.hidden))

    def call(self, embeddings, input_ids):  # (B, S, H), (B, S) int32
        if not self.shared_table:
            seq_len = tf.shape(embeddings)[1]
            return embeddings + tf.slice(self.table, [0, 0], [seq_len, self.hidden])[None]  # (B, S, H)
        # Ids are never negative, so this is all ones; it depends on the ids' values, which the converter
        # cannot fold (a ones_like of a fixed shape would fold back into a constant).
        ones = tf.cast(tf.greater_equal(input_ids, 0), tf.int32)  # (B, S)
        positions = tf.cumsum(ones, axis=1, exclusive=True)  # (B, S): 0, 1, ..., S-1
        return embeddings + tf.gather(self.table, positions)  # (B, S, H)

    def get_config(self):
        return {**super().get_config(), "max_positions": self.max_positions, "hidden": self.hidden,
                "shared_table": self.shared_table}


@tf_keras.utils.register_keras_serializable("edgebert")
class AttentionMaskBias(tf_keras.layers.Layer):
    """Turns the 0/1 attention mask into an additive bias over the key positions."""

    def __init__(self, masked_score: float = MASKED_SCORE, **kwargs):
        super().__init__(**kwargs)
        self.masked_score = masked_score

    def call(self, attention_mask):  # (B, S) int32
        bias = (1.0 - tf.cast(attention_mask, tf.float32)) * self.masked_score  # (B, S)
        # tf.reshape, not mask[:, None, None, :]: the strided-slice form needs a Flex op.
        return tf.reshape(bias, [-1, 1, 1, tf.shape(bias)[1]])  # (B, 1, 1, S)

    def get_config(self):
        return {**super().get_config(), "masked_score": self.masked_score}


@tf_keras.utils.register_keras_serializable("edgebert")
class ScaledDotProductAttention(tf_keras.layers.Layer):
    """softmax(Q K^T / sqrt(D) + mask) V over N heads; the projections are Dense layers outside."""

    def __init__(self, num_heads: int, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.num_heads, self.dropout = num_heads, dropout

    def _split_heads(self, x, head_size):  # (B, S, H)
        shape = tf.shape(x)
        x = tf.reshape(x, [shape[0], shape[1], self.num_heads, head_size])  # (B, S, N, D)
        return tf.transpose(x, [0, 2, 1, 3])  # (B, N, S, D)

    def call(self, query, key, value, mask_bias, training=None):
        head_size = query.shape[-1] // self.num_heads
        q = self._split_heads(query * (1.0 / math.sqrt(head_size)), head_size)  # (B, N, S, D)
        k = self._split_heads(key, head_size)  # (B, N, S, D)
        v = self._split_heads(value, head_size)  # (B, N, S, D)
        scores = tf.matmul(q, k, transpose_b=True) + mask_bias  # (B, N, S, S)
        probs = tf.nn.softmax(scores, axis=-1)  # (B, N, S, S)
        if training and self.dropout:  # fine-tuning only; never part of an exported graph
            probs = tf.nn.dropout(probs, self.dropout)
        context = tf.matmul(probs, v)  # (B, N, S, D)
        context = tf.transpose(context, [0, 2, 1, 3])  # (B, S, N, D)
        shape = tf.shape(context)
        return tf.reshape(context, [shape[0], shape[1], self.num_heads * head_size])  # (B, S, H)

    def get_config(self):
        return {**super().get_config(), "num_heads": self.num_heads, "dropout": self.dropout}


@tf_keras.utils.register_keras_serializable("edgebert")
class RuntimeOnes(tf_keras.layers.Layer):
    """A (B, 1, 1) tensor of ones that depends on the input ids' values (which are never negative), so
    that the converter cannot treat what it multiplies as a constant (see ChannelScale)."""

    def call(self, input_ids):  # (B, S) int32
        nonnegative = tf.greater_equal(tf.reduce_min(input_ids, axis=1, keepdims=True), 0)  # (B, 1)
        return tf.reshape(tf.cast(nonnegative, tf.float32), [-1, 1, 1])  # (B, 1, 1)


@tf_keras.utils.register_keras_serializable("edgebert")
class ChannelScale(tf_keras.layers.Layer):
    """x * scale, one factor per channel: the smoothing of a dense layer's input that outlier equalization
    (converters/outliers.py) sets, the inverse folded into that layer's weights. Ones until it is set.
    A constant factor the TensorFlow converter would fold into the next layer's weights, undoing the
    smoothing before quantization; through RuntimeOnes it cannot."""

    def build(self, input_shape):
        self.scale = self.add_weight("scale", shape=(input_shape[-1],), initializer="ones", trainable=False)

    def call(self, x, ones):  # (B, S, H), (B, 1, 1)
        return x * (ones * self.scale)  # (B, S, H)


@tf_keras.utils.register_keras_serializable("edgebert")
class BlockRotation(tf_keras.layers.Layer):
    """x times a block-diagonal Hadamard matrix, at run time: outlier equalization's rotation of a dense
    layer's input (`--equalize rotate`), whose inverse is folded into that layer's weights. Each block of
    `block` channels is mixed within itself, so an outlier channel is spread over the block and a dynamic
    int8 row scale no longer has to stretch over it. The matrix is tied to RuntimeOnes: as a constant, the
    quantizers would take it for the weights of a dense layer and quantize it (undoing the point)."""

    def __init__(self, block: int, **kwargs):
        super().__init__(**kwargs)
        self.block = block

    def call(self, x, ones):  # (B, S, W), (B, 1, 1)
        block = rotation_block(x.shape[-1], self.block)
        rows = tf.reshape(x, [-1, block])  # (B * S * W / b, b): every block has the same matrix
        rotated = tf.matmul(rows, hadamard(block).astype(np.float32) * tf.reduce_min(ones))
        return tf.reshape(rotated, tf.shape(x))  # (B, S, W)

    def get_config(self):
        return {**super().get_config(), "block": self.block}


@tf_keras.utils.register_keras_serializable("edgebert")
class FirstToken(tf_keras.layers.Layer):
    """The [CLS] position, which the pooler reads."""

    def call(self, sequence):  # (B, S, H)
        return sequence[:, 0, :]  # (B, H)


@tf_keras.utils.register_keras_serializable("edgebert")
class FirstRow(tf_keras.layers.Layer):
    """The [CLS] row kept as a sequence of one, for a last layer that computes only that row."""

    def call(self, sequence):  # (B, S, H)
        return sequence[:, :1, :]  # (B, 1, H)


@tf_keras.utils.register_keras_serializable("edgebert")
class MaskedMeanPooling(tf_keras.layers.Layer):
    """The mean of the token vectors over the real tokens (attention mask 1): padding changes nothing.
    One batched matmul of the mask's weights (1/count on real tokens, 0 on padding) with the sequence,
    an op XNNPACK runs, instead of a masked multiply and a reduction."""

    def call(self, sequence, attention_mask):  # (B, S, H), (B, S) int32
        mask = tf.cast(attention_mask, tf.float32)  # (B, S)
        count = tf.maximum(tf.reduce_sum(mask, axis=1, keepdims=True), 1.0)  # (B, 1): real tokens
        weights = tf.reshape(mask / count, [-1, 1, tf.shape(mask)[1]])  # (B, 1, S)
        mean = tf.matmul(weights, sequence)  # (B, 1, H)
        return tf.reshape(mean, [-1, sequence.shape[-1]])  # (B, H)


@tf_keras.utils.register_keras_serializable("edgebert")
class MaskedMaxPooling(tf_keras.layers.Layer):
    """The per-dimension maximum over the real tokens. A padded position is given the [CLS] vector
    (position 0, always real), so it can never win: exact, and no -1e9 constant to stretch a full-int8
    range the way sentence-transformers' own masking would."""

    def call(self, sequence, attention_mask):  # (B, S, H), (B, S) int32
        mask = tf.cast(attention_mask, tf.float32)[..., None]  # (B, S, 1)
        first = sequence[:, :1, :]  # (B, 1, H)
        masked = sequence * mask + first * (1.0 - mask)  # (B, S, H): padding replaced by [CLS]
        return tf.reduce_max(masked, axis=1)  # (B, H)


@tf_keras.utils.register_keras_serializable("edgebert")
class L2Normalize(tf_keras.layers.Layer):
    """x / max(|x|, 1e-12), as sentence-transformers' Normalize (torch's F.normalize) computes it."""

    def call(self, x):  # (B, H)
        squared = tf.reduce_sum(tf.square(x), axis=-1, keepdims=True)  # (B, 1)
        return x * tf.math.rsqrt(tf.maximum(squared, 1e-24))  # (B, H)


def sentence_embedding(sequence, attention_mask, pooling: SentencePooling):
    """sentence-transformers' Pooling (and Normalize) over the encoder's output: (B, S, H) -> (B, H)."""
    if pooling.mode is PoolingMode.CLS:
        embedding = FirstToken(name="cls_pooling")(sequence)  # (B, H)
    elif pooling.mode is PoolingMode.MEAN:
        embedding = MaskedMeanPooling(name="mean_pooling")(sequence, attention_mask)  # (B, H)
    else:
        embedding = MaskedMaxPooling(name="max_pooling")(sequence, attention_mask)  # (B, H)
    return L2Normalize(name="normalize")(embedding) if pooling.normalize else embedding  # (B, H)


def _layer_norm(config: BertConfig, name: str):
    return tf_keras.layers.LayerNormalization(epsilon=config.layer_norm_eps, name=name)


def _dropout(rate: float, name: str):
    """BERT's hidden dropout while fine-tuning; an identity (no layer at all) for export."""
    return tf_keras.layers.Dropout(rate, name=name) if rate else (lambda x: x)


def encoder_layer(x, mask_bias, config: BertConfig, index: int, dropout: float = 0.0, cls_only: bool = False,
                  ones=None, rotation: tuple[int, int] | None = None):
    """One transformer layer (post-LayerNorm, as in BERT). After structured pruning a layer may have
    fewer heads (N_l, width W_l = N_l * D) and neurons (I_l) than the config's uniform shape.

    `cls_only` computes the layer for the [CLS] row alone (R = 1 rows instead of S): its query,
    attention output, LayerNorms and feed-forward; keys and values still come from every token. The
    pooler reads nothing else, so a classifier's last layer gives the same answer for 1/S of that work.

    With `ones` (RuntimeOnes' output) a ChannelScale goes in front of the query/key/value and the
    intermediate layer, for outlier equalization; the residual connections still add the unscaled
    LayerNorm outputs. With `rotation` (blocks for the LayerNorm outputs, blocks for the feed-forward
    output's input) a BlockRotation goes in front of those and of the feed-forward output layer instead."""
    p = f"layer_{index}"
    dense = tf_keras.layers.Dense
    width = config.attention_width(index)
    rows = FirstRow(name=f"{p}_first_row")(x) if cls_only else x  # (B, R, H)
    smoothing = ones is not None

    def equalized(t, kind: str, block: int):  # a dense layer's input, scaled or rotated
        if rotation:
            return BlockRotation(block, name=f"{p}_{kind}_input_rotation")(t, ones)
        return ChannelScale(name=f"{p}_{kind}_input_scale")(t, ones) if smoothing else t

    attention_in = equalized(x, "attention", rotation and rotation[0])  # (B, S, H)
    query_in = attention_in  # (B, R, H)
    if cls_only:
        query_in = FirstRow(name=f"{p}_first_row_scaled")(attention_in) if smoothing else rows
    query = dense(width, name=f"{p}_query")(query_in)  # (B, R, W_l)
    key = dense(width, name=f"{p}_key")(attention_in)  # (B, S, W_l)
    value = dense(width, name=f"{p}_value")(attention_in)  # (B, S, W_l)
    context = ScaledDotProductAttention(config.heads_in(index), dropout,
                                        name=f"{p}_attention")(query, key, value, mask_bias)  # (B, R, W_l)
    attended = dense(config.hidden_size, name=f"{p}_attention_output")(context)  # (B, R, H)
    attended = _dropout(dropout, f"{p}_attention_dropout")(attended)
    x = _layer_norm(config, f"{p}_attention_layer_norm")(rows + attended)  # (B, R, H)
    inner_in = equalized(x, "intermediate", rotation and rotation[0])  # (B, R, H)
    inner = dense(config.intermediate_in(index), activation=_activation(config.activation),
                  name=f"{p}_intermediate")(inner_in)  # (B, R, I_l)
    if rotation:
        inner = equalized(inner, "output", rotation[1])  # (B, R, I_l)
    out = _dropout(dropout, f"{p}_output_dropout")(dense(config.hidden_size, name=f"{p}_output")(inner))  # (B, R, H)
    return _layer_norm(config, f"{p}_output_layer_norm")(x + out)  # (B, R, H)


def build_bert(config: BertConfig, seq_len: int | None = None, num_labels: int = 0,
               dropout: float = 0.0, masked_score: float = MASKED_SCORE,
               pooling: SentencePooling | None = None, cls_only_last_layer: bool = False,
               shared_position_table: bool = False, smoothing: bool = False,
               rotation: tuple[int, int] | None = None) -> tf_keras.Model:
    """The encoder (outputs `sequence_output`, `pooled_output`), with num_labels a classifier (output
    `logits`), or with a sentence-transformers `pooling` a sentence embedder (output
    `sentence_embedding`, no BERT pooler). seq_len None builds a model for any length up to
    max_positions. `dropout` is for fine-tuning (BERT uses 0.1); the weights are the same without it.
    `cls_only_last_layer` computes the last layer for the [CLS] row alone (see encoder_layer): for
    models whose outputs read nothing else, a classifier or a [CLS]-pooled embedder.
    `shared_position_table` is for exports with several lengths (see PositionEmbedding). `smoothing` adds
    the ChannelScale layers outlier equalization sets, `rotation` its BlockRotation layers instead (see
    encoder_layer)."""
    if cls_only_last_layer and not reads_only_cls(num_labels, pooling):
        raise ValueError("a [CLS]-only last layer needs a model whose outputs read only [CLS]")
    inputs = {name: tf_keras.Input(shape=(seq_len,), dtype=tf.int32, name=name) for name in INPUT_NAMES}
    words = tf_keras.layers.Embedding(config.vocab_size, config.hidden_size,
                                      name="word_embeddings")(inputs["input_ids"])  # (B, S, H)
    types = tf_keras.layers.Embedding(config.type_vocab_size, config.hidden_size,
                                      name="token_type_embeddings")(inputs["token_type_ids"])  # (B, S, H)
    x = PositionEmbedding(config.max_positions, config.hidden_size, shared_position_table,
                          name="position_embeddings")(words + types, inputs["input_ids"])  # (B, S, H)
    x = _dropout(dropout, "embeddings_dropout")(_layer_norm(config, "embeddings_layer_norm")(x))  # (B, S, H)
    mask_bias = AttentionMaskBias(masked_score, name="attention_mask_bias")(inputs["attention_mask"])  # (B, 1, 1, S)
    ones = RuntimeOnes(name="runtime_ones")(inputs["input_ids"]) if smoothing or rotation else None  # (B, 1, 1)
    for index in range(config.num_layers):
        last = index == config.num_layers - 1
        x = encoder_layer(x, mask_bias, config, index, dropout, cls_only=cls_only_last_layer and last, ones=ones,
                          rotation=rotation)
    if pooling is not None:
        embedding = sentence_embedding(x, inputs["attention_mask"], pooling)  # (B, H)
        return tf_keras.Model(inputs, {"sentence_embedding": embedding}, name="bert_sentence_encoder")
    pooled = tf_keras.layers.Dense(config.hidden_size, activation="tanh",
                                   name="pooler")(FirstToken(name="first_token")(x))  # (B, H)
    if num_labels:
        pooled = _dropout(dropout, "pooled_dropout")(pooled)
        logits = tf_keras.layers.Dense(num_labels, name="classifier")(pooled)  # (B, num_labels)
        return tf_keras.Model(inputs, {"logits": logits}, name="bert_classifier")
    return tf_keras.Model(inputs, {"sequence_output": x, "pooled_output": pooled}, name="bert_encoder")


def reads_only_cls(num_labels: int, pooling: SentencePooling | None) -> bool:
    """Whether the model's outputs read the last layer's [CLS] row alone: a classifier, or a sentence
    embedder with [CLS] pooling. The encoder's sequence output and mean or max pooling read every row."""
    if pooling is not None:
        return pooling.mode is PoolingMode.CLS
    return num_labels > 0


def google_names(config: BertConfig, num_labels: int = 0, pooler: bool = True) -> dict[str, list[str]]:
    """Keras layer name -> the Google variables behind its weights, in `layer.weights` order
    (`pooler` False: a sentence embedder, which has no BERT pooler)."""
    dense = lambda scope: [f"{scope}/kernel", f"{scope}/bias"]  # noqa: E731
    norm = lambda scope: [f"{scope}/gamma", f"{scope}/beta"]  # noqa: E731
    names = {
        "word_embeddings": ["bert/embeddings/word_embeddings"],
        "token_type_embeddings": ["bert/embeddings/token_type_embeddings"],
        "position_embeddings": ["bert/embeddings/position_embeddings"],
        "embeddings_layer_norm": norm("bert/embeddings/LayerNorm"),
    }
    if pooler:
        names["pooler"] = dense("bert/pooler/dense")
    for index in range(config.num_layers):
        g, p = f"bert/encoder/layer_{index}", f"layer_{index}"
        names.update({
            f"{p}_query": dense(f"{g}/attention/self/query"),
            f"{p}_key": dense(f"{g}/attention/self/key"),
            f"{p}_value": dense(f"{g}/attention/self/value"),
            f"{p}_attention_output": dense(f"{g}/attention/output/dense"),
            f"{p}_attention_layer_norm": norm(f"{g}/attention/output/LayerNorm"),
            f"{p}_intermediate": dense(f"{g}/intermediate/dense"),
            f"{p}_output": dense(f"{g}/output/dense"),
            f"{p}_output_layer_norm": norm(f"{g}/output/LayerNorm"),
        })
    if num_labels:
        names["classifier"] = ["output_weights", "output_bias"]
    return names


def _has_pooler(model: tf_keras.Model) -> bool:
    """A sentence embedder ends in sentence_embedding() instead of BERT's pooler."""
    return any(layer.name == "pooler" for layer in model.layers)


def keras_value(google_name: str, value: np.ndarray) -> np.ndarray:
    """run_classifier stores its head as [labels, hidden]; Dense wants [hidden, labels]."""
    return value.T if google_name == "output_weights" else value


def set_google_weights(model: tf_keras.Model, config: BertConfig, weights: dict[str, np.ndarray],
                       num_labels: int = 0, source: str | None = None) -> list[str]:
    """Load every weight of the model from Google-named arrays, checking each shape. Returns the
    checkpoint variables the model does not use (pre-training heads, optimizer slots), which are
    reported, not fatal. A missing variable or a wrong shape raises ConfigError naming both."""
    from edgebert.errors import ConfigError

    used = set()
    for layer_name, variable_names in google_names(config, num_labels, _has_pooler(model)).items():
        layer = model.get_layer(layer_name)
        values = []
        for variable, name in zip(layer.weights, variable_names):
            if name not in weights:
                raise ConfigError(f"checkpoint has no variable {name!r}, which the config "
                                  f"({config.num_layers} layers, hidden {config.hidden_size}) needs", source)
            value = keras_value(name, weights[name])
            if tuple(value.shape) != tuple(variable.shape):
                expected = tuple(variable.shape)[::-1] if name == "output_weights" else tuple(variable.shape)
                raise ConfigError(f"variable {name!r} has shape {list(weights[name].shape)} but the config "
                                  f"implies {list(expected)} (does bert_config.json match the weights?)", source)
            values.append(value.astype(np.float32))
            used.add(name)
        if len(values) != len(layer.weights):
            raise ConfigError(f"layer {layer_name} has {len(layer.weights)} weights, mapped {len(values)}", source)
        layer.set_weights(values)
    return sorted(set(weights) - used)


def get_google_weights(model: tf_keras.Model, config: BertConfig, num_labels: int = 0) -> dict[str, np.ndarray]:
    """The inverse of set_google_weights: every weight of the model under its Google name."""
    weights = {}
    for layer_name, variable_names in google_names(config, num_labels, _has_pooler(model)).items():
        for variable, name in zip(model.get_layer(layer_name).get_weights(), variable_names):
            weights[name] = keras_value(name, np.asarray(variable, dtype=np.float32))  # .T is its own inverse
    return weights
