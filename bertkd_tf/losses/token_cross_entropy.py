"""Label-smoothed token cross-entropy over logits."""

import keras
import tensorflow as tf
from keras import ops

from bertkd_tf.losses.tied_output_cross_entropy import SparseTarget


def sparse_target_cross_entropy(logits, ids, weights, uniform_weight=0.0):
    """Per-token cross-entropy to a sparse target distribution, fused.

    The target distribution of a token is `weights[k]` on `ids[k]` plus
    `uniform_weight / V` on every id (weights and uniform_weight summing to
    1), so `loss = lse - sum_k weights[k] * logits[ids[k]]
    - uniform_weight / V * sum_v logits[v]`. The gradient is written out as
    `softmax(logits) - target`: one pass over the `[B, T, V]` logits
    forward and one backward, no one-hot and no log-softmax kept (the output
    layer dominates the student's step; this halves the loss' share).

    Args:
        logits: float32 `[B, T, V]`.
        ids: int `[B, T, K]` target ids.
        weights: float32 `[B, T, K]` target probabilities (no gradient).
        uniform_weight: float, mass spread uniformly over the vocabulary.

    Returns:
        float32 `[B, T]` per-token losses.
    """
    ids = tf.cast(ids, tf.int32)
    weights = tf.stop_gradient(tf.cast(weights, tf.float32))

    @tf.custom_gradient
    def fused(logits):
        vocabulary_size = tf.cast(tf.shape(logits)[-1], logits.dtype)
        peak = tf.stop_gradient(tf.reduce_max(logits, -1, keepdims=True))
        exp = tf.exp(logits - peak)
        total = tf.reduce_sum(exp, -1, keepdims=True)
        lse = tf.squeeze(tf.math.log(total) + peak, -1)
        picked = tf.reduce_sum(
            weights * tf.gather(logits, ids, batch_dims=2), -1
        )
        loss = lse - picked
        if uniform_weight:
            loss -= uniform_weight * tf.reduce_sum(logits, -1) / vocabulary_size

        def grad(upstream):
            target_free = exp / total
            if uniform_weight:
                target_free -= uniform_weight / vocabulary_size
            shape = tf.shape(logits)
            rows = shape[0] * shape[1]
            flat = tf.reshape(target_free, [rows, shape[2]])
            k = tf.shape(ids)[-1]
            row_ids = tf.repeat(tf.range(rows), k)
            indices = tf.stack([row_ids, tf.reshape(ids, [-1])], axis=1)
            flat = tf.tensor_scatter_nd_sub(
                flat, indices, tf.reshape(weights, [-1])
            )
            return tf.reshape(flat, shape) * upstream[..., None]

        return loss, grad

    return fused(tf.cast(logits, tf.float32))


@keras.saving.register_keras_serializable(package="bertkd_tf")
class TokenCrossEntropy(keras.losses.Loss):
    """Sparse token cross-entropy with label smoothing, in float32.

    Label smoothing as fairseq's `label_smoothed_cross_entropy`: the target
    distribution is `(1 - eps) * one_hot(label) + eps / V` (uniform over the
    whole vocabulary), so per token

        loss = (1 - eps) * (-log p[label]) + eps / V * sum_v (-log p[v]).

    With `lse = logsumexp(logits)` and `log p = logits - lse` this is
    `lse - (1 - eps) * logits[label] - eps / V * sum_v logits[v]`, which is
    what is computed (`sparse_target_cross_entropy`, with a written-out
    gradient `softmax - target`): no `[B, T, V]` one-hot and no
    materialised log-softmax (the output layer dominates the step time of
    the student).

    The reduction is `"mean_with_sample_weight"`: pass the decoder padding
    mask as `sample_weight` and the loss is the mean over real target
    tokens; padding never counts. Keras scales it per replica under
    `tf.distribute`.

    Args:
        label_smoothing: float in [0, 1), `eps` above. Default 0.1 (paper).
        name: loss name.
        reduction: Keras reduction, default `"mean_with_sample_weight"`.

    Example:
    ```python
    loss = TokenCrossEntropy(label_smoothing=0.1)
    labels = np.array([[4, 3, 0]], "int32")          # [B, T], 0 = padding
    logits = np.random.normal(size=(1, 3, 10))        # [B, T, V]
    value = loss(labels, logits, sample_weight=labels != 0)
    ```
    """

    def __init__(
        self,
        label_smoothing=0.1,
        name="token_cross_entropy",
        reduction="mean_with_sample_weight",
        dtype="float32",
    ):
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(
                "`label_smoothing` must be in [0, 1). Received: "
                f"label_smoothing={label_smoothing!r}"
            )
        super().__init__(name=name, reduction=reduction, dtype=dtype)
        self.label_smoothing = label_smoothing

    def sparse_target(self, y_true):
        """The label-smoothed target of labels `[...]` as a `SparseTarget`
        (`[..., 1]`: the label at `1 - eps`, `eps` spread uniformly)."""
        labels = ops.expand_dims(ops.cast(y_true, "int32"), -1)
        eps = self.label_smoothing
        return SparseTarget(
            labels, ops.full(ops.shape(labels), 1.0 - eps, "float32"), eps
        )

    def call(self, y_true, y_pred):
        target = self.sparse_target(y_true)
        return sparse_target_cross_entropy(
            y_pred,
            target.ids,
            target.weights,
            uniform_weight=target.uniform_weight,
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {"label_smoothing": self.label_smoothing, "dtype": self.dtype}
        )
        return config
