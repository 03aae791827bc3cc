"""`edgebert inspect`: what a bundle's model.tflite (or any .tflite) holds, read on the device.

A thin command over edgebert.model_info: no TensorFlow, no MediaPipe.
"""
from __future__ import annotations

import json
from pathlib import Path

import click

RUNTIME_CHOICES = ("auto", "ai-edge-litert", "tflite-runtime", "tensorflow")


@click.command("inspect")
@click.argument("target", metavar="BUNDLE_OR_TFLITE", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON (every op in execution order).")
@click.option("--runtime", type=click.Choice(RUNTIME_CHOICES), default="auto", show_default=True,
              help="The interpreter that lists the signatures and operators.")
def inspect(target, as_json, runtime):
    """Show a model's TFLite metadata, packed files, signatures, inputs, outputs and operators.

    TARGET is a bundle directory or a .tflite file. The metadata is what MediaPipe Tasks read (the
    model's name, the input tensors' names ids/mask/segment_ids, the BertTokenizer and its vocab file,
    each output and its labels file); the packed files are the zip appended to the model. Read with
    the device-side install only: no TensorFlow, no MediaPipe.
    """
    from edgebert.model_info import describe, inspect_model

    info = inspect_model(target, runtime=runtime)
    click.echo(json.dumps(info, indent=2) if as_json else describe(info))
