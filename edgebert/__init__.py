"""edgebert: BERT Miniatures to validated, benchmarked TFLite bundles.

This package is the device side: it never imports TensorFlow (a Pi with tflite-runtime cannot install
it, and its import alone would poison every memory figure). The converter lives in `converters/`.
"""
__version__ = "0.1.0"
