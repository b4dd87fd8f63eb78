"""Attention projections as plain 2-D matmuls (a TensorFlow speed fix).

keras' `MultiHeadAttention` (and so keras-hub's `TransformerEncoder`,
`TransformerDecoder` and `BertBackbone`) projects with `EinsumDense` layers
whose equations contract the trailing axes of the input with the leading
axes of the kernel: `abc,cde->abde` (queries, keys, values: `[batch, length,
d] x [d, heads, head_dim]`) and `abcd,cde->abe` (output: `[batch, length,
heads, head_dim] x [heads, head_dim, d]`). keras' TensorFlow backend turns
these into `tf.matmul(rank-3 input, rank-2 kernel)`, a *broadcasting*
`BatchMatMulV2`. Its gradient with respect to the kernel is then computed
per example (`[batch, d, heads * head_dim]`) and summed over the batch
afterwards. On a 2-core CPU that made the projections of the d 256 student
a quarter of its mixed_bfloat16 training step and the batch sums another
9% (measured with `tools/bench_train.py --profile_dir`, docs/PERFORMANCE.md).

`MatMulEinsumDense.call` computes the same function as one 2-D matmul of
`[rows, contracted] x [contracted, rest]` between two reshapes, whose
gradients are 2-D matmuls too. `use_matmul_projections(layer)` switches
every such `EinsumDense` inside a built layer or model to it; weights,
variable paths, configs and saved files are unchanged (the class is chosen
again whenever the model is built). Quantized layers and other equations
keep keras' own `call`.
"""

import math

import keras
from keras import ops


def trailing_contraction(equation):
    """Axes contracted if `equation` is `input,kernel->output` with the
    input's trailing axes contracted against the kernel's leading ones,
    e.g. 2 for `abcd,cde->abe`; None for any other equation."""
    equation = equation.replace(" ", "")
    if "..." in equation or "->" not in equation:
        return None
    operands, output = equation.split("->")
    if operands.count(",") != 1:
        return None
    lhs, rhs = operands.split(",")
    letters = lhs + rhs[len(set(lhs) & set(rhs)) :]
    if len(set(letters)) != len(letters):
        return None  # a repeated letter (a trace or a diagonal)
    for contracted in range(1, min(len(lhs), len(rhs)) + 1):
        kept, shared = lhs[:-contracted], lhs[-contracted:]
        if (
            rhs[:contracted] == shared
            and kept
            and rhs[contracted:]
            and output == kept + rhs[contracted:]
            and not set(rhs[contracted:]) & set(lhs)
        ):
            return contracted
    return None


@keras.saving.register_keras_serializable(package="bertkd_tf")
class MatMulEinsumDense(keras.layers.EinsumDense):
    """`EinsumDense` that computes trailing-axes contractions as one 2-D
    matmul (see the module doc). Same weights, config and results."""

    def call(self, inputs, training=None):
        contracted = trailing_contraction(self.equation)
        if contracted is None or self.quantization_mode is not None:
            return super().call(inputs, training=training)
        kernel = self.kernel  # includes a LoRA update when enabled
        kernel_shape = tuple(kernel.shape)
        depth = math.prod(kernel_shape[:contracted])
        input_shape = ops.shape(inputs)
        rows = ops.reshape(inputs, (-1, depth))
        x = ops.matmul(rows, ops.reshape(kernel, (depth, -1)))
        x = ops.reshape(
            x, tuple(input_shape[:-contracted]) + kernel_shape[contracted:]
        )
        if self.bias is not None:
            x = ops.add(x, self.bias)
        if self.activation is not None:
            x = self.activation(x)
        return x


def use_matmul_projections(layer):
    """Switch the `EinsumDense` layers inside `layer` (built) whose equation
    is a trailing-axes contraction to `MatMulEinsumDense`.

    Returns the number of layers switched. Layers of other `EinsumDense`
    subclasses are left alone.
    """
    switched = 0
    for sublayer in layer._flatten_layers(include_self=True, recursive=True):
        if (
            type(sublayer) is keras.layers.EinsumDense
            and trailing_contraction(sublayer.equation) is not None
        ):
            object.__setattr__(sublayer, "__class__", MatMulEinsumDense)
            switched += 1
    return switched
