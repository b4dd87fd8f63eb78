"""Student training with label-smoothed cross-entropy plus teacher KD."""

import keras
import tensorflow as tf
from keras import ops

from bertkd_tf.losses.token_cross_entropy import TokenCrossEntropy
from bertkd_tf.losses.top_k_distillation_loss import TopKDistillationLoss
from bertkd_tf.training.keras_compat import MultiWorkerFitMixin

TEACHER_INPUTS = "teacher_inputs"


@keras.saving.register_keras_serializable(package="bertkd_tf")
class DistillationModel(MultiWorkerFitMixin, keras.Model):
    """Wraps a student; its loss is `(1 - w) * xent + w * kd`.

    `xent` is the label-smoothed `TokenCrossEntropy` to the labels and `kd`
    the `TopKDistillationLoss` to the teacher's top-K soft targets (PAPER.md
    §3, `w = distillation_weight`). Only `compute_loss` is overridden, so
    `fit`, `evaluate`, `tf.distribute`, mixed precision and `jit_compile`
    work as for any Keras model. Both terms are Keras losses reduced with
    `"mean_with_sample_weight"`: the mean over real target tokens, scaled
    per replica by Keras. `xent`, `kd` and `loss` are logged as metrics.

    Data (`x, y, sample_weight`; sample_weight = decoder padding mask):
    - offline (`teacher=None`): `x` = the student features, `y` =
      `{"labels", "teacher_ids", "teacher_logits"}` from the teacher dump.
      With `distillation_weight=0` `y` may be just the labels `[B, T]` and
      the loss is exactly the cross-entropy (the KD term is not computed).
      `evaluate` without teacher targets also reports the cross-entropy
      only, whatever the weight.
    - online (`teacher` given): `x` = the student features plus
      `x["teacher_inputs"]`, whatever the teacher model takes; the teacher
      must return logits `[B, T, V]` aligned with the labels. The model is
      frozen (`trainable=False`, called with `training=False`) and its
      `top_k` logits are the targets. `y` = the labels.

    Calling the model returns the student logits (`x["teacher_inputs"]` is
    ignored).

    Args:
        student: a `keras.Model` mapping the student features to logits
            `[B, T, V]` (a `TransformerSeq2Seq`).
        distillation_weight: float in [0, 1], the weight `w` of the KD term
            (the paper's alpha: 0.5 for IWSLT14 De-En). 0 is the baseline.
        temperature: float > 0, the teacher temperature `T`.
        label_smoothing: float, smoothing of the cross-entropy term.
        distillation_form: `"paper"` or `"hinton"` (see
            `TopKDistillationLoss`).
        teacher: optional frozen teacher model for online distillation.
        top_k: int, the number of teacher logits kept online (offline the
            dump decides).

    Example:
    ```python
    student = TransformerSeq2Seq(TransformerSeq2SeqBackbone(
        vocabulary_size=100, num_layers=1, num_heads=2, hidden_dim=16,
        intermediate_dim=32))
    model = DistillationModel(student, distillation_weight=0.5,
                              temperature=10.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.fit(dataset)  # (x, {"labels", "teacher_ids", "teacher_logits"}, w)
    ```
    """

    def __init__(
        self,
        student,
        distillation_weight=0.5,
        temperature=1.0,
        label_smoothing=0.1,
        distillation_form="paper",
        teacher=None,
        top_k=8,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(student, keras.Model):
            raise ValueError(
                "`student` must be a keras.Model. Received: "
                f"student={student!r}"
            )
        if not 0.0 <= distillation_weight <= 1.0:
            raise ValueError(
                "`distillation_weight` must be in [0, 1]. Received: "
                f"distillation_weight={distillation_weight!r}"
            )
        if teacher is not None and not isinstance(teacher, keras.Model):
            raise ValueError(
                "`teacher` must be a keras.Model or None. Received: "
                f"teacher={teacher!r}"
            )
        if not isinstance(top_k, int) or top_k <= 0:
            raise ValueError(
                f"`top_k` must be a positive int. Received: top_k={top_k!r}"
            )
        self.student = student
        self.teacher = teacher
        if teacher is not None:
            teacher.trainable = False
        self.distillation_weight = float(distillation_weight)
        self.temperature = temperature
        self.label_smoothing = label_smoothing
        self.distillation_form = distillation_form
        self.top_k = top_k
        self.cross_entropy = TokenCrossEntropy(label_smoothing=label_smoothing)
        self.distillation_loss = TopKDistillationLoss(
            temperature=temperature, form=distillation_form
        )
        self.xent_tracker = keras.metrics.Mean(name="xent")
        self.kd_tracker = keras.metrics.Mean(name="kd")

    @property
    def uses_distillation(self):
        return self.distillation_weight > 0.0

    def call(self, inputs, training=None):
        if isinstance(inputs, dict) and TEACHER_INPUTS in inputs:
            inputs = {k: v for k, v in inputs.items() if k != TEACHER_INPUTS}
        return self.student(inputs, training=training)

    def _teacher_targets(self, x, labels):
        """Online: the frozen teacher's top-K logits as `y` targets."""
        if not isinstance(x, dict) or TEACHER_INPUTS not in x:
            raise ValueError(
                "Online distillation needs x['teacher_inputs'] (the inputs of "
                f"the teacher). Received x keys: "
                f"{sorted(x) if isinstance(x, dict) else type(x).__name__}"
            )
        logits = self.teacher(x[TEACHER_INPUTS], training=False)
        logits = ops.stop_gradient(ops.cast(logits, "float32"))
        values, ids = ops.top_k(logits, k=self.top_k)
        return {
            "labels": labels,
            "teacher_ids": ops.cast(ids, "int32"),
            "teacher_logits": values,
        }

    def compute_loss(
        self, x=None, y=None, y_pred=None, sample_weight=None, training=True
    ):
        labels = y["labels"] if isinstance(y, dict) else y
        xent = self.cross_entropy(labels, y_pred, sample_weight=sample_weight)
        loss = xent
        # Losses come back scaled by 1 / num_replicas (Keras does it per
        # replica); the trackers get the unscaled values.
        replicas = float(tf.distribute.get_strategy().num_replicas_in_sync)
        self.xent_tracker.update_state(xent * replicas)
        # Validation without teacher targets reports the cross-entropy only
        # (comparable between baseline and student).
        has_targets = self.teacher is not None or isinstance(y, dict)
        if self.uses_distillation and (training or has_targets):
            if self.teacher is not None:
                targets = self._teacher_targets(x, labels)
            elif isinstance(y, dict):
                targets = y
            else:
                raise ValueError(
                    "Offline distillation (distillation_weight="
                    f"{self.distillation_weight}) needs y = dict with "
                    "'labels', 'teacher_ids', 'teacher_logits'. Received a "
                    f"{type(y).__name__}."
                )
            kd = self.distillation_loss(
                targets, y_pred, sample_weight=sample_weight
            )
            self.kd_tracker.update_state(kd * replicas)
            w = self.distillation_weight
            loss = (1.0 - w) * xent + w * kd
        if self.losses:
            loss = loss + self._aggregate_additional_loss(
                ops.sum(
                    ops.stack([ops.cast(v, "float32") for v in self.losses])
                )
            )
        return loss

    @property
    def metrics(self):
        metrics = list(super().metrics)
        if not self.uses_distillation and self.kd_tracker in metrics:
            metrics.remove(self.kd_tracker)
        return metrics

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "student": keras.saving.serialize_keras_object(self.student),
                "distillation_weight": self.distillation_weight,
                "temperature": self.temperature,
                "label_smoothing": self.label_smoothing,
                "distillation_form": self.distillation_form,
                "teacher": (
                    None
                    if self.teacher is None
                    else keras.saving.serialize_keras_object(self.teacher)
                ),
                "top_k": self.top_k,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["student"] = keras.saving.deserialize_keras_object(
            config["student"]
        )
        if config.get("teacher") is not None:
            config["teacher"] = keras.saving.deserialize_keras_object(
                config["teacher"]
            )
        return cls(**config)
