"""The model config: every BERT-architecture size a checkpoint's config states, validated on creation.

Nothing here assumes the 24-grid: head size is hidden/heads (not always 64), intermediate is whatever
the config says, and the activation keeps the meaning of the file it came from (Google's `gelu` is
the tanh approximation; Hugging Face's `gelu` is the exact erf form and `gelu_new` the tanh form).

Structured pruning (converters/structured.py) gives layers their own head and FFN counts:
`layer_heads` and `layer_intermediate_sizes` (empty: every layer has `num_heads` heads and
`intermediate_size` neurons). `num_heads` stays the original count, so the head size is unchanged.
Neither Google's bert_config.json nor Hugging Face's config.json has a key for them; edgebert writes
`edgebert_layer_heads` and `edgebert_layer_intermediate_sizes` into either, only when the layers differ
from the uniform shape (transformers ignores them, so it cannot load such a model).
"""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path

from edgebert.errors import ConfigError
from edgebert.variants import MAX_POSITIONS, TYPE_VOCAB_SIZE, VOCAB_SIZE, Variant


class Activation(str, Enum):
    GELU_TANH = "gelu_tanh"
    GELU_ERF = "gelu_erf"
    RELU = "relu"


# Each flavour's names for its activations. Google's modeling.py implements "gelu" with tanh.
_GOOGLE_ACTIVATIONS = {"gelu": Activation.GELU_TANH, "relu": Activation.RELU}
_HF_ACTIVATIONS = {"gelu": Activation.GELU_ERF, "gelu_new": Activation.GELU_TANH,
                   "gelu_pytorch_tanh": Activation.GELU_TANH, "gelu_fast": Activation.GELU_TANH,
                   "relu": Activation.RELU}
# What edgebert writes into a Hugging Face config.json for each activation (transformers' names).
_HF_NAMES = {Activation.GELU_ERF: "gelu", Activation.GELU_TANH: "gelu_new", Activation.RELU: "relu"}
# edgebert's own keys in bert_config.json / config.json for per-layer shapes (written only when non-uniform).
LAYER_HEADS_KEY, LAYER_INTERMEDIATE_KEY = "edgebert_layer_heads", "edgebert_layer_intermediate_sizes"


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int
    max_positions: int = MAX_POSITIONS
    type_vocab_size: int = TYPE_VOCAB_SIZE
    activation: Activation = Activation.GELU_TANH
    layer_norm_eps: float = 1e-12
    # Per-layer shapes after structured pruning; () is uniform. A tuple equal to the uniform shape
    # is stored as (), so that equal models compare and serialize equal.
    layer_heads: tuple[int, ...] = ()
    layer_intermediate_sizes: tuple[int, ...] = ()

    def __post_init__(self):
        for field in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                      "max_positions", "type_vocab_size"):
            value = getattr(self, field)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{field} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise ConfigError(f"hidden_size {self.hidden_size} is not divisible by num_heads {self.num_heads}")
        object.__setattr__(self, "activation", Activation(self.activation))
        for field, uniform in (("layer_heads", self.num_heads), ("layer_intermediate_sizes", self.intermediate_size)):
            object.__setattr__(self, field, self._per_layer(field, getattr(self, field), uniform))

    def _per_layer(self, field: str, values, uniform: int) -> tuple[int, ...]:
        if isinstance(values, (str, bytes)) or not isinstance(values, (list, tuple)):
            raise ConfigError(f"{field} must be a list of {self.num_layers} positive integers, got {values!r}")
        values = tuple(values)
        if not values:
            return ()
        if len(values) != self.num_layers:
            raise ConfigError(f"{field} has {len(values)} entries but num_layers is {self.num_layers}")
        for value in values:
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{field} must hold positive integers, got {value!r} in {list(values)}")
        return () if all(value == uniform for value in values) else values

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_heads

    def heads_in(self, layer: int) -> int:
        """Attention heads of encoder layer `layer` (0-based)."""
        self._check_layer(layer)
        return self.layer_heads[layer] if self.layer_heads else self.num_heads

    def intermediate_in(self, layer: int) -> int:
        """FFN neurons of encoder layer `layer` (0-based)."""
        self._check_layer(layer)
        return self.layer_intermediate_sizes[layer] if self.layer_intermediate_sizes else self.intermediate_size

    def attention_width(self, layer: int) -> int:
        """Width of the layer's Q/K/V projections (and input width of its attention output)."""
        return self.heads_in(layer) * self.head_size

    def _check_layer(self, layer: int) -> None:
        if not 0 <= layer < self.num_layers:
            raise IndexError(f"layer {layer} out of range for {self.num_layers} layers")

    @classmethod
    def from_variant(cls, variant: Variant, vocab_size: int = VOCAB_SIZE) -> "BertConfig":
        return cls(vocab_size=vocab_size, hidden_size=variant.hidden, num_layers=variant.layers,
                   num_heads=variant.heads, intermediate_size=variant.intermediate)

    @classmethod
    def from_json_file(cls, path: Path, flavour: str) -> "BertConfig":
        """Read Google's `bert_config.json` (flavour "google") or Hugging Face's `config.json` ("hf")."""
        path = Path(path)
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("config file not found", path) from None
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"not a readable JSON config ({error})", path) from None
        if not isinstance(raw, dict):
            raise ConfigError("config is not a JSON object", path)
        if flavour == "hf" and raw.get("model_type", "bert") != "bert":
            raise ConfigError(f"model_type is {raw.get('model_type')!r}, not 'bert'", path)
        names = _GOOGLE_ACTIVATIONS if flavour == "google" else _HF_ACTIVATIONS
        act_name = raw.get("hidden_act", "gelu")
        if act_name not in names:
            raise ConfigError(f"unsupported hidden_act {act_name!r} (supported: {', '.join(names)})", path)
        try:
            return cls(
                vocab_size=raw["vocab_size"],
                hidden_size=raw["hidden_size"],
                num_layers=raw["num_hidden_layers"],
                num_heads=raw["num_attention_heads"],
                intermediate_size=raw["intermediate_size"],
                max_positions=raw.get("max_position_embeddings", MAX_POSITIONS),
                type_vocab_size=raw.get("type_vocab_size", TYPE_VOCAB_SIZE),
                activation=names[act_name],
                layer_norm_eps=float(raw.get("layer_norm_eps", 1e-12)),
                layer_heads=raw.get(LAYER_HEADS_KEY, ()),
                layer_intermediate_sizes=raw.get(LAYER_INTERMEDIATE_KEY, ()),
            )
        except KeyError as missing:
            raise ConfigError(f"missing key {missing.args[0]!r}", path) from None
        except ConfigError as error:
            raise ConfigError(error.problem, path) from None

    def to_google_json(self) -> dict:
        """The dict Google's release writes as `bert_config.json`."""
        if self.activation is Activation.GELU_ERF:
            raise ConfigError("Google's bert_config.json cannot express the erf GELU")
        google = {
            "attention_probs_dropout_prob": 0.1,
            "hidden_act": "gelu" if self.activation is Activation.GELU_TANH else "relu",
            "hidden_dropout_prob": 0.1,
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "max_position_embeddings": self.max_positions,
            "num_attention_heads": self.num_heads,
            "num_hidden_layers": self.num_layers,
            "type_vocab_size": self.type_vocab_size,
            "vocab_size": self.vocab_size,
        }
        if self.layer_heads:
            google[LAYER_HEADS_KEY] = list(self.layer_heads)
        if self.layer_intermediate_sizes:
            google[LAYER_INTERMEDIATE_KEY] = list(self.layer_intermediate_sizes)
        return google

    def to_hf_json(self) -> dict:
        """The dict transformers' BertConfig reads from `config.json`, with the activation in Hugging Face's
        names (the erf GELU is "gelu", the tanh one "gelu_new") and the per-layer keys when pruned."""
        hf = {
            "model_type": "bert",
            "attention_probs_dropout_prob": 0.1,
            "hidden_act": _HF_NAMES[self.activation],
            "hidden_dropout_prob": 0.1,
            "hidden_size": self.hidden_size,
            "initializer_range": 0.02,
            "intermediate_size": self.intermediate_size,
            "layer_norm_eps": self.layer_norm_eps,
            "max_position_embeddings": self.max_positions,
            "num_attention_heads": self.num_heads,
            "num_hidden_layers": self.num_layers,
            "position_embedding_type": "absolute",
            "type_vocab_size": self.type_vocab_size,
            "vocab_size": self.vocab_size,
        }
        if self.layer_heads:
            hf[LAYER_HEADS_KEY] = list(self.layer_heads)
        if self.layer_intermediate_sizes:
            hf[LAYER_INTERMEDIATE_KEY] = list(self.layer_intermediate_sizes)
        return hf

    def to_dict(self) -> dict:
        return {**asdict(self), "activation": self.activation.value, "head_size": self.head_size,
                "layer_heads": list(self.layer_heads),
                "layer_intermediate_sizes": list(self.layer_intermediate_sizes)}
