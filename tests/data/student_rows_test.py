"""target_statistics.student_rows (tools/target_stats.py --students): the
student side lines up with the teacher's rows."""

import types

import numpy as np
import tensorflow as tf

from bertkd_tf.data.target_statistics import student_rows
from bertkd_tf.data.tokenized_pairs import TokenizedPairs
from tests.testing import tiny_transformer_student

VOCAB, BOS, EOS = 30, 2, 3


def test_student_rows_match_unpadded_single_pairs_in_order():
    sources = [[5, 6, 7], [8], [9, 10], [11, 12, 13, 14]]
    targets = [[15, 16], [17, 18, 19, 20], [], [21]]
    pairs = TokenizedPairs(
        [10, 11, 12, 13],
        tf.ragged.constant(sources, dtype=tf.int32),
        tf.ragged.constant(targets, dtype=tf.int32),
    )
    vocab = types.SimpleNamespace(bos_id=BOS, eos_id=EOS)
    student = tiny_transformer_student(VOCAB)
    # Batches of 3 pad the first batch's rows to different lengths.
    first, logp = student_rows(student, pairs, vocab, batch_size=3)
    # One row per label: target tokens then EOS, pair after pair.
    assert first.shape == logp.shape == (sum(len(t) + 1 for t in targets),)
    expected_first, expected_logp = [], []
    for source, target in zip(sources, targets):
        labels = target + [EOS]
        logits = student(
            {
                "encoder_token_ids": np.array([source + [EOS]], np.int32),
                "encoder_padding_mask": np.ones([1, len(source) + 1], np.int32),
                "decoder_token_ids": np.array([[BOS] + target], np.int32),
                "decoder_padding_mask": np.ones([1, len(labels)], np.int32),
            },
            training=False,
        )
        log_probs = tf.nn.log_softmax(logits[0]).numpy()
        expected_first.extend(log_probs.argmax(axis=1))
        expected_logp.extend(log_probs[np.arange(len(labels)), labels])
    np.testing.assert_array_equal(first, expected_first)
    np.testing.assert_allclose(logp, expected_logp, atol=1e-5)
    # max_pairs stops after the first pairs.
    first, _ = student_rows(student, pairs, vocab, max_pairs=2, batch_size=3)
    assert len(first) == 3 + 5
