"""A full-integer model's int8 outputs: ai-edge-quantizer's static int8 keeps the last op's output int8, and
TFLiteModel must hand back its dequantized values (a session read the raw integers as floats and took the
overflowing softmax's NaN for a broken quantizer); benchmarks.full_int8 measures through it."""
import numpy as np
import pytest

from benchmarks.full_int8 import aeq_static, probabilities
from edgebert.errors import BundleError
from edgebert.scores import softmax


@pytest.fixture(scope="module")
def integer_output_classifier(tiny_classifier_checkpoint, tmp_path_factory):
    from converters.export import QuantizeMode, export_tflite
    from converters.model import INT8_MASKED_SCORE, build_bert, set_google_weights
    from converters.pipeline import _encode_each, _texts, bundle_tokenizer
    from converters.sources import load_source
    from edgebert.quiet import native_output_silenced

    source = load_source(tiny_classifier_checkpoint)
    model = build_bert(source.config, 16, source.num_labels, masked_score=INT8_MASKED_SCORE)
    set_google_weights(model, source.config, source.weights, source.num_labels)
    feeds = _encode_each(bundle_tokenizer(source, 16), _texts(24), 16)
    with native_output_silenced():
        int8 = aeq_static(export_tflite(model, 16, QuantizeMode.FLOAT32), feeds[:16])
    path = tmp_path_factory.mktemp("aeq") / "int8.tflite"
    path.write_bytes(int8)
    reference = np.stack([softmax(np.asarray(model(feed)["logits"])[0]) for feed in feeds[16:]])
    return path, feeds[16:], reference


def test_an_int8_output_is_read_dequantized(integer_output_classifier):
    from edgebert.interpreter import TFLiteModel

    path, feeds, reference = integer_output_classifier
    raw = TFLiteModel(path)._runner(**feeds[0])["logits"]
    assert raw.dtype == np.int8  # the model really ends in int8: what this test is about
    got, seconds = probabilities(path, feeds)
    assert np.isfinite(got).all() and np.allclose(got.sum(1), 1, atol=1e-5) and seconds > 0
    assert np.abs(got - reference).max() < 0.05


def test_the_weight_cache_refuses_an_integer_output_in_one_line(integer_output_classifier, tmp_path):
    from edgebert.interpreter import TFLiteModel

    with pytest.raises(BundleError, match="'logits' is int8: the weight cache runs models with float outputs"):
        TFLiteModel(integer_output_classifier[0], weight_cache=tmp_path / "cache.bin")


def test_the_product_row_reads_the_bundles_probabilities(tiny_classifier_checkpoint, integer_output_classifier,
                                                          tmp_path):
    # The last row is what `edgebert convert --quantize int8` writes: a model.tflite that ends in its SOFTMAX.
    from benchmarks.full_int8 import product_int8

    model, notes = product_int8(str(tiny_classifier_checkpoint), 16, tmp_path / "bundle")
    assert model == (tmp_path / "bundle" / "model.tflite").read_bytes() and notes["tool"].startswith("tensorflow")
    _, feeds, reference = integer_output_classifier
    got, _ = probabilities(tmp_path / "bundle" / "model.tflite", feeds)
    assert np.allclose(got.sum(1), 1, atol=1e-5) and np.abs(got - reference).max() < 0.2
