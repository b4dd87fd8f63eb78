"""Tests of tied_output_cross_entropies (output layer fused with its losses)."""

import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.losses.tied_output_cross_entropy import (
    SparseTarget,
    tied_output_cross_entropies,
)

M, D, V = 12, 8, 50


def make_inputs(seed=0, dtype="float32"):
    rng = np.random.default_rng(seed)
    hidden = rng.normal(size=(M, D)).astype("float32")
    embeddings = rng.normal(size=(V, D)).astype("float32")
    labels = rng.integers(0, V, (M, 1)).astype("int32")
    teacher_ids = rng.integers(0, V, (M, 4)).astype("int32")
    teacher_ids[:, 1] = labels[:, 0]  # The label is among the teacher's ids,
    teacher_ids[0, 2] = teacher_ids[0, 3]  # and an id repeats.
    q = rng.random((M, 4)).astype("float32")
    q /= q.sum(-1, keepdims=True)
    targets = [
        SparseTarget(labels, np.full((M, 1), 0.9, "float32"), 0.1),
        SparseTarget(teacher_ids, q, 0.0),
    ]
    return (
        tf.constant(hidden, dtype),
        tf.constant(embeddings, dtype),
        targets,
    )


def dense_targets(targets):
    """[M, V] target distributions of the sparse targets (numpy)."""
    dense = []
    for target in targets:
        t = np.full((M, V), target.uniform_weight / V)
        ids, weights = np.asarray(target.ids), np.asarray(target.weights)
        for m in range(M):
            for k in range(ids.shape[1]):
                t[m, ids[m, k]] += weights[m, k]
        dense.append(t)
    return dense


def reference(hidden, embeddings, targets):
    """The straightforward computation: logits, log-softmax, CE."""
    logits = tf.matmul(
        tf.cast(hidden, "float32"), tf.cast(embeddings, "float32"), False, True
    )
    log_p = tf.nn.log_softmax(logits)
    return tf.stack(
        [-tf.reduce_sum(t * log_p, -1) for t in dense_targets(targets)], -1
    )


def losses_and_gradients(fn, hidden, embeddings, targets, upstream):
    with tf.GradientTape() as tape:
        tape.watch([hidden, embeddings])
        losses = fn(hidden, embeddings, targets)
        total = tf.reduce_sum(tf.cast(losses, "float32") * upstream)
    return losses, tape.gradient(total, [hidden, embeddings])


def test_losses_and_gradients_equal_the_dense_computation():
    hidden, embeddings, targets = make_inputs()
    upstream = tf.constant(
        np.random.default_rng(1).random((M, 2)).astype("float32")
    )
    upstream = tf.tensor_scatter_nd_update(upstream, [[3, 0], [3, 1]], [0, 0])
    got, got_grads = losses_and_gradients(
        tied_output_cross_entropies, hidden, embeddings, targets, upstream
    )
    want, want_grads = losses_and_gradients(
        reference, hidden, embeddings, targets, upstream
    )
    assert got.dtype == tf.float32 and got.shape == (M, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_single_term_without_smoothing_is_plain_cross_entropy():
    hidden, embeddings, targets = make_inputs(seed=2)
    labels = targets[0].ids
    got = tied_output_cross_entropies(
        hidden, embeddings, [SparseTarget(labels, tf.ones([M, 1]), 0.0)]
    )
    logits = tf.matmul(hidden, embeddings, transpose_b=True)
    want = tf.nn.sparse_softmax_cross_entropy_with_logits(labels[:, 0], logits)
    np.testing.assert_allclose(got[:, 0], want, rtol=1e-5, atol=1e-6)


def test_targets_whose_probability_underflows():
    # Row 0's target ids are ~200 nats below its best id: exp underflows,
    # so the log-sum-exp must come from the row maxima.
    hidden, embeddings, targets = make_inputs(seed=6)
    embeddings = tf.tensor_scatter_nd_update(
        embeddings, [[7]], 10.0 * tf.sign(hidden[:1])
    )
    hidden = tf.tensor_scatter_nd_update(hidden, [[0]], 3.0 * hidden[:1])
    logits = tf.matmul(hidden, embeddings, transpose_b=True)
    gap = tf.reduce_max(logits[0]) - tf.reduce_max(
        tf.gather(logits[0], tf.concat([t.ids[0] for t in targets], 0))
    )
    assert float(gap) > 104  # exp(-104) < 1e-45: zero in float32
    upstream = tf.ones([M, 2])
    got, got_grads = losses_and_gradients(
        tied_output_cross_entropies, hidden, embeddings, targets, upstream
    )
    want, want_grads = losses_and_gradients(
        reference, hidden, embeddings, targets, upstream
    )
    np.testing.assert_allclose(got, want, rtol=1e-5)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_bfloat16_is_close_to_float32():
    hidden, embeddings, targets = make_inputs(seed=3)
    upstream = tf.ones([M, 2])
    # The float32 reference of the same bfloat16-rounded inputs.
    hidden_bf16 = tf.cast(hidden, "bfloat16")
    embeddings_bf16 = tf.cast(embeddings, "bfloat16")
    want, want_grads = losses_and_gradients(
        reference,
        tf.cast(hidden_bf16, "float32"),
        tf.cast(embeddings_bf16, "float32"),
        targets,
        upstream,
    )
    got, got_grads = losses_and_gradients(
        tied_output_cross_entropies,
        hidden_bf16,
        embeddings_bf16,
        targets,
        upstream,
    )
    assert got.dtype == tf.float32
    assert got_grads[0].dtype == tf.bfloat16
    # The logits are bfloat16 (8 significant bits): each is off by up to
    # |logit| * 2^-8, and so is the loss, which is of the logits' size. Where
    # oneDNN rounds the matmul's output to bfloat16 (AVX2 CPUs without AMX),
    # that is ~0.7% of a loss of 10; with AMX it stays under 0.03 absolute.
    np.testing.assert_allclose(got, want, rtol=1e-2, atol=0.03)
    for g, w in zip(got_grads, want_grads):
        g = tf.cast(g, "float32")
        assert float(tf.norm(g - w) / tf.norm(w)) < 1e-2


def test_xla_equals_graph_mode():
    hidden, embeddings, targets = make_inputs(seed=4)
    upstream = tf.ones([M, 2])

    def run(h, e):
        return losses_and_gradients(
            tied_output_cross_entropies, h, e, targets, upstream
        )

    graph = tf.function(run)(hidden, embeddings)
    xla = tf.function(run, jit_compile=True)(hidden, embeddings)
    for g, x in zip(tf.nest.flatten(graph), tf.nest.flatten(xla)):
        np.testing.assert_allclose(g, x, rtol=1e-5, atol=1e-6)


def test_no_gradient_to_target_weights():
    hidden, embeddings, targets = make_inputs(seed=5)
    weights = tf.constant(np.asarray(targets[1].weights))
    with tf.GradientTape() as tape:
        tape.watch(weights)
        losses = tied_output_cross_entropies(
            hidden, embeddings, [targets[1]._replace(weights=weights)]
        )
    assert tape.gradient(losses, weights) is None


def test_bad_arguments_raise():
    hidden, embeddings, targets = make_inputs()
    with pytest.raises(ValueError, match="at least one"):
        tied_output_cross_entropies(hidden, embeddings, [])
    with pytest.raises(ValueError, match="same dtype"):
        tied_output_cross_entropies(
            hidden, tf.cast(embeddings, "bfloat16"), targets
        )
