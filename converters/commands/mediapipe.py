"""`edgebert export-mediapipe`: a bundle's model as the .tflite MediaPipe Tasks run with no app code, as a
thin command over converters.mediapipe_metadata. It needs MediaPipe's metadata writers (PyPI
`mediapipe`), not TensorFlow; this module imports only click and edgebert.
"""
from __future__ import annotations

from pathlib import Path

import click


@click.command("export-mediapipe")
@click.argument("bundle", type=click.Path(path_type=Path))
@click.option("--out", required=True, type=click.Path(path_type=Path), metavar="FILE",
              help="The .tflite to write (the bundle's graph and weights, one output, MediaPipe's metadata).")
@click.option("--force", is_flag=True, help="Replace an existing FILE.")
def export_mediapipe(bundle, out, force):
    """Write BUNDLE's model as a .tflite that MediaPipe Tasks' TextClassifier or TextEmbedder runs with no app code.

    A classifier gets a SOFTMAX after its logits, so MediaPipe's scores are probabilities; an encoder
    keeps only pooled_output; a sentence-embedding bundle keeps its one output (its own model.tflite
    already carries the metadata when `edgebert convert` had MediaPipe's writers). The bundle's own
    vocabulary, its labels and the input names MediaPipe looks for are packed in as TFLite Model
    Metadata by MediaPipe's writers (pip install --no-deps mediapipe==1.2.3). The file is checked
    against the bundle's model on golden.json's inputs before it is written.
    """
    from converters.mediapipe_metadata import export_bundle

    summary = export_bundle(bundle, out, force=force)
    labels = f" [{', '.join(summary['labels'])}]" if summary["labels"] else ""
    click.echo(f"{summary['file']}  ({summary['bytes']:,} bytes; {summary['task']}, output {summary['output']}"
               f"{labels}, length {summary['seq_len']}; {summary['bytes'] - summary['bundle_model_bytes']:+,} bytes "
               f"over the bundle's model.tflite)")
    for note in summary["notes"]:
        click.echo(f"note: {note}", err=True)
