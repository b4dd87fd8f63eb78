"""`prepare`: the task vocabulary and data statistics in `WORK_DIR/vocab/`."""

import json
import os
import time

import numpy as np
from absl import logging

from bertkd_tf import locking
from bertkd_tf.artifacts import VOCAB_DIR
from bertkd_tf.atomic_files import write_text_atomic
from bertkd_tf.data.bert_word_piece_tokenizer import (
    BertWordPieceTokenizer,
    load_bert_vocabulary,
)
from bertkd_tf.data.task_vocabulary import TaskVocabulary
from bertkd_tf.data.tokenized_pairs import TokenizedPairs
from bertkd_tf.errors import DataError

STATS_FILE = "stats.json"


def _percentiles(lengths):
    if len(lengths) == 0:
        return {}
    points = (50, 90, 95, 99, 100)
    values = np.percentile(lengths, points)
    return {f"p{p}": float(v) for p, v in zip(points, values)}


def run(*, task, work_dir, bert, min_count=1, lowercase=None, force=False):
    """Builds the task vocabulary from the training split and writes stats.

    Args:
        task: the `Task`.
        work_dir: the pipeline's work directory; writes `work_dir/vocab/`.
        bert: the BERT whose WordPieces are used: a `vocab.txt`, a BERT
            directory, an installed model package (`all-MiniLM-L6-v2`) or a
            keras-hub preset name.
        min_count: keep WordPieces seen at least this often.
        lowercase: None follows the vocabulary (uncased lower-cases).
        force: rebuild even if a vocabulary is already there.

    Returns:
        `{"output_dir", "vocabulary_size", "stats"}`.

    Raises:
        DataError: a split's files are malformed (line counts differ, not
            UTF-8); a valid or test split that is not configured or whose
            files are missing is only logged.
        LockedError: another run writes `work_dir/vocab/`.
    """
    output_dir = os.path.join(work_dir, VOCAB_DIR)
    _lock = locking.hold(output_dir)
    stats_path = os.path.join(output_dir, STATS_FILE)
    if not force and os.path.exists(stats_path):
        logging.info("Vocabulary exists in %s; reusing it.", output_dir)
        vocab = TaskVocabulary.load(output_dir)
        with open(stats_path) as f:
            stats = json.load(f)
        return {
            "output_dir": output_dir,
            "vocabulary_size": vocab.size,
            "stats": stats,
        }
    start = time.time()
    tokenizer = BertWordPieceTokenizer(
        load_bert_vocabulary(bert),
        lowercase=lowercase,
        moses_escapes=task.moses_escapes,
    )
    train = task.read("train")
    vocab = TaskVocabulary.build(
        tokenizer, train.sources + train.targets, min_count=min_count
    )
    stats = {
        "bert": bert,
        "lowercase": tokenizer.lowercase,
        "moses_escapes": tokenizer.moses_escapes,
        "min_count": min_count,
        "vocabulary_size": vocab.size,
        "bert_vocabulary_size": tokenizer.vocabulary_size,
        "splits": {},
    }
    for split in ("train", "valid", "test"):
        try:
            pairs = train if split == "train" else task.read(split)
        except DataError:
            raise  # A split that is there but malformed fails later: now.
        except (ValueError, FileNotFoundError) as error:
            logging.info("No %s split: %s", split, error)
            continue
        tokenized = TokenizedPairs.from_pairs(
            pairs, vocab, task.max_source_length, task.max_target_length
        )
        everything = TokenizedPairs.from_pairs(pairs, vocab, 10**9, 10**9)
        source_lengths, target_lengths = everything.lengths()
        unk = sum(
            int(np.sum(side.flat_values.numpy() == vocab.unk_id))
            for side in (everything.source, everything.target)
        )
        total = int(source_lengths.sum() + target_lengths.sum())
        stats["splits"][split] = {
            "pairs": pairs.stats,
            "tokenized": tokenized.stats,
            "source_tokens": _percentiles(source_lengths),
            "target_tokens": _percentiles(target_lengths),
            "unk_rate": unk / max(total, 1),
        }
    stats["seconds"] = round(time.time() - start, 2)
    vocab.save(output_dir)
    write_text_atomic(stats_path, json.dumps(stats, indent=2))
    logging.info(
        "Task vocabulary: %d entries (%s), in %.1f s.",
        vocab.size,
        output_dir,
        stats["seconds"],
    )
    return {
        "output_dir": output_dir,
        "vocabulary_size": vocab.size,
        "stats": stats,
    }
