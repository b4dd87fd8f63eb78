"""A dense layer whose bias and activation oneDNN can fuse (a TensorFlow
speed fix).

keras' `Dense` on a rank-3 input (`[batch, length, d]`, every feed-forward
layer of a Transformer) runs `tf.tensordot` (reshape, `MatMul`, reshape),
adds the bias with an element-wise `AddV2` and applies the activation op by
op (keras-hub's tanh-GELU is seven element-wise ops). `FastDense.call`
computes the same function as a 2-D `MatMul`, `BiasAdd` and the
activation, then one reshape: the form TensorFlow's Grappler remapper
rewrites into a single oneDNN `MatMul` with the bias and the GELU as
post-ops when the pre-activation has no other consumer (inference: the
dump's forward passes, decoding). [100 x 40 x 384] x [384 x 1,536],
bfloat16, tanh-GELU, forward: keras' form 29-39 ms, this one 18.5-22.5 ms,
the matmul alone 15-19 ms (docs/PERFORMANCE.md, "Teacher and dump
throughput"). In training the pre-activation is kept for the gradient, the
rewrite does not apply and the cost is keras' (same ops, one fewer
reshape).

Same weights, config and results (to rounding: a fused bfloat16 GELU can
differ from the op-by-op one by one bfloat16 ulp). Quantized layers keep
keras' own `call`. `use_fast_layers` switches only the `Dense` layers that
are attributes of other layers (keras-hub's feed-forward layers, ...), not
the entries of a functional model's layer list: keras names those entries
in a `.weights.h5` file after their class, and earlier files name them
`dense` (`bertkd_tf.layers.fast_layers`).
"""

import keras
import tensorflow as tf
from keras import ops


@keras.saving.register_keras_serializable(package="bertkd_tf")
class FastDense(keras.layers.Dense):
    """`Dense` as 2-D `MatMul` + `BiasAdd` + activation on inputs of rank
    3 or more (see the module doc). Same weights, config and results."""

    def call(self, inputs, training=None):
        if self.quantization_mode is not None or len(inputs.shape) < 3:
            return super().call(inputs, training=training)
        kernel = ops.cast(self.kernel, self.compute_dtype)  # LoRA included
        shape = tf.shape(inputs)
        rows = tf.reshape(inputs, [-1, kernel.shape[0]])
        x = tf.matmul(rows, kernel)
        if self.bias is not None:
            x = tf.nn.bias_add(x, ops.cast(self.bias, self.compute_dtype))
        if self.activation is not None:
            x = self.activation(x)
        return tf.reshape(x, tf.concat([shape[:-1], [self.units]], axis=0))
