"""CPU fast paths of keras layers, and the switch that turns them on.

`FastDropout`, `FastLayerNormalization`, `MatMulEinsumDense` and
`FastDense` compute the function of keras' `Dropout`, `LayerNormalization`,
`EinsumDense` and `Dense` with fewer TensorFlow ops (measured on a 2-core
CPU, docs/PERFORMANCE.md).
`use_fast_layers(model)` / `use_stock_layers(model)` switch a built model
between them; `resolve_fast_layers(None)` turns them on where no GPU or TPU
is visible. This package is the lowest layer: it imports nothing else from
bertkd_tf.
"""

from bertkd_tf.layers.fast_dense import FastDense
from bertkd_tf.layers.fast_dropout import FastDropout, dropout_multiplier
from bertkd_tf.layers.fast_layer_normalization import (
    FastLayerNormalization,
    layer_normalization,
)
from bertkd_tf.layers.fast_layers import (
    FAST_CLASSES,
    REPLACEMENTS,
    accelerator_visible,
    loading_layout,
    resolve_fast_layers,
    use_fast_layers,
    use_stock_layers,
    weights_file_layout,
)
from bertkd_tf.layers.matmul_projections import (
    MatMulEinsumDense,
    trailing_contraction,
    use_matmul_projections,
)

__all__ = [
    "FAST_CLASSES",
    "REPLACEMENTS",
    "FastDense",
    "FastDropout",
    "FastLayerNormalization",
    "MatMulEinsumDense",
    "accelerator_visible",
    "dropout_multiplier",
    "layer_normalization",
    "loading_layout",
    "resolve_fast_layers",
    "trailing_contraction",
    "use_fast_layers",
    "use_matmul_projections",
    "use_stock_layers",
    "weights_file_layout",
]
