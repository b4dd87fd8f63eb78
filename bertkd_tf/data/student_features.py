"""Student inputs: encoder/decoder ids, labels, masks, teacher targets.

Per pair (task ids, no BOS/EOS in the tokenized pair):
`encoder_token_ids = source + [EOS]`, `decoder_token_ids = [BOS] + target`,
`labels = target + [EOS]`. Labels line up 1:1 with the teacher's rows
(target tokens, then the EOS slot), so `teacher_ids`/`teacher_logits`
(`[T, K]`, from the dump) join without shifting.
"""

import tensorflow as tf

TEACHER_KEYS = ("teacher_ids", "teacher_logits")


def student_example(example, bos_id, eos_id):
    """`{"source_ids","target_ids"[, teacher keys]}` -> unbatched features."""
    source = tf.cast(example["source_ids"], tf.int32)
    target = tf.cast(example["target_ids"], tf.int32)
    features = {
        "encoder_token_ids": tf.concat([source, [eos_id]], axis=0),
        "decoder_token_ids": tf.concat([[bos_id], target], axis=0),
        "labels": tf.concat([target, [eos_id]], axis=0),
    }
    for key in TEACHER_KEYS:
        if key in example:
            features[key] = example[key]
    return features


def example_length(features):
    """Bucketing length: the longer of encoder and decoder."""
    return tf.maximum(
        tf.shape(features["encoder_token_ids"])[0],
        tf.shape(features["decoder_token_ids"])[0],
    )


def to_keras_inputs(batch, pad_id=0):
    """A padded batch -> `(x, y, sample_weight)` for `fit`.

    `y` is the labels tensor, or a dict with the labels and the teacher
    targets when the batch carries them. Masks are int32 (bool masks fail
    under MirroredStrategy's aggregation).
    """
    encoder = batch["encoder_token_ids"]
    decoder = batch["decoder_token_ids"]
    x = {
        "encoder_token_ids": encoder,
        "encoder_padding_mask": tf.cast(
            tf.not_equal(encoder, pad_id), tf.int32
        ),
        "decoder_token_ids": decoder,
        "decoder_padding_mask": tf.cast(
            tf.not_equal(decoder, pad_id), tf.int32
        ),
    }
    labels = batch["labels"]
    sample_weight = tf.cast(tf.not_equal(labels, pad_id), tf.float32)
    if all(key in batch for key in TEACHER_KEYS):
        y = {"labels": labels}
        y.update({key: batch[key] for key in TEACHER_KEYS})
    else:
        y = labels
    return x, y, sample_weight


TEACHER_INPUTS = "teacher_inputs"


def add_teacher_inputs(x, y, sample_weight=None):
    """Adds `x["teacher_inputs"] = {"source_ids", "target_ids"}` to a batch.

    What an online C-MLM teacher needs (`CircularMaskTeacher`; the key is
    `DistillationModel`'s `TEACHER_INPUTS`): the pairs' task ids without
    BOS/EOS, right-padded with 0, recovered from the student features
    (`encoder_token_ids = source + [EOS]`, `decoder_token_ids = [BOS] +
    target`); the teacher maps them to BERT ids. `target_ids` is `[B, T -
    1]` for decoder length `T`, so the teacher's `T` rows (target + the EOS
    slot) line up with the labels. Map it over `to_keras_inputs` batches.
    """
    encoder = x["encoder_token_ids"]
    # Source tokens: every real position but the last (EOS).
    source_length = (
        tf.reduce_sum(tf.cast(tf.not_equal(encoder, 0), tf.int32), axis=1) - 1
    )
    positions = tf.range(tf.shape(encoder)[1])[tf.newaxis, :]
    source_ids = tf.where(positions < source_length[:, tf.newaxis], encoder, 0)[
        :, :-1
    ]
    teacher_inputs = {
        "source_ids": source_ids,
        "target_ids": x["decoder_token_ids"][:, 1:],
    }
    x = {**x, TEACHER_INPUTS: teacher_inputs}
    if sample_weight is None:
        return x, y
    return x, y, sample_weight


def student_dataset(
    dataset, batcher, bos_id, eos_id, seed_offset=0, repeat=False
):
    """Tokenized pairs (optionally joined with teacher targets) -> batches.

    Args:
        dataset: `{"id", "source_ids", "target_ids"[, "teacher_ids",
            "teacher_logits"]}` examples.
        batcher: a `TokenBudgetBatcher`.
        bos_id, eos_id: task ids of BOS and EOS.
        seed_offset: shuffling seed offset (the step, when training).
        repeat: repeat forever (training).
    """
    features = dataset.map(
        lambda e: student_example(e, bos_id, eos_id),
        num_parallel_calls=tf.data.AUTOTUNE,
    )
    batches = batcher(
        features, example_length, seed_offset=seed_offset, repeat=repeat
    )
    return batches.map(to_keras_inputs, num_parallel_calls=tf.data.AUTOTUNE)
