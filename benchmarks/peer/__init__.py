"""Peer benchmark: edgebert bundles against TensorFlow float, ONNX Runtime (float and dynamic int8), PyTorch
(eager float and quantize_dynamic int8) and ExecuTorch (XNNPACK, dynamic int8), with a roofline that names
the CPU's int8 kernels, measured side by side in one run, at a fixed length or on a real-text set.

    python -m benchmarks.peer --variants tiny,mini,small,medium --threads 1,2 --runs 30 --out DIR
    python -m benchmarks.peer ... --text ../shared/data/glue/SST-2/dev.tsv \
        --vocab ../shared/data/vocab/bert_uncased_vocab.txt --out DIR-text

`--engines NAME,...` measures some of the engines below (default: all).

Needs the converter and the bench extras: `pip install -e '.[convert,bench]'` (onnxruntime, onnx, torch
and transformers<5 for the ONNX export; torch: `pip install torch==2.13.0` or the CPU wheel index, since a
bare `torch` requirement can pull the CUDA build).

For each variant, the same random weights in Google's layout (write_random_checkpoint with the synthetic
vocab) feed every engine:

  tf-float              the tf_keras model (converters.model.build_bert + set_google_weights), called
                        through tf.function(input_signature=[1,S] int32 x3, jit_compile=False) with numpy
                        in and `.numpy()` out: what a user running the Keras model does
  ort-float             Optimum's route: transformers BertModel loaded from the TF checkpoint
                        (load_tf_weights_in_bert; hidden_act gelu_new = Google's tanh GELU; eager
                        attention), torch.onnx.export (TorchScript exporter, opset 14, dynamic batch/seq),
                        then onnxruntime.transformers.optimizer.optimize_model(model_type="bert") so the
                        BERT fusions apply (counted and reported)
  ort-dynamic-int8      that optimized graph through onnxruntime.quantization.quantize_dynamic (QInt8)
  torch-float           the same transformers BertModel (saved by benchmarks.peer.torch_export, loaded with
                        from_pretrained), eager, torch.inference_mode()
  torch-dynamic-int8    that model through torch.ao.quantization.quantize_dynamic({nn.Linear}, qint8): the
                        route Hugging Face tutorials show (deprecated in torch, still what people run)
  executorch-xnnpack-int8
                        ExecuTorch's XNNPACK route (benchmarks.peer.torch_export): torch.export with a dynamic
                        seq dim, XNNPACKQuantizer(per-channel, dynamic int8) via prepare_pt2e/convert_pt2e,
                        to_edge_transform_and_lower(XnnpackPartitioner), run through executorch.runtime
  edgebert-float32      converters.pipeline.convert bundles, run through edgebert's TFLiteModel
  edgebert-dynamic-int8 (the path `edgebert bench` times), LiteRT + XNNPACK
  edgebert-dynamic-int8-cached
                        the same model.tflite through TFLiteModel(weight_cache=FILE): LiteRT's CompiledModel
                        with XNNPACK's weight cache (the packed weights written to FILE once, memory-mapped
                        after; `edgebert bench --weight-cache`). FILE is OUT/work/<variant>/weight-cache/
                        <model sha>.xnnpack-cache; a throwaway worker builds it first, so the measured worker
                        loads a warm cache, the deployed state. Skipped, with the reason, where the runtime
                        has no weight cache (tflite-runtime, older ai-edge-litert)

Each (engine, threads) runs in its own persistent worker process (benchmarks.peer.worker) that holds only
that engine: its memory figures are its own (baseline RSS after importing the runtime, peak-RSS mark reset
there, peak after all runs). The orchestrator drives the workers ROUND BY ROUND, rotating the engine order
each round, so drift in the machine's speed hits every engine alike. Inputs are real sentences from
samples/ tokenized with the bundle's tokenizer at seq 128, batch 1, cycled in the same order for all.
With `--text FILE` (a GLUE .tsv such as SST-2's dev.tsv, or one text per line) the run measures that set
instead: each text at its own length (no padding) in every engine, edgebert's bundles converted with a
dynamic length (from Mini up faster than length buckets, README: Real text) except the weight-cache
engine's, which LiteRT's CompiledModel cannot run at a dynamic length: it gets length buckets (16, 32, 64,
S) and pads each text to the shortest that holds it; the ExecuTorch program is exported with a dynamic
seq dim; `--vocab FILE` gives the random checkpoint a real vocabulary so that the texts get their
real word-piece lengths (the synthetic vocab splits unknown words into characters).

The roofline (benchmarks.peer.roofline): MACs per variant at seq S, and the best dynamic-int8
FULLY_CONNECTED throughput LiteRT + XNNPACK reaches on this CPU, with the int8 kernel family XNNPACK
picks there (edgebert.cpu_features: AMX int8 tiles, AVX512-VNNI, AVX-VNNI, AVX2, NEON i8mm / dot-product /
plain NEON) and the CPU features that decide it, also in the report's device facts.

Results: DIR/peer.json (schema "edgebert.peer/1") and DIR/peer.md; the table is printed.
`python -m benchmarks.peer.components --variant medium --bundle B` times each piece of an encoder layer
alone (an op profile by construction). Measured results and the diagnosis: benchmarks/peer/README.md.
"""
PEER_SCHEMA = "edgebert.peer/1"

# Engine names, in table order. The first is the reference every agreement figure is measured against;
# the ratios are each engine's p50 over the last one's.
TF_FLOAT = "tf-float"
ORT_FLOAT = "ort-float"
ORT_INT8 = "ort-dynamic-int8"
TORCH_FLOAT = "torch-float"
TORCH_INT8 = "torch-dynamic-int8"
EXECUTORCH_INT8 = "executorch-xnnpack-int8"
EDGEBERT_FLOAT32 = "edgebert-float32"
EDGEBERT_INT8 = "edgebert-dynamic-int8"
EDGEBERT_INT8_CACHED = "edgebert-dynamic-int8-cached"
ENGINES = (TF_FLOAT, ORT_FLOAT, ORT_INT8, TORCH_FLOAT, TORCH_INT8, EXECUTORCH_INT8, EDGEBERT_FLOAT32, EDGEBERT_INT8,
           EDGEBERT_INT8_CACHED)
# The int8 peers edgebert dynamic int8 must beat (issue 13): the report names the best of them per row.
INT8_PEERS = (ORT_INT8, TORCH_INT8, EXECUTORCH_INT8)
REFERENCE_ENGINE = TF_FLOAT
RATIO_BASE_ENGINE = EDGEBERT_INT8
