"""The `fast_layers` switch of the student backbone and the teacher.

On: keras' `EinsumDense`, `Dropout` and `LayerNormalization` become
`bertkd_tf.layers`' versions; off: only stock keras / keras-hub layers.
Both compute the same function from the same weights, and weights and
checkpoints written either way (and by the code before the switch existed,
tests/fixtures/artifacts_9f080e5) load into the other.
"""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf import artifacts
from bertkd_tf.layers import fast_layers
from bertkd_tf.layers.fast_dense import FastDense
from bertkd_tf.layers.fast_dropout import FastDropout
from bertkd_tf.layers.fast_layer_normalization import FastLayerNormalization
from bertkd_tf.layers.fast_layers import (
    loading_layout,
    resolve_fast_layers,
    use_fast_layers,
    use_stock_layers,
    weights_file_layout,
)
from bertkd_tf.layers.matmul_projections import MatMulEinsumDense
from bertkd_tf.models.cmlm_teacher import CMLMTeacher
from bertkd_tf.models.transformer_backbone import TransformerSeq2SeqBackbone
from bertkd_tf.models.transformer_seq2seq import TransformerSeq2Seq
from bertkd_tf.training import trainer

REPLACED = {
    keras.layers.EinsumDense: MatMulEinsumDense,
    keras.layers.Dropout: FastDropout,
    keras.layers.LayerNormalization: FastLayerNormalization,
    keras.layers.Dense: FastDense,
}
OLD_ARTIFACTS = os.path.join(
    os.path.dirname(os.path.dirname(__file__)),
    "fixtures",
    "artifacts_9f080e5",
)
STUDENT_INPUTS = {
    "encoder_token_ids": np.array([[5, 6, 7, 3], [8, 3, 0, 0]], "int32"),
    "encoder_padding_mask": np.array([[1, 1, 1, 1], [1, 1, 0, 0]], "int32"),
    "decoder_token_ids": np.array([[2, 9, 10], [2, 11, 0]], "int32"),
    "decoder_padding_mask": np.array([[1, 1, 1], [1, 1, 0]], "int32"),
}
TEACHER_INPUTS = {
    "token_ids": np.array([[2, 5, 6, 3, 4, 9, 3, 0]], "int32"),
    "segment_ids": np.array([[0, 0, 0, 0, 1, 1, 1, 0]], "int32"),
    "padding_mask": np.array([[1, 1, 1, 1, 1, 1, 1, 0]], "int32"),
    "mask_positions": np.array([[4, 6]], "int32"),
}


def _student(fast_layers, seed=0):
    keras.utils.set_random_seed(seed)
    return TransformerSeq2Seq(
        TransformerSeq2SeqBackbone(
            vocabulary_size=30,
            num_layers=2,
            num_heads=2,
            hidden_dim=16,
            intermediate_dim=32,
            dropout=0.1,
            fast_layers=fast_layers,
        )
    )


def _teacher(fast_layers, seed=0):
    keras.utils.set_random_seed(seed)
    return CMLMTeacher.from_scratch(
        bert_ids=np.arange(3, 23),
        vocabulary_size=40,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=16,
        fast_layers=fast_layers,
    )


def _perturb(model, seed=1):
    """Adds noise to every weight (zero biases and unit gammas would hide
    differences in how they are used)."""
    rng = np.random.default_rng(seed)
    for weight in model.weights:
        if "seed_generator" not in weight.path:
            value = keras.ops.convert_to_numpy(weight)
            weight.assign(value + rng.normal(0, 0.05, value.shape))


def _sublayers(model):
    return model._flatten_layers(include_self=False, recursive=True)


def _listed_entries(model):
    """Ids of the layers in a functional model's layer list (in `model`)."""
    return {
        id(entry)
        for layer in model._flatten_layers(include_self=True, recursive=True)
        if isinstance(layer, keras.Model)
        for entry in layer.layers
    }


def _replaced_layers(model):
    """{keras class: [its layers in the model]} for the replaced classes
    (`Dense` only where it is not a functional model's list entry)."""
    found = {base: [] for base in REPLACED}
    listed = _listed_entries(model)
    for layer in _sublayers(model):
        for base in REPLACED:
            if isinstance(layer, base):
                if base is keras.layers.Dense and id(layer) in listed:
                    continue
                found[base].append(layer)
    return found


def _our_layer_classes(model):
    return sorted(
        {
            type(layer).__name__
            for layer in _sublayers(model)
            if type(layer).__module__.startswith("bertkd_tf.layers")
        }
    )


# The switch ----------------------------------------------------------------


def test_student_uses_them_and_serializes_unchanged(tmp_path):
    model = _student(fast_layers=True)
    found = _replaced_layers(model)
    # Per encoder layer: 4 projections, 3 dropouts (attention probabilities,
    # 2 residual), 2 layer norms; per decoder layer: 8, 5, 3; plus 2
    # embedding dropouts and 2 final layer norms.
    counts = {base: len(layers) for base, layers in found.items()}
    assert counts == {
        keras.layers.EinsumDense: 2 * 12,
        keras.layers.Dropout: 2 * 8 + 2,
        keras.layers.LayerNormalization: 2 * 5 + 2,
        # The feed-forward layers: 2 an encoder and 2 a decoder layer.
        keras.layers.Dense: 2 * 4,
    }
    for base, layers in found.items():
        assert all(type(layer) is REPLACED[base] for layer in layers)
    # Nothing is left to switch.
    assert set(use_fast_layers(model).values()) == {0}

    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    assert restored.backbone.get_config()["fast_layers"] is True
    for base, layers in _replaced_layers(restored).items():
        assert all(type(layer) is REPLACED[base] for layer in layers)
    np.testing.assert_allclose(
        restored(STUDENT_INPUTS), model(STUDENT_INPUTS), rtol=1e-6, atol=1e-6
    )
    # The weights keep keras' names, so checkpoints of either load.
    assert [w.path for w in restored.weights] == [w.path for w in model.weights]


def test_teacher_uses_them():
    teacher = _teacher(fast_layers=True)
    for base, layers in _replaced_layers(teacher).items():
        assert layers and all(type(layer) is REPLACED[base] for layer in layers)
    # The feed-forward layers switch; the head's dense layers, entries of
    # the teacher's layer list (named by class in .weights.h5), do not.
    assert len(_replaced_layers(teacher)[keras.layers.Dense]) == 2 * 2
    for name in ("mlm_transform_dense", "mlm_output_dense"):
        assert type(teacher.get_layer(name)) is keras.layers.Dense


@pytest.mark.parametrize("kind", ["student", "teacher"])
def test_off_builds_only_stock_keras_and_keras_hub_layers(kind):
    model = _student(False) if kind == "student" else _teacher(False)
    assert _our_layer_classes(model) == []
    # The backbone / teacher add no layer class of their own below them.
    root = model.backbone if kind == "student" else model
    others = sorted(
        {
            f"{type(layer).__module__}.{type(layer).__name__}"
            for layer in _sublayers(root)
            if type(layer).__module__.split(".")[0]
            not in ("keras", "keras_hub")
        }
    )
    assert others == []
    # The replaced classes are there, as keras' own.
    for base, layers in _replaced_layers(model).items():
        assert layers and all(type(layer) is base for layer in layers)
    assert root.get_config()["fast_layers"] is False


@pytest.mark.parametrize("kind", ["student", "teacher"])
def test_on_and_off_compute_the_same_function(kind):
    build = _student if kind == "student" else _teacher
    inputs = STUDENT_INPUTS if kind == "student" else TEACHER_INPUTS
    fast, stock = build(True, seed=0), build(False, seed=5)
    _perturb(fast)
    assert _our_layer_classes(fast) and not _our_layer_classes(stock)
    stock.set_weights(fast.get_weights())
    projection = (
        np.random.default_rng(2)
        .normal(size=fast(inputs).shape)
        .astype("float32")
    )

    def outputs_and_gradients(model):
        with tf.GradientTape() as tape:
            outputs = model(inputs, training=False)
            loss = tf.reduce_sum(outputs * projection)
        return outputs, tape.gradient(loss, model.trainable_variables)

    fast_out, fast_grads = outputs_and_gradients(fast)
    stock_out, stock_grads = outputs_and_gradients(stock)
    assert float(np.max(np.abs(fast_out))) > 0.1
    np.testing.assert_allclose(fast_out, stock_out, rtol=1e-5, atol=1e-6)
    assert len(fast_grads) == len(stock_grads)
    # Some gradients are 0 up to rounding (e.g. attention key biases): the
    # absolute tolerance is relative to the largest gradient.
    scale = max(
        float(np.max(np.abs(tf.convert_to_tensor(g))))
        for g in stock_grads
        if g is not None
    )
    for variable, a, b in zip(
        fast.trainable_variables, fast_grads, stock_grads, strict=True
    ):
        if a is None:
            assert b is None, variable.path
            continue
        np.testing.assert_allclose(
            tf.convert_to_tensor(a),
            tf.convert_to_tensor(b),
            rtol=1e-4,
            atol=1e-6 * scale,
            err_msg=variable.path,
        )


def test_default_follows_the_device(monkeypatch):
    monkeypatch.setattr(fast_layers, "accelerator_visible", lambda: True)
    assert resolve_fast_layers(None) is False
    student, teacher = _student(None), _teacher(None)
    assert _our_layer_classes(student) == _our_layer_classes(teacher) == []
    assert student.backbone.get_config()["fast_layers"] is None
    assert teacher.get_config()["fast_layers"] is None
    monkeypatch.setattr(fast_layers, "accelerator_visible", lambda: False)
    assert resolve_fast_layers(None) is True
    assert _our_layer_classes(_student(None)) == [
        "FastDense",
        "FastDropout",
        "FastLayerNormalization",
        "MatMulEinsumDense",
    ]
    assert resolve_fast_layers(False) is False
    with pytest.raises(ValueError, match="fast_layers"):
        resolve_fast_layers("yes")


def test_this_machine_resolves_by_its_devices():
    visible = bool(
        tf.config.list_logical_devices("GPU")
        or tf.config.list_logical_devices("TPU")
    )
    assert resolve_fast_layers(None) is (not visible)


def test_use_stock_layers_undoes_use_fast_layers():
    model = _student(True)
    before = [type(layer) for layer in _sublayers(model)]
    switched = use_stock_layers(model)
    assert switched == {
        "EinsumDense": 24,
        "Dropout": 18,
        "LayerNormalization": 12,
        "Dense": 8,
    }
    assert _our_layer_classes(model) == []
    use_fast_layers(model)
    assert [type(layer) for layer in _sublayers(model)] == before


# Weights and checkpoints across the switch ---------------------------------


@pytest.mark.parametrize("kind", ["student", "teacher"])
@pytest.mark.parametrize("writer_fast", [True, False])
def test_weights_files_load_across_the_switch(tmp_path, kind, writer_fast):
    build = _student if kind == "student" else _teacher
    inputs = STUDENT_INPUTS if kind == "student" else TEACHER_INPUTS
    writer, reader = build(writer_fast, seed=0), build(not writer_fast, seed=3)
    _perturb(writer)
    path = str(tmp_path / "final.weights.h5")
    trainer.write_weights(writer, path)
    assert weights_file_layout(path) == ("fast" if writer_fast else "stock")
    # Keras alone cannot: the layer list's entries are named by class.
    with pytest.raises(ValueError):
        reader.load_weights(path)
    classes = [type(layer) for layer in _sublayers(reader)]
    trainer.load_final_weights(reader, path)
    assert [type(layer) for layer in _sublayers(reader)] == classes
    for a, b in zip(writer.weights, reader.weights, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=a.path)
    np.testing.assert_allclose(
        reader(inputs), writer(inputs), rtol=1e-5, atol=1e-6
    )


@pytest.mark.parametrize("kind", ["student", "teacher"])
def test_checkpoints_restore_across_the_switch(tmp_path, kind):
    build = _student if kind == "student" else _teacher
    fast, stock = build(True, seed=0), build(False, seed=3)
    _perturb(fast)
    assert len(trainer.seed_states(fast)) == len(trainer.seed_states(stock))
    prefix = tf.train.Checkpoint(
        model=fast, seed_states=trainer.seed_states(fast)
    ).write(str(tmp_path / "ckpt"))
    status = tf.train.Checkpoint(
        model=stock, seed_states=trainer.seed_states(stock)
    ).read(prefix)
    status.assert_consumed()
    for a, b in zip(fast.weights, stock.weights, strict=True):
        np.testing.assert_array_equal(a, b, err_msg=a.path)


def test_loading_layout_switches_back_on_error(tmp_path):
    model = _student(False)
    path = str(tmp_path / "model.weights.h5")
    _student(True).save_weights(path)
    with pytest.raises(RuntimeError):
        with loading_layout(model, path):
            assert _our_layer_classes(model)
            raise RuntimeError("stop")
    assert _our_layer_classes(model) == []


# Artifacts written before the switch existed (commit 9f080e5) ------------


def _old_outputs():
    return np.load(os.path.join(OLD_ARTIFACTS, "outputs.npz"))


def _inputs_of(stored, prefix):
    return {
        key[len(prefix) :]: stored[key]
        for key in stored.files
        if key.startswith(prefix) and not key.endswith("_logits")
    }


@pytest.mark.parametrize("accelerator", [False, True])
def test_old_artifacts_load_with_the_layers_on_and_off(
    monkeypatch, accelerator
):
    # Their configs have no `fast_layers`: None, which follows the device.
    for name in ("teacher/teacher_config.json", "student/student_config.json"):
        with open(os.path.join(OLD_ARTIFACTS, name)) as f:
            assert "fast_layers" not in json.dumps(json.load(f))
    monkeypatch.setattr(fast_layers, "accelerator_visible", lambda: accelerator)
    stored = _old_outputs()
    teacher = artifacts.load_teacher(os.path.join(OLD_ARTIFACTS, "teacher"))
    student = artifacts.load_student(os.path.join(OLD_ARTIFACTS, "student"))
    for model in (teacher, student):
        assert bool(_our_layer_classes(model)) is not accelerator
    np.testing.assert_allclose(
        teacher(_inputs_of(stored, "teacher_")),
        stored["teacher_logits"],
        rtol=1e-5,
        atol=1e-6,
    )
    np.testing.assert_allclose(
        student(_inputs_of(stored, "student_")),
        stored["student_logits"],
        rtol=1e-5,
        atol=1e-6,
    )


@pytest.mark.parametrize("fast", [True, False])
def test_old_checkpoints_restore_with_the_layers_on_and_off(fast):
    stored = _old_outputs()
    for kind, build, prefix in (
        ("teacher", _teacher, "teacher_"),
        ("student", _student, "student_"),
    ):
        model = build(fast, seed=9)
        path = os.path.join(OLD_ARTIFACTS, kind, "checkpoint", "ckpt-1")
        tf.train.Checkpoint(
            model=model, seed_states=trainer.seed_states(model)
        ).read(path).assert_consumed()
        np.testing.assert_allclose(
            model(_inputs_of(stored, prefix)),
            stored[f"{kind}_logits"],
            rtol=1e-5,
            atol=1e-6,
        )
