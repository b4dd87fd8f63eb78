"""The private library APIs bertkd_tf relies on still exist as expected.

One test per row of docs/ARCHITECTURE.md's "Private APIs we rely on"
table. Each failure names the symbol, the pinned version that had it, and
the code that needs it, so an upgrade of keras, keras-hub, TensorFlow or
gin breaks here, loudly, rather than somewhere in a training run.
"""

import inspect
import sys

import gin
import keras
import keras_hub
import numpy as np
import pytest
import tensorflow as tf

PINNED = {
    "keras": "3.15.1",
    "keras_hub": "0.32.0",
    "tensorflow": "2.21.0",
    "gin": "0.5.0",
}


def _broken(symbol, users, detail):
    library = symbol.split(".")[0]
    return (
        f"Private API changed: {symbol} ({detail}). bertkd_tf relies on it "
        f"in {users}; it was checked against {library} {PINNED[library]} "
        "(setup.cfg pins). Adapt that code and the row of docs/"
        "ARCHITECTURE.md 'Private APIs we rely on' before upgrading."
    )


def _parameters(function):
    return list(inspect.signature(function).parameters)


def test_pinned_versions_are_installed():
    from importlib import metadata

    installed = {
        "keras": keras.__version__,
        "keras_hub": keras_hub.__version__,
        "tensorflow": tf.__version__,
        "gin": metadata.version("gin-config"),
    }
    assert installed == PINNED, (
        "The installed libraries differ from the versions the private-API "
        f"checks were written for: {installed} != {PINNED}. Run this file; "
        "if it passes otherwise, update PINNED and setup.cfg together."
    )


def test_keras_saving_lib_weights_only():
    symbol = "keras.src.saving.saving_lib.save_weights_only/load_weights_only"
    users = "training/trainer.py (write_weights, load_final_weights)"
    try:
        from keras.src.saving import saving_lib
    except ImportError as error:
        pytest.fail(_broken(symbol, users, f"import failed: {error}"))
    for function in (
        saving_lib.save_weights_only,
        saving_lib.load_weights_only,
    ):
        parameters = _parameters(function)
        assert parameters[:2] == ["model", "filepath"], _broken(
            symbol, users, f"{function.__name__}{parameters}"
        )
        assert "objects_to_skip" in parameters, _broken(
            symbol, users, f"{function.__name__} lost objects_to_skip"
        )


def test_keras_weights_file_names_list_entries_by_class(tmp_path):
    """`bertkd_tf.layers.loading_layout` assumes keras names the entries of
    a functional model's layer list after the snake_case class name."""
    from bertkd_tf.layers import fast_layers
    from bertkd_tf.layers.fast_layer_normalization import (
        FastLayerNormalization,
    )

    symbol = "keras.src.saving.saving_lib (layer-list entry names)"
    users = "layers/fast_layers.py (weights_file_layout, loading_layout)"
    from keras.src.utils import naming

    for stock, fast in fast_layers.REPLACEMENTS.items():
        for cls in (stock, fast):
            assert fast_layers._snake_case(cls.__name__) == (
                naming.to_snake_case(cls.__name__)
            ), _broken(symbol, users, f"to_snake_case({cls.__name__})")
    inputs = keras.Input((4,))
    outputs = keras.layers.LayerNormalization()(inputs)
    model = keras.Model(inputs, outputs)
    stock_path = str(tmp_path / "stock.weights.h5")
    model.save_weights(stock_path)
    fast_layers.use_fast_layers(model)
    assert type(model.layers[1]) is FastLayerNormalization
    fast_path = str(tmp_path / "fast.weights.h5")
    model.save_weights(fast_path)
    layouts = (
        fast_layers.weights_file_layout(stock_path),
        fast_layers.weights_file_layout(fast_path),
    )
    assert layouts == ("stock", "fast"), _broken(
        symbol, users, f"layouts read back as {layouts}"
    )


def test_layer_flatten_layers():
    symbol = "keras.layers.Layer._flatten_layers"
    users = (
        "layers/fast_layers.py (the switch), training/trainer.py (seed_states)"
    )
    method = getattr(keras.layers.Layer, "_flatten_layers", None)
    assert method is not None, _broken(symbol, users, "missing")
    assert _parameters(method)[:3] == [
        "self",
        "include_self",
        "recursive",
    ], _broken(symbol, users, f"signature {_parameters(method)}")
    dense = keras.layers.Dense(2)
    model = keras.Sequential([keras.Input((3,)), dense])
    assert dense in list(model._flatten_layers()), _broken(
        symbol, users, "does not list a sublayer"
    )


def test_layer_seed_generators():
    symbol = "keras.layers.Layer._seed_generators"
    users = "training/trainer.py (seed_states: dropout states in checkpoints)"
    layer = keras.layers.Dropout(0.1, seed=1)
    generators = getattr(layer, "_seed_generators", None)
    assert generators == [layer.seed_generator], _broken(
        symbol, users, f"a Dropout's list is {generators!r}"
    )
    assert isinstance(layer.seed_generator.state, keras.Variable)


def test_model_maybe_symbolic_build():
    symbol = "keras.Model._maybe_symbolic_build"
    users = "bertkd_tf/keras_compat.py (MultiWorkerFitMixin)"
    method = getattr(keras.Model, "_maybe_symbolic_build", None)
    assert method is not None, _broken(symbol, users, "missing")
    assert _parameters(method) == [
        "self",
        "iterator",
        "data_batch",
    ], _broken(symbol, users, f"signature {_parameters(method)}")


def test_keras_hub_check_file_exists(tmp_path):
    symbol = "keras_hub.src.utils.preset_utils.check_file_exists"
    users = "models/cmlm_teacher.py (CMLMTeacher.from_preset)"
    try:
        from keras_hub.src.utils.preset_utils import check_file_exists
    except ImportError as error:
        pytest.fail(_broken(symbol, users, f"import failed: {error}"))
    assert _parameters(check_file_exists) == ["preset", "path"], _broken(
        symbol, users, f"signature {_parameters(check_file_exists)}"
    )
    (tmp_path / "task.weights.h5").write_bytes(b"")
    assert check_file_exists(str(tmp_path), "task.weights.h5")
    assert not check_file_exists(str(tmp_path), "other.h5")


def test_masked_lm_head_transform_weight_paths():
    """Not private, but library-chosen names: `mlm_transform_weights` finds
    a `MaskedLMHead`'s transform by its variables' paths."""
    from bertkd_tf.models.cmlm_teacher import mlm_transform_weights

    symbol = "keras_hub.layers.MaskedLMHead variable paths"
    users = "models/cmlm_teacher.py (mlm_transform_weights, from_preset)"
    head = keras_hub.layers.MaskedLMHead(
        vocabulary_size=7, intermediate_activation="gelu"
    )
    head(
        np.ones((1, 3, 4), "float32"), mask_positions=np.zeros((1, 2), "int32")
    )
    try:
        kernel, bias, gamma, beta = mlm_transform_weights(head)
    except ValueError as error:
        pytest.fail(_broken(symbol, users, str(error)))
    assert kernel.shape == (4, 4) and bias.shape == gamma.shape == (4,)


def test_keras_hub_transformer_decoder_sublayers():
    symbol = "keras_hub.layers.TransformerDecoder private sublayers"
    users = "IncrementalDecoder (the search's one-token decoder)"
    decoder = keras_hub.layers.TransformerDecoder(
        intermediate_dim=8, num_heads=2
    )
    decoder(
        decoder_sequence=np.ones((1, 3, 4), "float32"),
        encoder_sequence=np.ones((1, 2, 4), "float32"),
    )
    expected = {
        "_self_attention_layer": keras.layers.MultiHeadAttention,
        "_cross_attention_layer": keras.layers.MultiHeadAttention,
        "_self_attention_layer_norm": keras.layers.LayerNormalization,
        "_cross_attention_layer_norm": keras.layers.LayerNormalization,
        "_feedforward_layer_norm": keras.layers.LayerNormalization,
        "_feedforward_intermediate_dense": keras.layers.Dense,
        "_feedforward_output_dense": keras.layers.Dense,
    }
    for name, cls in expected.items():
        value = getattr(decoder, name, None)
        assert isinstance(value, cls), _broken(
            symbol, users, f"{name} is {type(value).__name__}"
        )
    attention = decoder._self_attention_layer
    for name in ("_query_dense", "_key_dense", "_value_dense", "_output_dense"):
        value = getattr(attention, name, None)
        assert isinstance(value, keras.layers.EinsumDense), _broken(
            "keras.layers.MultiHeadAttention." + name,
            users,
            f"is {type(value).__name__}",
        )


def test_tensorflow_xla_context_check():
    symbol = (
        "tensorflow.python.ops.control_flow_util.GraphOrParentsInXlaContext"
    )
    users = "training/distillation_model.py (_in_xla_context)"
    try:
        from tensorflow.python.ops import control_flow_util
    except ImportError as error:
        pytest.fail(_broken(symbol, users, f"import failed: {error}"))
    check = getattr(control_flow_util, "GraphOrParentsInXlaContext", None)
    assert callable(check), _broken(symbol, users, "missing")
    seen = {}

    @tf.function(jit_compile=True)
    def compiled():
        seen["xla"] = check(tf.compat.v1.get_default_graph())
        return tf.constant(0)

    @tf.function
    def plain():
        seen["graph"] = check(tf.compat.v1.get_default_graph())
        return tf.constant(0)

    compiled()
    plain()
    assert seen == {"xla": True, "graph": False}, _broken(
        symbol, users, f"answers {seen}"
    )


def test_gin_internals():
    symbol = "gin.config._CONFIG / _parse_context / bind_parameter"
    users = "main.py (required and misspelt macros, binding locations)"
    from gin import config as gin_config
    from gin import utils as gin_utils

    assert isinstance(getattr(gin_config, "_CONFIG", None), dict), _broken(
        symbol, users, "_CONFIG is not a dict"
    )
    context = getattr(gin_config, "_parse_context", None)
    assert callable(context), _broken(symbol, users, "_parse_context missing")
    assert hasattr(context(), "get_configurable"), _broken(
        symbol, users, "_parse_context() has no get_configurable"
    )
    assert _parameters(gin_config.bind_parameter) == [
        "binding_key",
        "value",
    ], _broken(symbol, users, "bind_parameter's signature")
    assert callable(getattr(gin_utils, "try_with_location", None)), _broken(
        "gin.utils.try_with_location", users, "missing"
    )
    with gin.unlock_config():
        gin.clear_config()
        gin.parse_config("SOME_MACRO = 3")
        keys = [key for key in gin_config._CONFIG if key[0] == "SOME_MACRO"]
        gin.clear_config()
    assert keys and keys[0][1].endswith("gin.macro"), _broken(
        symbol, users, f"macro keys look like {keys}"
    )


def test_python_frame_introspection():
    # CPython functions (documented, underscore-named): locking.py finds
    # which running function holds a lock.
    for name in ("_getframe", "_current_frames"):
        assert callable(getattr(sys, name, None)), (
            f"sys.{name} is gone: bertkd_tf/locking.py relies on it."
        )


def test_keras_optimizer_learning_rate_hook():
    """`FusedAdam` overrides `_get_current_learning_rate` so that, with
    gradient accumulation, a schedule sees updates, not batches."""
    from bertkd_tf.training.fused_adam import FusedAdam

    symbol = "keras.optimizers.Optimizer._get_current_learning_rate"
    users = "training/fused_adam.py (FusedAdam)"
    assert callable(
        getattr(keras.optimizers.Optimizer, "_get_current_learning_rate", None)
    ), _broken(symbol, users, "missing")

    class Steps(keras.optimizers.schedules.LearningRateSchedule):
        def __call__(self, step):
            return 1.0 + keras.ops.cast(step, "float32")

    variable = keras.Variable(np.zeros(2, "float32"))
    optimizer = FusedAdam(Steps(), gradient_accumulation_steps=2)
    optimizer.build([variable])
    assert isinstance(optimizer._learning_rate, Steps), _broken(
        symbol, users, "the schedule is no longer `_learning_rate`"
    )
    rates = []
    for _ in range(4):
        rates.append(float(optimizer.learning_rate))
        optimizer.apply([np.ones(2, "float32")], [variable])
    # Batches 0-3 are updates 0, 0, 1, 1 (keras alone: 1, 2, 3, 4).
    assert rates == [1.0, 1.0, 2.0, 2.0], _broken(symbol, users, rates)
    assert float(FusedAdam(Steps()).learning_rate) == 1.0
