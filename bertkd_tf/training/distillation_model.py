"""Student training with label-smoothed cross-entropy plus teacher KD."""

import threading

import keras
import tensorflow as tf
from keras import ops

from bertkd_tf.data.student_features import TEACHER_INPUTS
from bertkd_tf.keras_compat import MultiWorkerFitMixin
from bertkd_tf.losses.tied_output_cross_entropy import (
    tied_output_cross_entropies,
)
from bertkd_tf.losses.token_cross_entropy import TokenCrossEntropy
from bertkd_tf.losses.top_k_distillation_loss import TopKDistillationLoss
from bertkd_tf.models.student import fusable_output_embedding


def _in_xla_context():
    """Whether the graph being traced is compiled by XLA (static shapes)."""
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError:  # pragma: no cover - TF internals moved
        return True
    return control_flow_util.GraphOrParentsInXlaContext(
        tf.compat.v1.get_default_graph()
    )


class _Precomputed(keras.losses.Loss):
    """Reduces per-token loss values exactly as a Keras loss reduces its
    own (sample weights, `reduction`, scaling per replica)."""

    def call(self, y_true, y_pred):
        return y_pred


@keras.saving.register_keras_serializable(package="bertkd_tf")
class DistillationModel(MultiWorkerFitMixin, keras.Model):
    """Wraps a student; its loss is `(1 - w) * xent + w * kd`.

    `xent` is the label-smoothed `TokenCrossEntropy` to the labels and `kd`
    the `TopKDistillationLoss` to the teacher's top-K soft targets
    (docs/METHOD.md §3, `w = distillation_weight`). Only `compute_loss` is
    overridden, so `fit`, `evaluate`, `tf.distribute`, mixed precision and
    `jit_compile` work as for any Keras model. Both terms are Keras losses
    reduced with `"mean_with_sample_weight"`: the mean over real target
    tokens, scaled per replica by Keras. `xent`, `kd` and `loss` are logged
    as metrics, each a mean over batches weighted by the batch's rows
    (Keras' weighting of `loss`), so the logged means keep
    `loss = (1 - w) * xent + w * kd`.

    Data (`x, y, sample_weight`; sample_weight = decoder padding mask):
    - offline (`teacher=None`): `x` = the student features, `y` =
      `{"labels", "teacher_ids", "teacher_logits"}` from the teacher dump.
      With `distillation_weight=0` `y` may be just the labels `[B, T]` and
      the loss is exactly the cross-entropy (the KD term is not computed).
      `evaluate` without teacher targets also reports the cross-entropy
      only, whatever the weight.
    - online (`teacher` given): `x` = the student features plus
      `x["teacher_inputs"]`, whatever the teacher model takes; the teacher
      returns either logits `[B, T, V]` aligned with the labels (their
      `top_k` highest are the targets) or the targets themselves,
      `{"teacher_ids", "teacher_logits"}` `[B, T, K >= top_k]` sorted
      highest first (the first `top_k` are used), as
      `models.online_teacher.CircularMaskTeacher` (the C-MLM teacher's
      circular masks inside the step) does. The model is frozen
      (`trainable=False`, called with `training=False`). `y` = the labels.
      Batches without `x["teacher_inputs"]` (validation) report the
      cross-entropy only, as offline. The teacher's weights are part of
      the model (and of its checkpoints), frozen.

    Calling the model returns the student logits (`x["teacher_inputs"]` is
    ignored).

    Fused output layer (`fuse_output_layer=True`, the default): when the
    student has that capability (a `TiedOutputStudent` of
    `models/student.py`: `call_with_hidden` and a non-None
    `tied_output_embedding`, as `TransformerSeq2Seq`) and the KD term
    has the paper's form, `compute_loss` computes the output layer and both
    loss terms from the decoder's final states in one function
    (`tied_output_cross_entropies`: one softmax shared by the two terms, no
    element-wise passes over the `[tokens, vocabulary]` logits in the
    backward pass) and only at tokens with a non-zero sample weight (no
    logits for padding; under XLA every position, for static shapes). It
    applies when the `y_pred` passed to `compute_loss` is the output of
    this model's own `call`, as in `fit` and `evaluate`; the logits that
    `call` returns are then unused by the loss and TensorFlow prunes them
    unless compiled metrics read them. The losses are the same functions:
    equal to rounding in float32; under mixed_bfloat16 the shared softmax
    is rounded to bfloat16 (see `tied_output_cross_entropies`). Other
    students (plain logits, e.g. `RecurrentSeq2Seq`), the Hinton form and
    `fuse_output_layer=False` compute the losses on the logits. The choice
    is `output_layer_fusable`; note that the fused path does not call
    `TokenCrossEntropy.call` / `TopKDistillationLoss.call` (it uses their
    `sparse_target`s): a change to a loss must go to both.

    Args:
        student: a `keras.Model` mapping the student features to logits
            `[B, T, V]` (`models/student.py`: any `KDStudent`, e.g. a
            `TransformerSeq2Seq` or a `RecurrentSeq2Seq`).
        distillation_weight: float in [0, 1], the weight `w` of the KD term
            (the paper's alpha: 0.5 for IWSLT14 De-En). 0 is the baseline.
        temperature: float > 0, the teacher temperature `T`.
        label_smoothing: float, smoothing of the cross-entropy term.
        distillation_form: `"paper"` or `"hinton"` (see
            `TopKDistillationLoss`).
        teacher: optional frozen teacher model for online distillation.
        top_k: int, the number of teacher logits kept online (offline the
            dump decides).
        fuse_output_layer: bool, compute the student's tied output layer
            inside the loss when possible (above).

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
        fuse_output_layer=True,
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
        self.fuse_output_layer = bool(fuse_output_layer)
        # The last (logits, final decoder states) of `call`, per thread
        # (MirroredStrategy traces its replicas in threads); not tracked.
        object.__setattr__(self, "_last_call", threading.local())
        self.cross_entropy = TokenCrossEntropy(label_smoothing=label_smoothing)
        self.distillation_loss = TopKDistillationLoss(
            temperature=temperature, form=distillation_form
        )
        self.xent_tracker = keras.metrics.Mean(name="xent")
        self.kd_tracker = keras.metrics.Mean(name="kd")

    @property
    def uses_distillation(self):
        return self.distillation_weight > 0.0

    @property
    def output_layer_fusable(self):
        """Whether `compute_loss` can fuse the student's output layer (see
        the class doc): decided by capability, a `TiedOutputStudent` with
        a plain tied output (`models.student.fusable_output_embedding`)."""
        return (
            self.fuse_output_layer
            and fusable_output_embedding(self.student) is not None
        )

    def call(self, inputs, training=None):
        if isinstance(inputs, dict) and TEACHER_INPUTS in inputs:
            inputs = {k: v for k, v in inputs.items() if k != TEACHER_INPUTS}
        if not self.output_layer_fusable:
            return self.student(inputs, training=training)
        # The student's own function, with its final states kept for
        # `compute_loss`.
        logits, hidden = self.student.call_with_hidden(
            inputs, training=training
        )
        self._last_call.outputs = (logits, hidden)
        return logits

    def _hidden_for(self, y_pred):
        """The final decoder states behind `y_pred` if it is the output of
        this model's last `call` in this thread, else None."""
        last = getattr(self._last_call, "outputs", None)
        if last is None or last[0] is not y_pred:
            return None
        self._last_call.outputs = None
        return last[1]

    def _teacher_targets(self, x, labels):
        """Online: the frozen teacher's top-K logits as `y` targets."""
        if not isinstance(x, dict) or TEACHER_INPUTS not in x:
            raise ValueError(
                "Online distillation needs x['teacher_inputs'] (the inputs of "
                f"the teacher). Received x keys: "
                f"{sorted(x) if isinstance(x, dict) else type(x).__name__}"
            )
        outputs = self.teacher(x[TEACHER_INPUTS], training=False)
        if isinstance(outputs, dict):  # Top-K targets already.
            return {
                "labels": labels,
                "teacher_ids": ops.cast(
                    outputs["teacher_ids"][..., : self.top_k], "int32"
                ),
                "teacher_logits": ops.stop_gradient(
                    ops.cast(
                        outputs["teacher_logits"][..., : self.top_k],
                        "float32",
                    )
                ),
            }
        logits = ops.stop_gradient(ops.cast(outputs, "float32"))
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
        # Validation without teacher targets reports the cross-entropy only
        # (comparable between baseline and student).
        online = (
            self.teacher is not None
            and isinstance(x, dict)
            and TEACHER_INPUTS in x
        )
        has_targets = online or isinstance(y, dict)
        targets = None
        if self.uses_distillation and (training or has_targets):
            if self.teacher is not None and (training or online):
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
        hidden = self._hidden_for(y_pred)
        if hidden is not None and (
            targets is None or self.distillation_form == "paper"
        ):
            xent, kd = self._fused_losses(
                hidden, labels, targets, sample_weight
            )
        else:
            xent = self.cross_entropy(
                labels, y_pred, sample_weight=sample_weight
            )
            kd = None
            if targets is not None:
                kd = self.distillation_loss(
                    targets, y_pred, sample_weight=sample_weight
                )
        loss = xent
        # Losses come back scaled by 1 / num_replicas (Keras does it per
        # replica); the trackers get the unscaled values.
        replicas = float(tf.distribute.get_strategy().num_replicas_in_sync)
        # Weighted by the batch's rows, as Keras weights its `loss` tracker,
        # so that the logged epoch means keep loss = (1 - w) xent + w kd
        # when batches (token-budget ones) hold different numbers of rows.
        rows = tf.cast(tf.shape(labels)[0], "float32")
        self.xent_tracker.update_state(xent * replicas, sample_weight=rows)
        if kd is not None:
            self.kd_tracker.update_state(kd * replicas, sample_weight=rows)
            w = self.distillation_weight
            loss = (1.0 - w) * xent + w * kd
        if self.losses:
            loss = loss + self._aggregate_additional_loss(
                ops.sum(
                    ops.stack([ops.cast(v, "float32") for v in self.losses])
                )
            )
        return loss

    def _fused_losses(self, hidden, labels, targets, sample_weight):
        """(xent, kd or None) from the final decoder states `[B, T, d]`."""
        sparse = [self.cross_entropy.sparse_target(labels)]
        if targets is not None:
            sparse.append(self.distillation_loss.sparse_target(targets))
        depth = ops.shape(hidden)[-1]
        hidden = ops.reshape(hidden, (-1, depth))
        sparse = [
            t._replace(
                ids=ops.reshape(t.ids, (-1, ops.shape(t.ids)[-1])),
                weights=ops.reshape(t.weights, (-1, ops.shape(t.weights)[-1])),
            )
            for t in sparse
        ]
        weights = None
        if sample_weight is not None:
            weights = ops.reshape(ops.cast(sample_weight, "float32"), (-1,))
            if not _in_xla_context():
                # Only the tokens that count (dynamic shapes: not in XLA).
                keep = tf.where(weights != 0.0)[:, 0]
                hidden = tf.gather(hidden, keep)
                weights = tf.gather(weights, keep)
                sparse = [
                    t._replace(
                        ids=tf.gather(t.ids, keep),
                        weights=tf.gather(t.weights, keep),
                    )
                    for t in sparse
                ]
        embeddings = ops.cast(
            fusable_output_embedding(self.student), hidden.dtype
        )
        per_token = tied_output_cross_entropies(hidden, embeddings, sparse)
        losses = []
        for i, loss_fn in enumerate(
            [self.cross_entropy, self.distillation_loss][: len(sparse)]
        ):
            reduce = _Precomputed(
                name=loss_fn.name, reduction=loss_fn.reduction, dtype="float32"
            )
            values = per_token[:, i]
            losses.append(reduce(values, values, sample_weight=weights))
        return losses[0], (losses[1] if len(losses) > 1 else None)

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
                "fuse_output_layer": self.fuse_output_layer,
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
