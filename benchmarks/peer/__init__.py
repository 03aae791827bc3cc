"""Peer benchmark: edgebert bundles against TensorFlow float and ONNX Runtime (float and dynamic int8),
with a roofline, measured side by side in one run.

    python -m benchmarks.peer --variants tiny,mini,small,medium --threads 1,2 --runs 30 --out DIR

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

The roofline (benchmarks.peer.roofline): MACs per variant at seq S, and the best dynamic-int8
FULLY_CONNECTED throughput LiteRT + XNNPACK reaches on this CPU.

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
EDGEBERT_FLOAT32 = "edgebert-float32"
EDGEBERT_INT8 = "edgebert-dynamic-int8"
EDGEBERT_INT8_CACHED = "edgebert-dynamic-int8-cached"
ENGINES = (TF_FLOAT, ORT_FLOAT, ORT_INT8, EDGEBERT_FLOAT32, EDGEBERT_INT8, EDGEBERT_INT8_CACHED)
REFERENCE_ENGINE = TF_FLOAT
RATIO_BASE_ENGINE = EDGEBERT_INT8
