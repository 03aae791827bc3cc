"""Compression benchmark on a GLUE task: what fine-tuning, quantization, pruning and vocabulary trimming
cost in accuracy and buy in bytes and latency, for each BERT shape, in one resumable run.

    python -m benchmarks.compression --data ../shared/data/glue/SST-2 --variants tiny,mini --out DIR
    python -m benchmarks.compression --data ../shared/data/glue/SST-2 --source all-MiniLM-L6-v2 --out DIR \
        --models structured-50,vocab-trimmed --base-modes float32,float16,dynamic-int8,int8,dynamic-int4 ...

For each variant, from one checkpoint (a random one in Google's layout with the real vocab by default,
since pretrained weights cannot be downloaded everywhere; `--pretrained` fetches Google's release, or
`--checkpoint tiny=PATH` takes one's own), or for each `--source NAME=PATH` (a Hugging Face /
sentence-transformers folder such as all-MiniLM-L6-v2, or any checkpoint edgebert reads; its shape is
its config's, and every model made from it stays in its format; `--source all-MiniLM-L6-v2` alone fetches
that model with converters.real_weights), with the library's own steps (converters.recipes.run_steps):

  base            fine-tune on train.tsv (early stopping on dev.tsv)
  unstructured-50 base, fine-tuned again with 50 % magnitude pruning (tfmot, polynomial decay)
  unstructured-80 the same at 80 %
  2:4             the same with the 2:4 pattern
  structured-50   base with half the heads and FFN neurons removed by importance, then fine-tuned to
                  recover, distilling from base
  vocab-trimmed   base with the vocabulary trimmed within a row budget to the task's text (train and dev
                  sentences, unlabelled), giving back the pieces whose loss changes a float label
  vocab-trimmed-heldout
                  the same trim from the training sentences alone: dev is text it never saw

(`--models` picks some of these), and exports: base in each of `--base-modes` (default float32, dynamic
int8 and full int8, calibrated on --calibration-size training sentences); every other as dynamic int8. An
export that fails (full int8 refused by its validation, say) is a row with its one-line error, and the
run goes on. Every bundle's
accuracy is measured by running its model.tflite on dev.tsv (`convert --eval`), and its predictions are
compared with the float32 bundle's and the base dynamic-int8 bundle's. Latency: every bundle of a variant
in a fresh process (edgebert.bench), alternating bundles over rounds, medians of the round medians.
Sizes: model.tflite, the whole bundle, and the bundle zipped (deflate, level 9).

Targets (checked and reported, never asserted; run.MINIATURE_TARGETS): dynamic int8 within 0.5 accuracy
points of float32; structured-50 within 1.5 points of float32 and >= 1.6x faster than base dynamic int8;
vocab trimming >= 2.5x smaller than base dynamic int8 with the same predictions. For a --source
(run.SOURCE_TARGETS, issue 11's): dynamic int8 within 0.3 points; full int8 converts and is within 1.0;
dynamic int4 within 1.0; structured-50 within 2.0 and >= 1.6x faster than base dynamic int8.

Results: DIR/compression.json and DIR/compression.md. Rerunning the command resumes: finished steps
(DIR/work/<variant>/...) and bundles are reused when their inputs and options are unchanged, and so are
each bundle's dev predictions and a failed export's error (until the converter's code changes). A rerun
of a finished run therefore only measures latency again (--runs, --rounds), which is how the figures
are re-timed on a quiet machine.
"""
SCHEMA = "edgebert.compression/1"
