import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.decoding.beam_search import (
    beam_candidates,
    beam_search,
    decode_lengths,
    doubling_prefix_lengths,
    gnmt_length_penalty,
)
from bertkd_tf.decoding.greedy_search import greedy_search
from tests.decoding.fake_models import PrefixModel, brute_force_best

EOS = 3
BOS = 2


def fixed_next_fn(step_probs):
    """Markov fake: `step_probs[last_token]` are the next-token probs."""
    table = tf.math.log(tf.constant(step_probs, tf.float32))

    def next_fn(token_ids, index, state):
        last = tf.gather(token_ids, index, axis=1)
        return tf.gather(table, last), state

    return next_fn


def run_beam(model, batch_size=3, **kwargs):
    return beam_search(
        model.next_fn,
        tf.fill([batch_size], BOS),
        model.initial_state(batch_size),
        eos_id=EOS,
        **kwargs,
    )


def test_gnmt_length_penalty_values():
    np.testing.assert_allclose(gnmt_length_penalty(1, 0.6), 1.0)
    np.testing.assert_allclose(
        gnmt_length_penalty(7, 0.6), (12.0 / 6.0) ** 0.6, rtol=1e-6
    )
    np.testing.assert_allclose(gnmt_length_penalty(9, 0.0), 1.0)


def test_decode_lengths_margin_and_cap():
    lengths = decode_lengths(tf.constant([1, 10, 90]), 50, 20)
    np.testing.assert_array_equal(lengths, [21, 30, 50])
    np.testing.assert_array_equal(decode_lengths([3, 4], 7), [7, 7])


@pytest.mark.parametrize("length_penalty", [0.0, 0.6, 2.0])
def test_large_beam_equals_brute_force(length_penalty):
    # Beam 36 covers every hypothesis of length <= 3 over 4 tokens, so the
    # search must return the exhaustive optimum; the logits depend on the
    # whole prefix through the state, which checks the state reordering.
    for seed in range(3):
        model = PrefixModel(vocabulary_size=4, seed=seed)
        ids, scores = run_beam(
            model,
            batch_size=1,
            beam_size=36,
            max_length=3,
            length_penalty=length_penalty,
        )
        best_score, best_tokens = brute_force_best(
            model, BOS, EOS, 3, length_penalty
        )
        got = ids.numpy()[0].tolist()[: len(best_tokens)]
        assert got == best_tokens
        np.testing.assert_allclose(scores.numpy()[0], best_score, rtol=1e-5)


def test_beam_one_equals_greedy():
    model = PrefixModel(vocabulary_size=7, seed=3, scale=1.0)
    beam_ids, beam_scores = run_beam(
        model, batch_size=4, beam_size=1, max_length=12, length_penalty=0.0
    )
    greedy_ids, greedy_scores = greedy_search(
        model.next_fn,
        tf.fill([4], BOS),
        model.initial_state(4),
        max_length=12,
        eos_id=EOS,
    )
    np.testing.assert_array_equal(beam_ids, greedy_ids)
    np.testing.assert_allclose(beam_scores, greedy_scores, rtol=1e-6)


def test_length_penalty_changes_the_winner():
    # From BOS: EOS 0.4, token 1 0.6. After token 1: EOS 0.6, token 1 0.4.
    # "EOS" has log p -0.916; "1 EOS" has -1.022: it loses unnormalised and
    # wins with length_penalty 1 (-1.022 / (7 / 6) = -0.876).
    eps = 1e-6
    probs = np.full((4, 4), eps)
    probs[BOS] = [eps, 0.6, eps, 0.4]
    probs[1] = [eps, 0.4, eps, 0.6]
    next_fn = fixed_next_fn(probs)
    short, short_score = beam_search(
        next_fn,
        [BOS],
        (),
        beam_size=2,
        max_length=5,
        eos_id=EOS,
        length_penalty=0.0,
    )
    long, long_score = beam_search(
        next_fn,
        [BOS],
        (),
        beam_size=2,
        max_length=5,
        eos_id=EOS,
        length_penalty=1.0,
    )
    np.testing.assert_array_equal(short[0], [EOS, 0, 0, 0, 0])
    np.testing.assert_array_equal(long[0], [1, EOS, 0, 0, 0])
    np.testing.assert_allclose(short_score[0], np.log(0.4), atol=1e-4)
    np.testing.assert_allclose(
        long_score[0], np.log(0.36) / (7.0 / 6.0), atol=1e-4
    )


def test_early_stop_counts_steps():
    # EOS has probability 0.9 at every step: with no length penalty no alive
    # hypothesis can beat the finished "EOS", so the search stops after one
    # call; a strong length penalty keeps it going.
    probs = np.full((4, 4), 0.1 / 3)
    probs[:, EOS] = 0.9
    table_fn = fixed_next_fn(probs)
    calls = []

    def counting_fn(token_ids, index, state):
        calls.append(int(index))
        return table_fn(token_ids, index, state)

    ids, _ = beam_search(
        counting_fn,
        [BOS],
        (),
        beam_size=3,
        max_length=20,
        eos_id=EOS,
        length_penalty=0.0,
    )
    assert calls == [0]
    np.testing.assert_array_equal(ids[0, :2], [EOS, 0])
    calls.clear()
    beam_search(
        counting_fn,
        [BOS],
        (),
        beam_size=3,
        max_length=20,
        eos_id=EOS,
        length_penalty=5.0,
    )
    assert 1 < len(calls) <= 20


def test_early_stop_does_not_change_the_result():
    # EOS is likely, so the search stops before max_length; with a beam that
    # holds every hypothesis the answer must still be the exhaustive optimum.
    model = PrefixModel(vocabulary_size=4, seed=5)
    model.table[:, EOS] += 3.0
    calls = []

    def counting_fn(token_ids, index, state):
        calls.append(int(index))
        return model.next_fn(token_ids, index, state)

    ids, scores = beam_search(
        counting_fn,
        [BOS],
        model.initial_state(1),
        beam_size=81,
        max_length=5,
        eos_id=EOS,
        length_penalty=0.6,
    )
    assert len(calls) < 5
    best_score, best_tokens = brute_force_best(model, BOS, EOS, 5, 0.6)
    assert ids.numpy()[0].tolist()[: len(best_tokens)] == best_tokens
    np.testing.assert_allclose(scores[0], best_score, rtol=1e-5)


def test_eos_and_per_example_max_length():
    # EOS is never likely: every example runs to its own limit and is
    # truncated there, padding after.
    probs = np.full((4, 4), 0.01)
    probs[:, 1] = 0.97
    ids, scores = beam_search(
        fixed_next_fn(probs),
        [BOS, BOS, BOS],
        (),
        beam_size=2,
        max_length=6,
        eos_id=EOS,
        max_lengths=tf.constant([2, 6, 9]),
    )
    ids = ids.numpy()
    np.testing.assert_array_equal(ids[0], [1, 1, 0, 0, 0, 0])
    np.testing.assert_array_equal(ids[1], [1] * 6)
    np.testing.assert_array_equal(ids[2], [1] * 6)
    assert scores.shape == (3,)


def test_pads_after_eos():
    model = PrefixModel(vocabulary_size=8, seed=11)
    ids, _ = run_beam(model, batch_size=2, beam_size=3, max_length=10)
    for row in ids.numpy():
        if EOS in row:
            position = list(row).index(EOS)
            assert not row[position + 1 :].any()


def test_n_best_sorted_and_distinct():
    model = PrefixModel(vocabulary_size=8, seed=2)
    ids, scores = run_beam(
        model,
        batch_size=2,
        beam_size=4,
        max_length=8,
        num_return_sequences=4,
    )
    assert ids.shape == (2, 4, 8)
    assert scores.shape == (2, 4)
    scores = scores.numpy()
    assert np.all(np.diff(scores, axis=1) <= 0)
    rows = {tuple(row) for row in ids.numpy()[0]}
    assert len(rows) == 4
    best, best_score = run_beam(model, batch_size=2, beam_size=4, max_length=8)
    np.testing.assert_array_equal(best, ids[:, 0])
    np.testing.assert_allclose(best_score, scores[:, 0])


def test_xla_and_eager_identical():
    model = PrefixModel(vocabulary_size=16, seed=7)

    def search():
        return run_beam(
            model,
            batch_size=3,
            beam_size=4,
            max_length=10,
            max_lengths=tf.constant([4, 10, 7]),
        )

    eager_ids, eager_scores = search()
    xla_ids, xla_scores = tf.function(search, jit_compile=True)()
    graph_ids, graph_scores = tf.function(search)()
    np.testing.assert_array_equal(eager_ids, xla_ids)
    np.testing.assert_array_equal(eager_ids, graph_ids)
    np.testing.assert_allclose(eager_scores, xla_scores, rtol=1e-5)
    np.testing.assert_allclose(eager_scores, graph_scores, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"beam_size": 0}, "beam_size"),
        ({"beam_size": 2, "max_length": 0}, "max_length"),
        ({"beam_size": 2, "num_return_sequences": 3}, "num_return_sequences"),
    ],
)
def test_validation(kwargs, message):
    kwargs = {"max_length": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        beam_search(
            fixed_next_fn(np.ones((4, 4))), [BOS], (), eos_id=EOS, **kwargs
        )


def flat_candidates(logits, alive_log_probs, count):
    """The reference: top-k over the whole log_softmax + alive array."""
    batch, beam = alive_log_probs.shape
    log_probs = tf.nn.log_softmax(logits, axis=-1)
    values = (
        tf.reshape(log_probs, [batch, beam, -1]) + alive_log_probs[..., None]
    )
    top, flat = tf.math.top_k(tf.reshape(values, [batch, -1]), k=count)
    vocabulary = logits.shape[-1]
    return (
        top.numpy(),
        (flat // vocabulary).numpy(),
        (flat % vocabulary).numpy(),
    )


@pytest.mark.parametrize(
    "vocabulary,block_size",
    # block 16; divisor 20 preferred; prime: blocks of 8 and a ragged tail
    [(96, 16), (100, 16), (97, 8), (1000, 256)],
)
@pytest.mark.parametrize("jit_compile", [False, True])
def test_blocked_candidates_equal_top_k_over_everything(
    vocabulary, block_size, jit_compile
):
    rng = np.random.default_rng(vocabulary)
    batch, beam, count = 3, 4, 8
    # Both paths compiled alike: XLA's exp/log may differ from eager's in
    # the last bit, the two paths may not.
    candidates, flat = (
        tf.function(
            lambda logits, alive, size=size: beam_candidates(
                logits, alive, count, block_size=size
            ),
            jit_compile=jit_compile,
        )
        for size in (block_size, 0)
    )
    for trial in range(6):
        if trial % 2:
            # Heavy ties: few distinct values, so ties fall across block
            # boundaries and the lower flat index must win, as in top_k.
            logits = rng.integers(-2, 2, (batch * beam, vocabulary))
            alive = rng.integers(-1, 1, (batch, beam))
        else:
            logits = rng.normal(size=(batch * beam, vocabulary))
            alive = rng.normal(size=(batch, beam))
        logits = tf.constant(logits, tf.float32)
        alive = tf.constant(alive, tf.float32)
        top, beams, tokens = candidates(logits, alive)
        flat_top, flat_beams, flat_tokens = flat(logits, alive)
        np.testing.assert_array_equal(top, flat_top)
        np.testing.assert_array_equal(beams, flat_beams)
        np.testing.assert_array_equal(tokens, flat_tokens)
        reference = flat_candidates(logits, alive, count)
        np.testing.assert_allclose(top, reference[0], rtol=1e-6, atol=1e-6)
        if trial % 2 == 0:  # no ties: the same candidates as top_k's
            np.testing.assert_array_equal(beams, reference[1])
            np.testing.assert_array_equal(tokens, reference[2])


def test_block_size_prefers_a_divisor_of_the_vocabulary():
    from bertkd_tf.decoding.beam_search import _block_size

    assert _block_size(10428, 256) == 237  # 10428 = 44 * 237
    assert _block_size(16384, 256) == 256
    assert _block_size(19777, 256) == 256  # no divisor in [128, 512]


def test_doubling_prefix_lengths():
    assert doubling_prefix_lengths(32) == [16, 32]
    assert doubling_prefix_lengths(100) == [16, 32, 64, 100]
    assert doubling_prefix_lengths(64, first=16) == [16, 32, 64]
    assert doubling_prefix_lengths(10) == [10]


@pytest.mark.parametrize("beam_size", [1, 4])
def test_prefix_phases_do_not_change_the_result(beam_size):
    # In phases, next_fn gets a static bound above every index it sees, and
    # the search returns exactly what one loop returns.
    model = PrefixModel(vocabulary_size=6, seed=2)
    bounds = []

    def bounded_fn(token_ids, index, state, prefix_length):
        bounds.append(prefix_length)  # once per phase (traced)
        tf.debugging.assert_less(index, prefix_length)
        return model.next_fn(token_ids, index, state)

    search = tf.function(
        lambda fn, phases: (
            beam_search(
                fn,
                tf.fill([3], BOS),
                model.initial_state(3),
                beam_size=beam_size,
                max_length=7,
                eos_id=EOS,
                prefix_lengths=phases,
            )
            if beam_size > 1
            else greedy_search(
                fn,
                tf.fill([3], BOS),
                model.initial_state(3),
                max_length=7,
                eos_id=EOS,
                prefix_lengths=phases,
            )
        ),
        jit_compile=True,
    )
    ids, scores = search(model.next_fn, None)
    phased_ids, phased_scores = search(bounded_fn, (2, 4, 7))
    assert sorted(set(bounds)) == [2, 4, 7]
    np.testing.assert_array_equal(phased_ids, ids)
    np.testing.assert_array_equal(phased_scores, scores)


@pytest.mark.parametrize("phases", [[], [3, 2, 7], [2, 4], [0, 7], [2.0, 7]])
def test_prefix_lengths_validation(phases):
    with pytest.raises(ValueError, match="`prefix_lengths` must be"):
        beam_search(
            lambda ids, index, state, prefix_length: (None, state),
            [BOS],
            (),
            beam_size=2,
            max_length=7,
            eos_id=EOS,
            prefix_lengths=phases,
        )
