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

    A classifier or sentence-embedding bundle converted with MediaPipe's writers installed needs no export:
    its own model.tflite carries the metadata, and FILE is a byte-for-byte copy of it. Otherwise the
    bundle's graph and weights are written with one output (an encoder keeps only pooled_output; an older
    classifier bundle's logits get a SOFTMAX, so MediaPipe's scores are probabilities; a bundle with length
    buckets keeps its longest length), and the bundle's own vocabulary, its labels and the input names
    MediaPipe looks for are packed in as TFLite Model Metadata by MediaPipe's writers (pip install
    --no-deps mediapipe==1.2.3). FILE is checked against the bundle's model on golden.json's inputs
    before it is written.
    """
    from converters.mediapipe_metadata import export_bundle

    summary = export_bundle(bundle, out, force=force)
    labels = f" [{', '.join(summary['labels'])}]" if summary["labels"] else ""
    click.echo(f"{summary['file']}  ({summary['bytes']:,} bytes; {summary['task']}, output {summary['output']}"
               f"{labels}, length {summary['seq_len']}; {summary['bytes'] - summary['bundle_model_bytes']:+,} bytes "
               f"over the bundle's model.tflite)")
    for note in summary["notes"]:
        click.echo(f"note: {note}", err=True)
