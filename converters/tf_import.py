"""Import TensorFlow once, the way every converter module needs it.

tensorflow-model-optimization supports Keras 2 only, and importing it flips `TF_USE_LEGACY_KERAS`,
so the flag is set here, before TensorFlow is first imported, to make `tf.keras` mean the same thing
whatever is imported first. TF's C++ start-up chatter is silenced unless the user asked for it.
"""
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ["TF_USE_LEGACY_KERAS"] = "1"

from edgebert.quiet import native_output_silenced  # noqa: E402

with native_output_silenced():
    import tensorflow as tf
    import tf_keras

tf.get_logger().setLevel("ERROR")

__all__ = ["tf", "tf_keras"]
