"""Tests of FastDropout and dropout_multiplier."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.layers.fast_dropout import FastDropout, dropout_multiplier

SEED = tf.constant([3, 4], tf.int32)


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_drop_frequency_and_scale(rate):
    n = 1_000_001  # Odd: the last 32-bit word is half used.
    m = dropout_multiplier([n], rate, SEED, tf.float32).numpy()
    threshold = round(rate * 65536)
    kept = 1 - threshold / 65536
    assert abs(kept - (1 - rate)) < 1e-5
    assert set(np.unique(m)) == {0.0, np.float32(1 / kept)}
    dropped = float((m == 0).mean())
    sigma = (rate * (1 - rate) / n) ** 0.5
    assert abs(dropped - threshold / 65536) < 5 * sigma
    # The expectation of the output is the input's.
    assert abs(m.mean() - 1.0) < 5 * sigma / kept


def test_masks_are_independent_of_position():
    # Neighbours (the two halves of one random word, and of adjacent words)
    # are dropped independently.
    m = dropout_multiplier([400_000], 0.5, SEED, tf.float32).numpy() > 0
    for lag in (1, 2, 3):
        both = float((m[:-lag] & m[lag:]).mean())
        assert abs(both - 0.25) < 0.005


def test_edge_rates_and_shapes():
    x = tf.ones([3, 5, 7])
    assert np.all(dropout_multiplier(tf.shape(x), 0.0, SEED, x.dtype) == 1)
    assert np.all(dropout_multiplier(tf.shape(x), 1.0, SEED, x.dtype) == 0)
    m = dropout_multiplier(tf.shape(x), 0.5, SEED, tf.bfloat16)
    assert m.shape == x.shape and m.dtype == tf.bfloat16


def test_layer_training_inference_and_seeds():
    x = np.random.default_rng(0).normal(size=(8, 64)).astype("float32")
    layer = FastDropout(0.25, seed=7)
    np.testing.assert_array_equal(layer(x, training=False), x)
    a = layer(x, training=True).numpy()
    b = layer(x, training=True).numpy()
    assert not np.array_equal(a, b)  # The seed state advances.
    kept = a != 0
    np.testing.assert_allclose(a[kept], x[kept] / (1 - 16384 / 65536), 1e-6)
    # Same initial seed, same masks.
    again = FastDropout(0.25, seed=7)
    np.testing.assert_array_equal(again(x, training=True), a)
    assert FastDropout.from_config(layer.get_config()).rate == 0.25
    keras_config = keras.layers.Dropout(0.25, seed=7, name="d").get_config()
    assert FastDropout(0.25, seed=7, name="d").get_config() == keras_config


def test_gradient_is_the_mask():
    x = tf.constant(np.random.default_rng(1).normal(size=(6, 32)), "float32")
    layer = FastDropout(0.4, seed=1)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x, training=True)
    gradient = tape.gradient(y, x)
    np.testing.assert_allclose(gradient * x, y, rtol=1e-6)


def test_xla_and_graph_mode_agree():
    x = tf.ones([4, 33])

    def masks(seed):
        return dropout_multiplier(tf.shape(x), 0.3, seed, x.dtype)

    graph = tf.function(masks)(SEED)
    xla = tf.function(masks, jit_compile=True)(SEED)
    np.testing.assert_array_equal(graph, xla)


def test_noise_shape_falls_back_to_keras():
    layer = FastDropout(0.5, noise_shape=(1, 16), seed=2)
    y = layer(np.ones((4, 16), "float32"), training=True).numpy()
    # One mask shared by the rows.
    assert all(np.array_equal(y[0], row) for row in y)
