"""Circular masks (bertkd_tf.models.circular_masks), against hand-worked
examples and a one-copy-at-a-time loop over the teacher."""

import keras
import numpy as np
import tensorflow as tf

from bertkd_tf.models.circular_masks import (
    circular_mask_slots,
    make_top_k_fn,
    masked_copies,
)
from bertkd_tf.models.cmlm_preprocessor import CMLMPreprocessor
from bertkd_tf.models.cmlm_teacher import CMLMTeacher

MASK = 103


def test_slots_of_a_worked_example():
    # P = 2: both pairs get 2 copies; the longer (5 rows) needs 3 slots a
    # copy, so every copy has 3 columns.
    copy_pair, slots, valid = (
        t.numpy() for t in circular_mask_slots([3, 5, 1], num_passes=2)
    )
    np.testing.assert_array_equal(copy_pair, [0, 0, 1, 1, 2])
    np.testing.assert_array_equal(
        slots,
        [[0, 2, 4], [1, 3, 5], [0, 2, 4], [1, 3, 5], [0, 1, 2]],
    )
    np.testing.assert_array_equal(
        valid,
        [
            [1, 1, 0],  # pair 0 (rows 0..2): slots 0, 2
            [1, 0, 0],  # slot 1
            [1, 1, 1],  # pair 1 (rows 0..4): slots 0, 2, 4
            [1, 1, 0],  # slots 1, 3
            [1, 0, 0],  # pair 2: one row, one copy
        ],
    )


def test_copies_of_a_worked_example():
    # [CLS] s s [SEP] t t t [SEP] and [CLS] s [SEP] t [SEP] pad pad pad.
    packed = {
        "token_ids": tf.constant(
            [[101, 7, 8, 102, 20, 21, 22, 102], [101, 9, 102, 23, 102, 0, 0, 0]]
        ),
        "segment_ids": tf.constant(
            [[0, 0, 0, 0, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0, 0, 0]]
        ),
        "padding_mask": tf.constant(
            [[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 0, 0, 0]]
        ),
        "target_start": tf.constant([4, 3]),
        "target_length": tf.constant([3, 1]),
    }
    x, copy_pair, slots, valid = masked_copies(packed, 3, MASK)
    np.testing.assert_array_equal(copy_pair, [0, 0, 0, 1, 1])
    np.testing.assert_array_equal(
        x["token_ids"],
        [
            [101, 7, 8, 102, MASK, 21, 22, MASK],  # slots 0 and 3 (EOS)
            [101, 7, 8, 102, 20, MASK, 22, 102],
            [101, 7, 8, 102, 20, 21, MASK, 102],
            [101, 9, 102, MASK, 102, 0, 0, 0],
            [101, 9, 102, 23, MASK, 0, 0, 0],
        ],
    )
    # Positions of the masked slots; 0 ([CLS]) where a copy has no slot.
    np.testing.assert_array_equal(
        x["mask_positions"], [[4, 7], [5, 0], [6, 0], [3, 0], [4, 0]]
    )
    np.testing.assert_array_equal(
        x["segment_ids"], tf.gather(packed["segment_ids"], [0, 0, 0, 1, 1])
    )
    np.testing.assert_array_equal(
        x["padding_mask"], tf.gather(packed["padding_mask"], [0, 0, 0, 1, 1])
    )
    assert valid.numpy().sum() == 4 + 2  # every row of both pairs, once
    np.testing.assert_array_equal(slots.numpy()[:, 0], [0, 1, 2, 0, 1])


def test_top_k_matches_one_copy_at_a_time(tiny_vocab):
    keras.utils.set_random_seed(4)
    teacher = CMLMTeacher.from_scratch(
        tiny_vocab.bert_ids,
        vocabulary_size=tiny_vocab.tokenizer.vocabulary_size,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=32,
    )
    preprocessor = CMLMPreprocessor(tiny_vocab.bert_ids, max_sequence_length=32)
    num_passes, top_k = 3, 4
    source = np.array([[7, 8, 9, 0], [10, 11, 0, 0]], "int32")
    target = np.array([[12, 13, 14, 15, 16], [17, 0, 0, 0, 0]], "int32")
    top_ids, top_logits, coverage, rows = (
        t.numpy()
        for t in make_top_k_fn(teacher, preprocessor, num_passes, top_k)(
            source, target
        )
    )
    np.testing.assert_array_equal(rows, [6, 2])
    packed = {
        k: v.numpy() for k, v in preprocessor.pack(source, target).items()
    }
    for pair, length in enumerate(rows):
        np.testing.assert_array_equal(coverage[pair, :length], 1)
        np.testing.assert_array_equal(coverage[pair, length:], 0)
        copies = min(num_passes, length)
        start = int(packed["target_start"][pair])
        for copy in range(copies):
            masked = list(range(copy, length, copies))
            token_ids = packed["token_ids"][pair].copy()
            token_ids[[start + slot for slot in masked]] = (
                preprocessor.mask_token_id
            )
            logits = teacher(
                {
                    "token_ids": token_ids[None],
                    "segment_ids": packed["segment_ids"][pair][None],
                    "padding_mask": packed["padding_mask"][pair][None],
                    "mask_positions": np.array(
                        [[start + slot for slot in masked]], "int32"
                    ),
                },
                training=False,
            ).numpy()[0]
            for row, slot in zip(logits, masked):
                best = np.sort(row)[::-1][:top_k]
                np.testing.assert_allclose(
                    top_logits[pair, slot].astype("float32"),
                    best,
                    rtol=1e-3,
                    atol=1e-3,
                )
                np.testing.assert_allclose(
                    row[top_ids[pair, slot]], best, rtol=1e-5, atol=1e-6
                )
