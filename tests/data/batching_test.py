"""Token-budget batching and student features."""

import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.data.batching import (
    TokenBudgetBatcher,
    default_bucket_boundaries,
)
from bertkd_tf.data.student_features import student_dataset
from bertkd_tf.data.text_pairs import read_text_pairs
from bertkd_tf.data.tokenized_pairs import TokenizedPairs


def _lengths_dataset(lengths):
    return tf.data.Dataset.from_tensor_slices(
        tf.ragged.constant([[1] * n for n in lengths], dtype=tf.int32)
    ).map(lambda ids: {"ids": ids})


def test_budget_and_bucket_shapes():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 33, size=500)
    batcher = TokenBudgetBatcher(128, [8, 16, 32], shuffle_buffer=100, seed=3)
    assert batcher.batch_sizes() == [16, 8, 4]
    seen = 0
    for batch in batcher(
        _lengths_dataset(lengths), lambda e: tf.shape(e["ids"])[0]
    ):
        rows, width = batch["ids"].shape
        assert width in (8, 16, 32)
        assert rows * width <= 128  # the token budget, padding included
        assert rows == {8: 16, 16: 8, 32: 4}[width]
        seen += rows
    assert seen > 400  # only incomplete last batches are dropped


def test_shuffle_is_deterministic_by_seed():
    lengths = list(range(1, 17)) * 8

    def first_batches(seed):
        batcher = TokenBudgetBatcher(64, [16], shuffle_buffer=50, seed=seed)
        batches = batcher(
            _lengths_dataset(lengths), lambda e: tf.shape(e["ids"])[0]
        )
        return [b["ids"].numpy().sum(axis=1).tolist() for b in batches.take(3)]

    assert first_batches(1) == first_batches(1)
    assert first_batches(1) != first_batches(2)


def test_batch_sizes_divisible_by_replicas():
    batcher = TokenBudgetBatcher(1000, [16, 24, 64], num_replicas=4)
    assert all(size % 4 == 0 for size in batcher.batch_sizes())


def test_bad_boundaries_rejected():
    with pytest.raises(ValueError, match="ascending"):
        TokenBudgetBatcher(100, [16, 8])
    with pytest.raises(ValueError, match="cannot hold one example"):
        TokenBudgetBatcher(10, [8, 16])


def test_default_boundaries_cover_max_length():
    assert default_bucket_boundaries(129)[-1] == 136
    assert default_bucket_boundaries(20) == [8, 12, 16, 24]


def test_stepped_boundaries_every_step_tokens():
    # The teacher's `bucket_step`: a bucket every n tokens, the last one
    # covering max_length.
    assert default_bucket_boundaries(10, step=2) == [2, 4, 6, 8, 10]
    assert default_bucket_boundaries(11, step=4) == [4, 8, 12]
    assert default_bucket_boundaries(3, step=1) == [1, 2, 3]
    with pytest.raises(ValueError, match="step=0"):
        default_bucket_boundaries(10, step=0)


def test_student_features_and_length_filter(tiny_corpus, tiny_vocab):
    pairs = read_text_pairs(tiny_corpus, "train", "de", "en")
    tokenized = TokenizedPairs.from_pairs(pairs, tiny_vocab, 8, 8)
    assert (
        tokenized.stats["kept"]
        + tokenized.stats["dropped_source_too_long"]
        + tokenized.stats["dropped_target_too_long"]
        == 40
    )
    assert max(tokenized.lengths()[0]) <= 8
    batcher = TokenBudgetBatcher(64, [16], drop_remainder=False)
    dataset = student_dataset(
        tokenized.to_dataset(), batcher, tiny_vocab.bos_id, tiny_vocab.eos_id
    )
    x, y, weight = next(iter(dataset))
    assert x["encoder_padding_mask"].dtype == tf.int32
    assert x["decoder_token_ids"].shape == y.shape == weight.shape
    # decoder input is [BOS] + target, labels are target + [EOS].
    row = y[0].numpy()
    n = int(weight[0].numpy().sum())
    assert row[n - 1] == tiny_vocab.eos_id
    assert x["decoder_token_ids"][0, 0] == tiny_vocab.bos_id
    np.testing.assert_array_equal(
        x["decoder_token_ids"][0, 1:n].numpy(), row[: n - 1]
    )
    enc = x["encoder_token_ids"][0].numpy()
    m = int(x["encoder_padding_mask"][0].numpy().sum())
    assert enc[m - 1] == tiny_vocab.eos_id and np.all(enc[m:] == 0)


def test_truncation_at_inference(tiny_corpus, tiny_vocab):
    pairs = read_text_pairs(tiny_corpus, "train", "de", "en")
    tokenized = TokenizedPairs.from_pairs(
        pairs, tiny_vocab, 4, 4, truncate=True
    )
    assert len(tokenized) == 40
    assert max(tokenized.lengths()[0]) == 4
    assert tokenized.stats["truncated"] > 0
