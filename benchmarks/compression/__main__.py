"""python -m benchmarks.compression --data DIR --variants tiny,mini --out DIR (see the package docstring)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.compression",
                                     description="accuracy, size and latency of fine-tuned, quantized, pruned "
                                                 "and vocabulary-trimmed bundles on a GLUE task")
    parser.add_argument("--data", type=Path, required=True, help="GLUE task folder with train.tsv and dev.tsv")
    parser.add_argument("--variants", default="tiny,mini", help="comma-separated BERT Miniatures (default tiny,mini)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (rerun to resume)")
    parser.add_argument("--epochs", type=int, default=4, help="base fine-tuning epochs (default 4)")
    parser.add_argument("--recover-epochs", type=int, default=2,
                        help="epochs of each pruning run / structured recovery (default 2)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--trim-max-tokens", type=int, default=9634,
                        help="vocabulary rows kept by the trim (default 9634: 2.5x smaller BERT-Tiny)")
    parser.add_argument("--runs", type=int, default=100, help="timed runs per bundle and round")
    parser.add_argument("--rounds", type=int, default=3, help="alternating latency rounds")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--checkpoint", action="append", default=[], metavar="VARIANT=PATH",
                        help="start a variant from this checkpoint instead of random weights (repeatable)")
    parser.add_argument("--pretrained", action="store_true", help="fetch Google's release for every variant")
    parser.add_argument("--max-train-examples", type=int, default=None, help="train on a subset (quick runs)")
    parser.add_argument("--custom", action="append", default=[], help=argparse.SUPPRESS)  # tests: L,H,A,I
    parser.add_argument("--seq-len", type=int, default=128, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from benchmarks.compression.report import format_markdown
    from benchmarks.compression.run import Settings, grid_shape, run
    from edgebert.errors import EdgebertError
    from edgebert.variants import parse_variant_list

    log = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
    try:
        for name in ("train.tsv", "dev.tsv"):
            if not (args.data / name).is_file():
                raise FileNotFoundError(f"{args.data / name}: not found (--data is a GLUE task folder)")
        shapes = [] if args.custom else [grid_shape(v) for v in parse_variant_list(args.variants)]
        shapes += [_custom_shape(text) for text in args.custom]
        checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
        settings = Settings(data=args.data, variants=tuple(shapes), epochs=args.epochs,
                            recover_epochs=args.recover_epochs, batch_size=args.batch_size,
                            learning_rate=args.learning_rate, seq_len=args.seq_len,
                            trim_max_tokens=args.trim_max_tokens, runs=args.runs, rounds=args.rounds, seed=args.seed,
                            checkpoints={k: Path(v) for k, v in checkpoints.items()}, pretrained=args.pretrained,
                            max_train_examples=args.max_train_examples)
        results = run(settings, args.out, log, progress=_epoch_log(log))
    except (EdgebertError, FileNotFoundError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(format_markdown(results))
    return 0


def _epoch_log(log):
    from converters.finetune import Progress

    def epoch_end(record):
        dev = ", ".join(f"dev {k} {v:.4f}" for k, v in record.get("dev", {}).items())
        log(f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, {dev}, {record['seconds']:.0f} s")
    return Progress(log=log, on_epoch_end=epoch_end)


def _custom_shape(text: str):
    from benchmarks.compression.run import Shape
    from converters.config import BertConfig
    from converters.vocab import synthetic_vocab

    layers, hidden, heads, intermediate = (int(v) for v in text.split(","))
    vocab = synthetic_vocab(None)
    config = BertConfig(vocab_size=len(vocab), hidden_size=hidden, num_layers=layers, num_heads=heads,
                        intermediate_size=intermediate, max_positions=128)
    return Shape(f"custom-L{layers}-H{hidden}", config, tuple(vocab))


if __name__ == "__main__":
    sys.exit(main())
