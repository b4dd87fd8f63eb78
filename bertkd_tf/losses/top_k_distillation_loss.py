"""Cross-entropy from the student to the teacher's top-K soft targets."""

import keras
from keras import ops

from bertkd_tf.losses.tied_output_cross_entropy import SparseTarget
from bertkd_tf.losses.token_cross_entropy import (
    sparse_target_cross_entropy,
)

FORMS = ("paper", "hinton")


@keras.saving.register_keras_serializable(package="bertkd_tf")
class TopKDistillationLoss(keras.losses.Loss):
    """Knowledge-distillation loss against a teacher's top-K logits.

    `form="paper"` (docs/METHOD.md §3, the reference code):

        q      = softmax(teacher_logits / T)        over the K kept ids
        log_p  = log_softmax(student_logits)        NOT tempered
        loss_t = - sum_k q[k] * log_p[teacher_ids[k]]

    `form="hinton"` (Hinton et al. 2015): the student is tempered too,
    `log_p = log_softmax(student_logits / T)`, and the loss is scaled by
    `T**2` so its gradients keep their size as T changes.

    Since `sum_k q[k] = 1`, `loss_t = lse - sum_k q[k] * logits[id_k]` with
    `lse = logsumexp(student_logits)`: one logsumexp and a K-element gather,
    no `[B, T, V]` log-softmax (`sparse_target_cross_entropy`).

    `y_true` is a dict holding `"teacher_ids"` (int `[B, T, K]`, ids in the
    student vocabulary) and `"teacher_logits"` (`[B, T, K]`); other keys
    (e.g. `"labels"`) are ignored, so the `y` dict of the student features
    can be passed as is. `y_pred` is the student logits `[B, T, V]`.
    Reduction `"mean_with_sample_weight"`: pass the decoder padding mask as
    `sample_weight`; padding never counts.

    Note: `DistillationModel` trains a student whose output layer is its
    tied embedding (`TransformerSeq2Seq`) through the fused path by default
    (`fuse_output_layer=True`): the same loss computed from the hidden
    states in `losses/tied_output_cross_entropy.py`, not through this
    class's `call`. A change to the loss goes into both (the tests check
    that the two agree), or set `fuse_output_layer=False`.

    Args:
        temperature: float > 0, `T` above (paper: 10 for IWSLT14 De-En).
        form: `"paper"` or `"hinton"`.
        name: loss name.
        reduction: Keras reduction, default `"mean_with_sample_weight"`.

    Example:
    ```python
    loss = TopKDistillationLoss(temperature=10.0)
    y = {"teacher_ids": np.array([[[4, 7]]], "int32"),
         "teacher_logits": np.array([[[3.0, 1.0]]], "float32")}
    value = loss(y, np.random.normal(size=(1, 1, 10)),
                 sample_weight=np.ones((1, 1)))
    ```
    """

    def __init__(
        self,
        temperature=1.0,
        form="paper",
        name="top_k_distillation_loss",
        reduction="mean_with_sample_weight",
        dtype="float32",
    ):
        if not temperature > 0:
            raise ValueError(
                "`temperature` must be > 0. Received: "
                f"temperature={temperature!r}"
            )
        if form not in FORMS:
            raise ValueError(
                f"`form` must be one of {FORMS}. Received: form={form!r}"
            )
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.temperature = float(temperature)
        self.form = form

    def _check_targets(self, y_true):
        if not isinstance(y_true, dict) or not {
            "teacher_ids",
            "teacher_logits",
        } <= set(y_true):
            raise ValueError(
                "TopKDistillationLoss expects y_true to be a dict with keys "
                "'teacher_ids' and 'teacher_logits'. Received: "
                f"{y_true if not isinstance(y_true, dict) else sorted(y_true)}"
            )

    def _teacher_probabilities(self, y_true):
        teacher_logits = ops.cast(y_true["teacher_logits"], "float32")
        # Teacher targets are data: never differentiate through them.
        return ops.stop_gradient(
            ops.softmax(teacher_logits / self.temperature, axis=-1)
        )

    def sparse_target(self, y_true):
        """The teacher's target as a `SparseTarget` (`form="paper"` only:
        the Hinton form tempers the student's logits, which a softmax shared
        with other loss terms cannot)."""
        self._check_targets(y_true)
        if self.form != "paper":
            raise ValueError(
                "sparse_target needs form='paper' (the Hinton form tempers "
                f"the student). Received: form={self.form!r}"
            )
        return SparseTarget(
            ops.cast(y_true["teacher_ids"], "int32"),
            self._teacher_probabilities(y_true),
            0.0,
        )

    def call(self, y_true, y_pred):
        self._check_targets(y_true)
        logits = ops.cast(y_pred, "float32")
        teacher_ids = ops.cast(y_true["teacher_ids"], "int32")
        q = self._teacher_probabilities(y_true)
        if self.form == "hinton":
            logits = logits / self.temperature
        loss = sparse_target_cross_entropy(logits, teacher_ids, q)
        if self.form == "hinton":
            loss = loss * (self.temperature**2)
        return loss

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "temperature": self.temperature,
                "form": self.form,
                "dtype": self.dtype,
            }
        )
        return config
