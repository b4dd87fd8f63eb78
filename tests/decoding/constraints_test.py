"""`min_length` and `no_repeat_ngram_size` in greedy and beam search.

Crafted next-token functions (one that wants EOS at once, one that loves a
bigram), a brute-force search over every hypothesis of a tiny vocabulary,
a Python greedy reference, and XLA against TensorFlow's graph mode.
"""

import itertools

import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.decoding.beam_search import beam_candidates, beam_search
from bertkd_tf.decoding.greedy_search import greedy_search
from bertkd_tf.decoding.search_loop import banned_tokens
from bertkd_tf.decoding.search_settings import SearchSettings
from tests.decoding.fake_models import PrefixModel

EOS = 3
BOS = 2


def markov_next_fn(table):
    """Logits `table[last token]`."""
    table = tf.constant(table, tf.float32)

    def next_fn(token_ids, index, state):
        return tf.gather(table, tf.gather(token_ids, index, axis=1)), state

    return next_fn


def search(next_fn, batch_size, beam_size, jit_compile=None, **kwargs):
    """Greedy (beam 1) or beam search; eagerly, or in a tf.function."""

    def run():
        initial = tf.fill([batch_size], BOS)
        if beam_size == 1:
            return greedy_search(next_fn, initial, (), eos_id=EOS, **kwargs)
        return beam_search(
            next_fn, initial, (), beam_size=beam_size, eos_id=EOS, **kwargs
        )

    if jit_compile is not None:
        run = tf.function(run, jit_compile=jit_compile)
    ids, scores = run()
    return ids.numpy(), scores.numpy()


def repeated_ngram(tokens, n):
    """Whether an n-gram occurs twice in `tokens`."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(grams) != len(set(grams))


def allowed(prefix, token, min_length, n):
    """Python rule: may `token` follow `prefix` (start token first)?"""
    if token == EOS and len(prefix) - 1 < min_length:
        return False
    if not n or len(prefix) + 1 < n:
        return True
    new = tuple((prefix + [token])[-n:])
    earlier = {tuple(prefix[i : i + n]) for i in range(len(prefix) - n + 1)}
    return new not in earlier


def eos_loving_table(vocabulary_size=8):
    # EOS is always the most likely; then 5, 6, 7 in that order.
    table = np.full((vocabulary_size, vocabulary_size), -8.0, np.float32)
    table[:, EOS] = 4.0
    table[:, 5], table[:, 6], table[:, 7] = 3.0, 2.0, 1.0
    return table


@pytest.mark.parametrize("beam_size", [1, 3])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_min_length_delays_a_preferred_eos(beam_size, jit_compile):
    next_fn = markov_next_fn(eos_loving_table())
    plain, _ = search(next_fn, 2, beam_size, jit_compile, max_length=8)
    np.testing.assert_array_equal(plain[:, 0], [EOS, EOS])
    ids, _ = search(
        next_fn, 2, beam_size, jit_compile, max_length=8, min_length=3
    )
    # EOS comes as soon as it is allowed: after exactly 3 tokens.
    for row in ids.tolist():
        assert EOS not in row[:3] and row[3] == EOS, row
        assert row[4:] == [0] * 4


@pytest.mark.parametrize("beam_size", [1, 3])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_no_repeat_ngram_blocks_a_loved_bigram(beam_size, jit_compile):
    # 5 -> 6 -> 5 -> 6 ... is by far the most likely; EOS is unlikely.
    table = np.full((8, 8), -6.0, np.float32)
    table[:, 5] = 0.0
    table[5, 6], table[6, 5] = 5.0, 5.0
    table[:, 7] = -1.0
    table[:, EOS] = -20.0
    table[:, 0] = -30.0  # never padding, so rows read back exactly
    next_fn = markov_next_fn(table)
    plain, _ = search(next_fn, 1, beam_size, jit_compile, max_length=8)
    assert plain[0].tolist() == [5, 6, 5, 6, 5, 6, 5, 6]
    ids, _ = search(
        next_fn,
        1,
        beam_size,
        jit_compile,
        max_length=8,
        no_repeat_ngram_size=2,
    )
    tokens = [BOS] + [t for t in ids[0].tolist() if t]
    assert len(tokens) == 9 and not repeated_ngram(tokens, 2), tokens
    if beam_size == 1:  # the third 5 is allowed, 6 after it is not
        assert tokens[1:5] == [5, 6, 5, 5], tokens
    # With n = 3, "5 6 5" and "6 5 6" occur once each.
    ids, _ = search(
        next_fn,
        1,
        beam_size,
        jit_compile,
        max_length=8,
        no_repeat_ngram_size=3,
    )
    tokens = [BOS] + [t for t in ids[0].tolist() if t]
    assert len(tokens) == 9 and not repeated_ngram(tokens, 3), tokens
    if beam_size == 1:
        assert tokens[1:6] == [5, 6, 5, 6, 7], tokens  # not "5 6 5" again


def brute_force_constrained(
    model, max_length, length_penalty, min_length, no_repeat_ngram_size
):
    """Best (score, tokens) over every allowed hypothesis: ending in EOS,
    or cut at `max_length`."""
    best = (-np.inf, None)
    vocabulary = range(model.vocabulary_size)
    for length in range(1, max_length + 1):
        for tokens in itertools.product(vocabulary, repeat=length):
            if EOS in tokens[:-1]:
                continue
            if length < max_length and tokens[-1] != EOS:
                continue
            prefix, total, ok = [BOS], 0.0, True
            for token in tokens:
                if not allowed(prefix, token, min_length, no_repeat_ngram_size):
                    ok = False
                    break
                total += model.log_probs(prefix)[token]
                prefix.append(token)
            if not ok:
                continue
            score = total / ((5.0 + length) / 6.0) ** length_penalty
            if score > best[0]:
                best = (score, list(tokens))
    return best


@pytest.mark.parametrize(
    "min_length, no_repeat_ngram_size",
    [(2, 0), (0, 2), (3, 2), (0, 1), (1, 3)],
)
def test_large_beam_equals_constrained_brute_force(
    min_length, no_repeat_ngram_size
):
    # Beam 36 keeps every hypothesis of up to 4 tokens over 4 ids alive, so
    # the search must return the exhaustive optimum among allowed ones.
    for seed in range(3):
        model = PrefixModel(vocabulary_size=4, seed=seed)
        ids, scores = beam_search(
            model.next_fn,
            tf.fill([1], BOS),
            model.initial_state(1),
            beam_size=36,
            max_length=4,
            eos_id=EOS,
            length_penalty=0.6,
            min_length=min_length,
            no_repeat_ngram_size=no_repeat_ngram_size,
        )
        best_score, best_tokens = brute_force_constrained(
            model, 4, 0.6, min_length, no_repeat_ngram_size
        )
        assert ids.numpy()[0].tolist()[: len(best_tokens)] == best_tokens
        np.testing.assert_allclose(scores.numpy()[0], best_score, rtol=1e-5)


@pytest.mark.parametrize(
    "min_length, no_repeat_ngram_size", [(4, 0), (0, 2), (5, 3)]
)
def test_greedy_equals_a_python_greedy_search(min_length, no_repeat_ngram_size):
    model = PrefixModel(vocabulary_size=9, seed=5, scale=3.0)
    ids, scores = greedy_search(
        model.next_fn,
        tf.fill([2], BOS),
        model.initial_state(2),
        max_length=12,
        eos_id=EOS,
        min_length=min_length,
        no_repeat_ngram_size=no_repeat_ngram_size,
    )
    prefix, total = [BOS], 0.0
    while len(prefix) <= 12:
        log_probs = model.log_probs(prefix).copy()
        for token in range(9):
            if not allowed(prefix, token, min_length, no_repeat_ngram_size):
                log_probs[token] = -np.inf
        token = int(np.argmax(log_probs))
        total += log_probs[token]
        prefix.append(token)
        if token == EOS:
            break
    expected = prefix[1:] + [0] * (13 - len(prefix))
    np.testing.assert_array_equal(ids[0], expected)
    np.testing.assert_array_equal(ids[1], expected)
    # Scores are the model's log probabilities (not renormalised).
    np.testing.assert_allclose(scores[0], total, rtol=1e-5)


@pytest.mark.parametrize("beam_size", [1, 4])
def test_xla_graph_and_eager_agree_with_constraints(beam_size):
    model = PrefixModel(vocabulary_size=16, seed=7)
    kwargs = dict(
        max_length=10,
        max_lengths=tf.constant([4, 10, 7]),
        min_length=3,
        no_repeat_ngram_size=2,
    )

    def run():
        initial = tf.fill([3], BOS)
        if beam_size == 1:
            return greedy_search(
                model.next_fn,
                initial,
                model.initial_state(3),
                eos_id=EOS,
                **kwargs,
            )
        return beam_search(
            model.next_fn,
            initial,
            model.initial_state(3),
            beam_size=beam_size,
            eos_id=EOS,
            **kwargs,
        )

    eager_ids, eager_scores = run()
    xla_ids, xla_scores = tf.function(run, jit_compile=True)()
    graph_ids, graph_scores = tf.function(run)()
    np.testing.assert_array_equal(eager_ids, xla_ids)
    np.testing.assert_array_equal(eager_ids, graph_ids)
    np.testing.assert_allclose(eager_scores, xla_scores, rtol=1e-5)
    np.testing.assert_allclose(eager_scores, graph_scores, rtol=1e-6)
    for row in eager_ids.numpy().tolist():
        tokens = [BOS] + [t for t in row if t]
        assert not repeated_ngram(tokens, 2), tokens
    # The constraints changed the result (the test is not vacuous).
    kwargs.update(min_length=0, no_repeat_ngram_size=0)
    free_ids, _ = run()
    assert not np.array_equal(free_ids, eager_ids)


@pytest.mark.parametrize("jit_compile", [False, True])
def test_banned_tokens_equal_the_python_rule(jit_compile):
    rng = np.random.default_rng(0)
    vocabulary, width = 5, 9
    buffer = rng.integers(0, vocabulary, size=(6, width)).astype("int32")
    compute = tf.function(
        lambda ids, index, min_length, n: banned_tokens(
            ids,
            index,
            vocabulary,
            eos_id=EOS,
            min_length=min_length,
            no_repeat_ngram_size=n,
        ),
        jit_compile=jit_compile,
    )
    checked = 0
    for index in range(width - 1):
        # Columns after `index` hold garbage: they must be ignored.
        for min_length, n in ((0, 1), (0, 2), (2, 3), (3, 0), (0, 9), (1, 10)):
            got = compute(
                tf.constant(buffer), tf.constant(index), min_length, n
            ).numpy()
            for row in range(buffer.shape[0]):
                prefix = buffer[row, : index + 1].tolist()
                want = [
                    not allowed(prefix, token, min_length, n)
                    for token in range(vocabulary)
                ]
                assert got[row].tolist() == want, (index, min_length, n)
                checked += sum(want)
    assert checked > 50  # many tokens were banned
    assert banned_tokens(buffer, 3, vocabulary, eos_id=EOS) is None


@pytest.mark.parametrize("vocabulary, block_size", [(96, 16), (97, 8)])
@pytest.mark.parametrize("jit_compile", [False, True])
def test_blocked_candidates_with_bans_equal_top_k(
    vocabulary, block_size, jit_compile
):
    rng = np.random.default_rng(3)
    batch, beam = 2, 3
    logits = rng.standard_normal((batch * beam, vocabulary)).astype("float32")
    alive = rng.standard_normal((batch, beam)).astype("float32")
    banned = rng.random((batch * beam, vocabulary)) < 0.7
    banned[0, :] = True  # a beam with no allowed extension
    log_probs = tf.nn.log_softmax(logits, axis=-1).numpy()
    values = np.where(banned, -np.inf, log_probs).reshape(batch, beam, -1)
    values = (values + alive[..., None]).reshape(batch, -1)
    order = np.argsort(-values, axis=1, kind="stable")[:, : 2 * beam]
    candidates = tf.function(
        lambda: beam_candidates(
            tf.constant(logits),
            tf.constant(alive),
            2 * beam,
            block_size=block_size,
            banned=tf.constant(banned),
        ),
        jit_compile=jit_compile,
    )
    top, beams, tokens = (x.numpy() for x in candidates())
    np.testing.assert_allclose(
        top, np.take_along_axis(values, order, 1), rtol=1e-6
    )
    np.testing.assert_array_equal(beams, order // vocabulary)
    np.testing.assert_array_equal(tokens, order % vocabulary)
    assert np.all(np.isfinite(top))  # 30% allowed: enough candidates


@pytest.mark.parametrize(
    "changes, message",
    [
        (dict(min_length=-1), "min_length=-1"),
        (dict(min_length=100), "max_length - 1 = 99"),
        (dict(min_length=2.0), "min_length=2.0"),
        (dict(no_repeat_ngram_size=-2), "no_repeat_ngram_size=-2"),
        (dict(no_repeat_ngram_size=True), "no_repeat_ngram_size=True"),
    ],
)
def test_settings_refuse_bad_constraints_in_one_paragraph(changes, message):
    with pytest.raises(ValueError) as error:
        SearchSettings(**changes)
    text = str(error.value)
    assert message in text and "\n" not in text
    name = next(iter(changes))
    assert f"SearchSettings.{name}" in text and "fairseq" in text


def test_searches_refuse_bad_constraints():
    next_fn = markov_next_fn(eos_loving_table())
    with pytest.raises(ValueError, match="min_length=-1"):
        search(next_fn, 1, 1, max_length=4, min_length=-1)
    with pytest.raises(ValueError, match="no_repeat_ngram_size='2'"):
        search(next_fn, 1, 2, max_length=4, no_repeat_ngram_size="2")
