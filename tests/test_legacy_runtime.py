"""Old runtimes are served: a `--compat tflite-runtime-2.14` bundle loads in tflite-runtime 2.14 (as on
many Raspberry Pi OS images) and reproduces its golden outputs (an encoder's pooled output; a classifier's
probabilities, whose SOFTMAX edgebert appends to the converter's graph); the default dynamic-int8 bundle
does not load there. Needs a Python with tflite-runtime 2.14 and numpy<2 (which cannot share an environment with
ai-edge-litert and numpy 2): `.ci/run` makes one at `.venv-legacy`; EDGEBERT_LEGACY_PYTHON names another."""
import json
import os
import subprocess
from pathlib import Path

import pytest

from ci import missing

REPO = Path(__file__).resolve().parent.parent
LEGACY_PYTHON = Path(os.environ.get("EDGEBERT_LEGACY_PYTHON", REPO / ".venv-legacy" / "bin" / "python"))



@pytest.fixture(autouse=True)
def _legacy_python():
    if not LEGACY_PYTHON.is_file():
        missing(f"no Python with tflite-runtime 2.14 at {LEGACY_PYTHON} (python -m venv .venv-legacy && "
                ".venv-legacy/bin/pip install 'tflite-runtime==2.14.0' 'numpy<2')")

# Runs inside the legacy Python: numpy and tflite_runtime only. Prints one JSON line.
CHECK = """
import json, sys
import numpy as np
import tflite_runtime
from tflite_runtime.interpreter import Interpreter
bundle = sys.argv[1]
golden = json.load(open(bundle + "/golden.json"))
try:
    runner = Interpreter(model_path=bundle + "/model.tflite").get_signature_runner("serving_default")
except Exception as error:
    print(json.dumps({"version": tflite_runtime.__version__, "error": str(error).splitlines()[0]}))
    sys.exit(0)
cosines, worst = [], 0.0
for example in golden["examples"]:
    feed = {k: np.array([example[k]], np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}
    name = "pooled_output" if "pooled_output" in example["outputs"] else "probabilities"
    got, want = runner(**feed)[name][0], np.array(example["outputs"][name])
    cosines.append(float(got @ want / np.linalg.norm(got) / np.linalg.norm(want)))
    worst = max(worst, float(np.abs(got - want).max()))
print(json.dumps({"version": tflite_runtime.__version__, "min_cosine": min(cosines), "max_abs_diff": worst}))
"""


def _run_legacy(bundle: Path) -> dict:
    done = subprocess.run([str(LEGACY_PYTHON), "-c", CHECK, str(bundle)], capture_output=True, text=True,
                          timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_compat_bundle_runs_on_tflite_runtime_2_14_and_the_default_does_not(tiny_checkpoint, tiny_bundle, tmp_path):
    from converters.export import Compat
    from converters.pipeline import ConvertOptions, convert

    compat = convert(tiny_checkpoint, tmp_path / "compat",
                     ConvertOptions(seq_len=32, validation_size=8, compat=Compat.TFLITE_RUNTIME_2_14)).bundle_dir
    old = _run_legacy(compat)
    assert old["version"].startswith("2.14")
    assert old["min_cosine"] >= 0.999, old

    default = _run_legacy(tiny_bundle)
    assert "FULLY_CONNECTED" in default.get("error", ""), default


def test_a_compat_classifier_gives_its_probabilities_on_tflite_runtime_2_14(tiny_classifier_checkpoint, tmp_path):
    from converters.export import Compat
    from converters.pipeline import ConvertOptions, convert

    compat = convert(tiny_classifier_checkpoint, tmp_path / "compat",
                     ConvertOptions(seq_len=32, validation_size=8, compat=Compat.TFLITE_RUNTIME_2_14)).bundle_dir
    old = _run_legacy(compat)
    assert old["version"].startswith("2.14") and "error" not in old, old
    assert old["max_abs_diff"] <= 1e-5, old
