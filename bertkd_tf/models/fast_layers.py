"""Switches the layers of a built model to faster TensorFlow versions.

Keras layers are written for every backend; on TensorFlow (and this
project's CPUs) three of them cost far more than their function needs:

- `EinsumDense` attention projections become broadcasting batched matmuls
  with per-example kernel gradients -> `MatMulEinsumDense`
  (`matmul_projections.py`);
- `Dropout` draws a 32-bit random float per element -> `FastDropout`
  (`fast_dropout.py`, 16 bits an element);
- `LayerNormalization` is differentiated op by op -> `FastLayerNormalization`
  (`fast_layer_normalization.py`, a closed-form gradient).

Each replacement keeps the layer's weights, variable paths and config; only
its class (and so its `call`) changes, and it is chosen again whenever the
model is built. The student backbone and the C-MLM teacher call
`use_fast_layers` at the end of their constructors.
"""

import keras

from bertkd_tf.models.fast_dropout import FastDropout
from bertkd_tf.models.fast_layer_normalization import FastLayerNormalization
from bertkd_tf.models.matmul_projections import use_matmul_projections


def use_fast_layers(layer):
    """Switches the layers inside `layer` (built) to their faster versions.

    Returns a dict of how many layers were switched, by replacement:
    `{"MatMulEinsumDense": n, "FastDropout": m, "FastLayerNormalization":
    k}`. Subclasses of the replaced layers are left alone.
    """
    switched = {"MatMulEinsumDense": use_matmul_projections(layer)}
    replacements = {
        keras.layers.Dropout: FastDropout,
        keras.layers.LayerNormalization: FastLayerNormalization,
    }
    for replacement in replacements.values():
        switched[replacement.__name__] = 0
    for sublayer in layer._flatten_layers(include_self=True, recursive=True):
        replacement = replacements.get(type(sublayer))
        if replacement is not None:
            object.__setattr__(sublayer, "__class__", replacement)
            switched[replacement.__name__] += 1
    return switched
