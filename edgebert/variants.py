"""The 24 BERT Miniatures as a table of variants (L layers x H hidden), parsed from any spelling.

Google released uncased English BERT at L in {2,4,6,8,10,12} x H in {128,256,512,768}, with A = H/64
heads and an intermediate size of 4H. Every figure here is derived from (L, H); nothing else is stored.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from edgebert.errors import UnknownVariantError

LAYER_CHOICES = (2, 4, 6, 8, 10, 12)
HIDDEN_CHOICES = (128, 256, 512, 768)
VOCAB_SIZE = 30522
MAX_POSITIONS = 512
TYPE_VOCAB_SIZE = 2
DOWNLOAD_ROOT = "https://storage.googleapis.com/bert_models/2020_02_20"

NICKNAMES = {"tiny": (2, 128), "mini": (4, 256), "small": (4, 512), "medium": (8, 512), "base": (12, 768)}


@dataclass(frozen=True)
class Variant:
    layers: int
    hidden: int

    @property
    def heads(self) -> int:
        return self.hidden // 64

    @property
    def intermediate(self) -> int:
        return 4 * self.hidden

    @property
    def name(self) -> str:
        """Google's upstream name, e.g. `uncased_L-4_H-256_A-4`."""
        return f"uncased_L-{self.layers}_H-{self.hidden}_A-{self.heads}"

    @property
    def nickname(self) -> str | None:
        return next((nick for nick, shape in NICKNAMES.items() if shape == (self.layers, self.hidden)), None)

    @property
    def short_name(self) -> str:
        """What bundles and tables call it: `bert-mini`, or `bert-L6-H256` off the named five."""
        return f"bert-{self.nickname}" if self.nickname else f"bert-L{self.layers}-H{self.hidden}"

    @property
    def url(self) -> str:
        return f"{DOWNLOAD_ROOT}/{self.name}.zip"

    @property
    def encoder_parameters(self) -> int:
        """Parameters of the exported encoder (embeddings, layers, pooler); no pre-training heads."""
        h, i = self.hidden, self.intermediate
        embeddings = (VOCAB_SIZE + MAX_POSITIONS + TYPE_VOCAB_SIZE) * h + 2 * h
        per_layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 2 * (2 * h)
        pooler = h * h + h
        return embeddings + self.layers * per_layer + pooler

    @property
    def float32_bytes(self) -> int:
        return 4 * self.encoder_parameters

    @property
    def int8_bytes(self) -> int:
        """Estimate for dynamic int8: matrices and embeddings at 1 byte, biases and LayerNorms at 4."""
        h = self.hidden
        vectors = 2 * h + self.layers * (4 * h + self.intermediate + h + 4 * h) + h
        return (self.encoder_parameters - vectors) + 4 * vectors


ALL_VARIANTS = tuple(Variant(layers, hidden) for layers in LAYER_CHOICES for hidden in HIDDEN_CHOICES)

_SHAPE_PATTERN = re.compile(r"L-?(\d+)[_\-/ ]*H-?(\d+)(?:[_\-/ ]*A-?(\d+))?", re.IGNORECASE)
_PREFIXES = ("google/", "prajjwal1/", "bert_uncased_", "uncased_", "bert-", "bert_", "bert")


def _grid_hint() -> str:
    nicknames = ", ".join(NICKNAMES)
    return (f"valid names: {nicknames}, or L-<layers>_H-<hidden> with layers in "
            f"{{{','.join(map(str, LAYER_CHOICES))}}} and hidden in {{{','.join(map(str, HIDDEN_CHOICES))}}} "
            f"(e.g. uncased_L-4_H-256_A-4, bert-mini, L-4_H-256)")


def parse_variant(text: str) -> Variant:
    """Resolve any spelling a user would try: `mini`, `bert-mini`, `L-4_H-256`, `uncased_L-4_H-256_A-4`,
    `google/bert_uncased_L-4_H-256_A-4`, `prajjwal1/bert-mini`. An unknown one lists the valid grid."""
    cleaned = text.strip().lower()
    match = _SHAPE_PATTERN.search(cleaned)
    if match:
        layers, hidden = int(match.group(1)), int(match.group(2))
        variant = Variant(layers, hidden)
        if variant not in ALL_VARIANTS:
            raise UnknownVariantError(f"unknown variant {text!r}: L={layers}, H={hidden} is not in the "
                                      f"BERT Miniatures grid; {_grid_hint()}")
        if match.group(3) is not None and int(match.group(3)) != variant.heads:
            raise UnknownVariantError(f"unknown variant {text!r}: H={hidden} has A={variant.heads} heads, "
                                      f"not {match.group(3)}; {_grid_hint()}")
        return variant
    for prefix in _PREFIXES:
        if cleaned.startswith(prefix):
            cleaned = cleaned[len(prefix):]
    if cleaned in NICKNAMES:
        return Variant(*NICKNAMES[cleaned])
    raise UnknownVariantError(f"unknown variant {text!r}; {_grid_hint()}")


def parse_variant_list(text: str) -> list[Variant]:
    """`all`, or a comma-separated list of names (for sweeps)."""
    if text.strip().lower() == "all":
        return list(ALL_VARIANTS)
    return [parse_variant(part) for part in text.split(",") if part.strip()]
