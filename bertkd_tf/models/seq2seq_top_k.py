"""Top-K targets from a left-to-right seq2seq teacher (teacher forcing).

The paper's ablation (docs/METHOD.md §6) compares the C-MLM teacher with a
left-to-right one: a seq2seq model's teacher-forced distribution at each
target position, conditioned on the source and the target *prefix* only.
`make_seq2seq_top_k_fn` computes it for any trained student-architecture
model (`TransformerSeq2Seq`, `RecurrentSeq2Seq`: any `KDStudent` returning
logits `[B, T, V]` on the student features) with the same signature and
outputs as `circular_masks.make_top_k_fn`, so `dump_teacher` writes both
teachers' targets in one format (`dump_teacher.run.teacher_kind`).

Row `t` of a pair is the model's prediction of label `t` (target token `t`,
the last row EOS) given `[BOS] + target[:t]`: the row the C-MLM teacher
fills for target slot `t` (the EOS slot last).
"""

import tensorflow as tf


def seq2seq_features(source_ids, target_ids, bos_id, eos_id):
    """Student features of 0-padded task ids (`data.student_features`'
    layout: `source + [EOS]`, `[BOS] + target`, int32 padding masks)."""
    source_ids = tf.cast(source_ids, tf.int32)
    target_ids = tf.cast(target_ids, tf.int32)
    batch = tf.shape(source_ids)[0]
    source_length = tf.reduce_sum(
        tf.cast(tf.not_equal(source_ids, 0), tf.int32), axis=1
    )
    encoder = tf.concat([source_ids, tf.zeros([batch, 1], tf.int32)], axis=1)
    positions = tf.range(tf.shape(encoder)[1])[tf.newaxis, :]
    encoder = tf.where(
        positions == source_length[:, tf.newaxis], eos_id, encoder
    )
    decoder = tf.concat([tf.fill([batch, 1], bos_id), target_ids], axis=1)
    return {
        "encoder_token_ids": encoder,
        "encoder_padding_mask": tf.cast(tf.not_equal(encoder, 0), tf.int32),
        "decoder_token_ids": decoder,
        "decoder_padding_mask": tf.cast(tf.not_equal(decoder, 0), tf.int32),
    }


def seq2seq_top_k(model, source_ids, target_ids, top_k, bos_id, eos_id):
    """Top-K of the teacher-forced logits at every target position.

    Args:
        model: a seq2seq model (student features -> logits `[B, T, V]`).
        source_ids, target_ids: int32 `[B, S]`, `[B, T]`, task ids without
            BOS/EOS, right-padded with 0.
        top_k: K.
        bos_id, eos_id: task ids of BOS and EOS.

    Returns:
        `circular_masks.circular_top_k`'s `(top_ids int32 [B, T + 1, K],
        top_logits float32 [B, T + 1, K], coverage int32 [B, T + 1], rows
        int32 [B])`: rows beyond a pair's target + EOS are 0 (coverage 0).
    """
    x = seq2seq_features(source_ids, target_ids, bos_id, eos_id)
    logits = model(x, training=False)
    values, ids = tf.math.top_k(tf.cast(logits, tf.float32), k=top_k)
    rows = tf.reduce_sum(x["decoder_padding_mask"], axis=1)
    valid = tf.range(tf.shape(ids)[1])[tf.newaxis, :] < rows[:, tf.newaxis]
    top_ids = tf.where(valid[..., tf.newaxis], ids, 0)
    top_logits = tf.where(valid[..., tf.newaxis], values, 0.0)
    return top_ids, top_logits, tf.cast(valid, tf.int32), rows


def make_seq2seq_top_k_fn(model, top_k, bos_id, eos_id):
    """A compiled `pairs -> top-K of every target position` (traced once),
    `make_top_k_fn`'s contract for a left-to-right teacher: `(source_ids,
    target_ids)` -> `seq2seq_top_k`'s outputs, logits rounded to float16
    (what `dump_teacher` stores)."""
    matrix = tf.TensorSpec([None, None], tf.int32)

    @tf.function(input_signature=[matrix, matrix])
    def top_k_fn(source_ids, target_ids):
        top_ids, top_logits, coverage, rows = seq2seq_top_k(
            model, source_ids, target_ids, top_k, bos_id, eos_id
        )
        return top_ids, tf.cast(top_logits, tf.float16), coverage, rows

    return top_k_fn
