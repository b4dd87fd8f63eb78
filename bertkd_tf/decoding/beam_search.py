"""Beam search with a GNMT length penalty over a next-token callback.

Semantics follow tf-models' `SequenceBeamSearch` (alive and finished
hypotheses kept apart, 2 x beam candidates a step, GNMT length penalty, early
stop once no alive hypothesis can still win); mechanics suit XLA: every loop
variable has a fixed shape, tokens are written with a masked `where` into a
preallocated `[.., max_length + 1]` buffer and the loop is a `tf.while_loop`
bounded by `max_length`.

## The next-token callback

```
logits, new_state = next_fn(token_ids, index, state)
```

- `token_ids`: int32 `[batch * beam_size, max_length + 1]`, the hypotheses
  so far. Column 0 holds the start token (`initial_ids`); column `t + 1`
  holds the token chosen at step `t`. Columns `0..index` are valid, the rest
  hold `pad_id`. A decoder with a key/value cache reads only
  `token_ids[:, index]` (the last token); a decoder without a cache runs over
  all of `token_ids` (causally masked) and returns the logits at `index`.
- `index`: scalar int32 tensor, the step number (0 on the first call).
- `state`: a nested structure (dict / list / tuple) of tensors whose leading
  dimension is `batch * beam_size`, e.g. a self-attention cache. Shapes must
  not change from step to step (XLA). Row `b * beam_size + k` belongs to
  beam `k` of example `b`. The search reorders rows with `tf.gather` after
  every step so that row `r` of the next `state` belongs to the hypothesis in
  row `r` of the next `token_ids`.
- `logits`: float `[batch * beam_size, vocabulary_size]` for the next token.

Tensors that are the same for every beam of an example and never change
(encoder outputs, cross-attention keys/values, padding masks) need no
reordering: tile them once with `tf.repeat(x, beam_size, axis=0)` and let
`next_fn` capture them by closure, instead of passing them in `state`.

A `state` that can follow the reordering more cheaply than by gathering
every tensor (e.g. a cache that records which beam each slot came from, see
`IncrementalDecoder`) passes `reorder_state(state, rows) -> state`: `rows`
is int32 `[batch * beam_size]`, the old row each new row continues.

## Attending to a prefix of the cache

Under XLA shapes are static, so a cache of `max_length` slots costs its
full length at every step, even at step 3. With `prefix_lengths` (e.g.
`[16, 32, 64]`, see `doubling_prefix_lengths`) the loop runs in phases:
phase `p` covers the steps with `index < prefix_lengths[p]` and calls
`next_fn(token_ids, index, state, prefix_length=prefix_lengths[p])`, a
static int, so the decoder can read only the first `prefix_length` slots.
Each phase compiles its own copy of the step.

## Candidates

Each step needs the `2 * beam_size` best of `beam_size * vocabulary`
extensions per example. `beam_candidates` finds them without sorting the
whole vocabulary when it is large (XLA's CPU top-k sorts): the maximum of
each block of `block_size` logits bounds the block's candidates, so the
best `2 * beam_size` blocks hold the best `2 * beam_size` candidates, and
only those blocks are searched. The result is exactly `tf.math.top_k`'s,
ties included (the lower flat index first).

## Constraints (summarization)

`min_length` (EOS is banned at the first `min_length` steps) and
`no_repeat_ngram_size` (a token that would complete an n-gram already in
the hypothesis, start token included, is banned) are fairseq's
`--min-len` and `--no-repeat-ngram-size`. `search_loop.banned_tokens`
computes the banned tokens of each row from the token buffer with static
shapes (XLA); `beam_candidates` gives them log probability -inf after the
log softmax, so allowed tokens keep the model's log probabilities (as
fairseq: no renormalisation). A hypothesis with no allowed extension
drops out of the beam.

## Scores and stopping

- A hypothesis' log probability is the sum of its tokens' log softmax.
- Its score, once finished, is `log_prob / ((5 + length) / 6) **
  length_penalty` (GNMT), where `length` counts the generated tokens,
  EOS included, the start token excluded.
- Each step scores `2 * beam_size` candidates: EOS candidates ranked within
  the first `beam_size` move to the finished set (as in fairseq, so that beam
  1 is exactly greedy search when `length_penalty` is 0); the best
  `beam_size` non-EOS candidates stay alive.
- An example reaching its maximum length finalizes its first `beam_size`
  candidates whether they end in EOS or not (they are truncated).
- An example is done once its `n`-th best finished score (n =
  `num_return_sequences`, 1 by default) is at least the best score any alive
  hypothesis could still reach; the loop stops when every example is done.
"""

import tensorflow as tf

# F401: decode_lengths and doubling_prefix_lengths are used with the search
# (Generator, tests) and importable from here as before.
from bertkd_tf.decoding.search_loop import (  # noqa: F401
    banned_tokens,
    call_next_fn,
    check_constraints,
    check_max_length,
    check_prefix_lengths,
    decode_lengths,
    doubling_prefix_lengths,
    keep_shapes,
    phased_while_loop,
    search_limits,
    write_column,
)

# A large negative log probability that stays finite, so that
# arithmetic on it never produces NaN (-inf - -inf).
NEG_INF = -1.0e9


def gnmt_length_penalty(length, length_penalty):
    """`((5 + length) / 6) ** length_penalty`, the GNMT length normaliser.

    Args:
        length: int or float tensor, the number of generated tokens.
        length_penalty: float, the exponent (0 disables normalisation).

    Returns:
        A float32 tensor with the shape of `length`.
    """
    length = tf.cast(length, tf.float32)
    return tf.pow((5.0 + length) / 6.0, length_penalty)


def _validate(beam_size, max_length, num_return_sequences):
    if not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(
            f"`beam_size` must be a positive int. Received: {beam_size!r}"
        )
    check_max_length(max_length)
    if num_return_sequences is not None and (
        not isinstance(num_return_sequences, int)
        or not 1 <= num_return_sequences <= beam_size
    ):
        raise ValueError(
            "`num_return_sequences` must be None or an int in "
            f"[1, beam_size={beam_size}]. Received: {num_return_sequences!r}"
        )


# Logits per block in `beam_candidates` (see the module docstring); a
# divisor of the vocabulary size near it is preferred (no ragged last block).
BLOCK_SIZE = 256


def _block_size(vocabulary_size, block_size):
    """A divisor of `vocabulary_size` in [block_size / 2, 2 * block_size],
    the nearest to `block_size`, else `block_size` itself."""
    divisors = [
        d
        for d in range(block_size // 2, 2 * block_size + 1)
        if d and vocabulary_size % d == 0
    ]
    if not divisors:
        return block_size
    return min(divisors, key=lambda d: (abs(d - block_size), d))


def beam_candidates(
    logits, alive_log_probs, count, block_size=BLOCK_SIZE, banned=None
):
    """The `count` best one-token extensions of each example's beams.

    Equals, values and indices, ties included:
    ```
    log_probs = log_softmax(logits) + alive_log_probs[..., None]
    top_k(reshape(log_probs, [batch, beam * vocabulary]), count)
    ```
    with the flat index split into (beam, token). When the vocabulary is
    static and at least twice `block_size`, only the `count` blocks whose
    maximum is best are searched (see the module docstring). With `banned`,
    `log_probs` is -inf where `banned` is True (the log softmax itself is
    over every token, as above).

    Args:
        logits: float `[batch * beam, vocabulary]`, rows example-major.
        alive_log_probs: float32 `[batch, beam]`.
        count: int, candidates per example (<= beam * vocabulary).
        block_size: int, logits per block (0 searches the flat array).
        banned: optional bool `[batch * beam, vocabulary]`, extensions
            not allowed (see `search_loop.banned_tokens`).

    Returns:
        `(log_probs, beams, tokens)`: float32 and int32 `[batch, count]`,
        best first.
    """
    logits = tf.cast(logits, tf.float32)
    batch_size = tf.shape(alive_log_probs)[0]
    beam_size = alive_log_probs.shape[1] or tf.shape(alive_log_probs)[1]
    vocabulary_size = logits.shape[-1]
    offset = tf.reshape(alive_log_probs, [-1, 1])

    # log_softmax, written out so that both paths compute bit-identical
    # values: ((x - max) - log(sum(exp(x - max)))) + alive.
    def log_sum_exp(row_max):
        return tf.math.log(
            tf.reduce_sum(tf.exp(logits - row_max), axis=-1, keepdims=True)
        )

    def log_probs(x, row_max, log_sum, offset):
        return ((x - row_max) - log_sum) + offset

    # What is searched: the logits with banned tokens at -inf (the
    # normalisation above still reads every logit).
    choices = logits
    if banned is not None:
        choices = tf.where(banned, float("-inf"), logits)

    if not block_size or vocabulary_size is None:
        blocked = False
    else:
        block_size = _block_size(vocabulary_size, block_size)
        blocked = vocabulary_size >= 2 * block_size
    if not blocked:
        vocabulary_size = tf.shape(logits)[-1]
        row_max = tf.reduce_max(logits, axis=-1, keepdims=True)
        log_sum = log_sum_exp(row_max)
        values = log_probs(choices, row_max, log_sum, offset)
        top, flat = tf.math.top_k(tf.reshape(values, [batch_size, -1]), k=count)
        return top, flat // vocabulary_size, flat % vocabulary_size

    full_blocks, tail = divmod(vocabulary_size, block_size)
    blocks = full_blocks + (1 if tail else 0)
    maxima = tf.reduce_max(
        tf.reshape(
            choices[:, : full_blocks * block_size],
            [-1, full_blocks, block_size],
        ),
        axis=-1,
    )
    if tail:
        last = tf.reduce_max(
            choices[:, full_blocks * block_size :], axis=-1, keepdims=True
        )
        maxima = tf.concat([maxima, last], axis=1)
    if banned is None:
        # The row's maximum is its blocks' (one pass over the logits fewer).
        row_max = tf.reduce_max(maxima, axis=-1, keepdims=True)
    else:
        row_max = tf.reduce_max(logits, axis=-1, keepdims=True)
    log_sum = log_sum_exp(row_max)
    # log_softmax is monotonic within a row, so a block's best candidate is
    # its maximum's. Block c of an example is block c % blocks of beam
    # c // blocks.
    best = log_probs(maxima, row_max, log_sum, offset)
    _, chosen = tf.math.top_k(tf.reshape(best, [batch_size, -1]), k=count)
    # Ascending block order keeps top_k's tie order (lower index first).
    chosen = tf.sort(chosen, axis=-1)
    rows = tf.range(batch_size)[:, None] * beam_size + chosen // blocks
    columns = (chosen % blocks)[:, :, None] * block_size + tf.range(block_size)
    inside = columns < vocabulary_size  # the last block may be short
    x = tf.gather(
        tf.reshape(choices, [-1]),
        rows[:, :, None] * vocabulary_size
        + tf.minimum(columns, vocabulary_size - 1),
    )
    x = tf.where(inside, x, float("-inf"))

    def per_row(t):
        return tf.gather(tf.reshape(t, [-1]), rows)[:, :, None]

    values = log_probs(x, per_row(row_max), per_row(log_sum), per_row(offset))
    top, position = tf.math.top_k(tf.reshape(values, [batch_size, -1]), k=count)
    block = tf.gather(chosen, position // block_size, batch_dims=1)
    tokens = (block % blocks) * block_size + position % block_size
    return top, block // blocks, tokens


def beam_search(
    next_fn,
    initial_ids,
    initial_state,
    beam_size,
    max_length,
    eos_id,
    length_penalty=0.6,
    max_lengths=None,
    num_return_sequences=None,
    pad_id=0,
    reorder_state=None,
    prefix_lengths=None,
    min_length=0,
    no_repeat_ngram_size=0,
):
    """Beam search with alive and finished hypotheses kept apart.

    See the module docstring for the `next_fn` contract and the scoring
    rules. Works eagerly and inside `tf.function(jit_compile=True)`.

    Args:
        next_fn: callable `(token_ids, index, state) -> (logits, state)`.
        initial_ids: int tensor `[batch]`, the start token of each example.
        initial_state: nested structure of tensors with leading dimension
            `batch` (one row per example); the search repeats each row
            `beam_size` times. May be `()` for a stateless `next_fn`.
        beam_size: int, hypotheses kept alive per example.
        max_length: int, the most tokens generated (static: the buffer
            size).
        eos_id: int, the end-of-sequence token id.
        length_penalty: float, the GNMT exponent (0.6 in the paper).
        max_lengths: optional int tensor `[batch]`, per-example limits
            (clipped to `max_length`), see `decode_lengths`.
        num_return_sequences: None for the best hypothesis, or an int
            `n <= beam_size` for the n best.
        pad_id: int, written after EOS.
        reorder_state: optional callable `(state, rows) -> state` that
            makes row `r` of the state continue old row `rows[r]`; by
            default every tensor of the state is gathered by `rows`.
        prefix_lengths: optional increasing static ints ending at
            `max_length`: run the loop in phases and pass `next_fn` the
            phase's bound as `prefix_length` (see the module docstring).
        min_length: int >= 0; EOS is not chosen at the first `min_length`
            steps (fairseq's `--min-len`).
        no_repeat_ngram_size: int >= 0; with n > 0, no n-gram occurs twice
            in a hypothesis, start token included (fairseq's
            `--no-repeat-ngram-size`).

    Returns:
        `(sequences, scores)`: int32 `[batch, max_length]` and float32
        `[batch]` when `num_return_sequences` is None, else
        `[batch, n, max_length]` and `[batch, n]`, best first. Sequences
        exclude the start token, include EOS when one was generated and are
        padded with `pad_id` after it.

    Example:
    ```python
    vocab = 4  # token 3 is EOS
    def next_fn(token_ids, index, state):
        logits = tf.one_hot(tf.fill([tf.shape(token_ids)[0]], 3), vocab)
        return logits, state
    ids, scores = beam_search(
        next_fn, tf.constant([2]), (), beam_size=2, max_length=5, eos_id=3
    )
    # ids[0] == [3, 0, 0, 0, 0]
    ```
    """
    _validate(beam_size, max_length, num_return_sequences)
    check_prefix_lengths(prefix_lengths, max_length)
    check_constraints(min_length, no_repeat_ngram_size)
    n_best = num_return_sequences or 1
    k = beam_size
    buffer_length = max_length + 1
    initial_ids, batch_size, max_lengths = search_limits(
        initial_ids, max_length, max_lengths
    )
    length_penalty = float(length_penalty)

    # Alive hypotheses: [batch, beam, buffer_length]. Only beam 0 starts
    # with log probability 0; the copies start at NEG_INF so that the first
    # step does not pick the same candidate beam_size times.
    start = tf.fill([batch_size, k, buffer_length], tf.constant(pad_id))
    alive_seq = write_column(start, 0, tf.tile(initial_ids[:, None], [1, k]))
    alive_log_probs = tf.tile(
        tf.constant([[0.0] + [NEG_INF] * (k - 1)]), [batch_size, 1]
    )
    # [batch, ...] -> [batch * beam, ...]: row b * k + j is beam j of b.
    alive_state = tf.nest.map_structure(
        lambda t: tf.repeat(t, k, axis=0), initial_state
    )
    finished_seq = start
    finished_scores = tf.fill([batch_size, k], NEG_INF)
    finished_flags = tf.zeros([batch_size, k], tf.bool)

    def example_done(index, alive_log_probs, finished_scores, finished_flags):
        # After `index` steps alive hypotheses hold `index` tokens; any
        # hypothesis they finish later has a length in
        # [index + 1, max_lengths]. Log probabilities only fall, and they are
        # <= 0, so the best reachable score divides by the largest penalty
        # over that range (the penalty is monotonic in the length).
        largest_penalty = tf.maximum(
            gnmt_length_penalty(index + 1, length_penalty),
            gnmt_length_penalty(max_lengths, length_penalty),
        )
        best_alive = alive_log_probs[:, 0]
        bound = best_alive / largest_penalty
        has_alive = best_alive > NEG_INF / 2
        nth_finished = finished_scores[:, n_best - 1]
        nth_flag = finished_flags[:, n_best - 1]
        return tf.logical_not(has_alive) | (nth_flag & (nth_finished >= bound))

    def cond(index, alive_seq, alive_log_probs, alive_state, *finished):
        _, finished_scores, finished_flags = finished
        done = example_done(
            index, alive_log_probs, finished_scores, finished_flags
        )
        return tf.logical_not(tf.reduce_all(done))

    def body(
        prefix_length,
        index,
        alive_seq,
        alive_log_probs,
        alive_state,
        finished_seq,
        finished_scores,
        finished_flags,
    ):
        flat_ids = tf.reshape(alive_seq, [batch_size * k, buffer_length])
        logits, new_state = call_next_fn(
            next_fn, flat_ids, index, alive_state, prefix_length
        )
        banned = banned_tokens(
            flat_ids,
            index,
            logits.shape[-1] or tf.shape(logits)[-1],
            eos_id=eos_id,
            min_length=min_length,
            no_repeat_ngram_size=no_repeat_ngram_size,
        )
        # 2k candidates per example from the k * vocabulary extensions:
        # log probabilities, the beam each extends and the token.
        top_log_probs, source_beam, tokens = beam_candidates(
            logits, alive_log_probs, 2 * k, banned=banned
        )
        candidate_seq = tf.gather(alive_seq, source_beam, batch_dims=1)
        candidate_seq = write_column(candidate_seq, index + 1, tokens)

        length = index + 1  # generated tokens, this one included
        valid = top_log_probs > NEG_INF / 2
        is_eos = tf.equal(tokens, eos_id)
        at_limit = (length >= max_lengths)[:, None]  # [batch, 1]
        rank = tf.range(2 * k)[None, :]
        finishing = valid & (rank < k) & (is_eos | at_limit)
        stays_alive = valid & tf.logical_not(is_eos | at_limit)

        # New alive set: the best k non-EOS candidates. `alive_pos` indexes
        # the 2k candidates; `alive_source` is the old beam each came from.
        new_alive_log_probs, alive_pos = tf.math.top_k(
            tf.where(stays_alive, top_log_probs, NEG_INF), k=k
        )
        new_alive_seq = tf.gather(candidate_seq, alive_pos, batch_dims=1)
        alive_source = tf.gather(source_beam, alive_pos, batch_dims=1)
        # Rows of `new_state` are still in old-beam order: row b * k + j.
        rows = tf.reshape(
            alive_source + tf.range(batch_size)[:, None] * k, [-1]
        )
        if reorder_state is None:
            new_alive_state = tf.nest.map_structure(
                lambda t: tf.gather(t, rows), new_state
            )
        else:
            new_alive_state = reorder_state(new_state, rows)

        # New finished set: best k of the old finished and the finishing
        # candidates. Old ones come first, so they win ties.
        candidate_scores = top_log_probs / gnmt_length_penalty(
            length, length_penalty
        )
        all_scores = tf.concat(
            [finished_scores, tf.where(finishing, candidate_scores, NEG_INF)],
            axis=1,
        )
        all_flags = tf.concat([finished_flags, finishing], axis=1)
        all_seq = tf.concat([finished_seq, candidate_seq], axis=1)
        new_finished_scores, finished_pos = tf.math.top_k(all_scores, k=k)
        new_finished_flags = tf.gather(all_flags, finished_pos, batch_dims=1)
        new_finished_seq = tf.gather(all_seq, finished_pos, batch_dims=1)
        outputs = (
            index + 1,
            new_alive_seq,
            new_alive_log_probs,
            new_alive_state,
            new_finished_seq,
            new_finished_scores,
            new_finished_flags,
        )
        inputs = (
            index,
            alive_seq,
            alive_log_probs,
            alive_state,
            finished_seq,
            finished_scores,
            finished_flags,
        )
        return keep_shapes(outputs, inputs)

    loop_vars = (
        tf.constant(0),
        alive_seq,
        alive_log_probs,
        alive_state,
        finished_seq,
        finished_scores,
        finished_flags,
    )
    (
        _,
        alive_seq,
        alive_log_probs,
        _,
        finished_seq,
        finished_scores,
        finished_flags,
    ) = phased_while_loop(cond, body, loop_vars, max_length, prefix_lengths)

    # Every example finalizes at its maximum length, so this fallback only
    # matters when no candidate was ever valid (e.g. beam > hypotheses).
    any_finished = tf.reduce_any(finished_flags, axis=1)
    sequences = tf.where(any_finished[:, None, None], finished_seq, alive_seq)
    scores = tf.where(any_finished[:, None], finished_scores, alive_log_probs)
    sequences = sequences[:, :n_best, 1:]
    scores = scores[:, :n_best]
    if num_return_sequences is None:
        return sequences[:, 0], scores[:, 0]
    return sequences, scores
