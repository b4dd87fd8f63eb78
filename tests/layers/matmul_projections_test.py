"""Tests of MatMulEinsumDense / use_matmul_projections."""

import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.layers.matmul_projections import (
    MatMulEinsumDense,
    trailing_contraction,
    use_matmul_projections,
)


@pytest.mark.parametrize(
    "equation, contracted",
    [
        ("abc,cde->abde", 1),  # attention query/key/value
        ("abcd,cde->abe", 2),  # attention output
        ("abc,cd->abd", 1),
        ("ab,bc->ac", 1),
        ("abc,dce->abde", None),  # kernel axes out of order
        ("abc,cde->abed", None),  # output axes permuted
        ("abc,cdc->abd", None),  # repeated letter
        ("...b,bc->...c", None),
        ("abc,abd->cd", None),
    ],
)
def testtrailing_contraction(equation, contracted):
    assert trailing_contraction(equation) == contracted


@pytest.mark.parametrize(
    "equation, input_shape, output_shape, bias_axes",
    [
        ("abc,cde->abde", (3, 5, 8), (None, 2, 4), "de"),
        ("abcd,cde->abe", (3, 5, 2, 4), (None, 8), "e"),
        ("abc,cde->abde", (3, 5, 8), (None, 2, 4), None),
    ],
)
def test_same_values_and_gradients_as_einsum_dense(
    equation, input_shape, output_shape, bias_axes
):
    keras.utils.set_random_seed(1)
    reference = keras.layers.EinsumDense(
        equation,
        output_shape=output_shape,
        bias_axes=bias_axes,
        bias_initializer="random_normal",
    )
    x = tf.random.normal(input_shape)
    reference(x)
    fast = MatMulEinsumDense.from_config(reference.get_config())
    fast(x)
    fast.set_weights(reference.get_weights())

    def value_and_grads(layer):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x)
            loss = tf.reduce_sum(y * tf.sin(y))
        grads = tape.gradient(loss, [x] + layer.trainable_weights)
        return y, grads

    y_ref, grads_ref = value_and_grads(reference)
    y_fast, grads_fast = tf.function(lambda: value_and_grads(fast))()
    assert y_fast.shape == y_ref.shape
    np.testing.assert_allclose(y_fast, y_ref, rtol=1e-5, atol=1e-5)
    for got, want in zip(grads_fast, grads_ref):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


def _op_types(fn, *args):
    graph = tf.function(fn).get_concrete_function(*args).graph
    types = [op.type for op in graph.get_operations()]
    for function in graph.as_graph_def().library.function:
        types += [node.op for node in function.node_def]
    return types


def test_attention_projections_are_2d_matmuls_in_training():
    """keras' TensorFlow einsum computes `abc,cde->abde` as a broadcasting
    BatchMatMulV2 whose kernel gradient is summed over the batch; after the
    switch the projections and their gradients are 2-D MatMuls."""
    keras.utils.set_random_seed(0)
    layer = keras_hub.layers.TransformerEncoder(
        intermediate_dim=32, num_heads=2, dropout=0.0
    )
    x = tf.random.normal((2, 5, 16))
    layer(x)

    def train_step(x):
        with tf.GradientTape() as tape:
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * y)
        return tape.gradient(loss, layer.trainable_weights)

    before = _op_types(train_step, x)
    assert use_matmul_projections(layer) == 4  # query, key, value, output
    after = _op_types(train_step, x)
    # 4 projections, each a product forward and two backward (keras'
    # attention products are Einsum ops, untouched).
    assert before.count("BatchMatMulV2") == 12
    assert after.count("BatchMatMulV2") == 0
    # Forward and kernel gradients at least (the gradient with respect to
    # the unwatched input `x` is pruned).
    assert after.count("MatMul") >= before.count("MatMul") + 8
    assert after.count("Einsum") == before.count("Einsum")
