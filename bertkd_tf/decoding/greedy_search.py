"""Greedy search over the same next-token callback as `beam_search`."""

import tensorflow as tf

from bertkd_tf.decoding.search_loop import (
    banned_tokens,
    call_next_fn,
    check_constraints,
    check_max_length,
    check_prefix_lengths,
    keep_shapes,
    phased_while_loop,
    search_limits,
    write_column,
)


def greedy_search(
    next_fn,
    initial_ids,
    initial_state,
    max_length,
    eos_id,
    max_lengths=None,
    pad_id=0,
    prefix_lengths=None,
    min_length=0,
    no_repeat_ngram_size=0,
):
    """Picks the most likely token at every step.

    The callback contract is `beam_search`'s with a beam of one:
    `next_fn(token_ids [batch, max_length + 1], index, state) ->
    (logits [batch, vocabulary_size], state)`, where column 0 of
    `token_ids` holds the start token and column `index` the last one.
    Rows never need reordering, so `state` is passed through as returned.
    An example stops after EOS or at its maximum length; the loop stops once
    every example has stopped.

    With `min_length` or `no_repeat_ngram_size` the most likely *allowed*
    token is picked (`search_loop.banned_tokens`); its score is the model's
    log probability (no renormalisation over the allowed tokens). A row
    with no allowed token left stops there, unfinished (padding follows).

    Args:
        next_fn: callable `(token_ids, index, state) -> (logits, state)`.
        initial_ids: int tensor `[batch]`, the start token of each example.
        initial_state: nested structure of tensors with leading dimension
            `batch`, or `()`.
        max_length: int, the most tokens generated (static).
        eos_id: int, the end-of-sequence token id.
        max_lengths: optional int tensor `[batch]`, per-example limits.
        pad_id: int, written after EOS.
        prefix_lengths: optional phases, as in `beam_search`.
        min_length: int >= 0; EOS is not chosen at the first `min_length`
            steps (fairseq's `--min-len`).
        no_repeat_ngram_size: int >= 0; with n > 0, no n-gram occurs twice
            in a hypothesis, start token included (fairseq's
            `--no-repeat-ngram-size`).

    Returns:
        `(sequences, scores)`: int32 `[batch, max_length]` without the start
        token, `pad_id` after EOS, and float32 `[batch]`, the summed log
        probabilities of the generated tokens.

    Example:
    ```python
    def next_fn(token_ids, index, state):
        return tf.one_hot(tf.fill([tf.shape(token_ids)[0]], 3), 4), state
    ids, scores = greedy_search(
        next_fn, tf.constant([2, 2]), (), max_length=3, eos_id=3
    )
    # ids == [[3, 0, 0], [3, 0, 0]]
    ```
    """
    check_max_length(max_length)
    check_prefix_lengths(prefix_lengths, max_length)
    check_constraints(min_length, no_repeat_ngram_size)
    initial_ids, batch_size, max_lengths = search_limits(
        initial_ids, max_length, max_lengths
    )
    sequences = write_column(
        tf.fill([batch_size, max_length + 1], tf.constant(pad_id)),
        0,
        initial_ids,
    )

    def cond(index, sequences, scores, finished, state):
        return tf.logical_not(tf.reduce_all(finished))

    def body(prefix_length, index, sequences, scores, finished, state):
        logits, state = call_next_fn(
            next_fn, sequences, index, state, prefix_length
        )
        log_probs = tf.nn.log_softmax(tf.cast(logits, tf.float32), axis=-1)
        banned = banned_tokens(
            sequences,
            index,
            logits.shape[-1] or tf.shape(logits)[-1],
            eos_id=eos_id,
            min_length=min_length,
            no_repeat_ngram_size=no_repeat_ngram_size,
        )
        if banned is not None:
            log_probs = tf.where(banned, float("-inf"), log_probs)
            # A row with nothing allowed stops (padding, no score).
            finished |= tf.reduce_all(banned, axis=-1)
        tokens = tf.argmax(log_probs, axis=-1, output_type=tf.int32)
        token_log_probs = tf.gather(log_probs, tokens, batch_dims=1)
        # Finished rows keep writing padding and add nothing to the score.
        tokens = tf.where(finished, pad_id, tokens)
        scores += tf.where(finished, 0.0, token_log_probs)
        sequences = write_column(sequences, index + 1, tokens)
        finished |= tf.equal(tokens, eos_id) | (index + 1 >= max_lengths)
        return keep_shapes(
            (index + 1, sequences, scores, finished, state),
            (index, sequences, scores, finished, state),
        )

    loop_vars = (
        tf.constant(0),
        sequences,
        tf.zeros([batch_size], tf.float32),
        tf.zeros([batch_size], tf.bool),
        initial_state,
    )
    _, sequences, scores, _, _ = phased_while_loop(
        cond, body, loop_vars, max_length, prefix_lengths
    )
    return sequences[:, 1:], scores
