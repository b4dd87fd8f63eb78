"""Tests of FastLayerNormalization / layer_normalization."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.layers.fast_layer_normalization import (
    FastLayerNormalization,
    layer_normalization,
)


def make_pair(dtype=None, seed=0, **kwargs):
    """A keras LayerNormalization and a FastLayerNormalization with the same
    (non-trivial) weights, built for `[2, 5, 8]` inputs."""
    rng = np.random.default_rng(seed)
    layers = [
        cls(epsilon=1e-5, dtype=dtype, **kwargs)
        for cls in (keras.layers.LayerNormalization, FastLayerNormalization)
    ]
    for layer in layers:
        layer.build((2, 5, 8))
    for weights in zip(*(layer.weights for layer in layers)):
        value = rng.normal(size=weights[0].shape).astype("float32")
        for w in weights:
            w.assign(value)
    return layers


def outputs_and_gradients(layer, x, upstream):
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
        loss = tf.reduce_sum(tf.cast(y, "float32") * upstream)
    return y, tape.gradient(loss, [x] + layer.trainable_weights)


@pytest.mark.parametrize(
    "center,scale", [(True, True), (False, True), (True, False)]
)
def test_equals_keras_in_float32(center, scale):
    keras_layer, fast = make_pair(center=center, scale=scale)
    rng = np.random.default_rng(1)
    x = tf.constant(rng.normal(size=(2, 5, 8)) * 3 + 1, "float32")
    upstream = tf.constant(rng.normal(size=(2, 5, 8)), "float32")
    want, want_grads = outputs_and_gradients(keras_layer, x, upstream)
    got, got_grads = outputs_and_gradients(fast, x, upstream)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert len(got_grads) == len(want_grads) == 1 + center + scale
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)


def test_mixed_bfloat16_keeps_dtypes_and_matches_keras():
    keras_layer, fast = make_pair(dtype="mixed_bfloat16", seed=2)
    rng = np.random.default_rng(3)
    x = tf.constant(rng.normal(size=(2, 5, 8)), "bfloat16")
    upstream = tf.constant(rng.normal(size=(2, 5, 8)), "float32")
    want, want_grads = outputs_and_gradients(keras_layer, x, upstream)
    got, got_grads = outputs_and_gradients(fast, x, upstream)
    assert got.dtype == tf.bfloat16 and got_grads[0].dtype == tf.bfloat16
    assert got_grads[1].dtype == tf.float32  # The weights stay float32.
    np.testing.assert_allclose(
        tf.cast(got, "float32"), tf.cast(want, "float32"), atol=0.05
    )
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(
            tf.cast(g, "float32"), tf.cast(w, "float32"), rtol=0.02, atol=0.05
        )


def test_xla_equals_graph_mode():
    x = tf.constant(np.random.default_rng(4).normal(size=(3, 16)), "float32")
    gamma = tf.linspace(0.5, 1.5, 16)
    beta = tf.linspace(-1.0, 1.0, 16)

    def run(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer_normalization(x, gamma, beta, 1e-5)
            loss = tf.reduce_sum(y * y * x)
        return y, tape.gradient(loss, x)

    graph = tf.function(run)(x)
    xla = tf.function(run, jit_compile=True)(x)
    for g, z in zip(graph, xla):
        np.testing.assert_allclose(g, z, rtol=1e-5, atol=1e-6)


def test_other_axes_fall_back_to_keras():
    layer = FastLayerNormalization(axis=1)
    x = np.random.default_rng(5).normal(size=(2, 4, 3)).astype("float32")
    expected = keras.layers.LayerNormalization(axis=1)(x)
    np.testing.assert_allclose(layer(x), expected, rtol=1e-5, atol=1e-6)
