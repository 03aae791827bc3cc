"""The `edgebert` command line: each command through click's CliRunner, with exact error lines.

The library tests (test_convert, test_sources, test_fetch, ...) check what the pipeline does; these check
the CLI layer: options reach the library, results are printed, and every library error becomes one
`error: ...` line on stderr with the error's exit code, never a traceback, and leaves nothing behind.
"""
from __future__ import annotations

import functools
import json
import re
import socket
import subprocess
import sys
import threading
import zipfile
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

from edgebert.cli import COMMANDS, cli
from cli_helpers import error_line, invoke

REPO = Path(__file__).resolve().parent.parent
VARIANT_HINT = ("valid names: tiny, mini, small, medium, base, or L-<layers>_H-<hidden> with layers in "
                "{2,4,6,8,10,12} and hidden in {128,256,512,768} (e.g. uncased_L-4_H-256_A-4, bert-mini, L-4_H-256)")
NICKNAMES = {(2, 128): "tiny", (4, 256): "mini", (4, 512): "small", (8, 512): "medium", (12, 768): "base"}
GRID = [(layers, hidden) for layers in (2, 4, 6, 8, 10, 12) for hidden in (128, 256, 512, 768)]
BUNDLE_FILES = {"model.tflite", "tokenizer.json", "manifest.json", "golden.json"}






def assert_no_staging(directory: Path):
    hidden = [p.name for p in directory.iterdir() if p.name.startswith(".")] if directory.exists() else []
    assert hidden == [], hidden  # no .<name>.tmp-* / .<name>.old-* left behind


def assert_nothing_left(out: Path):
    assert not out.exists()
    assert_no_staging(out.parent)


# --- variants ------------------------------------------------------------------------------------------

def test_variants_table_lists_the_24_miniatures_with_nicknames():
    result = invoke("variants")
    assert result.exit_code == 0 and result.stderr == ""
    header, *rows = result.stdout.splitlines()
    assert header.split()[:2] == ["name", "nickname"]
    assert [row.split()[0] for row in rows] == [f"uncased_L-{l}_H-{h}_A-{h // 64}" for l, h in GRID]
    for (layers, hidden), row in zip(GRID, rows):
        nickname = NICKNAMES.get((layers, hidden))
        expected = ([nickname] if nickname else []) + [str(layers), str(hidden), str(hidden // 64)]
        assert row.split()[1:1 + len(expected)] == expected, row
    mini = next(row for row in rows if row.startswith("uncased_L-4_H-256_A-4 "))
    assert " mini " in mini and "11,170,560" in mini
    assert "http" not in result.stdout
    with_urls = invoke("variants", "--urls").stdout.splitlines()
    assert with_urls[0].endswith("  url")
    assert with_urls[1].endswith("  https://storage.googleapis.com/bert_models/2020_02_20/uncased_L-2_H-128_A-2.zip")


def test_variants_json_has_urls_and_parameter_counts():
    result = invoke("variants", "--json")
    assert result.exit_code == 0 and result.stderr == ""
    records = json.loads(result.stdout)
    assert len(records) == 24
    assert [(r["layers"], r["hidden"]) for r in records] == GRID
    by_nickname = {r["nickname"]: r for r in records if r["nickname"]}
    assert set(by_nickname) == set(NICKNAMES.values())
    mini = by_nickname["mini"]
    assert mini["name"] == "uncased_L-4_H-256_A-4" and mini["heads"] == 4 and mini["intermediate"] == 1024
    assert mini["url"] == "https://storage.googleapis.com/bert_models/2020_02_20/uncased_L-4_H-256_A-4.zip"
    # Encoder parameter counts as published for prajjwal1/bert-tiny, bert-mini and bert-base-uncased.
    assert by_nickname["tiny"]["parameters"] == 4_385_920
    assert mini["parameters"] == 11_170_560
    assert by_nickname["base"]["parameters"] == 109_482_240
    assert mini["float32_bytes"] == 4 * 11_170_560
    assert all(r["int8_bytes_estimate"] < r["float32_bytes"] / 3 for r in records)


# --- fetch ---------------------------------------------------------------------------------------------

@pytest.fixture
def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def zip_server(tmp_path, tiny_checkpoint):
    """A local HTTP server with uncased_L-2_H-128_A-2.zip built from the tiny checkpoint's files."""
    root = tmp_path / "served"
    root.mkdir()
    with zipfile.ZipFile(root / "uncased_L-2_H-128_A-2.zip", "w") as archive:
        for file in sorted(tiny_checkpoint.iterdir()):
            archive.write(file, f"uncased_L-2_H-128_A-2/{file.name}")  # Google's zips wrap a folder

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):  # CliRunner swaps sys.stderr: the log would land in result.stderr
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


def test_fetch_unknown_variant():
    result = invoke("fetch", "bert-huge")
    assert error_line(result, 2) == f"error: unknown variant 'bert-huge'; {VARIANT_HINT}"


def test_fetch_offline_is_one_line_pointing_at_convert(tmp_path, closed_port):
    root = f"http://127.0.0.1:{closed_port}"
    result = invoke("fetch", "mini", env={"EDGEBERT_DOWNLOAD_ROOT": root, "EDGEBERT_CACHE": str(tmp_path)})
    line = error_line(result, 1)
    assert line.startswith(f"error: cannot reach {root}/uncased_L-4_H-256_A-4.zip (")
    assert line.endswith("pass the zip or the extracted directory to 'edgebert convert' instead")
    assert not (tmp_path / "checkpoints").exists()


def test_fetch_downloads_extracts_and_prints_the_checkpoint_directory(tmp_path, zip_server, closed_port,
                                                                      tiny_checkpoint):
    cache = tmp_path / "cache"
    result = invoke("fetch", "bert-tiny", "--cache-dir", cache, env={"EDGEBERT_DOWNLOAD_ROOT": zip_server})
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.stderr and "error" not in result.stderr
    directory = Path(result.stdout.strip())
    assert result.stdout == f"{directory}\n"
    assert directory.is_relative_to(cache / "checkpoints" / "uncased_L-2_H-128_A-2")
    assert (directory / "bert_config.json").read_bytes() == (tiny_checkpoint / "bert_config.json").read_bytes()
    assert sorted(p.name for p in directory.iterdir()) == sorted(p.name for p in tiny_checkpoint.iterdir())
    # A cached checkpoint needs no network: the same answer with the server unreachable.
    again = invoke("fetch", "uncased_L-2_H-128_A-2", "--cache-dir", cache,
                   env={"EDGEBERT_DOWNLOAD_ROOT": f"http://127.0.0.1:{closed_port}"})
    assert again.exit_code == 0 and again.stdout == result.stdout


# --- random-checkpoint ---------------------------------------------------------------------------------

def test_random_checkpoint_refuses_existing_then_forced_writes_what_convert_accepts(tmp_path):
    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    result = invoke("random-checkpoint", "tiny", "--out", out)
    assert error_line(result, 1) == f"error: {out}: already exists (pass --force to replace it)"
    assert (out / "keep.txt").read_text() == "mine"

    result = invoke("random-checkpoint", "bert-tiny", "--out", out, "--force", "--num-labels", "2", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"{out}\n"
    names = {p.name for p in out.iterdir()}
    assert "keep.txt" not in names
    assert {"bert_config.json", "vocab.txt", "bert_model.ckpt.index", "bert_model.ckpt.data-00000-of-00001"} <= names
    assert len((out / "vocab.txt").read_text().splitlines()) == 30522
    config = json.loads((out / "bert_config.json").read_text())
    assert (config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"]) == (2, 128, 2)
    assert_no_staging(tmp_path)

    bundle = tmp_path / "bundle"
    result = invoke("convert", out, "--out", bundle, "--seq-len", "16", "--quantize", "float16")
    assert result.exit_code == 0, result.output
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["head"] == "classifier" and manifest["labels"] == ["0", "1"]  # --num-labels 2, head auto
    assert manifest["recipe"]["quantize"] == "float16" and manifest["source"]["random_weights"] is True
    assert manifest["model"]["hidden_size"] == 128 and manifest["model"]["vocab_size"] == 30522


def test_random_checkpoint_bad_arguments(tmp_path):
    out = tmp_path / "ckpt"
    assert error_line(invoke("random-checkpoint", "huge", "--out", out), 2) == (
        f"error: unknown variant 'huge'; {VARIANT_HINT}")
    assert error_line(invoke("random-checkpoint", "L-3_H-128", "--out", out), 2) == (
        f"error: unknown variant 'L-3_H-128': L=3, H=128 is not in the BERT Miniatures grid; {VARIANT_HINT}")
    assert error_line(invoke("random-checkpoint", "tiny", "--out", out, "--num-labels", "-1"), 2) == (
        "error: --num-labels must be 0 or more, got -1")
    missing = tmp_path / "no-vocab.txt"
    assert error_line(invoke("random-checkpoint", "tiny", "--out", out, "--vocab", missing), 1) == (
        f"error: {missing}: vocabulary file not found")
    assert_nothing_left(out)


# --- convert: happy paths ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def encoder_run(tmp_path_factory, tiny_checkpoint):
    out = tmp_path_factory.mktemp("cli-convert") / "tiny.dynamic-int8.s32"
    return invoke("convert", tiny_checkpoint, "--out", out, "--seq-len", "32"), out


@pytest.fixture(scope="module")
def classifier_run(tmp_path_factory, tiny_classifier_checkpoint):
    out = tmp_path_factory.mktemp("cli-convert") / "tiny-cls.float32.s32"
    return invoke("convert", tiny_classifier_checkpoint, "--out", out, "--seq-len", "32", "--quantize", "float32",
                  "--labels", "x,y,z"), out


def test_convert_prints_the_bundle_on_stdout_and_progress_on_stderr(encoder_run, tiny_checkpoint):
    result, out = encoder_run
    assert result.exit_code == 0, result.output
    match = re.fullmatch(rf"{re.escape(str(out))}  \(([\d,]+) bytes, dynamic-int8, \d+\.\d s\)\n", result.stdout)
    assert match, result.stdout
    assert int(match.group(1).replace(",", "")) == (out / "model.tflite").stat().st_size
    assert {p.name for p in out.iterdir()} == BUNDLE_FILES
    assert [p.name for p in out.parent.iterdir()] == [out.name]

    lines = result.stderr.splitlines()
    assert lines[0] == f"reading {tiny_checkpoint}"
    assert f"writing {out}" in lines
    assert any(line.startswith("note: ") and line.endswith("listed in manifest.json") for line in lines)
    assert re.fullmatch(r"validated: sequence_output: min cos [\d.]+, max \|diff\| \S+; "
                        r"pooled_output: min cos [\d.]+, max \|diff\| \S+", lines[-1]), lines[-1]
    assert not any(line.startswith("error") or "Traceback" in line for line in lines)

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"] == {"name": None, "quantize": "dynamic-int8", "seq_len": 32, "last_layer": "full",
                                  "compat": None,
                                  "calibration": None, "overrides": []}
    assert manifest["head"] == "encoder" and manifest["labels"] == []
    min_cos = float(re.search(r"pooled_output: min cos ([\d.]+)", lines[-1]).group(1))
    assert min_cos == pytest.approx(manifest["validation"]["outputs"]["pooled_output"]["min_cosine"], abs=1e-6)


def test_convert_classifier_with_labels(classifier_run):
    result, out = classifier_run
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"{out}  (") and ", float32, " in result.stdout
    validated = result.stderr.splitlines()[-1]
    assert validated.startswith("validated: probabilities: min cos ") and ", argmax agreement " in validated
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["head"] == "classifier" and manifest["labels"] == ["x", "y", "z"]
    assert manifest["recipe"]["quantize"] == "float32"
    assert [o["name"] for o in manifest["io"]["outputs"]] == ["probabilities"]


def test_convert_refuses_an_existing_bundle_without_force(encoder_run, tiny_checkpoint):
    _, out = encoder_run
    before = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    result = invoke("convert", tiny_checkpoint, "--out", out, "--seq-len", "32")
    assert error_line(result, 1) == f"error: {out}: already exists (pass --force to replace it)"
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == before
    assert [p.name for p in out.parent.iterdir()] == [out.name]


# --- convert: every refusal is one line and leaves nothing ---------------------------------------------

def refused(source, out: Path, *options, exit_code: int, read: bool = True) -> str:
    """Run a convert that must fail; returns the error line after checking its shape and the leftovers."""
    result = invoke("convert", source, "--out", out, "--seq-len", "32", *options)
    line = error_line(result, exit_code, progress=(f"reading {source}",) if read else ())
    assert_nothing_left(out)
    return line


@pytest.mark.parametrize("option, value, message", [
    ("--quantize", "int4", "unknown quantization mode 'int4' (choose from float32, float16, dynamic-int8, int8, dynamic-int4)"),
    ("--seq-len", "abc", "--seq-len must be a number, comma-separated numbers or 'dynamic', got 'abc'"),
    ("--seq-len", "2", "--seq-len must be at least 3 ([CLS], one token, [SEP]), got 2"),
    ("--compat", "bogus", "unknown compat target 'bogus' (choose from tflite-runtime-2.14)"),
])
def test_convert_bad_option_values(tiny_checkpoint, tmp_path, option, value, message):
    assert refused(tiny_checkpoint, tmp_path / "out", option, value, exit_code=2, read=False) == f"error: {message}"


def test_convert_missing_source(tmp_path):
    source = tmp_path / "nowhere"
    assert refused(source, tmp_path / "out", exit_code=1) == (
        f"error: {source}: no such file or directory (nor a variant name such as bert-mini)")


def test_convert_truncated_checkpoint_data(tiny_checkpoint, copy_of, tmp_path):
    source = copy_of(tiny_checkpoint)
    data = source / "bert_model.ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    line = refused(source, tmp_path / "out", exit_code=1)
    assert line.startswith(f"error: {data}: corrupt or truncated checkpoint data (")


def test_convert_config_disagreeing_with_weights(tiny_checkpoint, copy_of, tmp_path):
    source = copy_of(tiny_checkpoint)
    config = json.loads((source / "bert_config.json").read_text())
    config["intermediate_size"] = 128
    (source / "bert_config.json").write_text(json.dumps(config))
    assert refused(source, tmp_path / "out", exit_code=1) == (
        f"error: {source / 'bert_config.json'}: config implies bert/encoder/layer_0/intermediate/dense/kernel of "
        "shape [32, 128] but the weights have [32, 64]")


def test_convert_missing_vocab(tiny_checkpoint, copy_of, tmp_path):
    source = copy_of(tiny_checkpoint)
    (source / "vocab.txt").unlink()
    assert refused(source, tmp_path / "out", exit_code=1) == f"error: {source / 'vocab.txt'}: vocabulary file not found"


def test_convert_unsafe_zip(tmp_path):
    source = tmp_path / "evil.zip"
    with zipfile.ZipFile(source, "w") as archive:
        archive.writestr("../escape.txt", "x")
    assert refused(source, tmp_path / "out", exit_code=1) == (
        f"error: {source}: unsafe member '../escape.txt': '..' path component")
    assert not (tmp_path.parent / "escape.txt").exists()


def test_convert_non_bert_safetensors(tmp_path):
    from safetensors.numpy import save_file

    source = tmp_path / "gpt"
    source.mkdir()
    (source / "config.json").write_text(json.dumps({"model_type": "bert", "vocab_size": 5, "hidden_size": 4,
                                                    "num_hidden_layers": 1, "num_attention_heads": 1,
                                                    "intermediate_size": 4}))
    save_file({"transformer.h.0.attn.weight": np.zeros((4, 4), np.float32)}, str(source / "model.safetensors"))
    (source / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    assert refused(source, tmp_path / "out", exit_code=1) == (
        f"error: {source / 'model.safetensors'}: not a BERT checkpoint (no embeddings.word_embeddings.weight; "
        "has transformer.h.0.attn.weight...)")


def test_convert_classifier_head_on_an_encoder_checkpoint(tiny_checkpoint, tmp_path):
    assert refused(tiny_checkpoint, tmp_path / "out", "--head", "classifier", exit_code=2) == (
        f"error: {tiny_checkpoint}: has no classifier head (output_weights/output_bias or classifier.*); "
        "use --head encoder")


def test_convert_labels_that_do_not_match_the_classifier(tiny_classifier_checkpoint, tmp_path):
    assert refused(tiny_classifier_checkpoint, tmp_path / "out", "--labels", "a,b", exit_code=2) == (
        f"error: --labels names 2 labels but the classifier in {tiny_classifier_checkpoint} has 3")


def test_convert_missing_calibration_file(tiny_checkpoint, tmp_path):
    calibration = tmp_path / "calibration.txt"
    result = invoke("convert", tiny_checkpoint, "--out", tmp_path / "out", "--seq-len", "32", "--quantize", "int8",
                    "--calibration", calibration)
    # The calibration text is read before the float model is built: it fails at once.
    line = error_line(result, 2, progress=(f"reading {tiny_checkpoint}",))
    assert line == f"error: {calibration}: sample file not found"
    assert_nothing_left(tmp_path / "out")


def test_convert_missing_validation_file(tiny_checkpoint, tmp_path):
    validation = tmp_path / "validation.txt"
    result = invoke("convert", tiny_checkpoint, "--out", tmp_path / "out", "--seq-len", "32",
                    "--validation", validation)
    # The validation text is read before the float model is built: it fails at once.
    line = error_line(result, 2, progress=(f"reading {tiny_checkpoint}",))
    assert line == f"error: {validation}: sample file not found"
    assert_nothing_left(tmp_path / "out")


# --- demo ----------------------------------------------------------------------------------------------

def test_demo_converts_and_times_the_chosen_modes(tmp_path):
    out = tmp_path / "demo"
    result = invoke("demo", "--out", out, "--runs", "2", "--modes", "float32,dynamic-int8", "--variant", "tiny")
    assert result.exit_code == 0, result.output
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert lines[0].startswith("| mode | model bytes | size vs float32 |")
    assert lines[1].startswith("|---|")
    assert [line.split("|")[1].strip() for line in lines[2:4]] == ["float32", "dynamic-int8"]
    assert lines[4:] == ["", f"bundles in {out}/ (random weights: the figures show fidelity and speed, not accuracy)"]
    assert sorted(p.name for p in out.iterdir()) == ["bert-tiny.dynamic-int8.s128", "bert-tiny.float32.s128"]
    for bundle in out.iterdir():
        assert {p.name for p in bundle.iterdir()} == BUNDLE_FILES


@pytest.mark.parametrize("options, message", [
    (("--modes", "float32,int4"),
     "unknown quantization mode 'int4' (choose from float32, float16, dynamic-int8, int8, dynamic-int4)"),
    (("--modes", " , "), "--modes names no quantization mode (choose from float32, float16, dynamic-int8, int8, dynamic-int4)"),
    (("--runs", "0"), "--runs must be at least 1, got 0"),
    (("--variant", "huge"), f"unknown variant 'huge'; {VARIANT_HINT}"),
])
def test_demo_bad_options(tmp_path, options, message):
    out = tmp_path / "demo"
    assert error_line(invoke("demo", "--out", out, *options), 2) == f"error: {message}"
    assert_nothing_left(out)


# --- help, README, version, device side ----------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_every_command_has_help(name):
    result = invoke(name, "--help")
    assert result.exit_code == 0 and result.stderr == ""
    assert result.stdout.startswith(f"Usage: edgebert {name} ")
    first_paragraph = " ".join(cli.get_command(None, name).help.strip().split("\n\n")[0].split())
    assert first_paragraph and first_paragraph in " ".join(result.stdout.split())  # click re-wraps it
    assert invoke(name, "-h").stdout == result.stdout


def test_top_level_help_lists_every_command():
    result = invoke("--help")
    assert result.exit_code == 0
    commands = result.stdout.split("Commands:")[1]
    assert sorted(line.split()[0] for line in commands.strip().splitlines()) == sorted(COMMANDS)


def test_every_command_is_in_the_readme():
    readme = REPO / "README.md"
    assert readme.is_file(), f"{readme} is missing"
    text = readme.read_text(encoding="utf-8")
    missing = [name for name in sorted(COMMANDS) if f"edgebert {name}" not in text]
    assert missing == [], f"commands not shown in README.md as `edgebert <name>`: {missing}"


def _python(code_or_args, **kwargs):
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else code_or_args
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=120, **kwargs)


def test_python_m_edgebert_version():
    result = _python(["-m", "edgebert", "--version"])
    assert result.returncode == 0, result.stderr
    assert result.stdout == "edgebert, version 0.1.0\n"


HEAVY = "sorted(m for m in ('tensorflow', 'tf_keras', 'converters') if m in sys.modules)"
# A converter command's help loads its own module from converters/commands/, and nothing else of the converter.
HEAVY_BEYOND_COMMANDS = ("sorted(m for m in sys.modules if m in ('tensorflow', 'tf_keras') or "
                         "(m.startswith('converters.') and not m.startswith('converters.commands')))")


def test_device_side_modules_do_not_import_tensorflow():
    result = _python("import sys\n"
                     "import edgebert.cli, edgebert.interpreter, edgebert.bundle, edgebert.tokenizer, "
                     "edgebert.fetch, edgebert.variants\n"
                     f"print({HEAVY})\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "[]\n"


def test_variants_and_help_run_without_tensorflow():
    result = _python("import sys\n"
                     "from edgebert.cli import main\n"
                     "codes = []\n"
                     "for argv in (['variants'], ['convert', '--help'], ['demo', '--help']):\n"
                     "    sys.argv = ['edgebert', *argv]\n"
                     "    try:\n"
                     "        main()\n"
                     "    except SystemExit as exit:\n"
                     "        codes.append(exit.code)\n"
                     f"print('RESULT', codes, {HEAVY_BEYOND_COMMANDS})\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "RESULT [0, 0, 0] []"
    assert "uncased_L-12_H-768_A-12" in result.stdout


def test_compat_below_32_tokens_notes_the_pi_5_crash(tiny_checkpoint, tmp_path):
    """tflite-runtime 2.14 crashed on fewer than 32 tokens on an emulated Cortex-A76 (tests/test_arm64.py)."""
    note = "note: tflite-runtime 2.14 crashed on fewer than 32 tokens"
    short = invoke("convert", tiny_checkpoint, "--out", tmp_path / "short", "--compat", "tflite-runtime-2.14",
                   "--seq-len", "16")
    assert short.exit_code == 0, short.stderr
    assert note in short.stderr
    safe = invoke("convert", tiny_checkpoint, "--out", tmp_path / "safe", "--compat", "tflite-runtime-2.14",
                  "--seq-len", "32")
    assert safe.exit_code == 0, safe.stderr
    assert note not in safe.stderr


def test_mixed_precision_options_reach_the_converter(tiny_checkpoint, tmp_path, monkeypatch):
    from converters import pipeline

    seen = {}
    real_convert = pipeline.convert

    def spy(source, out_dir, options, **kwargs):
        seen["options"] = options
        return real_convert(source, out_dir, options, **kwargs)

    monkeypatch.setattr(pipeline, "convert", spy)
    result = invoke("convert", tiny_checkpoint, "--out", tmp_path / "b", "--seq-len", "32",
                    "--mixed-precision", "off", "--mixed-precision-budget", "0.1")
    assert result.exit_code == 0, result.stderr
    assert (seen["options"].mixed_precision, seen["options"].mixed_precision_budget) == (False, 0.1)
    line = error_line(invoke("convert", tiny_checkpoint, "--out", tmp_path / "c", "--mixed-precision-budget", "2"), 2)
    assert line == ("error: --mixed-precision-budget must be a share between 0 and 1 of the weights' float32 "
                    "bytes, got 2.0")
    assert not (tmp_path / "c").exists()
