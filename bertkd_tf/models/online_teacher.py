"""The C-MLM teacher as an online target function for the student's step.

`CircularMaskTeacher` wraps a trained `CMLMTeacher`: called on a batch of
pairs (task ids), it builds the circular-mask copies of the batch, runs them
through the frozen teacher in one forward pass and returns the top-K logits
and ids of every target slot, the EOS slot included (docs/METHOD.md §2).
It computes exactly what `dump_teacher` stores (the same function,
`circular_masks.circular_top_k`), without the float16 rounding of the dump,
so `DistillationModel(teacher=CircularMaskTeacher(...))` trains on the
targets an offline run reads from `WORK_DIR/targets/`, computed inside the
train step instead.
"""

import keras
import tensorflow as tf

from bertkd_tf.models.circular_masks import circular_top_k
from bertkd_tf.models.cmlm_preprocessor import CMLMPreprocessor


@keras.saving.register_keras_serializable(package="bertkd_tf")
class CircularMaskTeacher(keras.Model):
    """Frozen C-MLM teacher -> top-K targets of every target slot, online.

    Inputs (dict, int32): `source_ids` `[B, S]` and `target_ids` `[B, T]`,
    task ids without BOS/EOS, right-padded with 0 (the student's batch
    carries them as `x["teacher_inputs"]`,
    `data.student_features.add_teacher_inputs`). The pairs are packed as
    `[CLS] src [SEP] tgt [SEP]` in BERT ids (the teacher's `bert_ids`) by a
    `CMLMPreprocessor` of the teacher's `max_sequence_length`.

    Output: `{"teacher_ids": int32 [B, T + 1, K], "teacher_logits":
    float32 [B, T + 1, K]}`: row `t` is the teacher's prediction for the
    student's label `t` (target token `t`; row `len(target)` the EOS slot),
    highest logit first; rows beyond a pair's target + EOS are 0. Pairs the
    teacher would have to truncate (longer than its `max_sequence_length`)
    fail with an `InvalidArgumentError`: their rows would not line up with
    the labels.

    The teacher is frozen (`trainable=False`) and always called with
    `training=False`. The number of copies depends on the target lengths
    (dynamic shapes): not for XLA.

    Args:
        teacher: a trained `CMLMTeacher`.
        num_passes: P, the most copies of a pair (paper: 7).
        top_k: K, logits kept per slot.

    Example:
    ```python
    online = CircularMaskTeacher(load_teacher("work/teacher"), top_k=8)
    model = DistillationModel(student, 0.5, 10.0, teacher=online, top_k=8)
    # x["teacher_inputs"] = {"source_ids", "target_ids"} in every batch.
    ```
    """

    def __init__(self, teacher, num_passes=7, top_k=8, **kwargs):
        super().__init__(**kwargs)
        if not hasattr(teacher, "bert_ids") or not hasattr(teacher, "backbone"):
            raise ValueError(
                "`teacher` must be a CMLMTeacher (with `bert_ids` and a "
                f"BERT `backbone`). Received: {type(teacher).__name__}"
            )
        if not isinstance(num_passes, int) or num_passes < 1:
            raise ValueError(
                "`num_passes` must be a positive int. Received: "
                f"num_passes={num_passes!r}"
            )
        if not isinstance(top_k, int) or not 1 <= top_k <= len(
            teacher.bert_ids
        ):
            raise ValueError(
                "`top_k` must be an int in [1, teacher vocabulary size "
                f"{len(teacher.bert_ids)}]. Received: top_k={top_k!r}"
            )
        self.teacher = teacher
        teacher.trainable = False
        self.num_passes = num_passes
        self.top_k = top_k
        self.preprocessor = CMLMPreprocessor(
            teacher.bert_ids,
            max_sequence_length=int(teacher.backbone.max_sequence_length),
        )
        # No variables of its own; the teacher comes built.
        self.built = True

    def call(self, inputs, training=None):
        del training  # The teacher is frozen: always training=False.
        source_ids = tf.cast(inputs["source_ids"], tf.int32)
        target_ids = tf.cast(inputs["target_ids"], tf.int32)
        top_ids, top_logits, _, rows = circular_top_k(
            self.teacher,
            self.preprocessor,
            source_ids,
            target_ids,
            self.num_passes,
            self.top_k,
        )
        expected = tf.reduce_sum(tf.cast(target_ids != 0, tf.int32), axis=1) + 1
        check = tf.debugging.assert_equal(
            rows,
            expected,
            message=(
                "CircularMaskTeacher: a pair does not fit the teacher's "
                "max_sequence_length (its target was cut), so the teacher's "
                "rows would not line up with the labels"
            ),
        )
        with tf.control_dependencies([check]):
            top_ids = tf.identity(top_ids)
        return {
            "teacher_ids": top_ids,
            "teacher_logits": tf.stop_gradient(top_logits),
        }

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "teacher": keras.saving.serialize_keras_object(self.teacher),
                "num_passes": self.num_passes,
                "top_k": self.top_k,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["teacher"] = keras.saving.deserialize_keras_object(
            config["teacher"]
        )
        return cls(**config)
