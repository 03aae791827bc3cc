"""A stand-in vocabulary for offline use, laid out like BERT's uncased one.

The real 30,522-token vocab comes with every downloaded checkpoint; with nothing downloaded (the demo,
tests) we still want real-sized embedding tables and a tokenizer that splits English sensibly. Special
tokens sit at their real ids ([PAD]=0, [UNK]=100, [CLS]=101, [SEP]=102, [MASK]=103), then single
characters and their `##` continuations (so every ASCII word tokenizes without [UNK]), then the words
of the bundled sample text, then `[unused*]` padding up to the requested size.
"""
from __future__ import annotations

import re
import string

from edgebert import samples
from edgebert.errors import UsageError

SPECIALS = {0: "[PAD]", 100: "[UNK]", 101: "[CLS]", 102: "[SEP]", 103: "[MASK]"}


def synthetic_vocab(size: int | None = 30522) -> list[str]:
    """size None: only the tokens needed (for tiny test models)."""
    characters = list(string.ascii_lowercase + string.digits + string.punctuation)
    words = []
    for sentence in samples.load_sentences():
        for word in re.findall(r"[a-z]+", sentence.lower()):
            if len(word) > 1 and word not in words:
                words.append(word)
    vocab = [SPECIALS.get(i, f"[unused{i - 1}]") for i in range(104)]
    for token in characters + ["##" + c for c in characters] + words:
        if token not in vocab:
            vocab.append(token)
    if size is None:
        return vocab
    if len(vocab) > size:
        raise UsageError(f"a synthetic vocab needs at least {len(vocab)} tokens, asked for {size}")
    unused = 99
    while len(vocab) < size:
        vocab.append(f"[unused{unused}]")
        unused += 1
    return vocab
