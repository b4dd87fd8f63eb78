"""The test battery of every serializable class of bertkd_tf.

Each class in `CLASSES` below gets `run_serialization_test` (config round
trips, every constructor argument in `get_config`, same outputs for the same
weights); layers and models also `run_precision_test` (mixed_bfloat16) and
`run_model_saving_test` (`.keras` file and `save_weights`). Losses,
schedules and the optimizer are saved inside compiled models.
`test_every_serializable_class_is_in_the_battery` walks the source so a new
`get_config` or `register_keras_serializable` class without a row here
fails.
"""

import ast
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.layers.fast_dense import FastDense
from bertkd_tf.layers.fast_dropout import FastDropout
from bertkd_tf.layers.fast_layer_normalization import FastLayerNormalization
from bertkd_tf.layers.matmul_projections import MatMulEinsumDense

# --- Import table (the one place that names module paths) ------------------
from bertkd_tf.losses.token_cross_entropy import TokenCrossEntropy
from bertkd_tf.losses.top_k_distillation_loss import TopKDistillationLoss
from bertkd_tf.models.cmlm_preprocessor import CMLMPreprocessor
from bertkd_tf.models.cmlm_teacher import CMLMTeacher
from bertkd_tf.models.online_teacher import CircularMaskTeacher
from bertkd_tf.models.recurrent_seq2seq import RecurrentSeq2Seq
from bertkd_tf.models.transformer_backbone import TransformerSeq2SeqBackbone
from bertkd_tf.models.transformer_seq2seq import TransformerSeq2Seq
from bertkd_tf.training.distillation_model import DistillationModel
from bertkd_tf.training.fused_adam import FusedAdam
from bertkd_tf.training.schedules import LinearWarmupDecay, NoamSchedule
from tests.testing import (
    assert_outputs_close,
    run_model_saving_test,
    run_precision_test,
    run_serialization_test,
)

# Classes with a `get_config` that are not Keras-serializable, and why.
NOT_KERAS_SERIALIZABLE = {
    # A tf.Module exported as a SavedModel; its get_config is the settings
    # record written next to the export (tests/export/serving_module_test.py).
    "ServingModule",
}

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VOCAB, BERT_VOCAB = 24, 30
BERT_IDS = np.array([0, 1, 2, 3, 4, 12, 7, 29, 20, 9, 10, 11], np.int32)


# --- Fixed inputs ------------------------------------------------------------


def _rng():
    return np.random.default_rng(0)


def _student_features():
    rng = _rng()
    x = {
        "encoder_token_ids": rng.integers(5, VOCAB, (2, 5)).astype("int32"),
        "encoder_padding_mask": np.array([[1] * 5, [1, 1, 1, 0, 0]], "int32"),
        "decoder_token_ids": rng.integers(5, VOCAB, (2, 4)).astype("int32"),
        "decoder_padding_mask": np.array([[1] * 4, [1, 1, 0, 0]], "int32"),
    }
    return x


def _teacher_inputs():
    rng = _rng()
    return {
        "token_ids": rng.integers(0, BERT_VOCAB, (2, 7)).astype("int32"),
        "segment_ids": np.array([[0, 0, 0, 1, 1, 1, 1]] * 2, "int32"),
        "padding_mask": np.array([[1] * 7, [1] * 5 + [0, 0]], "int32"),
        "mask_positions": np.array([[3, 5], [4, 4]], "int32"),
    }


def _floats(*shape):
    return _rng().normal(size=shape).astype("float32")


# --- Factories and run functions --------------------------------------------


def _einsum_dense(dtype=None):
    return MatMulEinsumDense(
        "abc,cde->abde",
        output_shape=(None, 2, 3),
        bias_axes="de",
        activation="relu",
        dtype=dtype,
    )


def _dense(dtype=None):
    return FastDense(5, activation="gelu", dtype=dtype)


def _layer_norm(dtype=None):
    layer = FastLayerNormalization(epsilon=1e-5, dtype=dtype)
    layer.build((None, None, 8))
    layer.gamma.assign(1.0 + _floats(8))
    layer.beta.assign(_floats(8))
    return layer


def _dropout(dtype=None):
    return FastDropout(0.25, seed=3, dtype=dtype)


def _backbone(dtype=None, dropout=0.1):
    keras.utils.set_random_seed(0)
    return TransformerSeq2SeqBackbone(
        vocabulary_size=VOCAB,
        num_layers=1,
        num_decoder_layers=2,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        dropout=dropout,
        max_sequence_length=32,
        dtype=dtype,
    )


def _student(dtype=None, dropout=0.1):
    return TransformerSeq2Seq(_backbone(dtype, dropout))


def _recurrent_student(dtype=None, dropout=None):
    del dropout  # The GRU student has no dropout.
    keras.utils.set_random_seed(0)
    return RecurrentSeq2Seq(
        vocabulary_size=VOCAB,
        embedding_dim=8,
        hidden_dim=12,
        max_sequence_length=32,
        dtype=dtype,
    )


def _teacher(dtype=None, dropout=0.1):
    keras.utils.set_random_seed(0)
    return CMLMTeacher.from_scratch(
        bert_ids=BERT_IDS,
        vocabulary_size=BERT_VOCAB,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=16,
        dropout=dropout,
        dtype=dtype,
    )


def _online_teacher(dtype=None, dropout=0.1):
    return CircularMaskTeacher(_teacher(dtype, dropout), num_passes=2, top_k=3)


def _call_online_teacher(model):
    # The logits (the ids of near-equal bfloat16 logits may swap).
    return model(
        {
            "source_ids": np.array([[5, 6, 7], [8, 0, 0]], "int32"),
            "target_ids": np.array([[9, 10, 11, 5], [6, 7, 0, 0]], "int32"),
        },
        training=False,
    )["teacher_logits"]


def _distillation_model(dtype=None, dropout=0.1):
    return DistillationModel(
        _student(dtype, dropout),
        distillation_weight=0.3,
        temperature=2.0,
        label_smoothing=0.05,
        top_k=3,
    )


def _call_student_features(model):
    return model(_student_features(), training=False)


def _call_teacher(model):
    return model(_teacher_inputs(), training=False)


def _call_floats(layer):
    return layer(_floats(2, 3, 8), training=False)


def _call_dropout_training(layer):
    # Fresh objects with the same seed draw the same first mask; the battery
    # calls each object once before comparing, so compare a fresh pair.
    return layer(np.ones((4, 16), "float32"), training=True)


def _preprocessor():
    return CMLMPreprocessor(
        BERT_IDS,
        max_sequence_length=12,
        mask_probability=0.5,
        max_predictions=4,
        pad_to_max_sequence_length=True,
        seed=7,
    )


def _call_preprocessor(preprocessor):
    return preprocessor(
        {
            "id": tf.constant([3, 4], tf.int64),
            "source_ids": tf.ragged.constant([[5, 6, 7], [8]]),
            "target_ids": tf.ragged.constant([[9, 10], [11, 5, 6, 7]]),
        }
    )


def _loss_inputs():
    rng = _rng()
    labels = rng.integers(0, VOCAB, (2, 4)).astype("int32")
    y = {
        "labels": labels,
        "teacher_ids": rng.integers(0, VOCAB, (2, 4, 3)).astype("int32"),
        "teacher_logits": rng.normal(size=(2, 4, 3)).astype("float32"),
    }
    logits = rng.normal(size=(2, 4, VOCAB)).astype("float32")
    weights = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], "float32")
    return y, logits, weights


def _call_token_loss(loss, dtype="float32"):
    y, logits, weights = _loss_inputs()
    return loss(y["labels"], tf.cast(logits, dtype), sample_weight=weights)


def _call_kd_loss(loss, dtype="float32"):
    y, logits, weights = _loss_inputs()
    return loss(y, tf.cast(logits, dtype), sample_weight=weights)


def _call_schedule(schedule):
    return tf.stack([schedule(step) for step in (0, 1, 3, 9, 20, 100)])


def _call_optimizer(optimizer):
    """Variables after three updates from fixed gradients (a fresh set of
    variables each call, so every call is the same computation)."""
    rng = _rng()
    variables = [
        keras.Variable(rng.normal(size=(3, 2)).astype("float32"), name="w"),
        keras.Variable(np.zeros((2,), "float32"), name="bias"),
    ]
    optimizer = type(optimizer).from_config(optimizer.get_config())
    if "bias" in getattr(optimizer, "_exclude_from_weight_decay_names", []):
        optimizer.exclude_from_weight_decay(var_names=["bias"])
    optimizer.build(variables)
    for _ in range(3):
        grads = [
            tf.constant(rng.normal(size=v.shape).astype("float32"))
            for v in variables
        ]
        optimizer.apply(grads, variables)
    return [v.numpy() for v in variables]


# name: (factory, run_fn, kind); kind decides the checks: "layer"
# (+ precision, + saving inside a functional model), "model" (+ precision,
# + saving), "plain" (serialization; losses, schedules and the optimizer are
# also saved inside the compiled models below).
CLASSES = {
    "MatMulEinsumDense": (_einsum_dense, _call_floats, "layer"),
    "FastLayerNormalization": (_layer_norm, _call_floats, "layer"),
    "FastDense": (_dense, _call_floats, "layer"),
    "FastDropout": (_dropout, _call_floats, "layer"),
    "TransformerSeq2SeqBackbone": (_backbone, _call_student_features, "model"),
    "TransformerSeq2Seq": (_student, _call_student_features, "model"),
    "RecurrentSeq2Seq": (_recurrent_student, _call_student_features, "model"),
    "CMLMTeacher": (_teacher, _call_teacher, "model"),
    "CircularMaskTeacher": (_online_teacher, _call_online_teacher, "model"),
    "DistillationModel": (
        _distillation_model,
        _call_student_features,
        "model",
    ),
    "CMLMPreprocessor": (_preprocessor, _call_preprocessor, "plain"),
    "TokenCrossEntropy": (
        lambda: TokenCrossEntropy(label_smoothing=0.2, name="xent"),
        _call_token_loss,
        "plain",
    ),
    "TopKDistillationLoss": (
        lambda: TopKDistillationLoss(temperature=3.0, form="hinton"),
        _call_kd_loss,
        "plain",
    ),
    "LinearWarmupDecay": (
        lambda: LinearWarmupDecay(1e-3, warmup_steps=4, total_steps=50),
        _call_schedule,
        "plain",
    ),
    "NoamSchedule": (
        lambda: NoamSchedule(2.0, hidden_dim=16, warmup_steps=5),
        _call_schedule,
        "plain",
    ),
    "FusedAdam": (
        lambda: FusedAdam(
            learning_rate=NoamSchedule(2.0, 16, 4),
            beta_2=0.98,
            weight_decay=0.01,
            global_clipnorm=1.0,
        ),
        _call_optimizer,
        "plain",
    ),
}
# Outputs under mixed_bfloat16: the task models return float32 logits.
# Constructor arguments a class's get_config may omit, and why.
NOT_IN_CONFIG = {
    # keras.layers.EinsumDense's own config writes them only when LoRA /
    # GPTQ is on (the subclass adds no arguments).
    "MatMulEinsumDense": (
        "lora_rank",
        "lora_alpha",
        "gptq_unpacked_column_size",
    ),
    # keras.layers.Dense's own config, likewise (and it never writes the
    # activity_regularizer its constructor takes: keras' behaviour).
    "FastDense": (
        "activity_regularizer",
        "lora_rank",
        "lora_alpha",
        "gptq_unpacked_column_size",
    ),
}
# Layers that compute in float32 under mixed_bfloat16, on purpose: the
# logits cast, and the sinusoidal positions (bf16 cannot hold positions
# above 256 exactly).
_STUDENT_FLOAT32 = ("position_encoding", "logits")
FLOAT32_LAYERS = {
    "TransformerSeq2SeqBackbone": ("position_encoding",),
    "TransformerSeq2Seq": _STUDENT_FLOAT32,
    "CMLMTeacher": ("logits",),
    "CircularMaskTeacher": ("logits",),
    "DistillationModel": _STUDENT_FLOAT32,
}
PRECISION_OUTPUT = {
    "MatMulEinsumDense": "bfloat16",
    "FastLayerNormalization": "bfloat16",
    "FastDropout": "bfloat16",
    "FastDense": "bfloat16",
    "TransformerSeq2SeqBackbone": "bfloat16",
    "TransformerSeq2Seq": "float32",
    "RecurrentSeq2Seq": "float32",
    "CMLMTeacher": "float32",
    "CircularMaskTeacher": "float32",
    "DistillationModel": "float32",
}


def _build(name, dtype=None):
    factory = CLASSES[name][0]
    if CLASSES[name][2] == "plain":
        return factory()
    return factory(dtype=dtype)


# --- The battery -------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_serialization(name):
    _, run_fn, _ = CLASSES[name]
    instance = _build(name)
    revived = run_serialization_test(
        instance, run_fn, not_in_config=NOT_IN_CONFIG.get(name, ())
    )
    assert revived.get_config() == instance.get_config()


def test_dropout_seed_survives_the_config():
    """Same seed in the config: a revived dropout draws the same masks."""
    layer = _dropout()
    revived = FastDropout.from_config(layer.get_config())
    first = _call_dropout_training(layer)
    assert 0 < np.mean(first.numpy() == 0) < 1
    assert_outputs_close(_call_dropout_training(revived), first)


LAYERS_AND_MODELS = sorted(
    name for name, case in CLASSES.items() if case[2] != "plain"
)


# Element-wise tolerance of the whole encoder-decoder stacks (2+2 layers
# here): bfloat16 rounding (2^-8 relative) adds up over the layers. On an
# AVX2-only CPU (no native bf16; session 13) their outputs read 0.9% relative
# error in the norm, but single elements up to 0.035 off at an output scale
# of ~0.8, past the 2e-2 that held on AVX-512-bf16 and AMX machines; the
# norm bound (2e-2) stays the same for every class.
PRECISION_ATOL = {
    "TransformerSeq2SeqBackbone": 5e-2,
    "TransformerSeq2Seq": 5e-2,
    "DistillationModel": 5e-2,
}


@pytest.mark.parametrize("name", LAYERS_AND_MODELS)
def test_precision(name):
    _, run_fn, _ = CLASSES[name]
    run_precision_test(
        lambda dtype: _build(name, dtype),
        run_fn,
        expected_output_dtype=PRECISION_OUTPUT[name],
        float32_layers=FLOAT32_LAYERS.get(name, ()),
        atol=PRECISION_ATOL.get(name),
    )


@pytest.mark.parametrize(
    "name, call",
    [("TokenCrossEntropy", _call_token_loss), ("TopKDistillationLoss", None)],
)
def test_losses_of_bfloat16_logits_are_float32_and_close(name, call):
    loss = CLASSES[name][0]()
    call = call or _call_kd_loss
    bf16 = call(loss, dtype="bfloat16")
    fp32 = call(loss, dtype="float32")
    assert bf16.dtype == "float32"
    np.testing.assert_allclose(bf16, fp32, rtol=2e-2)


def _functional(layer, example):
    inputs = keras.Input(shape=example.shape[1:], dtype=example.dtype)
    return keras.Model(inputs, layer(inputs))


@pytest.mark.parametrize("name", LAYERS_AND_MODELS)
def test_model_saving(name, tmp_path):
    _, run_fn, kind = CLASSES[name]
    instance = _build(name)
    if kind == "layer":
        example = _floats(2, 3, 8)
        model = _functional(instance, example)

        def run_fn(m):
            return m(example, training=False)

        model_types = {type(layer) for layer in model.layers}
        assert type(instance) in model_types
    else:
        model = instance
    run_fn(model)
    loaded = run_model_saving_test(model, run_fn, str(tmp_path))
    if kind == "layer":
        # The layer class itself came back (by its registered name).
        assert type(instance) in {type(layer) for layer in loaded[0].layers}


# --- Compiled models: losses, optimizer and schedules inside a .keras file ---


def _one_step_equal(model, restored, x, y, sample_weight=None):
    """A training step on both models gives the same loss and weights."""
    a = model.train_on_batch(x, y, sample_weight=sample_weight)
    b = restored.train_on_batch(x, y, sample_weight=sample_weight)
    np.testing.assert_allclose(b, a, rtol=1e-6)
    for v, w in zip(model.weights, restored.weights):
        np.testing.assert_allclose(w.numpy(), v.numpy(), rtol=1e-6, atol=1e-7)


def test_compiled_teacher_saving_keeps_loss_optimizer_and_schedule(tmp_path):
    from bertkd_tf.runs.train_teacher import compile_teacher

    teacher = _teacher(dropout=0.0)
    # No weight decay: Keras optimizers (AdamW too) do not serialize
    # `exclude_from_weight_decay`, so a loaded optimizer would decay the
    # biases and LayerNorms. The runs resume from tf.train.Checkpoint into
    # a model compiled by `compile_teacher`, which sets the exclusions.
    compile_teacher(
        teacher,
        peak_learning_rate=1e-2,
        warmup_steps=2,
        total_steps=20,
        weight_decay=0.0,
    )
    x = _teacher_inputs()
    y = np.array([[5, 6], [7, 3]], "int32")
    w = np.array([[1, 1], [1, 0]], "float32")
    teacher.train_on_batch(x, y, sample_weight=w)  # optimizer state != 0
    (restored, _) = run_model_saving_test(teacher, _call_teacher, str(tmp_path))
    assert isinstance(restored.loss, TokenCrossEntropy)
    assert restored.loss.label_smoothing == 0.0
    assert isinstance(restored.optimizer, FusedAdam)
    schedule = restored.optimizer._learning_rate
    assert isinstance(schedule, LinearWarmupDecay)
    assert (
        schedule.get_config() == teacher.optimizer._learning_rate.get_config()
    )
    assert int(restored.optimizer.iterations) == 1
    _one_step_equal(teacher, restored, x, y, w)


def test_compiled_distillation_model_saving_resumes_training(tmp_path):
    model = _distillation_model(dropout=0.0)
    model.compile(
        optimizer=FusedAdam(learning_rate=NoamSchedule(1.0, 8, 4)),
        jit_compile=False,
    )
    x = _student_features()
    rng = _rng()
    y = {
        "labels": rng.integers(5, VOCAB, (2, 4)).astype("int32"),
        "teacher_ids": rng.integers(0, VOCAB, (2, 4, 3)).astype("int32"),
        "teacher_logits": rng.normal(size=(2, 4, 3)).astype("float32"),
    }
    w = x["decoder_padding_mask"].astype("float32")
    model.train_on_batch(x, y, sample_weight=w)
    (restored, _) = run_model_saving_test(
        model, _call_student_features, str(tmp_path)
    )
    assert isinstance(restored.optimizer._learning_rate, NoamSchedule)
    assert restored.distillation_weight == pytest.approx(0.3)
    _one_step_equal(model, restored, x, y, w)


# --- Completeness ------------------------------------------------------------


def _serializable_classes_in_source():
    """Classes of bertkd_tf that define `get_config` or are registered."""
    found = {}
    package = os.path.join(REPO, "bertkd_tf")
    for root, _, files in os.walk(package):
        for file in files:
            if not file.endswith(".py"):
                continue
            path = os.path.join(root, file)
            with open(path) as f:
                tree = ast.parse(f.read(), path)
            for node in ast.walk(tree):
                if not isinstance(node, ast.ClassDef):
                    continue
                registered = any(
                    "register_keras_serializable" in ast.unparse(d)
                    for d in node.decorator_list
                )
                has_config = any(
                    isinstance(item, ast.FunctionDef)
                    and item.name == "get_config"
                    for item in node.body
                )
                if registered or has_config:
                    found[node.name] = os.path.relpath(path, REPO)
    return found


def test_every_serializable_class_is_in_the_battery():
    found = _serializable_classes_in_source()
    assert len(found) >= len(CLASSES)
    missing = sorted(set(found) - set(CLASSES) - NOT_KERAS_SERIALIZABLE)
    assert not missing, {name: found[name] for name in missing}
    gone = sorted(set(CLASSES) - set(found))
    assert not gone, gone
