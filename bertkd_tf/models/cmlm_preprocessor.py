"""Conditional masked LM (C-MLM) inputs for the BERT teacher.

Packs `[CLS] source [SEP] target [SEP]` in BERT ids and masks target tokens
only (Chen et al., ACL 2020, docs/METHOD.md §1). Pure TensorFlow ops:
usable inside `tf.data` (graph mode) and eagerly.
"""

import keras
import numpy as np
import tensorflow as tf

# Task-vocabulary ids of the specials (docs/ARCHITECTURE.md).
PAD_ID = 0
CLS_ID = 2
SEP_ID = 3
MASK_ID = 4
EOS_ID = SEP_ID


def _truncated_lengths(source_length, target_length, budget):
    """Lengths after trimming the longer side first (BERT's pair rule).

    Equivalent to popping one token at a time from the longer side (the
    target on ties) until `source + target <= budget`.
    """
    fits = source_length + target_length <= budget
    target_kept = tf.minimum(
        target_length, tf.maximum(budget - source_length, budget // 2)
    )
    source_kept = tf.minimum(source_length, budget - target_kept)
    return (
        tf.where(fits, source_length, source_kept),
        tf.where(fits, target_length, target_kept),
    )


def _to_ragged(x, name):
    """A `[B, None]` int32 ragged tensor from ragged or 0-padded dense."""
    if isinstance(x, tf.RaggedTensor):
        if x.shape.rank != 2:
            raise ValueError(
                f"`{name}` must be rank 2 ragged [batch, None]. "
                f"Received: shape={x.shape}"
            )
        return tf.cast(x, tf.int32)
    x = tf.convert_to_tensor(x)
    if x.shape.rank != 2:
        raise ValueError(
            f"`{name}` must be 1-D (one example) or 2-D (a batch). "
            f"Received: shape={x.shape}"
        )
    return tf.RaggedTensor.from_tensor(tf.cast(x, tf.int32), padding=PAD_ID)


@keras.saving.register_keras_serializable(package="bertkd_tf")
class CMLMPreprocessor:
    """Packs and masks (source, target) pairs for conditional masked LM.

    Input is a dict with `"source_ids"`, `"target_ids"` (task-vocabulary ids,
    no BOS/EOS) and `"id"` (int, the example id that seeds the masks); an
    optional `"epoch"` (int) is folded into the seed so every epoch draws new
    masks. Either one example (1-D tensors, scalar `id`) or a batch
    (`tf.RaggedTensor [B, None]`, or dense `[B, T]` right-padded with 0, and
    `id` `[B]`). Batched use is the fast path (call it after batching).

    Layout: `[CLS] src [SEP] tgt [SEP]` in BERT ids (task ids mapped through
    `bert_ids`), segment ids 0 for `[CLS]`, the source and the first `[SEP]`,
    1 for the target and the final slot. If `src + tgt + 3` exceeds
    `max_sequence_length`, tokens are cut from the end of the longer side
    first (the target on ties).

    Masking (reference code): each target token is masked independently with
    `mask_probability`, always replaced by `[MASK]`; the draw is repeated until
    at least one target token is masked. The final slot is, independently,
    masked with the same probability and then labelled EOS (task id 3);
    otherwise it stays `[SEP]` and is no prediction target. An empty target
    always masks its final slot. When `max_predictions` is set and more slots
    are chosen, a uniformly random subset of `max_predictions` is kept (the
    rest stay unmasked).

    Determinism: the masks of an example depend only on (`seed`, `id`,
    `epoch`, the example itself): stateless random ops seeded per example, so
    batching, `tf.data` parallelism and the order of examples do not change
    them. Use a fixed `seed` for validation.

    Output `(x, y, sample_weight)`:
    `x = {"token_ids", "segment_ids", "padding_mask", "mask_positions"}`
    (int32; `token_ids` in BERT ids, `[B, L]` with `L` the longest packed row,
    or `max_sequence_length` when `pad_to_max_sequence_length`),
    `y` = labels in task ids `[B, M]`, `sample_weight` float32 `[B, M]`
    (0 on padded mask slots). `M` is `max_predictions`, or the largest number
    of masks in the batch when `max_predictions=None`. Unbatched input gives
    unbatched outputs.

    `pack()` gives the unmasked packing for callers that apply their own masks
    (the teacher-target dump).

    Args:
        bert_ids: int array `[task_vocab_size]`, task id -> BERT id
            (`TaskVocabulary.bert_ids`). Task ids 0, 2, 3, 4 must be
            `[PAD]`, `[CLS]`, `[SEP]`, `[MASK]`.
        max_sequence_length: int. Longest packed sequence, specials included.
        mask_probability: float in (0, 1]. Masking rate of target tokens and
            of the final slot.
        max_predictions: int or None. Fixed number of mask slots `M`.
        pad_to_max_sequence_length: bool. Pad every batch to
            `max_sequence_length` (static shapes, e.g. for TPU).
        seed: int. Base seed of the masks.

    Example:
    ```python
    pre = CMLMPreprocessor(bert_ids=np.arange(50), max_sequence_length=16)
    x, y, w = pre({
        "id": tf.constant([0, 1], tf.int64),
        "source_ids": tf.ragged.constant([[7, 8, 9], [10]]),
        "target_ids": tf.ragged.constant([[11, 12], [13, 14, 15]]),
    })
    ```
    """

    def __init__(
        self,
        bert_ids,
        max_sequence_length=256,
        mask_probability=0.15,
        max_predictions=None,
        pad_to_max_sequence_length=False,
        seed=0,
    ):
        bert_ids = np.asarray(bert_ids)
        if bert_ids.ndim != 1 or bert_ids.size <= MASK_ID:
            raise ValueError(
                "`bert_ids` must be a 1-D array with at least 5 entries "
                "(task ids 0..4 are the specials). "
                f"Received: shape={bert_ids.shape}"
            )
        if not np.issubdtype(bert_ids.dtype, np.integer):
            raise ValueError(
                "`bert_ids` must hold integers. "
                f"Received: dtype={bert_ids.dtype}"
            )
        if int(max_sequence_length) < 4:
            raise ValueError(
                "`max_sequence_length` must be >= 4 ([CLS] [SEP] tgt [SEP]). "
                f"Received: max_sequence_length={max_sequence_length}"
            )
        if not 0.0 < float(mask_probability) <= 1.0:
            raise ValueError(
                "`mask_probability` must be in (0, 1]. "
                f"Received: mask_probability={mask_probability}"
            )
        if max_predictions is not None and int(max_predictions) < 1:
            raise ValueError(
                "`max_predictions` must be None or >= 1. "
                f"Received: max_predictions={max_predictions}"
            )
        self.bert_ids = [int(i) for i in bert_ids]
        self.max_sequence_length = int(max_sequence_length)
        self.mask_probability = float(mask_probability)
        self.max_predictions = (
            None if max_predictions is None else int(max_predictions)
        )
        self.pad_to_max_sequence_length = bool(pad_to_max_sequence_length)
        self.seed = int(seed)

    # BERT ids of the specials.
    @property
    def pad_token_id(self):
        return self.bert_ids[PAD_ID]

    @property
    def mask_token_id(self):
        return self.bert_ids[MASK_ID]

    def _bert(self, task_ids):
        table = tf.constant(self.bert_ids, tf.int32)
        return tf.gather(table, task_ids)

    def _pack_task_ids(self, source_ids, target_ids):
        """Ragged packed task ids, truncated source/target and lengths."""
        source_ids = _to_ragged(source_ids, "source_ids")
        target_ids = _to_ragged(target_ids, "target_ids")
        source_length, target_length = _truncated_lengths(
            tf.cast(source_ids.row_lengths(), tf.int32),
            tf.cast(target_ids.row_lengths(), tf.int32),
            self.max_sequence_length - 3,
        )
        source_ids = tf.ragged.boolean_mask(
            source_ids,
            tf.ragged.range(tf.cast(source_ids.row_lengths(), tf.int32))
            < tf.expand_dims(source_length, 1),
        )
        target_ids = tf.ragged.boolean_mask(
            target_ids,
            tf.ragged.range(tf.cast(target_ids.row_lengths(), tf.int32))
            < tf.expand_dims(target_length, 1),
        )
        batch = tf.shape(source_length)[0]
        cls = tf.fill([batch, 1], CLS_ID)
        sep = tf.fill([batch, 1], SEP_ID)
        packed = tf.concat([cls, source_ids, sep, target_ids, sep], axis=1)
        return packed, target_ids, source_length, target_length

    def _dense_features(self, packed, source_length, target_length):
        """Padded unmasked task ids, segment ids, padding mask, offsets."""
        if self.pad_to_max_sequence_length:
            shape = [None, self.max_sequence_length]
        else:
            shape = None
        task_ids = packed.to_tensor(default_value=PAD_ID, shape=shape)
        positions = tf.range(tf.shape(task_ids)[1])[tf.newaxis, :]
        target_start = source_length + 2
        total = target_start + target_length + 1
        padding_mask = tf.cast(positions < total[:, None], tf.int32)
        segment_ids = tf.cast(
            (positions >= target_start[:, None]) & (padding_mask > 0),
            tf.int32,
        )
        return task_ids, segment_ids, padding_mask, target_start

    def pack(self, source_ids, target_ids):
        """Packs without masking, for callers that apply their own masks.

        Args:
            source_ids: task ids, 1-D, ragged `[B, None]` or 0-padded dense.
            target_ids: task ids, same form.

        Returns:
            A dict: `token_ids` (BERT ids), `segment_ids`, `padding_mask`
            (int32, `[B, L]`), `target_start` (int32 `[B]`: position of the
            first target token) and `target_length` (int32 `[B]`, after
            truncation). Target token `j` sits at `target_start + j`; the
            final slot (`[SEP]`, to mask with label EOS) at
            `target_start + target_length`. Unbatched input gives unbatched
            outputs.
        """
        unbatched = self._is_unbatched(source_ids)
        if unbatched:
            source_ids = tf.expand_dims(source_ids, 0)
            target_ids = tf.expand_dims(target_ids, 0)
        packed, _, source_length, target_length = self._pack_task_ids(
            source_ids, target_ids
        )
        task_ids, segment_ids, padding_mask, target_start = (
            self._dense_features(packed, source_length, target_length)
        )
        outputs = {
            "token_ids": self._bert(task_ids),
            "segment_ids": segment_ids,
            "padding_mask": padding_mask,
            "target_start": target_start,
            "target_length": target_length,
        }
        if unbatched:
            outputs = {k: v[0] for k, v in outputs.items()}
        return outputs

    def truncate(self, source_ids, target_ids):
        """One example's (source, target) cut to fit `max_sequence_length`.

        The same rule as packing; use it before length-bucketed batching so
        that padded shapes are bounded by `max_sequence_length`.

        Args:
            source_ids: 1-D task ids.
            target_ids: 1-D task ids.
        """
        source_length, target_length = _truncated_lengths(
            tf.shape(source_ids)[0],
            tf.shape(target_ids)[0],
            self.max_sequence_length - 3,
        )
        return source_ids[:source_length], target_ids[:target_length]

    @staticmethod
    def _is_unbatched(x):
        if isinstance(x, tf.RaggedTensor):
            return False
        return tf.convert_to_tensor(x).shape.rank == 1

    def _draw_slots(self, example_id, epoch, target_length):
        """Masked slots of one example: bool `[max_sequence_length]`.

        Slot `j < target_length` is target token `j`; slot `target_length`
        is the final (EOS) slot.
        """
        n = self.max_sequence_length
        p = self.mask_probability
        seed = tf.constant([self.seed, 0], tf.int64)
        seed = tf.random.experimental.stateless_fold_in(seed, example_id)
        seed = tf.random.experimental.stateless_fold_in(seed, epoch)
        slots = tf.range(n)

        def draw(attempt):
            attempt_seed = tf.random.experimental.stateless_fold_in(
                seed, attempt
            )
            u = tf.random.stateless_uniform([n], attempt_seed)
            return u, (u < p) & (slots < target_length)

        def retry(attempt, u, masked):
            del u, masked
            u, masked = draw(attempt + 1)
            return attempt + 1, u, masked

        u, masked = draw(tf.constant(0, tf.int64))
        _, u, masked = tf.while_loop(
            lambda a, u, m: (target_length > 0) & ~tf.reduce_any(m),
            retry,
            (tf.constant(0, tf.int64), u, masked),
        )
        # The final slot: an independent draw (stream -1, never an attempt).
        eos_u = tf.random.stateless_uniform(
            [], tf.random.experimental.stateless_fold_in(seed, -1)
        )
        eos_masked = (eos_u < p) | (target_length == 0)
        is_eos_slot = slots == target_length
        masked = masked | (is_eos_slot & eos_masked)
        u = tf.where(is_eos_slot, eos_u, u)
        if self.max_predictions is not None and self.max_predictions < n:
            # Keep the `max_predictions` masked slots with the smallest draws:
            # a uniformly random subset.
            scores = tf.where(masked, -u, -2.0)
            kth = tf.math.top_k(scores, k=self.max_predictions).values[-1]
            masked = masked & (scores >= kth)
        return masked

    @property
    def _draw_all_slots(self):
        # A per-row loop: one compiled function (eager calls would otherwise
        # run `map_fn` row by row in Python).
        if getattr(self, "_draw_all_slots_fn", None) is None:

            def draw_all(example_id, epoch, target_length):
                return tf.map_fn(
                    lambda args: self._draw_slots(*args),
                    (example_id, epoch, target_length),
                    fn_output_signature=tf.TensorSpec(
                        [self.max_sequence_length], tf.bool
                    ),
                )

            self._draw_all_slots_fn = tf.function(
                draw_all,
                input_signature=[
                    tf.TensorSpec([None], tf.int64),
                    tf.TensorSpec([None], tf.int64),
                    tf.TensorSpec([None], tf.int32),
                ],
            )
        return self._draw_all_slots_fn

    def __call__(self, features):
        for key in ("source_ids", "target_ids", "id"):
            if key not in features:
                raise ValueError(
                    f"`features` must have the key '{key}'. "
                    f"Received keys: {sorted(features)}"
                )
        source_ids = features["source_ids"]
        target_ids = features["target_ids"]
        example_id = tf.cast(features["id"], tf.int64)
        epoch = tf.cast(
            features.get("epoch", tf.zeros_like(example_id)), tf.int64
        )
        unbatched = self._is_unbatched(source_ids)
        if unbatched:
            source_ids = tf.expand_dims(source_ids, 0)
            target_ids = tf.expand_dims(target_ids, 0)
            example_id = tf.reshape(example_id, [1])
            epoch = tf.reshape(epoch, [1])

        packed, target_ids, source_length, target_length = self._pack_task_ids(
            source_ids, target_ids
        )
        task_ids, segment_ids, padding_mask, target_start = (
            self._dense_features(packed, source_length, target_length)
        )
        masked_slots = self._draw_all_slots(example_id, epoch, target_length)
        # Mask the chosen slots in the packed ids.
        slot_of_position = (
            tf.range(tf.shape(task_ids)[1])[tf.newaxis, :]
            - target_start[:, None]
        )
        in_target = (slot_of_position >= 0) & (
            slot_of_position <= target_length[:, None]
        )
        position_masked = in_target & tf.gather(
            masked_slots,
            tf.clip_by_value(slot_of_position, 0, self.max_sequence_length - 1),
            batch_dims=1,
        )
        token_ids = self._bert(tf.where(position_masked, MASK_ID, task_ids))

        # Mask positions and labels, slot order.
        slots = tf.ragged.boolean_mask(
            tf.broadcast_to(
                tf.range(self.max_sequence_length), tf.shape(masked_slots)
            ),
            masked_slots,
        )
        target_with_eos = tf.concat(
            [target_ids, tf.fill([tf.shape(target_length)[0], 1], EOS_ID)],
            axis=1,
        )
        labels = tf.gather(target_with_eos, slots, batch_dims=1)
        mask_positions = slots + target_start[:, None]
        weights = tf.ones_like(slots, tf.float32)
        shape = (
            None
            if self.max_predictions is None
            else [None, self.max_predictions]
        )
        x = {
            "token_ids": token_ids,
            "segment_ids": segment_ids,
            "padding_mask": padding_mask,
            "mask_positions": mask_positions.to_tensor(0, shape=shape),
        }
        y = labels.to_tensor(PAD_ID, shape=shape)
        sample_weight = weights.to_tensor(0.0, shape=shape)
        if unbatched:
            x = {k: v[0] for k, v in x.items()}
            y, sample_weight = y[0], sample_weight[0]
        return x, y, sample_weight

    def get_config(self):
        return {
            "bert_ids": list(self.bert_ids),
            "max_sequence_length": self.max_sequence_length,
            "mask_probability": self.mask_probability,
            "max_predictions": self.max_predictions,
            "pad_to_max_sequence_length": self.pad_to_max_sequence_length,
            "seed": self.seed,
        }

    @classmethod
    def from_config(cls, config):
        return cls(**config)
