"""Decoding speed of the CPU-sized student: beam 5 and greedy, XLA on/off.

Random weights (the model never says EOS, so every sentence generates
exactly `--new_tokens` tokens: the same work as a forced-length
benchmark). Prints a markdown table of sentences/s and target tokens/s for
each (search, batch size, XLA) setting, beam 5 with and without the
self-attention cache, and the number of compilations over a stream of
batches of mixed lengths and sizes.

Example:
  .venv/bin/python tools/bench_decode.py                  # full table
  .venv/bin/python tools/bench_decode.py --batch_sizes 32 --skip_no_xla
  .venv/bin/python tools/bench_decode.py --batch_sizes 8 32 \
      --search_shards 1 2 --rounds 5        # sharded search vs one search
"""

import argparse
import os
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bertkd_tf.decoding.generator import Generator  # noqa: E402
from bertkd_tf.models.transformer_backbone import (  # noqa: E402
    TransformerSeq2SeqBackbone,
)
from bertkd_tf.models.transformer_seq2seq import TransformerSeq2Seq  # noqa: E402


def build_model(args):
    keras.utils.set_random_seed(0)
    backbone = TransformerSeq2SeqBackbone(
        vocabulary_size=args.vocabulary_size,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        hidden_dim=args.hidden_dim,
        intermediate_dim=args.intermediate_dim,
        dropout=0.0,
        max_sequence_length=256,
        dtype=args.dtype,
    )
    return TransformerSeq2Seq(backbone)


def sources(batch_size, length, vocabulary_size, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(5, vocabulary_size, (batch_size, length)).tolist()


def measure(generator, batch, min_seconds, **kwargs):
    """Warm-up (compiles) then repeats for at least `min_seconds`."""
    generator.generate(batch, **kwargs)
    runs, tokens, start = 0, 0, time.perf_counter()
    while True:
        outputs = generator.generate(batch, **kwargs)
        runs += 1
        tokens += sum(len(o) + 1 for o in outputs)  # + EOS or the cut
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            break
    return runs * len(batch) / elapsed, tokens / elapsed


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--hidden_dim", type=int, default=256)
    parser.add_argument("--num_layers", type=int, default=3)
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument("--intermediate_dim", type=int, default=1024)
    parser.add_argument("--vocabulary_size", type=int, default=16000)
    parser.add_argument("--dtype", default=None, help="e.g. mixed_bfloat16")
    parser.add_argument("--source_length", type=int, default=20)
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--length_penalty", type=float, default=0.6)
    parser.add_argument(
        "--batch_sizes", type=int, nargs="+", default=[1, 32, 64]
    )
    parser.add_argument("--min_seconds", type=float, default=2.0)
    parser.add_argument("--skip_no_xla", action="store_true")
    parser.add_argument(
        "--skip_xla_in_comparison",
        action="store_true",
        help="With several --search_shards: compare graph-mode searches.",
    )
    parser.add_argument("--skip_no_cache", action="store_true")
    parser.add_argument("--mixed_batches", type=int, default=24)
    parser.add_argument(
        "--prefix_phases",
        action="store_true",
        help="XLA beam search in phases attending over a growing prefix "
        "of the cache (Generator(prefix_phases=True)).",
    )
    parser.add_argument(
        "--search_shards",
        default=["auto"],
        nargs="+",
        help="Generator(search_shards=...): 'auto' or powers of two; "
        "several values are timed round-robin (--rounds) for comparison.",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="With several --search_shards: round-robin repeats, medians.",
    )
    args = parser.parse_args()
    args.search_shards = [
        v if v == "auto" else int(v) for v in args.search_shards
    ]

    model = build_model(args)
    common = dict(
        length_penalty=args.length_penalty,
        max_length=args.new_tokens,
        max_length_margin=None,
    )
    print(
        f"student d={args.hidden_dim} layers={args.num_layers}+"
        f"{args.num_layers} heads={args.num_heads} ffn={args.intermediate_dim}"
        f" vocab={args.vocabulary_size} dtype={args.dtype or 'float32'}; "
        f"source {args.source_length} tokens, {args.new_tokens} new tokens, "
        f"length penalty {args.length_penalty}; {tf.__version__}, "
        f"{os.cpu_count()} CPUs; prefix phases {args.prefix_phases}"
    )
    if len(args.search_shards) > 1:
        compare_shards(model, args, common)
        return
    print()
    print(
        "| search | batch | XLA | cache | shards | sentences/s "
        "| target tokens/s |"
    )
    print("|---|---|---|---|---|---|---|")
    generators = {
        jit: Generator(
            model,
            jit_compile=jit,
            prefix_phases=args.prefix_phases,
            search_shards=args.search_shards[0],
        )
        for jit in ([True] if args.skip_no_xla else [True, False])
    }
    rows = []
    for beam in (5, 1):
        for batch_size in args.batch_sizes:
            batch = sources(
                batch_size, args.source_length, args.vocabulary_size
            )
            for jit, generator in generators.items():
                rate, tokens = measure(
                    generator,
                    batch,
                    args.min_seconds,
                    beam_size=beam,
                    **common,
                )
                name = "greedy" if beam == 1 else f"beam {beam}"
                rows.append((name, batch_size, jit, True, rate))
                shards = generator.shards_for(batch_size, beam)
                print(
                    f"| {name} | {batch_size} | {'on' if jit else 'off'} | "
                    f"yes | {shards} | {rate:.1f} | {tokens:.0f} |",
                    flush=True,
                )
    if not args.skip_no_cache:
        batch_size = 32 if 32 in args.batch_sizes else args.batch_sizes[0]
        batch = sources(batch_size, args.source_length, args.vocabulary_size)
        rate, tokens = measure(
            generators[True],
            batch,
            args.min_seconds,
            beam_size=5,
            use_cache=False,
            **common,
        )
        shards = generators[True].shards_for(batch_size, 5)
        print(
            f"| beam 5 | {batch_size} | on | no | {shards} | {rate:.1f} | "
            f"{tokens:.0f} |"
        )
        cached = [
            r[4]
            for r in rows
            if r[0] == "beam 5" and r[1] == batch_size and r[2]
        ][0]
        print()
        print(f"beam 5 batch {batch_size}: cache speed-up {cached / rate:.1f}x")

    # Compilations over a stream of mixed lengths and batch sizes.
    if args.mixed_batches:
        print_compilations(model, args, common)


def compare_shards(model, args, common):
    """Each (search, batch) timed with every --search_shards value, the
    values round-robin for --rounds rounds (this VM drifts by +-15%):
    median sentences/s and its range."""
    generators = [
        Generator(
            model,
            jit_compile=not args.skip_xla_in_comparison,
            prefix_phases=args.prefix_phases,
            search_shards=shards,
        )
        for shards in args.search_shards
    ]
    print()
    print("| search | batch | XLA | shards | sentences/s (median) | range |")
    print("|---|---|---|---|---|---|")
    for beam in (5, 1):
        name = "greedy" if beam == 1 else f"beam {beam}"
        for batch_size in args.batch_sizes:
            batch = sources(
                batch_size, args.source_length, args.vocabulary_size
            )
            rates = [[] for _ in generators]
            for _ in range(args.rounds):
                for i, generator in enumerate(generators):
                    rate, _ = measure(
                        generator,
                        batch,
                        args.min_seconds,
                        beam_size=beam,
                        **common,
                    )
                    rates[i].append(rate)
            for generator, values in zip(generators, rates):
                print(
                    f"| {name} | {batch_size} | "
                    f"{'on' if generator.jit_compile else 'off'} | "
                    f"{generator.shards_for(batch_size, beam)} | "
                    f"{np.median(values):.1f} | "
                    f"{min(values):.1f}-{max(values):.1f} |",
                    flush=True,
                )


def print_compilations(model, args, common):
    generator = Generator(model, jit_compile=True)
    rng = np.random.default_rng(1)
    start = time.perf_counter()
    count = 0
    for _ in range(args.mixed_batches):
        size = int(rng.integers(1, 33))
        batch = [
            rng.integers(
                5, args.vocabulary_size, int(rng.integers(3, 100))
            ).tolist()
            for _ in range(size)
        ]
        generator.generate(batch, beam_size=5, **{**common, "max_length": 8})
        count += size
    print(
        f"mixed stream: {args.mixed_batches} batches ({count} sentences, "
        "sources 3-99 tokens, batch 1-32, beam 5, 8 new tokens) compiled "
        f"{generator.compile_count} times in "
        f"{time.perf_counter() - start:.1f} s"
    )


if __name__ == "__main__":
    main()
