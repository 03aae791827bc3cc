"""The numpy pieces of benchmarks.minilm_error_study: what its figures rest on."""
import numpy as np

from benchmarks.minilm_error_study import block_hadamard, channel_scales, dynamic_int8, gptq, round_to_nearest


def test_gptq_lands_on_the_round_to_nearest_grid_with_the_same_scales_and_less_output_error():
    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(64, 16)).astype(np.float32)
    # correlated channels of unequal size, as a real layer's inputs are: what GPTQ's error feedback uses
    inputs = rng.normal(size=(512, 8)) @ rng.normal(size=(8, 64)) + 0.1 * rng.normal(size=(512, 64))
    inputs[:, 3] *= 20
    result = gptq(kernel, inputs.T @ inputs)
    scales = channel_scales(kernel)
    assert np.allclose(channel_scales(result), scales)  # a quantizer recomputing the scales gets these
    assert np.allclose(result / scales, np.round(result / scales), atol=1e-4)
    error = lambda w: np.linalg.norm(inputs @ (w - kernel))  # noqa: E731
    assert error(result) < 0.8 * error(round_to_nearest(kernel))


def test_block_hadamard_is_orthonormal_with_power_of_two_blocks():
    for width, block in ((384, 128), (1536, 512), (256, 256)):
        rotation = block_hadamard(width)
        assert np.allclose(rotation @ rotation.T, np.eye(width), atol=1e-5)
        assert not rotation[:block, block:].any()


def test_dynamic_int8_is_within_half_a_step_per_row():
    x = np.random.default_rng(1).normal(size=(4, 32)).astype(np.float32)
    x[0, 5] = 40.0
    step = (np.maximum(x.max(1), 0) - np.minimum(x.min(1), 0)) / 255
    assert (np.abs(dynamic_int8(x) - x).max(1) <= step * 0.5 + 1e-6).all()


def test_gptq_with_int4_levels_stays_on_the_int4_grid():
    rng = np.random.default_rng(2)
    kernel = rng.normal(size=(32, 8)).astype(np.float32)
    inputs = rng.normal(size=(256, 32))
    result = gptq(kernel, inputs.T @ inputs, levels=7)
    steps = result / (np.abs(kernel).max(0) / 7)  # int4's symmetric per-channel step
    assert np.allclose(steps, np.round(steps), atol=1e-4) and np.abs(steps).max() <= 7 + 1e-4
    assert len(np.unique(np.round(steps))) > 8  # used the int4 range, not collapsed onto a few levels
