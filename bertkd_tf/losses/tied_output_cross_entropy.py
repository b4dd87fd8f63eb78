"""Cross-entropies of a tied output layer, fused with the layer itself."""

from typing import NamedTuple

import tensorflow as tf


class SparseTarget(NamedTuple):
    """A per-token target distribution with few non-uniform entries.

    Each token's target is `weights[k]` on `ids[k]` (duplicates add up)
    plus `uniform_weight / V` on every id of the vocabulary; the weights and
    `uniform_weight` sum to 1. `TokenCrossEntropy.sparse_target` (the label,
    label-smoothed) and `TopKDistillationLoss.sparse_target` (the teacher's
    top K, tempered and renormalised) build them.

    Attributes:
        ids: int `[..., K]` target ids.
        weights: float `[..., K]` target probabilities (no gradient).
        uniform_weight: Python float, mass spread over the vocabulary.
    """

    ids: tf.Tensor
    weights: tf.Tensor
    uniform_weight: float


def tied_output_cross_entropies(hidden, embeddings, targets):
    """Cross-entropies of `softmax(hidden @ embeddings^T)` to sparse targets.

    The output layer of the student (the transposed token embedding, tied)
    and its losses in one function with a written-out gradient. Computing
    the logits as a layer and the losses on them (`TokenCrossEntropy`)
    takes about a dozen element-wise passes over the `[tokens, vocabulary]`
    logits per loss term (casts, log-sum-exp, the gradient `softmax -
    target`, its scaling and cast); at a task vocabulary of 10k they cost
    as much as the rest of the student's step on a CPU. Here the forward
    pass makes the logits (one matmul) and their softmax (one fused op,
    float32 inside), and the backward pass touches the
    `[tokens, vocabulary]` tensor only to write the target entries
    (`K + 1` a row) before the two matmuls:

        logits = hidden E^T, p = softmax(logits)
        loss_t = lse - sum_k w_tk logits[id_tk] - c_t / V * sum_v logits_v
        dlogits = sum_t u_t (p - target_t)
        dhidden = dlogits E,  dE = dlogits^T hidden

    with the per-token scale `u_t` of
    term t (its upstream gradient) applied on the `[tokens, d]` side of the
    matmuls, the uniform part `c_t / V` (label smoothing) as a rank-one
    update, and `sum_v logits_v = hidden . sum_v E_v`. The target entries
    of `p` are replaced by `p - merged target` computed in float32, so the
    gradient is rounded once, as when it is computed in float32 and cast.
    Several terms (cross-entropy and distillation) share one softmax.

    `lse = logits[j] - log(p[j])` for any id j whose probability is a
    normal float: the target id of the row with the largest probability, or
    (if that underflows in some row) the row's most likely id.

    In float32 the result equals the straightforward computation to
    rounding. In bfloat16 (mixed precision) the softmax output is rounded to
    bfloat16, so `lse` (and the loss) carries an error of up to 2^-9 ~ 0.002
    nats, smaller than the rounding of the bfloat16 logits themselves.

    Args:
        hidden: `[tokens, d]` final decoder states, in the compute dtype.
        embeddings: `[V, d]` the tied token embedding, same dtype.
        targets: list of `SparseTarget` with `ids`/`weights` `[tokens, K_t]`.

    Returns:
        float32 `[tokens, len(targets)]` per-token losses.
    """
    if not targets:
        raise ValueError("`targets` must hold at least one SparseTarget.")
    if hidden.dtype != embeddings.dtype:
        raise ValueError(
            "`hidden` and `embeddings` must have the same dtype. Received: "
            f"{hidden.dtype.name} and {embeddings.dtype.name}"
        )
    ids_list = [tf.cast(t.ids, tf.int32) for t in targets]
    weights_list = [
        tf.stop_gradient(tf.cast(t.weights, tf.float32)) for t in targets
    ]
    uniforms = [float(t.uniform_weight) for t in targets]

    @tf.custom_gradient
    def fused(hidden, embeddings):
        dtype = hidden.dtype
        vocabulary_size = tf.cast(tf.shape(embeddings)[0], tf.float32)
        logits = tf.matmul(hidden, embeddings, transpose_b=True)
        probs = tf.nn.softmax(logits)
        picked = [
            tf.cast(tf.gather(logits, ids, batch_dims=1), tf.float32)
            for ids in ids_list
        ]
        all_ids = tf.concat(ids_list, 1)
        all_picked = tf.concat(picked, 1)
        lse = _log_sum_exp(logits, probs, all_ids, all_picked)
        hidden_f = tf.cast(hidden, tf.float32)
        embedding_sum = None
        if any(uniforms):
            embedding_sum = tf.reduce_sum(tf.cast(embeddings, tf.float32), 0)
        losses = []
        for logit, weights, uniform in zip(picked, weights_list, uniforms):
            loss = lse - tf.reduce_sum(weights * logit, -1)
            if uniform:
                row_sums = tf.linalg.matvec(hidden_f, embedding_sum)
                loss -= uniform / vocabulary_size * row_sums
            losses.append(loss)

        def grad(upstream):
            scales = [upstream[:, i] for i in range(len(targets))]
            total = tf.add_n(scales)
            mass = tf.concat(
                [s[:, None] * w for s, w in zip(scales, weights_list)], 1
            )
            # Target mass of each slot's id, duplicates merged: equal ids
            # get equal values, so the scatter below is well defined.
            same = tf.cast(
                all_ids[:, :, None] == all_ids[:, None, :], mass.dtype
            )
            merged = tf.einsum("mij,mj->mi", same, mass)
            exact = tf.exp(all_picked - lse[:, None])
            values = exact - tf.math.divide_no_nan(merged, total[:, None])
            rows, slots = tf.shape(all_ids)[0], tf.shape(all_ids)[1]
            indices = tf.stack(
                [tf.repeat(tf.range(rows), slots), tf.reshape(all_ids, [-1])],
                axis=1,
            )
            corrected = tf.tensor_scatter_nd_update(
                probs, indices, tf.cast(tf.reshape(values, [-1]), dtype)
            )
            d_hidden = total[:, None] * tf.cast(
                tf.matmul(corrected, embeddings), tf.float32
            )
            scaled = tf.cast(total[:, None] * hidden_f, dtype)
            d_embeddings = tf.cast(
                tf.matmul(corrected, scaled, transpose_a=True), tf.float32
            )
            for scale, uniform in zip(scales, uniforms):
                if uniform:
                    c = uniform / vocabulary_size
                    d_hidden -= c * scale[:, None] * embedding_sum[None, :]
                    d_embeddings -= c * tf.linalg.matvec(
                        hidden_f, scale, transpose_a=True
                    )
            return tf.cast(d_hidden, dtype), tf.cast(d_embeddings, dtype)

        return tf.stack(losses, axis=-1), grad

    return fused(hidden, embeddings)


# Probabilities above this are normal floats (float32 and bfloat16 alike),
# whose logarithm has the relative precision of the dtype.
_SAFE_PROBABILITY = 1e-30


def _log_sum_exp(logits, probs, ids, picked_logits):
    """float32 `[rows]` log-sum-exp of `logits` from `probs = softmax(logits)`:
    `logits[j] - log(probs[j])` at the target id j of largest probability
    (no pass over the vocabulary), or at the row's arg-max if some row's
    target probabilities all underflow."""
    picked_probs = tf.cast(tf.gather(probs, ids, batch_dims=1), tf.float32)
    best = tf.argmax(picked_probs, axis=-1, output_type=tf.int32)
    best_prob = tf.gather(picked_probs, best, batch_dims=1)
    best_logit = tf.gather(picked_logits, best, batch_dims=1)

    def from_targets():
        return best_logit - tf.math.log(best_prob)

    def from_maxima():
        peak = tf.cast(tf.reduce_max(logits, -1), tf.float32)
        return peak - tf.math.log(tf.cast(tf.reduce_max(probs, -1), tf.float32))

    safe = tf.reduce_all(best_prob > _SAFE_PROBABILITY)
    return tf.cond(safe, from_targets, from_maxima)
