"""benchmarks.quantizers end to end on a tiny model, so that it cannot rot: each asked-for row is exported,
measured and written; the product's default rows come from `edgebert convert` itself."""
import json


def test_quantizers_measures_the_rows_asked_for(tiny_checkpoint, tmp_path, capsys):
    from benchmarks.quantizers import main

    out = tmp_path / "out"
    main([str(tiny_checkpoint), "--out", str(out), "--seq-len", "16", "--runs", "2", "--rounds", "1",
          "--rows", "int8 tf,default int8,dynamic-int8 rotate"])
    results = json.loads((out / "results.json").read_text())
    assert list(results["rows"]) == ["float32", "int8 tf", "default int8", "dynamic-int8 rotate"]
    for name, row in results["rows"].items():
        assert row["bytes"] > 0 and row["p50_ms"] > 0, name
        assert all(0.9 < figures["min_cosine"] <= 1.0 + 1e-6 for figures in row["fidelity"].values()), name
    # The tiny model's full int8 passes as the converter makes it: the default row is that export.
    assert (out / "default-int8.tflite").read_bytes() == (out / "int8.bundle" / "model.tflite").read_bytes()
    printed = capsys.readouterr().out
    assert "| default int8 |" in printed and "| dynamic-int8 rotate |" in printed
    manifest = json.loads((out / "dynamic-int8-rotate.bundle" / "manifest.json").read_text())
    assert "run_time_rotation" in manifest["quantization"]["equalization"]  # what --equalize rotate ships
