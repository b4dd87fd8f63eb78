"""Tests of IncrementalDecoder: the same function as the model, faster."""

import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.decoding.incremental_decoder import IncrementalDecoder
from tests.models.transformer_seq2seq_test import make_model

SOURCE = np.array([[5, 6, 7, 3, 0], [8, 9, 10, 11, 3]], "int32")
SOURCE_MASK = np.array([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], "int32")
# Two "beams" per example: rows 0, 1 belong to example 0, rows 2, 3 to 1.
TARGET = np.array(
    [[2, 12, 13, 14], [2, 20, 21, 22], [2, 15, 16, 17], [2, 30, 31, 32]],
    "int32",
)


def teacher_forced(model):
    return np.asarray(
        model(
            {
                "encoder_token_ids": np.repeat(SOURCE, 2, axis=0),
                "encoder_padding_mask": np.repeat(SOURCE_MASK, 2, axis=0),
                "decoder_token_ids": TARGET,
                "decoder_padding_mask": np.ones_like(TARGET),
            }
        )
    )


def incremental(model, buffer_length=6, jit_compile=None):
    decoder = IncrementalDecoder(model)

    def run():
        hidden = model.call_encoder(SOURCE, SOURCE_MASK)
        context = decoder.prepare(hidden, SOURCE_MASK)
        state = decoder.initial_state(4, buffer_length)
        steps = []
        for t in range(TARGET.shape[1]):
            logits, state = decoder.step(
                context, TARGET[:, t], tf.constant(t), state, group_size=2
            )
            steps.append(logits)
        return tf.stack(steps, axis=1), state

    if jit_compile is not None:
        run = tf.function(run, jit_compile=jit_compile)
    return run()


@pytest.mark.parametrize(
    "normalize_first,activation",
    [(True, "relu"), (False, "relu"), (True, "gelu")],
)
def test_steps_equal_teacher_forcing(normalize_first, activation):
    model = make_model(normalize_first, activation=activation)
    logits, state = incremental(model)
    assert logits.dtype == tf.float32
    np.testing.assert_allclose(
        logits, teacher_forced(model), rtol=1e-5, atol=1e-5
    )
    # One (keys, values) pair per layer, [rows, heads, buffer, head_dim],
    # written at the 4 decoded positions only.
    assert len(state) == 2
    keys, values = state[0]
    assert tuple(keys.shape) == (4, 2, 6, 8)
    assert np.abs(np.asarray(values)[:, :, :4]).max() > 0
    assert np.abs(np.asarray(keys)[:, :, 4:]).max() == 0


@pytest.mark.parametrize("jit_compile", [True, False])
def test_compiled_equals_eager(jit_compile):
    model = make_model()
    eager, _ = incremental(model)
    compiled, _ = incremental(model, jit_compile=jit_compile)
    np.testing.assert_allclose(compiled, eager, rtol=1e-5, atol=1e-5)


def test_equals_call_decoder_with_cache_in_mixed_bfloat16():
    model = make_model(dtype="mixed_bfloat16")
    decoder = IncrementalDecoder(model)
    assert decoder.compute_dtype == "bfloat16"
    logits, state = incremental(model)
    assert state[0][0].dtype == tf.bfloat16
    expected = teacher_forced(model)
    # bf16 rounding differs with the order of operations: compare the
    # distributions, not the last bits.
    np.testing.assert_allclose(logits, expected, atol=0.1)
    np.testing.assert_array_equal(
        np.argmax(logits, -1), np.argmax(expected, -1)
    )


def test_source_padding_is_ignored():
    model = make_model()
    decoder = IncrementalDecoder(model)
    changed = SOURCE.copy()
    changed[0, 4] = 40  # A padded slot of example 0.
    outputs = []
    for source in (SOURCE, changed):
        hidden = model.call_encoder(source, SOURCE_MASK)
        context = decoder.prepare(hidden, SOURCE_MASK)
        state = decoder.initial_state(2, 3)
        logits, _ = decoder.step(
            context, np.array([2, 2], "int32"), tf.constant(0), state, 1
        )
        outputs.append(np.asarray(logits))
    np.testing.assert_allclose(outputs[0], outputs[1], rtol=1e-5, atol=1e-6)


def test_sees_weight_updates_at_prepare():
    model = make_model()
    before, _ = incremental(model)
    embeddings = model.backbone.token_embedding.embeddings
    embeddings.assign(embeddings * 2.0)
    after, _ = incremental(model)
    assert np.abs(np.asarray(after) - np.asarray(before)).max() > 1e-3
    np.testing.assert_allclose(
        after, teacher_forced(model), rtol=1e-5, atol=1e-5
    )


# Beam-search style reorderings between steps: row r continues old row
# rows[r], always within its example (rows 0-1 and 2-3).
REORDERS = [[1, 1, 2, 3], [0, 1, 3, 2], [1, 0, 2, 2]]


def reordered_steps(model, track_origins, jit_compile=None):
    decoder = IncrementalDecoder(model)

    def run():
        hidden = model.call_encoder(SOURCE, SOURCE_MASK)
        context = decoder.prepare(hidden, SOURCE_MASK)
        state = decoder.initial_state(4, 6, track_origins=track_origins)
        steps = []
        for t in range(TARGET.shape[1]):
            logits, state = decoder.step(
                context, TARGET[:, t], tf.constant(t), state, group_size=2
            )
            steps.append(logits)
            if t < len(REORDERS):
                state = decoder.reorder_state(state, tf.constant(REORDERS[t]))
        return tf.stack(steps, axis=1)

    if jit_compile is not None:
        run = tf.function(run, jit_compile=jit_compile)
    return np.asarray(run())


@pytest.mark.parametrize("jit_compile", [None, False, True])
@pytest.mark.parametrize("normalize_first", [True, False])
def test_tracked_origins_equal_reordered_caches(jit_compile, normalize_first):
    model = make_model(normalize_first)
    gathered = reordered_steps(model, track_origins=False)
    tracked = reordered_steps(model, True, jit_compile=jit_compile)
    np.testing.assert_allclose(tracked, gathered, rtol=1e-5, atol=1e-5)
    # The reorderings matter: without them the logits differ.
    assert np.abs(gathered - incremental(model)[0].numpy()).max() > 1e-3


def test_tracked_origins_state_and_mixed_bfloat16():
    model = make_model(dtype="mixed_bfloat16")
    decoder = IncrementalDecoder(model)
    state = decoder.initial_state(4, 6, track_origins=True)
    keys, values = state["caches"][0]
    assert tuple(keys.shape) == (4, 6, 16)  # [rows, buffer, hidden]
    assert keys.dtype == tf.bfloat16
    assert state["origins"].dtype == tf.int32
    reordered = decoder.reorder_state(state, tf.constant([1, 1, 3, 2]))
    assert reordered["caches"] is state["caches"]  # never gathered
    tracked = reordered_steps(model, True)
    gathered = reordered_steps(model, False)
    np.testing.assert_allclose(tracked, gathered, atol=0.1)
    np.testing.assert_array_equal(
        np.argmax(tracked, -1), np.argmax(gathered, -1)
    )


@pytest.mark.parametrize("track_origins", [False, True])
def test_prefix_length_changes_nothing(track_origins):
    # Attending over the first `prefix_length` slots only (the rest are
    # masked) gives the same logits and leaves the same state.
    model = make_model()
    decoder = IncrementalDecoder(model)
    hidden = model.call_encoder(SOURCE, SOURCE_MASK)
    context = decoder.prepare(hidden, SOURCE_MASK)
    full = decoder.initial_state(4, 6, track_origins=track_origins)
    prefix = full
    for t in range(TARGET.shape[1]):
        args = (context, TARGET[:, t], tf.constant(t))
        logits, full = decoder.step(*args, full, group_size=2)
        short, prefix = decoder.step(
            *args, prefix, group_size=2, prefix_length=t + 1
        )
        np.testing.assert_allclose(short, logits, rtol=1e-5, atol=1e-6)
    for a, b in zip(tf.nest.flatten(full), tf.nest.flatten(prefix)):
        np.testing.assert_array_equal(a, b)
