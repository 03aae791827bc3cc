"""benchmarks.rotation_cost: its graphs compute the rotations they claim to time, and it runs on a bundle."""
import numpy as np
import pytest

from benchmarks.minilm_error_study import block_hadamard
from converters.outliers import hadamard


def _run(model: bytes, x0: np.ndarray, g0: np.ndarray) -> dict:
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_content=model, num_threads=1)
    return interpreter.get_signature_runner("serving_default")(x0=x0, g0=g0)


@pytest.mark.parametrize("form", ["fc", "kron"])
def test_rotation_graph_rotates_each_block(form):
    from benchmarks.rotation_cost import rotation_graph

    seq, hidden, inner, blocks = 3, 8, 32, (4, 16)
    rng = np.random.default_rng(0)
    x0 = rng.normal(size=(1, seq, hidden)).astype(np.float32)
    g0 = rng.normal(size=(1, seq, inner)).astype(np.float32)
    out = _run(rotation_graph(1, seq, hidden, inner, blocks, form), x0, g0)

    def rotation(width, block):
        if form == "fc":
            return block_hadamard(width, block)
        # the Kronecker form leaves each block's outputs in transposed (large, small) order
        small, large = {4: (2, 2), 16: (4, 4)}[block]
        order = np.array([i * large + j for j in range(large) for i in range(small)])
        permuted = np.kron(hadamard(small), hadamard(large))[:, order]
        return np.kron(np.eye(width // block), permuted)

    rotate_hidden = rotation(hidden, blocks[0])
    expected_x = ((x0 @ rotate_hidden + x0) @ rotate_hidden) + x0
    assert np.allclose(out["hidden"], expected_x, atol=1e-4)
    assert np.allclose(out["inner"], g0 @ rotation(inner, blocks[1]) + g0, atol=1e-4)


def test_rotation_cost_times_a_bundle(tiny_bundle, tmp_path, capsys):
    from benchmarks.rotation_cost import main

    out = tmp_path / "cost.md"
    assert main([str(tiny_bundle), "--blocks", "16:32", "--runs", "3", "--out", str(out)]) == 0
    table = out.read_text()
    assert "2 layers, hidden 32, intermediate 64, seq 32" in table
    assert "CPU: " in table and "int8 kernels " in table  # every figure names its machine
    assert "| fc 16:32 |" in table and "| kron 16:32 |" in table


@pytest.mark.parametrize("blocks", ["64", "48:32", "64:x"])
def test_bad_blocks_are_one_line(tiny_bundle, blocks, capsys):
    from benchmarks.rotation_cost import main

    assert main([str(tiny_bundle), "--blocks", blocks]) == 2
    assert capsys.readouterr().err.count("\n") == 1
