"""Tests of TopKDistillationLoss."""

import keras
import numpy as np
import pytest

from bertkd_tf.losses.top_k_distillation_loss import TopKDistillationLoss


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def make_batch(k, vocab=9, seed=0):
    rng = np.random.default_rng(seed)
    student = rng.normal(size=(2, 3, vocab)).astype("float32") * 2
    teacher = rng.normal(size=(2, 3, vocab)).astype("float32") * 4
    ids = np.argsort(-teacher, axis=-1)[..., :k].astype("int32")
    y = {
        "labels": np.ones((2, 3), "int32"),
        "teacher_ids": ids,
        "teacher_logits": np.take_along_axis(teacher, ids, -1),
    }
    weights = np.array([[1, 1, 1], [1, 1, 0]], "float32")
    return y, student, teacher, weights


@pytest.mark.parametrize("temperature", [1.0, 2.0, 10.0])
def test_full_top_k_equals_dense_cross_entropy(temperature):
    vocab = 9
    y, student, teacher, weights = make_batch(k=vocab, vocab=vocab)
    q = np.exp(log_softmax(teacher.astype("float64") / temperature))
    per_token = -(q * log_softmax(student.astype("float64"))).sum(-1)
    expected = (per_token * weights).sum() / weights.sum()
    value = TopKDistillationLoss(temperature)(y, student, weights)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)


def test_top_k_renormalises_over_kept_ids():
    y, student, _, weights = make_batch(k=3)
    temperature = 5.0
    q = np.exp(log_softmax(y["teacher_logits"].astype("float64") / 5.0))
    log_p = log_softmax(student.astype("float64"))
    picked = np.take_along_axis(log_p, y["teacher_ids"], -1)
    per_token = -(q * picked).sum(-1)
    expected = (per_token * weights).sum() / weights.sum()
    value = TopKDistillationLoss(temperature)(y, student, weights)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)


def test_hinton_form_tempers_student_and_scales():
    vocab, temperature = 9, 4.0
    y, student, teacher, weights = make_batch(k=vocab, vocab=vocab, seed=1)
    q = np.exp(log_softmax(teacher.astype("float64") / temperature))
    log_p = log_softmax(student.astype("float64") / temperature)
    per_token = -(q * log_p).sum(-1) * temperature**2
    expected = (per_token * weights).sum() / weights.sum()
    loss = TopKDistillationLoss(temperature, form="hinton")
    np.testing.assert_allclose(float(loss(y, student, weights)), expected, 1e-5)


def test_padding_never_counts():
    y, student, _, weights = make_batch(k=4, seed=2)
    loss = TopKDistillationLoss(2.0)
    base = float(loss(y, student, weights))
    changed = {k: v.copy() for k, v in y.items()}
    changed["teacher_logits"][1, 2] = 1e4
    changed["teacher_ids"][1, 2] = 0
    other = student.copy()
    other[1, 2] = -50.0
    assert float(loss(changed, other, weights)) == pytest.approx(base)


def test_no_gradient_to_teacher_logits():
    import tensorflow as tf

    y, student, _, weights = make_batch(k=4, seed=3)
    teacher_logits = tf.Variable(y["teacher_logits"])
    student_var = tf.Variable(student)
    with tf.GradientTape() as tape:
        value = TopKDistillationLoss(2.0)(
            {"teacher_ids": y["teacher_ids"], "teacher_logits": teacher_logits},
            1.0 * student_var,
            weights,
        )
    g_teacher, g_student = tape.gradient(value, [teacher_logits, student_var])
    assert g_teacher is None
    assert np.abs(g_student.numpy()).sum() > 0


def test_config_round_trip():
    loss = TopKDistillationLoss(temperature=10.0, form="hinton")
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(clone, TopKDistillationLoss)
    assert clone.get_config() == loss.get_config()
    assert clone.temperature == 10.0 and clone.form == "hinton"


def test_bad_arguments_raise():
    with pytest.raises(ValueError, match="temperature=0"):
        TopKDistillationLoss(temperature=0)
    with pytest.raises(ValueError, match="form='soft'"):
        TopKDistillationLoss(2.0, form="soft")
    with pytest.raises(ValueError, match="teacher_ids"):
        TopKDistillationLoss(2.0)(
            np.zeros((1, 2), "int32"), np.zeros((1, 2, 5), "float32")
        )
