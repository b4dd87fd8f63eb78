"""The switch between keras' layers and their faster TensorFlow versions.

Keras layers are written for every backend; on TensorFlow and this
project's CPUs three of them cost far more than their function needs:

- `EinsumDense` attention projections become broadcasting batched matmuls
  with per-example kernel gradients -> `MatMulEinsumDense`
  (`matmul_projections.py`);
- `Dropout` draws a 32-bit random float per element -> `FastDropout`
  (`fast_dropout.py`, 16 bits an element);
- `LayerNormalization` is differentiated op by op -> `FastLayerNormalization`
  (`fast_layer_normalization.py`, a closed-form gradient);
- `Dense` on a rank-3 input adds its bias and activation element-wise after
  a `Tensordot` -> `FastDense` (`fast_dense.py`, a 2-D MatMul + BiasAdd +
  activation that oneDNN fuses in inference).

They were measured on a 2-core CPU (docs/PERFORMANCE.md), not on GPUs or
TPUs. The student backbone and the C-MLM teacher take `fast_layers=True |
False | None`: `resolve_fast_layers(None)` is True where no GPU or TPU is
visible and False otherwise, so accelerators run stock keras / keras-hub
layers. The models call `use_fast_layers` at the end of their
constructors when the switch resolves to True.

A replacement keeps the layer's weights, variable paths and config; only
its class (and so its `call`) changes. The `tf.train.Checkpoint` layout
(by attribute names) is therefore the same both ways. Keras' `.weights.h5`
layout is not quite: it names the entries of a functional model's layer
list after their class (`layer_normalization` or
`fast_layer_normalization`), so `weights_file_layout` reads which classes
a file was written with and `loading_layout` switches a model to them for
the load (`bertkd_tf.training.trainer.load_final_weights` does both).
"""

import contextlib
import re

import keras
import tensorflow as tf

from bertkd_tf.layers.fast_dense import FastDense
from bertkd_tf.layers.fast_dropout import FastDropout
from bertkd_tf.layers.fast_layer_normalization import FastLayerNormalization
from bertkd_tf.layers.matmul_projections import (
    MatMulEinsumDense,
    trailing_contraction,
)

# Stock keras class -> its faster version.
REPLACEMENTS = {
    keras.layers.EinsumDense: MatMulEinsumDense,
    keras.layers.Dropout: FastDropout,
    keras.layers.LayerNormalization: FastLayerNormalization,
    keras.layers.Dense: FastDense,
}
FAST_CLASSES = tuple(REPLACEMENTS.values())
# Switched only where they are attributes of another layer, never as
# entries of a functional model's layer list: keras names those entries in
# a `.weights.h5` file after their class, and files written before
# `FastDense` existed name them `dense` whatever the switch. So their class
# never shows in a file's layout either.
NESTED_ONLY = (keras.layers.Dense, FastDense)


def accelerator_visible():
    """Whether TensorFlow sees a GPU or a TPU (logical devices)."""
    return bool(
        tf.config.list_logical_devices("GPU")
        or tf.config.list_logical_devices("TPU")
    )


def resolve_fast_layers(fast_layers):
    """The switch's value: `fast_layers` if a bool, else (None) True on a
    CPU-only machine and False when a GPU or TPU is visible."""
    if fast_layers is None:
        return not accelerator_visible()
    if not isinstance(fast_layers, bool):
        raise ValueError(
            "`fast_layers` must be True, False or None (follow the device). "
            f"Received: fast_layers={fast_layers!r}"
        )
    return fast_layers


def _switchable(layer, classes):
    """The class `layer` switches to under `classes` ({from: to}), or None.
    Only exact classes switch (subclasses are left alone), and an
    `EinsumDense` only if `MatMulEinsumDense` computes its equation."""
    target = classes.get(type(layer))
    if target is None:
        return None
    if (
        target is MatMulEinsumDense
        and trailing_contraction(layer.equation) is None
    ):
        return None
    return target


def _switch(layer, fast):
    """Switches the layers inside `layer` to the fast (`fast=True`) or the
    stock classes; returns `[(sublayer, its former class)]`."""
    classes = (
        REPLACEMENTS
        if fast
        else {fast_class: stock for stock, fast_class in REPLACEMENTS.items()}
    )
    sublayers = list(layer._flatten_layers(include_self=True, recursive=True))
    listed = {
        id(entry)
        for sublayer in sublayers
        if isinstance(sublayer, keras.Model)
        for entry in sublayer.layers
    }
    switched = []
    for sublayer in sublayers:
        target = _switchable(sublayer, classes)
        if target in NESTED_ONLY and id(sublayer) in listed:
            continue
        if target is not None:
            switched.append((sublayer, type(sublayer)))
            object.__setattr__(sublayer, "__class__", target)
    return switched


def _counts(switched, names):
    counts = dict.fromkeys(names, 0)
    for sublayer, _ in switched:
        counts[type(sublayer).__name__] += 1
    return counts


def use_fast_layers(layer):
    """Switches the layers inside `layer` (built) to their faster versions.

    Returns how many layers were switched, by replacement:
    `{"MatMulEinsumDense": n, "FastDropout": m, "FastLayerNormalization":
    k, "FastDense": j}`. Subclasses of the replaced layers are left alone,
    and so are `Dense` entries of a functional model's layer list
    (`NESTED_ONLY`).
    """
    names = [cls.__name__ for cls in FAST_CLASSES]
    return _counts(_switch(layer, fast=True), names)


def use_stock_layers(layer):
    """Switches the fast layers inside `layer` back to keras' classes
    (the inverse of `use_fast_layers`); returns the counts by keras class
    name (`{"EinsumDense": n, "Dropout": m, "LayerNormalization": k,
    "Dense": j}`)."""
    names = [cls.__name__ for cls in REPLACEMENTS]
    return _counts(_switch(layer, fast=False), names)


def _snake_case(name):
    """keras' `naming.to_snake_case`: the entry name of a class in a
    weights file (`MatMulEinsumDense` -> `mat_mul_einsum_dense`)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _entry_pattern(classes):
    names = "|".join(_snake_case(cls.__name__) for cls in classes)
    return re.compile(rf"^({names})(_\d+)?$")


_FAST_ENTRY = _entry_pattern(
    [cls for cls in FAST_CLASSES if cls not in NESTED_ONLY]
)
_STOCK_ENTRY = _entry_pattern(
    [cls for cls in REPLACEMENTS if cls not in NESTED_ONLY]
)


def weights_file_layout(path):
    """Which classes a keras `.weights.h5` file was written with: "fast"
    (an entry named after a fast class, e.g. `fast_layer_normalization`:
    every file the project wrote before the switch existed), "stock", or
    None (no entry named after either: both layouts are the same)."""
    import h5py

    names = set()
    with h5py.File(path, "r") as f:
        f.visit(lambda name: names.update(name.split("/")))
    if any(_FAST_ENTRY.match(name) for name in names):
        return "fast"
    if any(_STOCK_ENTRY.match(name) for name in names):
        return "stock"
    return None


@contextlib.contextmanager
def loading_layout(model, path):
    """Within the block, `model`'s layers have the classes the weights file
    at `path` was written with (`weights_file_layout`), so keras loads it
    whatever `model`'s own switch; afterwards they are switched back.

    Example:
    ```python
    with loading_layout(model, "final.weights.h5"):
        model.load_weights("final.weights.h5")
    ```
    """
    layout = weights_file_layout(path)
    switched = [] if layout is None else _switch(model, layout == "fast")
    try:
        yield
    finally:
        for sublayer, former in switched:
            object.__setattr__(sublayer, "__class__", former)
