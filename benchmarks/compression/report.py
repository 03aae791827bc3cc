"""compression.json -> a markdown table per variant, with the targets."""
from __future__ import annotations


def _kb(n: int) -> str:
    return f"{n / 1e6:.2f} MB" if n >= 1e6 else f"{n / 1e3:.0f} kB"


def _epochs(n: int) -> str:
    return f"{n} epoch{'' if n == 1 else 's'}"


def _subset(settings: dict) -> str:
    examples = settings.get("max_train_examples")
    return f", the first {examples:,} training examples only" if examples else ""


def format_markdown(results: dict) -> str:
    lines = [f"# Compression on {results['data']}", "",
             f"Machine: {results['machine']['cpu']}, {results['machine']['cores']} cores. Accuracy from running "
             "each model.tflite on the dev set; latency p50 at 1 thread, the median over alternating rounds."]
    for variant in results["variants"]:
        weights = "random initialization" if variant["random_weights"] else "pretrained"
        training, settings = variant["training"], variant["settings"]
        shape = variant.get("shape")
        described = (f", L={shape['layers']} H={shape['hidden']} A={shape['heads']} I={shape['intermediate']}, "
                     f"vocab {shape['vocab_size']:,}" if shape else "")
        lines += ["", f"## {variant['variant']} ({weights}{described})", "",
                  f"Training: {_epochs(settings['epochs'])} for base (best: epoch {training['base_best_epoch']}), "
                  f"{_epochs(settings['recover_epochs'])} for each model made from it; batch {settings['batch_size']}, "
                  f"learning rate {settings['learning_rate']:g}, sequences up to {settings['max_seq_len']}"
                  f"{_subset(settings)}. Bundles at seq {settings['seq_len']}; "
                  f"{settings['rounds']} rounds of {settings['runs']} runs.", "",
                  "| model | export | dev accuracy | Δ vs float (pt) | agree w/ float | agree w/ dyn-int8 | model "
                  "| bundle | zipped | p50 ms | speed-up | sparsity | vocab |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        rows = variant["rows"]
        flt = next(r for r in rows if r["model"] == "base" and r["mode"] == "float32")
        dyn = next((r for r in rows if r["model"] == "base" and r["mode"] == "dynamic-int8"), None)
        for row in rows:
            delta = 100 * (row["accuracy"] - flt["accuracy"])
            sparsity = f"{row['sparsity']:.0%}" if "sparsity" in row else ""
            agreement = row["agreement_with_base_dynamic_int8"]
            agreement = "" if agreement is None else f"{agreement:.1%}"
            speedup = "" if dyn is None else f"{dyn['p50_ms'] / row['p50_ms']:.2f}×"
            lines.append(
                f"| {row['model']} | {row['mode']} | {row['accuracy']:.2%} | {delta:+.2f} | "
                f"{row['agreement_with_float32']:.1%} | {agreement} | {_kb(row['model_bytes'])} | "
                f"{_kb(row['bundle_bytes'])} | {_kb(row['zipped_bytes'])} | {row['p50_ms']:.2f} | {speedup} | "
                f"{sparsity} | {row['vocab_size']:,} |")
        for row in variant.get("failed", []):
            lines.append(f"| {row['model']} | {row['mode']} | failed: {row['error']} |||||||||||")
        mixed = [row for row in rows if (row.get("quantization") or {}).get("mixed_precision")]
        if mixed:
            lines.append("")
        for row in mixed:
            lines.append(f"- {row['model']} {row['mode']}: {row['quantization']['mixed_precision']}.")
        trims = [row for row in rows if row.get("trim")]
        if trims:
            lines.append("")
        for row in trims:
            trim, kept = row["trim"], row["trim"].get("kept_predictions") or {}
            given_back = (f"; {kept['tokens_given_back']:,} pieces given back over {kept['rounds']} rounds so that "
                          f"no corpus text's float label changed" if kept else "")
            lines.append(f"- {row['model']}: {trim['original_vocab_size']:,} → {trim['vocab_size']:,} tokens, "
                         f"trimmed to {' + '.join(trim.get('corpus_files', []))} (unlabelled){given_back}.")
        lines += ["", "| target | measured | met |", "|---|---:|---|"]
        for target in variant["targets"]:
            value = target["value"]
            shown = ("failed (above)" if value is None else f"{value:.2%}" if "predictions" in target["target"]
                     else f"{value:g}")
            lines.append(f"| {target['target']} | {shown} | {'yes' if target['met'] else '**no**'} |")
    return "\n".join(lines) + "\n"
