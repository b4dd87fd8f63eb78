"""C-MLM packing and masking: layout, truncation, masking rules, seeds."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.models.cmlm_preprocessor import CMLMPreprocessor

# Task id i -> BERT id 100 + i, so task and BERT ids never coincide.
BERT_IDS = np.arange(60, dtype=np.int32) + 100
PAD, CLS, SEP, MASK = 100, 102, 103, 104


def _batch(sources, targets, ids=None, epoch=None):
    features = {
        "id": tf.constant(
            list(range(len(sources))) if ids is None else ids, tf.int64
        ),
        "source_ids": tf.ragged.constant(sources, tf.int32),
        "target_ids": tf.ragged.constant(targets, tf.int32),
    }
    if epoch is not None:
        features["epoch"] = tf.fill(
            [len(sources)], tf.constant(epoch, tf.int64)
        )
    return features


def _random_pairs(n, source_length, target_length, seed=0):
    rng = np.random.default_rng(seed)
    sources = rng.integers(5, 60, size=(n, source_length)).tolist()
    targets = rng.integers(5, 60, size=(n, target_length)).tolist()
    return sources, targets


def test_layout_segments_and_padding():
    pre = CMLMPreprocessor(BERT_IDS, max_sequence_length=16)
    packed = pre.pack(
        tf.ragged.constant([[7, 8, 9], [10]]),
        tf.ragged.constant([[11, 12], [13, 14, 15]]),
    )
    np.testing.assert_array_equal(
        packed["token_ids"],
        [
            [CLS, 107, 108, 109, SEP, 111, 112, SEP],
            [CLS, 110, SEP, 113, 114, 115, SEP, PAD],
        ],
    )
    np.testing.assert_array_equal(
        packed["segment_ids"],
        [[0, 0, 0, 0, 0, 1, 1, 1], [0, 0, 0, 1, 1, 1, 1, 0]],
    )
    np.testing.assert_array_equal(
        packed["padding_mask"],
        [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1, 0]],
    )
    np.testing.assert_array_equal(packed["target_start"], [5, 3])
    np.testing.assert_array_equal(packed["target_length"], [2, 3])
    for value in packed.values():
        assert value.dtype == tf.int32


@pytest.mark.parametrize(
    "source_length, target_length, expected",
    [
        (10, 3, (6, 3)),  # Longer source cut first.
        (3, 10, (3, 6)),  # Longer target cut first.
        (8, 8, (5, 4)),  # Both cut; the target loses the tie.
        (7, 2, (7, 2)),  # Fits exactly: 7 + 2 + 3 = 12.
    ],
)
def test_truncates_longer_side_first(source_length, target_length, expected):
    pre = CMLMPreprocessor(BERT_IDS, max_sequence_length=12)
    source = list(range(10, 10 + source_length))
    target = list(range(30, 30 + target_length))
    packed = pre.pack(tf.constant(source), tf.constant(target))
    kept_source, kept_target = expected
    np.testing.assert_array_equal(
        packed["token_ids"],
        np.array([2] + source[:kept_source] + [3] + target[:kept_target] + [3])
        + 100,
    )
    assert int(packed["target_start"]) == kept_source + 2
    assert int(packed["target_length"]) == kept_target
    segments = packed["segment_ids"].numpy()
    assert segments.tolist() == [0] * (kept_source + 2) + [1] * (
        kept_target + 1
    )


def test_only_target_tokens_and_final_slot_are_masked():
    sources, targets = _random_pairs(300, 6, 5)
    pre = CMLMPreprocessor(BERT_IDS, max_sequence_length=32, seed=3)
    features = _batch(sources, targets)
    x, y, w = pre(features)
    packed = pre.pack(features["source_ids"], features["target_ids"])
    token_ids, plain = x["token_ids"].numpy(), packed["token_ids"].numpy()
    positions, weights, labels = (
        x["mask_positions"].numpy(),
        w.numpy(),
        y.numpy(),
    )
    for row in range(300):
        real = positions[row][weights[row] > 0]
        changed = np.flatnonzero(token_ids[row] != plain[row])
        # Every masked position is listed, and only masked positions change.
        assert sorted(real.tolist()) == changed.tolist()
        assert (token_ids[row, changed] == MASK).all()
        # Masks only in the target and its final slot (positions 8..13).
        assert (real >= 8).all() and (real <= 13).all()
        expected = np.array(targets[row] + [3])[real - 8]
        np.testing.assert_array_equal(labels[row][weights[row] > 0], expected)
    np.testing.assert_array_equal(x["segment_ids"], packed["segment_ids"])
    np.testing.assert_array_equal(x["padding_mask"], packed["padding_mask"])


def test_mask_rate_and_final_slot_rule():
    # Long targets: the ">= 1 mask" redraw barely moves the rate.
    n, target_length = 1000, 40
    sources, targets = _random_pairs(n, 3, target_length, seed=1)
    pre = CMLMPreprocessor(BERT_IDS, max_sequence_length=64, seed=11)
    x, y, w = pre(_batch(sources, targets))
    weights = w.numpy() > 0
    positions = x["mask_positions"].numpy()
    final_slot = 3 + 2 + target_length
    is_final = (positions == final_slot) & weights
    token_rate = (weights & ~is_final).sum() / (n * target_length)
    # Binomial standard error: sqrt(.15 * .85 / 40000) = 0.0018.
    assert abs(token_rate - 0.15) < 0.008, token_rate
    final_rate = is_final.sum() / n  # std error 0.011
    assert abs(final_rate - 0.15) < 0.05, final_rate
    # A masked final slot is [MASK] labelled EOS; otherwise it stays [SEP].
    np.testing.assert_array_equal(y.numpy()[is_final], 3)
    final_tokens = x["token_ids"].numpy()[:, final_slot]
    np.testing.assert_array_equal(
        final_tokens, np.where(is_final.any(axis=1), MASK, SEP)
    )


def test_at_least_one_target_token_masked():
    sources, targets = _random_pairs(400, 4, 1, seed=2)
    pre = CMLMPreprocessor(BERT_IDS, max_sequence_length=16, seed=5)
    x, _, w = pre(_batch(sources, targets))
    positions = x["mask_positions"].numpy()
    target_token = (positions == 6) & (w.numpy() > 0)  # The one target token.
    assert target_token.any(axis=1).all()
    # The final slot still follows its own draw.
    final = ((positions == 7) & (w.numpy() > 0)).any(axis=1)
    assert 0.05 < final.mean() < 0.3


def test_empty_target_masks_final_slot():
    pre = CMLMPreprocessor(BERT_IDS, max_sequence_length=16)
    x, y, w = pre(_batch([[7, 8]], [[]]))
    np.testing.assert_array_equal(x["mask_positions"], [[4]])
    np.testing.assert_array_equal(y, [[3]])
    np.testing.assert_array_equal(x["token_ids"], [[CLS, 107, 108, SEP, MASK]])


def test_deterministic_and_independent_of_batching():
    sources, targets = _random_pairs(6, 5, 7, seed=4)
    pre = CMLMPreprocessor(BERT_IDS, max_sequence_length=32, seed=9)
    features = _batch(sources, targets, ids=[10, 11, 12, 13, 14, 15])
    x1, y1, _ = pre(features)
    x2, y2, _ = pre(features)
    np.testing.assert_array_equal(x1["token_ids"], x2["token_ids"])
    # One example at a time inside tf.data (parallel map): same masks.
    dataset = tf.data.Dataset.from_tensor_slices(features).map(
        pre, num_parallel_calls=3, deterministic=False
    )
    singles = {}
    for x, y, _ in dataset:
        key = int(x["token_ids"].shape[0])
        singles.setdefault(key, []).append((x, y))
    row_tokens = {
        tuple(x["token_ids"].numpy()) for xs in singles.values() for x, _ in xs
    }
    batched_tokens = {
        tuple(row[: 5 + 7 + 3]) for row in x1["token_ids"].numpy()
    }
    assert row_tokens == batched_tokens
    # Another seed or another epoch: other masks.
    other = CMLMPreprocessor(BERT_IDS, max_sequence_length=32, seed=10)
    assert not np.array_equal(other(features)[0]["token_ids"], x1["token_ids"])
    epoch = pre(_batch(sources, targets, [10, 11, 12, 13, 14, 15], epoch=1))
    assert not np.array_equal(epoch[0]["token_ids"], x1["token_ids"])


def test_dense_padded_input_equals_ragged():
    sources, targets = [[7, 8, 9], [10]], [[11, 12], [13, 14, 15]]
    pre = CMLMPreprocessor(BERT_IDS, max_sequence_length=16, seed=1)
    ragged = pre(_batch(sources, targets))
    dense = pre(
        {
            "id": tf.constant([0, 1], tf.int64),
            "source_ids": tf.constant([[7, 8, 9], [10, 0, 0]]),
            "target_ids": tf.constant([[11, 12, 0], [13, 14, 15]]),
        }
    )
    for a, b in zip(tf.nest.flatten(ragged), tf.nest.flatten(dense)):
        np.testing.assert_array_equal(a, b)


def test_max_predictions_fixes_shape_and_caps():
    sources, targets = _random_pairs(50, 3, 30, seed=6)
    pre = CMLMPreprocessor(
        BERT_IDS,
        max_sequence_length=40,
        mask_probability=0.5,
        max_predictions=4,
        pad_to_max_sequence_length=True,
    )
    x, y, w = pre(_batch(sources, targets))
    assert x["token_ids"].shape == (50, 40)
    assert x["mask_positions"].shape == (50, 4) and y.shape == (50, 4)
    # With p = 0.5 and 31 slots every row is capped at 4 masks.
    np.testing.assert_array_equal(w.numpy().sum(axis=1), 4)
    np.testing.assert_array_equal((x["token_ids"].numpy() == MASK).sum(1), 4)
    short = pre(_batch([[7]], [[8]]))
    weights = short[2].numpy()
    assert weights.shape == (1, 4) and weights[0, 2:].sum() == 0


def test_config_round_trip_and_errors():
    pre = CMLMPreprocessor(BERT_IDS, max_sequence_length=20, seed=4)
    config = keras.saving.serialize_keras_object(pre)
    restored = keras.saving.deserialize_keras_object(config)
    assert restored.get_config() == pre.get_config()
    with pytest.raises(ValueError, match="mask_probability=1.5"):
        CMLMPreprocessor(BERT_IDS, mask_probability=1.5)
    with pytest.raises(ValueError, match="max_sequence_length=3"):
        CMLMPreprocessor(BERT_IDS, max_sequence_length=3)
    with pytest.raises(ValueError, match="'id'"):
        pre({"source_ids": tf.constant([5]), "target_ids": tf.constant([6])})
