"""Text pairs tokenized once into task ids, filtered by length."""

import collections

import numpy as np
import tensorflow as tf
from absl import logging


class TokenizedPairs:
    """Task-id sequences of text pairs, held in memory.

    Tokenizing happens once, in large batches of TF ops; epochs then only
    slice arrays. Pairs longer than the limits are dropped (training) or
    truncated (inference), and counted in `stats`.

    Args:
        ids: int64 `[N]` pair ids.
        source: `tf.RaggedTensor` `[N, None]` int32 source task ids.
        target: `tf.RaggedTensor` `[N, None]` int32 target task ids.
        stats: counts (`kept`, `dropped_source_too_long`, ...).

    Example:
    >>> tokenized = TokenizedPairs.from_pairs(pairs, vocab, 128, 128)
    >>> dataset = tokenized.to_dataset()  # {"id","source_ids","target_ids"}
    """

    def __init__(self, ids, source, target, stats=None):
        self.ids = np.asarray(ids, dtype=np.int64)
        self.source = source
        self.target = target
        self.stats = dict(stats or {"kept": len(self.ids)})

    def __len__(self):
        return len(self.ids)

    @classmethod
    def from_pairs(
        cls,
        pairs,
        vocab,
        max_source_length,
        max_target_length,
        truncate=False,
        batch_size=8192,
    ):
        """Tokenizes `TextPairs` with `vocab` (no BOS/EOS added).

        Args:
            pairs: `TextPairs`.
            vocab: `TaskVocabulary`.
            max_source_length: most source WordPieces kept.
            max_target_length: most target WordPieces kept.
            truncate: cut long pairs instead of dropping them (inference).
            batch_size: strings tokenized per TF call.
        """
        for name, value in (
            ("max_source_length", max_source_length),
            ("max_target_length", max_target_length),
        ):
            if value is None or value < 1:
                raise ValueError(f"{name} must be >= 1; got {value!r}.")

        def tokenize(texts):
            parts = [
                vocab.tokenize(texts[i : i + batch_size])
                for i in range(0, len(texts), batch_size)
            ]
            if not parts:
                return tf.ragged.constant([], dtype=tf.int32, ragged_rank=1)
            return tf.concat(parts, axis=0)

        source = tokenize(pairs.sources)
        target = tokenize(pairs.targets)
        source_lengths = source.row_lengths().numpy()
        target_lengths = target.row_lengths().numpy()
        stats = collections.Counter()
        stats["read"] = len(pairs)
        if truncate:
            source = source[:, :max_source_length]
            target = target[:, :max_target_length]
            stats["truncated"] = int(
                np.sum(
                    (source_lengths > max_source_length)
                    | (target_lengths > max_target_length)
                )
            )
            keep = np.ones(len(pairs), dtype=bool)
        else:
            long_source = source_lengths > max_source_length
            long_target = target_lengths > max_target_length
            empty = (source_lengths == 0) | (target_lengths == 0)
            stats["dropped_source_too_long"] = int(np.sum(long_source))
            stats["dropped_target_too_long"] = int(
                np.sum(long_target & ~long_source)
            )
            stats["dropped_empty_after_tokenizing"] = int(
                np.sum(empty & ~long_source & ~long_target)
            )
            keep = ~(long_source | long_target | empty)
            source = tf.ragged.boolean_mask(source, keep)
            target = tf.ragged.boolean_mask(target, keep)
        stats["kept"] = int(np.sum(keep))
        stats = dict(stats)
        logging.info(
            "tokenized %s: %s",
            pairs.name,
            ", ".join(f"{k}={v}" for k, v in stats.items()),
        )
        return cls(pairs.ids[keep], source, target, stats)

    def to_dataset(self):
        """`tf.data` of `{"id", "source_ids", "target_ids"}` (1-D int32)."""
        return tf.data.Dataset.from_tensor_slices(
            {
                "id": self.ids,
                "source_ids": self.source,
                "target_ids": self.target,
            }
        )

    def lengths(self):
        """(source, target) lengths as numpy arrays."""
        return (
            self.source.row_lengths().numpy(),
            self.target.row_lengths().numpy(),
        )
