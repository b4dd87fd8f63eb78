import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.decoding.greedy_search import greedy_search
from tests.decoding.fake_models import PrefixModel

EOS = 3
BOS = 2


def test_greedy_matches_python_argmax():
    model = PrefixModel(vocabulary_size=9, seed=4)
    ids, scores = greedy_search(
        model.next_fn,
        tf.fill([2], BOS),
        model.initial_state(2),
        max_length=10,
        eos_id=EOS,
    )
    prefix, total, expected = [BOS], 0.0, []
    while len(expected) < 10:
        log_probs = model.log_probs(prefix)
        token = int(np.argmax(log_probs))
        total += log_probs[token]
        expected.append(token)
        prefix.append(token)
        if token == EOS:
            break
    expected += [0] * (10 - len(expected))
    np.testing.assert_array_equal(ids[0], expected)
    np.testing.assert_array_equal(ids[1], expected)
    np.testing.assert_allclose(scores[0], total, rtol=1e-5)


def test_eos_stops_and_pads():
    def next_fn(token_ids, index, state):
        # Token 5 then 6 then EOS for row 0; row 1 says EOS at once.
        row0 = tf.gather(tf.constant([5, 6, EOS, 7, 7]), tf.minimum(index, 4))
        targets = tf.stack([row0, EOS])
        return 10.0 * tf.one_hot(targets, 8), state

    ids, _ = greedy_search(next_fn, [BOS, BOS], (), max_length=5, eos_id=EOS)
    np.testing.assert_array_equal(ids, [[5, 6, EOS, 0, 0], [EOS, 0, 0, 0, 0]])


def test_per_example_max_length_and_xla():
    model = PrefixModel(vocabulary_size=9, seed=4)
    table = model.table.copy()
    table[:, EOS] = -50.0  # never ends by itself
    table[:, 0] = -50.0  # nor writes padding
    model.table = table

    def search():
        return greedy_search(
            model.next_fn,
            tf.fill([3], BOS),
            model.initial_state(3),
            max_length=6,
            eos_id=EOS,
            max_lengths=tf.constant([1, 3, 6]),
        )

    ids, scores = search()
    lengths = np.count_nonzero(ids.numpy(), axis=1)
    np.testing.assert_array_equal(lengths, [1, 3, 6])
    xla_ids, xla_scores = tf.function(search, jit_compile=True)()
    np.testing.assert_array_equal(ids, xla_ids)
    np.testing.assert_allclose(scores, xla_scores, rtol=1e-5)


def test_validation():
    with pytest.raises(ValueError, match="max_length"):
        greedy_search(lambda *a: None, [BOS], (), max_length=0, eos_id=EOS)
