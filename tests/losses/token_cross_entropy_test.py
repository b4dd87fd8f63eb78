"""Tests of TokenCrossEntropy."""

import keras
import numpy as np
import pytest

from bertkd_tf.losses.token_cross_entropy import TokenCrossEntropy


def log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def make_batch(seed=0, vocab=11):
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(2, 4, vocab)).astype("float32") * 3
    labels = rng.integers(1, vocab, size=(2, 4)).astype("int32")
    labels[1, 2:] = 0
    weights = (labels != 0).astype("float32")
    return labels, logits, weights


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.3])
def test_closed_form(eps):
    labels, logits, weights = make_batch()
    vocab = logits.shape[-1]
    log_p = log_softmax(logits.astype("float64"))
    nll = -np.take_along_axis(log_p, labels[..., None], -1)[..., 0]
    smooth = -log_p.sum(-1)
    per_token = (1 - eps) * nll + eps / vocab * smooth
    expected = (per_token * weights).sum() / weights.sum()
    value = TokenCrossEntropy(label_smoothing=eps)(labels, logits, weights)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)


def test_smoothed_target_distribution():
    # Against the dense definition: CE to (1 - eps) one_hot + eps / V.
    labels, logits, weights = make_batch(seed=1)
    eps, vocab = 0.1, logits.shape[-1]
    target = (1 - eps) * np.eye(vocab)[labels] + eps / vocab
    per_token = -(target * log_softmax(logits.astype("float64"))).sum(-1)
    expected = (per_token * weights).sum() / weights.sum()
    value = TokenCrossEntropy(0.1)(labels, logits, sample_weight=weights)
    np.testing.assert_allclose(float(value), expected, rtol=1e-5)


def test_no_smoothing_equals_keras_sparse_crossentropy():
    labels, logits, weights = make_batch(seed=2)
    ours = TokenCrossEntropy(label_smoothing=0.0)(labels, logits, weights)
    per_token = keras.losses.sparse_categorical_crossentropy(
        labels, logits, from_logits=True
    )
    expected = (np.asarray(per_token) * weights).sum() / weights.sum()
    np.testing.assert_allclose(float(ours), expected, rtol=1e-5)


def test_padding_never_counts():
    labels, logits, weights = make_batch(seed=3)
    loss = TokenCrossEntropy(0.1)
    base = float(loss(labels, logits, weights))
    changed = logits.copy()
    changed[1, 2:] = 100.0 * np.random.default_rng(0).normal(
        size=changed[1, 2:].shape
    )
    assert float(loss(labels, changed, weights)) == pytest.approx(base)
    # Appending more padding does not change the mean.
    padded_logits = np.concatenate([logits, logits[:, :3]], axis=1)
    padded_labels = np.concatenate([labels, np.zeros((2, 3), "int32")], 1)
    padded_w = np.concatenate([weights, np.zeros((2, 3), "float32")], 1)
    assert float(loss(padded_labels, padded_logits, padded_w)) == (
        pytest.approx(base, rel=1e-6)
    )


def test_gradient_is_softmax_minus_target():
    import tensorflow as tf

    labels, logits, weights = make_batch(seed=4)
    eps, vocab = 0.1, logits.shape[-1]
    logits_var = tf.Variable(logits)
    with tf.GradientTape() as tape:
        value = TokenCrossEntropy(eps)(labels, 1.0 * logits_var, weights)
    grad = tape.gradient(value, logits_var).numpy()
    target = (1 - eps) * np.eye(vocab)[labels] + eps / vocab
    expected = (
        (np.exp(log_softmax(logits)) - target)
        * weights[..., None]
        / weights.sum()
    )
    np.testing.assert_allclose(grad, expected, atol=1e-6)


def test_bfloat16_logits_give_float32_loss():
    labels, logits, weights = make_batch(seed=5)
    value = TokenCrossEntropy(0.1)(
        labels, keras.ops.cast(logits, "bfloat16"), weights
    )
    assert value.dtype == "float32"


def test_config_round_trip():
    loss = TokenCrossEntropy(label_smoothing=0.2)
    config = loss.get_config()
    assert config["label_smoothing"] == 0.2
    assert config["reduction"] == "mean_with_sample_weight"
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(clone, TokenCrossEntropy)
    assert clone.get_config() == config


def test_bad_smoothing_raises():
    with pytest.raises(ValueError, match="label_smoothing=1.2"):
        TokenCrossEntropy(label_smoothing=1.2)
