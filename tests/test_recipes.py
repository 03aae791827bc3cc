"""Recipes: every shipped one loads and runs on a tiny model; bad recipe files fail in one line."""
from __future__ import annotations

import json

import pytest

from cli_helpers import error_line, invoke
from test_finetune import _write_task


@pytest.fixture(scope="module")
def small_task(tmp_path_factory):
    root = tmp_path_factory.mktemp("recipe-task")
    return _write_task(root / "train.tsv", 48, 0), _write_task(root / "dev.tsv", 24, 1)


def _independent_accuracy(bundle_dir, dev_file) -> float:
    """The bundle's model.tflite on the dev file, tokenized by the reference tokenizer (not edgebert's),
    scored here against the file's labels."""
    from edgebert.interpreter import TFLiteModel
    from edgebert.tokenizer import load_tokenizer
    from reference_tokenization import FullTokenizer, reference_encode

    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    vocab = sorted(load_tokenizer(bundle_dir / "tokenizer.json").get_vocab().items(), key=lambda item: item[1])
    reference = FullTokenizer([token for token, _ in vocab], lowercase=manifest["tokenizer"]["lowercase"])
    model = TFLiteModel(bundle_dir / "model.tflite")
    rows = [line.split("\t") for line in dev_file.read_text(encoding="utf-8").splitlines()[1:]]
    right = sum(int(model(**reference_encode(reference, [text], manifest["recipe"]["seq_len"]))["probabilities"].argmax())
                == int(label) for text, label in rows)
    return right / len(rows)


def _shipped():
    from converters.recipes import RECIPES_DIR

    return sorted(path.stem for path in RECIPES_DIR.glob("*.toml"))


def test_the_shipped_recipes_are_the_documented_ones():
    assert _shipped() == ["mobile", "pi-compat", "pruned-50", "structured-50", "tiny-download"]


@pytest.mark.parametrize("name", _shipped())
def test_every_shipped_recipe_runs_on_a_tiny_model(name, tiny_checkpoint, small_task, tmp_path):
    train, dev = small_task
    out = tmp_path / name
    result = invoke("convert", tiny_checkpoint, "--recipe", name, "--task", train, "--dev", dev, "--out", out,
                    "--seq-len", 16)
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == name and manifest["recipe"]["seq_len"] == 16  # the CLI's value won
    steps = [entry["step"] for entry in manifest["source"]["history"]]
    expected = {"mobile": ["finetune"], "pi-compat": ["finetune"], "pruned-50": ["finetune"],
                "structured-50": ["finetune", "structured-pruning", "finetune"], "tiny-download": ["vocab-trim"]}
    assert steps == expected[name]
    if name != "tiny-download":  # a classifier, scored by running its model.tflite on the dev file
        assert manifest["evaluation"]["examples"] == 24
        assert manifest["evaluation"]["metrics"]["accuracy"] == _independent_accuracy(out, dev)
    if name == "pi-compat":
        assert manifest["recipe"]["compat"] == "tflite-runtime-2.14"
    if name == "pruned-50":
        assert manifest["source"]["history"][0]["pruning"]["measured"]["overall"] >= 0.495
    if name == "structured-50":
        assert manifest["model"]["layer_heads"] == [2, 2] and manifest["model"]["layer_intermediate_sizes"] == [32, 32]
    if name == "tiny-download":
        assert manifest["model"]["vocab_size"] < manifest["source"]["history"][0]["original_vocab_size"]
    assert not out.with_name(out.name + ".recipe-work").exists()


def test_a_rerun_reuses_finished_steps(tiny_checkpoint, small_task, tmp_path):
    from converters.recipes import RecipeInputs, load_recipe, run_steps

    recipe = load_recipe("tiny-download")
    inputs = RecipeInputs(task=small_task[0])
    first, second = [], []
    out = run_steps(recipe, tiny_checkpoint, tmp_path / "work", inputs, log=first.append)
    again = run_steps(recipe, tiny_checkpoint, tmp_path / "work", inputs, log=second.append)
    assert out == again and first == ["step 1/1 trim-vocab", first[1]]
    assert second == [f"step 1/1 trim-vocab: done before, reusing {out}"]


def test_a_recipe_from_a_file_and_its_errors(tiny_checkpoint, small_task, tmp_path):
    good = tmp_path / "mine.toml"
    good.write_text('description = "float32 only"\n[convert]\nquantize = "float32"\nseq_len = 16\n')
    result = invoke("convert", tiny_checkpoint, "--recipe", good, "--out", tmp_path / "b")
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "b" / "manifest.json").read_text())["recipe"]["quantize"] == "float32"

    cases = {
        'colour = "red"\n': "unknown recipe key(s) colour (description, steps, convert)",
        '[[steps]]\nkind = "distil"\n': "step 1 needs kind = one of finetune, prune, trim-vocab",
        '[[steps]]\nkind = "finetune"\nepoch = 4\n': "step 1 (finetune) has unknown option(s) epoch",
        '[[steps]]\nkind = "finetune"\nprune = 1.5\n': "target sparsity must be between 0 and 1",
        '[convert]\nquantize = "int4"\n': "unknown quantization mode 'int4'",
        'description = "unclosed\n': "not a readable TOML recipe",
        '[[steps]]\nkind = "trim-vocab"\nkeep_predictions = "yes"\n': "keep_predictions must be true or false",
    }
    for text, problem in cases.items():
        bad = tmp_path / "bad.toml"
        bad.write_text(text)
        line = error_line(invoke("convert", tiny_checkpoint, "--recipe", bad, "--out", tmp_path / "c"), 1)
        assert line.startswith(f"error: {bad}: ") and problem in line, line
    assert not (tmp_path / "c").exists()


def test_a_budget_trim_that_keeps_the_fine_tuned_labels(tiny_checkpoint, small_task, tmp_path):
    recipe = tmp_path / "small-download.toml"
    recipe.write_text('[[steps]]\nkind = "finetune"\nepochs = 1\n'
                      '[[steps]]\nkind = "trim-vocab"\nmax_tokens = 150\nkeep_predictions = true\n'
                      '[convert]\nquantize = "float32"\nseq_len = 16\n')
    train, dev = small_task
    out = tmp_path / "b"
    result = invoke("convert", tiny_checkpoint, "--recipe", recipe, "--task", train, "--dev", dev, "--out", out)
    assert result.exit_code == 0, result.output
    assert "round 1: " in result.stderr
    trim = json.loads((out / "manifest.json").read_text())["source"]["history"][-1]
    assert trim["step"] == "vocab-trim" and trim["vocab_size"] == 150
    assert trim["kept_predictions"]["labels_changed"] == 0 and trim["corpus"]["texts_retokenized_differently"] > 0


def test_recipe_errors_about_names_and_inputs(tiny_checkpoint, tmp_path):
    line = error_line(invoke("convert", tiny_checkpoint, "--recipe", "fast", "--out", tmp_path / "o"), 2)
    assert line == ("error: unknown recipe 'fast' (shipped: mobile, pi-compat, pruned-50, structured-50, "
                    "tiny-download; or give a .toml file)")
    result = invoke("convert", tiny_checkpoint, "--recipe", "mobile", "--out", tmp_path / "o")
    assert error_line(result, 2, progress=("recipe mobile: finetune -> dynamic-int8",)) == (
        "error: recipe mobile fine-tunes or prunes on a task: pass --task TRAIN.tsv")
    line = error_line(invoke("convert", tiny_checkpoint, "--task", tmp_path / "t.tsv", "--out", tmp_path / "o"), 2)
    assert line == "error: --task, --dev, --corpus and --keep-work go with --recipe"


def test_recipes_command_lists_them():
    result = invoke("recipes")
    assert result.exit_code == 0
    assert "structured-50: finetune -> prune -> finetune -> dynamic-int8" in result.stdout
    listed = json.loads(invoke("recipes", "--json").stdout)
    assert [r["name"] for r in listed] == _shipped()
