"""python -m benchmarks.peer --variants tiny,mini --threads 1,2 --runs 30 --out DIR (see the package docstring)."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchmarks.peer import ENGINES


def _ints(text: str) -> list[int]:
    try:
        values = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _engines(text: str) -> tuple[str, ...]:
    names = [part.strip() for part in text.split(",") if part.strip()]
    unknown = [name for name in names if name not in ENGINES]
    if not names or unknown:
        raise argparse.ArgumentTypeError(f"unknown engine(s) {', '.join(unknown) or text!r} "
                                         f"(choose from {', '.join(ENGINES)})")
    return tuple(name for name in ENGINES if name in names)  # table order, whatever order they came in


def _custom_config(text: str):
    """Hidden, for tests: 'L,H,A,I' -> a BertConfig with the synthetic vocab's size (not a grid variant)."""
    from converters.config import BertConfig
    from converters.vocab import synthetic_vocab
    layers, hidden, heads, intermediate = (int(v) for v in text.split(","))
    return BertConfig(vocab_size=len(synthetic_vocab(None)), hidden_size=hidden, num_layers=layers,
                      num_heads=heads, intermediate_size=intermediate, max_positions=512)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.peer",
                                     description="edgebert bundles vs TensorFlow float, ONNX Runtime, PyTorch and "
                                                 "ExecuTorch, side by side, with a roofline")
    parser.add_argument("--variants", default="tiny,mini",
                        help="comma-separated BERT Miniatures (tiny, mini, small, medium, L-6_H-256, ...)")
    parser.add_argument("--threads", type=_ints, default=[1], help="comma-separated thread counts (default 1)")
    parser.add_argument("--engines", type=_engines, default=ENGINES,
                        help=f"comma-separated engines to measure (default: all, {','.join(ENGINES)})")
    parser.add_argument("--runs", type=int, default=30, help="timed runs per engine and thread count (default 30)")
    parser.add_argument("--rounds", type=int, default=5,
                        help="alternation rounds the runs are split over (default 5)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed calls after each load (default 5)")
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--text", type=Path, default=None,
                        help="the real-text set: a GLUE .tsv (e.g. ../shared/data/glue/SST-2/dev.tsv) or one text per "
                             "line; every engine runs each text at its own length (edgebert: a dynamic-length bundle)")
    parser.add_argument("--vocab", type=Path, default=None,
                        help="vocab.txt for the random checkpoint (e.g. ../shared/data/vocab/bert_uncased_vocab.txt), so "
                             "that real text gets its real word pieces; default: a synthetic vocab")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random checkpoint")
    parser.add_argument("--out", type=Path, required=True, help="output directory (peer.json, peer.md, work/)")
    parser.add_argument("--reuse", action="store_true",
                        help="reuse checkpoints, bundles and ONNX models already in OUT/work from the same settings")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds to wait for any one worker reply")
    # Testing aids, kept out of --help.
    parser.add_argument("--custom", action="append", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--roofline-shapes", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--roofline-runs", type=int, default=20, help=argparse.SUPPRESS)
    parser.add_argument("--agree-examples", type=int, default=16, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.runs < 1 or args.rounds < 1 or args.warmup < 0 or args.agree_examples < 1:
        parser.error("--runs and --rounds must be at least 1, --warmup at least 0")
    for option, path in (("--text", args.text), ("--vocab", args.vocab)):
        if path is not None and not path.is_file():
            parser.error(f"{option} {path}: no such file")
    args.rounds = min(args.rounds, args.runs)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from benchmarks.peer import roofline
    from benchmarks.peer.report import format_markdown
    from benchmarks.peer.runner import Settings, run_peer, variant_config, variant_label
    from edgebert.errors import EdgebertError
    from edgebert.variants import parse_variant_list

    try:
        variants = [] if args.custom and args.variants == "tiny,mini" else parse_variant_list(args.variants)
        variants += [_custom_config(text) for text in args.custom]
        shapes = roofline.parse_shapes(args.roofline_shapes) if args.roofline_shapes else roofline.DEFAULT_SHAPES
        if args.text:
            from benchmarks.peer.runner import load_texts
            if not load_texts(args.text):
                raise ValueError(f"{args.text} holds no text")
        if args.vocab:
            from edgebert.tokenizer import read_vocab
            size = len(read_vocab(args.vocab))
            for variant in variants:
                if variant_config(variant).vocab_size != size:
                    raise ValueError(f"--vocab {args.vocab} has {size} tokens; {variant_label(variant)} needs "
                                     f"{variant_config(variant).vocab_size}")
    except (EdgebertError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    settings = Settings(variants=variants, threads=args.threads, runs=args.runs, rounds=args.rounds,
                        warmup=args.warmup, seq_len=args.seq_len, seed=args.seed, agree_examples=args.agree_examples,
                        roofline_shapes=shapes, roofline_runs=args.roofline_runs, reuse=args.reuse,
                        timeout_s=args.timeout, engines=args.engines, text=args.text, vocab=args.vocab)
    results = run_peer(settings, args.out, log=lambda message: print(message, file=sys.stderr, flush=True))
    print(format_markdown(results))
    rows = [row for variant in results["variants"] for row in variant["rows"]]
    failed, skipped = [row for row in rows if "error" in row], [row for row in rows if "skipped" in row]
    print(f"\nwrote {args.out / 'peer.json'} and {args.out / 'peer.md'} in {results['seconds']:.0f} s"
          + (f"; {len(failed)} cell(s) FAILED" if failed else "")
          + (f"; {len(skipped)} cell(s) skipped" if skipped else ""), file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
