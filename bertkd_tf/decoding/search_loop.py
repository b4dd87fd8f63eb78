"""The loop machinery beam search and greedy search share.

Both searches keep hypotheses in a preallocated `[.., max_length + 1]`
token buffer (column 0 the start token), call the student's `next_fn`
(see `beam_search`'s module docstring for the contract) once a step inside
a `tf.while_loop` bounded by `max_length`, and may run that loop in phases
with a static `prefix_length` each (`prefix_lengths`). What differs is only
how a step picks tokens; the rest lives here.
"""

import tensorflow as tf


def check_max_length(max_length):
    """Raises ValueError unless `max_length` is a positive int."""
    if isinstance(max_length, bool) or not isinstance(max_length, int):
        valid = False
    else:
        valid = max_length >= 1
    if not valid:
        raise ValueError(
            f"`max_length` must be a positive int. Received: {max_length!r}"
        )


def check_prefix_lengths(prefix_lengths, max_length):
    """Raises ValueError unless `prefix_lengths` is None or increasing
    positive ints ending at `max_length`."""
    if prefix_lengths is None:
        return
    lengths = list(prefix_lengths)
    if (
        not lengths
        or not all(isinstance(n, int) and n > 0 for n in lengths)
        or lengths != sorted(set(lengths))
        or lengths[-1] != max_length
    ):
        raise ValueError(
            "`prefix_lengths` must be increasing positive ints ending at "
            f"max_length={max_length}. Received: {prefix_lengths!r}"
        )


def doubling_prefix_lengths(max_length, first=16):
    """`[first, 2 * first, 4 * first, ...]` below `max_length`, then
    `max_length`: phases for `prefix_lengths` (one when `max_length <=
    first`)."""
    lengths = []
    length = first
    while length < max_length:
        lengths.append(length)
        length *= 2
    return lengths + [max_length]


def decode_lengths(source_lengths, max_length, max_length_margin=None):
    """Per-example maximum output lengths.

    Args:
        source_lengths: int tensor `[batch]`, source lengths in tokens.
        max_length: int, the absolute cap.
        max_length_margin: int or None. When set, an example may generate
            at most `source_length + max_length_margin` tokens.

    Returns:
        int32 tensor `[batch]`, each value in `[1, max_length]`.
    """
    source_lengths = tf.cast(source_lengths, tf.int32)
    if max_length_margin is None:
        lengths = tf.fill(tf.shape(source_lengths), max_length)
    else:
        lengths = source_lengths + max_length_margin
    return tf.clip_by_value(lengths, 1, max_length)


def search_limits(initial_ids, max_length, max_lengths):
    """`(initial_ids int32 [batch], batch_size, max_lengths int32 [batch]
    clipped to [1, max_length])`, the start of either search."""
    initial_ids = tf.cast(tf.convert_to_tensor(initial_ids), tf.int32)
    batch_size = tf.shape(initial_ids)[0]
    if max_lengths is None:
        max_lengths = tf.fill([batch_size], max_length)
    max_lengths = tf.clip_by_value(
        tf.cast(max_lengths, tf.int32), 1, max_length
    )
    return initial_ids, batch_size, max_lengths


def write_column(sequences, column, tokens):
    """Writes `tokens [...]` into `sequences [..., L]` at `column`."""
    positions = tf.range(tf.shape(sequences)[-1])
    return tf.where(positions == column, tokens[..., None], sequences)


def keep_shapes(outputs, inputs):
    """Restores static shapes lost by gathers on dynamic indices.

    `tf.while_loop` requires loop variables to keep their shapes; a gather
    with a computed index can turn a known dimension into `None`.
    """

    def restore(output, reference):
        output = tf.convert_to_tensor(output)
        output.set_shape(reference.shape)
        return output

    return tf.nest.map_structure(restore, outputs, inputs)


def call_next_fn(next_fn, token_ids, index, state, prefix_length):
    """`next_fn(token_ids, index, state)`, with `prefix_length=` when the
    loop runs in phases (see `beam_search`'s module docstring)."""
    if prefix_length is None:
        return next_fn(token_ids, index, state)
    return next_fn(token_ids, index, state, prefix_length=prefix_length)


def phased_while_loop(cond, body, loop_vars, max_length, prefix_lengths):
    """`tf.while_loop(cond, body)` over at most `max_length` steps, run in
    phases that end at `prefix_lengths` (see `beam_search`'s module
    docstring).

    `body(prefix_length, *loop_vars)` gets the phase's static bound (None
    without phases); `loop_vars[0]` is the step index.
    """
    if prefix_lengths is None:
        return tf.while_loop(
            cond,
            lambda *v: body(None, *v),
            loop_vars,
            maximum_iterations=max_length,
        )
    start = 0
    for end in prefix_lengths:
        loop_vars = tf.while_loop(
            lambda *v, end=end: tf.logical_and(v[0] < end, cond(*v)),
            lambda *v, end=end: body(end, *v),
            loop_vars,
            maximum_iterations=end - start,
        )
        start = end
    return loop_vars
