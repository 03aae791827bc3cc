"""`edgebert grid` on this machine: a checkpoint given by path (--models, a Hugging Face folder here) runs the
same protocol as a miniature and is listed beside the L x H table; bad --models input is one line and writes
nothing; a failing cell is recorded and the grid goes on; changed data is refused; the teacher and the
recipe apply per cell. (The grid on a Ray cluster, with nodes killed, is in test_distributed.py.)"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from cli_helpers import error_line, invoke
from test_finetune import _write_task
from test_sources import _hf_directory, _hf_tokenizer_json

SMALL_GRID = ["--tasks", "SST-2", "--batch-sizes", "16", "--learning-rates", "3e-3,1e-6", "--epochs", "2",
              "--max-seq-len", "32", "--runs", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("grid-data")
    (root / "SST-2").mkdir()
    _write_task(root / "SST-2" / "train.tsv", 400, 0)
    _write_task(root / "SST-2" / "dev.tsv", 64, 1)
    return root


@pytest.fixture(scope="module")
def hf_model(tiny_checkpoint, tmp_path_factory) -> Path:
    """A Hugging Face folder (erf GELU) named as a real model would be: what --models is for."""
    from converters.sources import load_source

    google = load_source(tiny_checkpoint)
    directory = _hf_directory(tmp_path_factory.mktemp("grid-hf"), google)
    _hf_tokenizer_json(directory / "tokenizer.json", google.vocab)
    named = directory.parent / "tiny-hf-model"
    directory.rename(named)
    return named


def test_a_model_given_by_path_runs_the_protocol_beside_the_miniatures_table(tiny_checkpoint, hf_model, data,
                                                                              tmp_path):
    checkpoints = tmp_path / "ckpts"
    shutil.copytree(tiny_checkpoint, checkpoints / "uncased_L-2_H-128_A-2")  # the tiny model stands in for Tiny
    out = tmp_path / "grid"
    result = invoke("grid", "--variants", "tiny", "--models", hf_model, "--data", data, "--out", out,
                    "--checkpoints", checkpoints, *SMALL_GRID)
    assert result.exit_code == 0, result.output
    cells = json.loads((out / "grid.json").read_text())["cells"]
    assert [(cell["variant"], cell["miniature"], cell["status"]) for cell in cells] == [
        ("uncased_L-2_H-128_A-2", True, "ok"), ("tiny-hf-model", False, "ok")]
    model_cell = cells[1]
    config = json.loads((hf_model / "config.json").read_text())
    assert (model_cell["layers"], model_cell["hidden"]) == (config["num_hidden_layers"], config["hidden_size"])
    assert model_cell["best"]["run"] == "bs16-lr0.003" and model_cell["tflite"]["dev_metrics"]["accuracy"] >= 0.9
    assert Path(model_cell["tflite"]["bundle"]).name == "tiny-hf-model.SST-2.dynamic-int8.s32"
    table = (out / "table.md").read_text()
    assert "| L=2 | 100.0 / " in table  # the miniature in the paper's table
    assert f"| tiny-hf-model | 2 | {config['hidden_size']} | 100.0 / " in table  # the model in the list beside it, not in the table
    assert table.count("| L=2 |") == 1
    results = json.loads((out / "results.json").read_text())["results"]
    assert [r["sweep"]["variant"] for r in results] == ["uncased_L-2_H-128_A-2", "tiny-hf-model"]

    rerun = invoke("grid", "--variants", "tiny", "--models", hf_model, "--data", data, "--out", out,
                   "--checkpoints", checkpoints, *SMALL_GRID)
    assert rerun.exit_code == 0, rerun.output
    assert rerun.output.count("unchanged, skipped") == 2


def test_a_missing_model_is_one_line_and_writes_nothing(data, tmp_path):
    result = invoke("grid", "--models", tmp_path / "nowhere", "--data", data, "--out", tmp_path / "grid", *SMALL_GRID)
    line = error_line(result, 2)
    assert "nowhere" in line and "no such checkpoint" in line
    assert not (tmp_path / "grid").exists()


def test_neither_variants_nor_models_is_one_line(data, tmp_path):
    result = invoke("grid", "--data", data, "--out", tmp_path / "grid")
    assert error_line(result, 2) == "error: give --variants, --models, or both"
    assert not (tmp_path / "grid").exists()


def test_two_models_with_one_name_are_refused(hf_model, data, tmp_path):
    twin = tmp_path / "elsewhere" / hf_model.name
    shutil.copytree(hf_model, twin)
    result = invoke("grid", "--models", f"{hf_model},{twin}", "--data", data, "--out", tmp_path / "grid", *SMALL_GRID)
    assert "both be called 'tiny-hf-model'" in error_line(result, 2)
    assert not (tmp_path / "grid").exists()


def test_a_broken_model_is_recorded_the_grid_goes_on_and_changed_data_is_refused(hf_model, data, tmp_path):
    broken = tmp_path / "broken-model"
    broken.mkdir()
    (broken / "config.json").write_text("{not json", encoding="utf-8")
    out = tmp_path / "grid"
    result = invoke("grid", "--models", f"{broken},{hf_model}", "--data", data, "--out", out, *SMALL_GRID)
    assert result.exit_code == 1, result.output
    cells = json.loads((out / "grid.json").read_text())["cells"]
    assert [(cell["variant"], cell["status"]) for cell in cells] == [("broken-model", "failed"), ("tiny-hf-model", "ok")]
    assert cells[0]["error"].startswith("no checkpoint: ") and "config.json" in cells[0]["error"]
    assert "| broken-model | - | - | failed |" in (out / "table.md").read_text()

    changed = tmp_path / "changed"
    shutil.copytree(data, changed)
    with open(changed / "SST-2" / "train.tsv", "a", encoding="utf-8") as train:
        train.write("one more sentence\t1\n")
    before = json.loads((out / "grid.json").read_text())
    rerun = invoke("grid", "--models", hf_model, "--data", changed, "--out", out, *SMALL_GRID)
    line = error_line(rerun, 2, progress=tuple(rerun.stderr.splitlines()[:-1]))
    assert "other inputs" in line and "--restart" in line  # not mixed with the old runs
    assert json.loads((out / "grid.json").read_text()) == before


def test_the_teacher_and_the_recipe_apply_per_cell(hf_model, data, tmp_path):
    """`--teacher DIR/{task}` distils each task's cell from its own teacher (here its logits, as a .npy);
    `--recipe` exports each cell's best run through the recipe (structured pruning here), not plain int8."""
    import numpy as np

    from edgebert.tasks import load_task

    (tmp_path / "teachers").mkdir()
    labels = np.asarray(load_task(data / "SST-2" / "train.tsv").labels)
    np.save(tmp_path / "teachers" / "SST-2.npy", np.eye(2, dtype=np.float32)[labels] * 4.0)
    out = tmp_path / "grid"
    result = invoke("grid", "--models", hf_model, "--data", data, "--out", out, "--teacher",
                    f"{tmp_path / 'teachers'}/{{task}}.npy", "--recipe", "structured-50", *SMALL_GRID)
    assert result.exit_code == 0, result.output
    cell = json.loads((out / "grid.json").read_text())["cells"][0]
    history = json.loads((out / "cells" / "tiny-hf-model.SST-2" / "edgebert_source.json").read_text())["history"]
    assert history[-1]["distillation"]["teacher"] == str(tmp_path / "teachers" / "SST-2.npy")
    bundle = Path(cell["tflite"]["bundle"])
    assert bundle.name == "tiny-hf-model.SST-2.structured-50.s32" and cell["tflite"]["recipe"] == "structured-50"
    manifest = json.loads((bundle / "manifest.json").read_text())
    steps = [step["step"] for step in manifest["source"]["history"]]
    assert steps == ["finetune", "finetune", "structured-pruning", "finetune"]  # the search's, then the recipe's
    assert manifest["recipe"]["name"] == "structured-50"
