"""Circular masks: the C-MLM teacher's passes over every target slot.

docs/METHOD.md §2 (Chen et al., ACL 2020): the teacher scores each target
token with the token masked, conditioned on the source and on the rest of
the target. A pair with `T` rows (target tokens + the final `[SEP]` slot,
labelled EOS) gets `n = min(P, T)` copies; copy `i` masks target slots
`i, i + n, i + 2n, ...`, so every slot is masked exactly once and the
source never. `masked_copies` builds the teacher inputs of all copies of a
packed batch (`CMLMPreprocessor.pack`) and `make_top_k_fn` runs them through
a `CMLMTeacher` in one forward pass and keeps the top-K of each slot (what
`dump_teacher` writes).
"""

import tensorflow as tf


def circular_mask_slots(lengths, num_passes):
    """The copies of a batch and the target slots each one masks.

    Args:
        lengths: int32 `[B]`, rows per pair (target tokens + the EOS slot,
            so >= 1).
        num_passes: P, the most copies of a pair.

    Returns:
        `(copy_pair, slots, valid)`: int32 `[C]`, the pair of each copy
        (`C = sum(min(P, lengths))`); int32 `[C, M]`, slot
        `i + m * min(P, T)` masked by copy `i` of a pair with `T` rows;
        bool `[C, M]`, which slots exist (`slots < T`).
    """
    lengths = tf.cast(lengths, tf.int32)
    copies = tf.minimum(lengths, num_passes)
    copy_pair = tf.repeat(tf.range(tf.shape(lengths)[0]), copies)
    copy_index = tf.ragged.range(copies).flat_values
    stride = tf.gather(copies, copy_pair)
    per_copy = tf.reduce_max(-(-lengths // copies))
    slots = copy_index[:, None] + tf.range(per_copy)[None, :] * stride[:, None]
    valid = slots < tf.gather(lengths, copy_pair)[:, None]
    return copy_pair, slots, valid


def masked_copies(packed, num_passes, mask_token_id):
    """Teacher inputs for all circular-mask copies of a packed batch.

    Args:
        packed: `CMLMPreprocessor.pack` output (`token_ids`, `segment_ids`,
            `padding_mask` `[B, L]`, `target_start`, `target_length` `[B]`).
        num_passes: P.
        mask_token_id: BERT id of `[MASK]`.

    Returns:
        `(x, copy_pair, slots, valid)`: teacher inputs `[C, L]` and
        `mask_positions` `[C, M]` (0, the `[CLS]` position, where a slot
        does not exist: its logits are discarded), and the slot
        bookkeeping of `circular_mask_slots`.
    """
    lengths = packed["target_length"] + 1
    copy_pair, slots, valid = circular_mask_slots(lengths, num_passes)
    positions = slots + tf.gather(packed["target_start"], copy_pair)[:, None]
    positions = tf.where(valid, positions, 0)
    token_ids = tf.gather(packed["token_ids"], copy_pair)
    columns = tf.range(tf.shape(token_ids)[1])
    hit = tf.reduce_any(
        (columns[None, None, :] == positions[:, :, None]) & valid[:, :, None],
        axis=1,
    )
    x = {
        "token_ids": tf.where(hit, mask_token_id, token_ids),
        "segment_ids": tf.gather(packed["segment_ids"], copy_pair),
        "padding_mask": tf.gather(packed["padding_mask"], copy_pair),
        "mask_positions": positions,
    }
    return x, copy_pair, slots, valid


def circular_top_k(
    teacher, preprocessor, source_ids, target_ids, num_passes, top_k
):
    """Top-K of every target slot of a batch of pairs (graph-safe).

    The one computation behind the dump (`make_top_k_fn`) and online
    distillation (`CircularMaskTeacher`): `preprocessor.pack` the pairs,
    run all circular-mask copies through `teacher` in one forward pass
    (`training=False`) and keep the top-K logits of each masked slot.
    Dynamic shapes (the number of copies depends on the target lengths):
    not for XLA.

    Args:
        teacher: a `CMLMTeacher` (inputs `token_ids`, `segment_ids`,
            `padding_mask`, `mask_positions`; logits over the task
            vocabulary).
        preprocessor: the `CMLMPreprocessor` packing the pairs (its
            `bert_ids` map task ids to the teacher's BERT ids).
        source_ids, target_ids: int32 `[B, S]`, `[B, T]`, task ids
            right-padded with 0.
        num_passes: P.
        top_k: K.

    Returns:
        `(top_ids int32 [B, T + 1, K], top_logits float32 [B, T + 1, K],
        coverage int32 [B, T + 1], rows int32 [B])`: row `t` of a pair is
        target slot `t` (the last, `rows - 1`, the EOS slot), each row
        sorted by logit, highest first; `coverage` counts how often each
        slot was masked (1 for every slot of a pair, 0 beyond, where ids
        and logits are 0); `rows` = kept target tokens + 1.
    """
    packed = preprocessor.pack(source_ids, target_ids)
    x, copy_pair, slots, valid = masked_copies(
        packed, num_passes, preprocessor.mask_token_id
    )
    logits = teacher(x, training=False)
    values, ids = tf.math.top_k(tf.cast(logits, tf.float32), k=top_k)
    pair_of_slot = tf.broadcast_to(copy_pair[:, None], tf.shape(slots))
    index = tf.boolean_mask(tf.stack([pair_of_slot, slots], -1), valid)
    batch = tf.shape(source_ids)[0]
    rows = packed["target_length"] + 1
    shape = [batch, tf.shape(target_ids)[1] + 1]
    # Every (pair, slot) is scattered to once: no sums, the values as is.
    top_ids = tf.scatter_nd(index, tf.boolean_mask(ids, valid), shape + [top_k])
    top_logits = tf.scatter_nd(
        index, tf.boolean_mask(values, valid), shape + [top_k]
    )
    coverage = tf.scatter_nd(
        index, tf.ones([tf.shape(index)[0]], tf.int32), shape
    )
    return top_ids, top_logits, coverage, rows


def make_top_k_fn(teacher, preprocessor, num_passes, top_k):
    """A compiled `pairs -> top-K of every target slot` (traced once).

    The function takes `source_ids` and `target_ids` (int32 `[B, S]`,
    `[B, T]`, task ids right-padded with 0) and returns `circular_top_k`'s
    `(top_ids int32 [B, T_max + 1, K], top_logits [B, T_max + 1, K],
    coverage int32 [B, T_max + 1], rows int32 [B])` with the logits
    rounded to float16 (what `dump_teacher` stores).
    """
    matrix = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[matrix, matrix])
    def top_k_fn(source_ids, target_ids):
        top_ids, top_logits, coverage, rows = circular_top_k(
            teacher, preprocessor, source_ids, target_ids, num_passes, top_k
        )
        return top_ids, tf.cast(top_logits, tf.float16), coverage, rows

    return top_k_fn
