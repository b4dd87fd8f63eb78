"""Shared checks for serializable classes, in the style of keras-hub's
`TestCase` (`run_serialization_test`, `run_precision_test`,
`run_model_saving_test`).

Each check takes the object (or a factory of it) and a `run_fn(obj) ->
outputs` that exercises it on fixed inputs (a layer's or model's call, a
loss value, a schedule's rates, an optimizer's updates); outputs may be any
nest of tensors or arrays. `tests/serializable_classes_test.py` applies them
to every serializable class of `bertkd_tf`.
"""

import copy
import inspect
import json
import os

import keras
import numpy as np
import tensorflow as tf

from bertkd_tf.models.transformer_backbone import TransformerSeq2SeqBackbone
from bertkd_tf.models.transformer_seq2seq import TransformerSeq2Seq

__all__ = [
    "assert_outputs_close",
    "constructor_arguments",
    "run_model_saving_test",
    "run_precision_test",
    "run_serialization_test",
    "tiny_transformer_student",
]


def tiny_transformer_student(vocabulary_size, seed=0, **backbone_arguments):
    """A 1-layer, 16-wide `TransformerSeq2Seq` without dropout, seeded."""
    keras.utils.set_random_seed(seed)
    arguments = dict(
        vocabulary_size=vocabulary_size,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        dropout=0.0,
    )
    arguments.update(backbone_arguments)
    return TransformerSeq2Seq(TransformerSeq2SeqBackbone(**arguments))


def _to_numpy(value):
    if isinstance(value, (tf.Tensor, tf.Variable)) or hasattr(value, "numpy"):
        value = value.numpy()
    return np.asarray(value)


def assert_outputs_close(actual, expected, atol=0.0, rtol=0.0):
    """Two nests of tensors are equal in structure and close in value."""
    tf.nest.assert_same_structure(actual, expected)
    for a, e in zip(tf.nest.flatten(actual), tf.nest.flatten(expected)):
        a, e = _to_numpy(a), _to_numpy(e)
        assert a.shape == e.shape, (a.shape, e.shape)
        assert a.dtype == e.dtype, (a.dtype, e.dtype)
        np.testing.assert_allclose(
            a.astype("float64") if a.dtype.kind == "f" else a,
            e.astype("float64") if e.dtype.kind == "f" else e,
            atol=atol,
            rtol=rtol,
        )


def constructor_arguments(cls):
    """Names of the explicit arguments of `cls.__init__` (no `self`,
    `*args`, `**kwargs`)."""
    skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    parameters = inspect.signature(cls.__init__).parameters.values()
    return [
        p.name for p in parameters if p.name != "self" and p.kind not in skip
    ]


def _weights(obj):
    if isinstance(obj, keras.layers.Layer):
        return obj.get_weights()
    return []


def _plain_config(config):
    """The config as JSON gives it back (tuples -> lists, str keys)."""
    return json.loads(json.dumps(config))


def run_serialization_test(
    instance,
    run_fn=None,
    not_in_config=(),
    atol=0.0,
    rtol=0.0,
):
    """get_config -> from_config and serialize -> deserialize round trips.

    Checks that:
    - `get_config()` is JSON-serializable and names every explicit
      constructor argument (`inspect.signature`), except `not_in_config`
      (arguments whose value other config entries carry; give the reason
      where the list is made);
    - `from_config(get_config())` is an instance of the same class with an
      equal config, and so is the registered round trip
      `keras.saving.deserialize_keras_object(serialize_keras_object(x))`
      through JSON text;
    - with `run_fn`: the revived object, given the original's weights (if
      it has any), produces the same outputs; `dir()` of the two objects is
      the same after running (no attribute set only by the constructor
      path).

    Returns the revived object.
    """
    cls = type(instance)
    config = instance.get_config()
    text = json.dumps(config, sort_keys=True)  # raises if not JSON-able
    missing = [
        name
        for name in constructor_arguments(cls)
        if name not in config and name not in not_in_config
    ]
    assert not missing, (
        f"{cls.__name__}.get_config() lacks constructor arguments {missing}"
    )

    revived = cls.from_config(copy.deepcopy(config))
    assert type(revived) is cls, type(revived)
    assert json.dumps(revived.get_config(), sort_keys=True) == text

    serialized = keras.saving.serialize_keras_object(instance)
    registered = keras.saving.deserialize_keras_object(
        json.loads(json.dumps(serialized))
    )
    assert type(registered) is cls, (
        f"{cls.__name__} does not deserialize by its registered name: "
        f"got {type(registered)}"
    )
    assert json.dumps(registered.get_config(), sort_keys=True) == text

    if run_fn is not None:
        expected = run_fn(instance)
        run_fn(revived)  # builds it
        weights = _weights(instance)
        if weights:
            revived.set_weights(weights)
        assert_outputs_close(run_fn(revived), expected, atol=atol, rtol=rtol)
        assert sorted(dir(revived)) == sorted(dir(instance))
    return revived


def _layers(obj):
    if isinstance(obj, keras.layers.Layer):
        return list(obj._flatten_layers(include_self=True, recursive=True))
    return []


def run_precision_test(
    factory,
    run_fn,
    expected_output_dtype,
    float32_layers=(),
    atol=None,
    rtol=None,
    norm_rtol=2e-2,
):
    """The object built with `dtype="mixed_bfloat16"` computes in bfloat16
    and keeps float32 variables, and its outputs are close to float32's.

    `factory(dtype)` builds the object (same initialisation for any dtype
    is not needed: the float32 weights are copied over). Checks every
    floating variable is float32, every sublayer's policy computes in
    bfloat16 (`compute_dtype`) with float32 `variable_dtype` (except the
    layers named in `float32_layers`, e.g. a final cast to float32 logits,
    which must compute in float32, and `keras.Model` containers, whose own
    policy a functional model does not keep), the outputs' dtype is
    `expected_output_dtype` (a dtype or a nest of them), and the outputs
    match float32's within `atol`/`rtol` element by element (bfloat16
    defaults: `atol=rtol=2e-2`) and, every floating output as a whole,
    within `norm_rtol` relative error in the L2 norm (|bf16 - fp32| /
    |fp32|). Returns `(bf16_outputs, fp32_outputs)`.
    """
    atol = 2e-2 if atol is None else atol
    rtol = 2e-2 if rtol is None else rtol
    reference = factory(dtype="float32")
    expected = run_fn(reference)
    mixed = factory(dtype="mixed_bfloat16")
    run_fn(mixed)  # builds it
    weights = _weights(reference)
    if weights:
        mixed.set_weights(weights)
    outputs = run_fn(mixed)

    layers = _layers(mixed)
    assert layers, "the precision test is for layers and models"
    float32_found = set()
    for layer in layers:
        if isinstance(layer, (keras.layers.InputLayer, keras.Model)):
            continue
        assert layer.variable_dtype == "float32", (layer.path, layer.dtype)
        if layer.name in float32_layers:
            float32_found.add(layer.name)
            assert layer.compute_dtype == "float32", (layer.path, layer.dtype)
        else:
            assert layer.compute_dtype == "bfloat16", (layer.path, layer.dtype)
    assert float32_found == set(float32_layers), float32_found
    for variable in mixed.weights:
        if variable.dtype.startswith(("float", "bfloat")):
            assert variable.dtype == "float32", (variable.path, variable.dtype)

    dtypes = tf.nest.map_structure(lambda t: str(t.dtype.name), outputs)
    want = tf.nest.map_structure(str, expected_output_dtype)
    if isinstance(want, str):
        want = tf.nest.map_structure(lambda _: want, dtypes)
    assert dtypes == want, (dtypes, want)
    assert_outputs_close(
        tf.nest.map_structure(lambda t: tf.cast(t, "float32"), outputs),
        tf.nest.map_structure(lambda t: tf.cast(t, "float32"), expected),
        atol=atol,
        rtol=rtol,
    )
    for a, e in zip(tf.nest.flatten(outputs), tf.nest.flatten(expected)):
        a, e = (
            _to_numpy(tf.cast(a, "float64")),
            _to_numpy(tf.cast(e, "float64")),
        )
        if np.any(e):
            error = np.linalg.norm(a - e) / np.linalg.norm(e)
            assert error <= norm_rtol, (error, norm_rtol)
    return outputs, expected


def run_model_saving_test(model, run_fn, directory, keras_file=True):
    """Saving and loading give a model with the same outputs.

    With `keras_file`, `model.save("<dir>/model.keras")` then
    `keras.saving.load_model` (the class is found by its registered name;
    compiled models come back compiled with the same loss, optimizer and
    schedule classes). Always `save_weights` / `load_weights` into a model
    rebuilt `from_config` (the route of the pipeline's final weights).
    `model` must have been run once (built). Returns the loaded models.
    """
    expected = run_fn(model)
    loaded = []
    if keras_file:
        path = os.path.join(directory, "model.keras")
        model.save(path)
        restored = keras.saving.load_model(path)
        assert type(restored) is type(model), type(restored)
        assert_outputs_close(run_fn(restored), expected)
        if model.compiled:
            assert restored.compiled
            assert type(restored.optimizer) is type(model.optimizer)
            restored_config = restored.optimizer.get_config()
            assert _plain_config(restored_config) == _plain_config(
                model.optimizer.get_config()
            )
            assert type(restored.loss) is type(model.loss)
        loaded.append(restored)
    path = os.path.join(directory, "model.weights.h5")
    model.save_weights(path)
    rebuilt = type(model).from_config(model.get_config())
    run_fn(rebuilt)  # builds it
    rebuilt.load_weights(path)
    assert_outputs_close(run_fn(rebuilt), expected)
    loaded.append(rebuilt)
    return loaded
