"""Input-pipeline throughput: target tokens/s after tokenizing and batching.

Usage:
  .venv/bin/python tools/bench_input.py \
      --data_dir=../shared/data/iwslt14_de_en --bert=all-MiniLM-L6-v2 \
      --moses_escapes

Prints a table: read, vocabulary build, tokenizing, and batching (one epoch
of token-budget batches of student features), each as target tokens/s.
"""

import time

from absl import app, flags

from bertkd_tf.data.batching import (
    TokenBudgetBatcher,
    default_bucket_boundaries,
)
from bertkd_tf.data.bert_word_piece_tokenizer import (
    BertWordPieceTokenizer,
    load_bert_vocabulary,
)
from bertkd_tf.data.student_features import student_dataset
from bertkd_tf.data.task_vocabulary import TaskVocabulary
from bertkd_tf.data.text_pairs import read_text_pairs
from bertkd_tf.data.tokenized_pairs import TokenizedPairs

DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "Corpus directory.", required=True
)
SPLIT = flags.DEFINE_string("split", "train", "Split to read.")
SOURCE = flags.DEFINE_string("source_language", "de", "Source suffix.")
TARGET = flags.DEFINE_string("target_language", "en", "Target suffix.")
BERT = flags.DEFINE_string("bert", "all-MiniLM-L6-v2", "BERT vocabulary.")
MOSES = flags.DEFINE_bool("moses_escapes", True, "Moses-escaped corpus.")
TOKENS = flags.DEFINE_integer("tokens_per_batch", 4096, "Token budget.")
MAX_LENGTH = flags.DEFINE_integer("max_length", 128, "Max WordPieces a side.")


def main(_):
    rows = []
    start = time.time()
    pairs = read_text_pairs(
        DATA_DIR.value, SPLIT.value, SOURCE.value, TARGET.value
    )
    rows.append(("read files", time.time() - start))
    tokenizer = BertWordPieceTokenizer(
        load_bert_vocabulary(BERT.value), moses_escapes=MOSES.value
    )
    start = time.time()
    vocab = TaskVocabulary.build(tokenizer, pairs.sources + pairs.targets)
    rows.append(("build vocabulary (both sides)", time.time() - start))
    start = time.time()
    tokenized = TokenizedPairs.from_pairs(
        pairs, vocab, MAX_LENGTH.value, MAX_LENGTH.value
    )
    rows.append(("tokenize + length filter", time.time() - start))
    target_tokens = int(tokenized.lengths()[1].sum()) + len(tokenized)
    batcher = TokenBudgetBatcher(
        TOKENS.value,
        default_bucket_boundaries(MAX_LENGTH.value + 1),
        shuffle_buffer=20000,
    )
    dataset = student_dataset(
        tokenized.to_dataset(), batcher, vocab.bos_id, vocab.eos_id
    )
    start = time.time()
    batches = padded = real = 0
    for _, _, weight in dataset:
        batches += 1
        padded += int(weight.shape[0] * weight.shape[1])
        real += int(weight.numpy().sum())
    rows.append(("batch one epoch (student features)", time.time() - start))
    print(
        f"\n{len(pairs)} pairs, {len(tokenized)} kept, {real} target tokens "
        f"(EOS included), {batches} batches of <= {TOKENS.value} tokens, "
        f"padding efficiency {real / max(padded, 1):.1%}, "
        f"vocabulary {vocab.size}"
    )
    print("\n| stage | seconds | target tokens/s |\n|---|---:|---:|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.2f} | {target_tokens / seconds:,.0f} |")
    total = rows[2][1] + rows[3][1]
    print(
        f"| tokenize + batch (end to end) | {total:.2f} | "
        f"{target_tokens / total:,.0f} |"
    )


if __name__ == "__main__":
    app.run(main)
