"""The loop machinery beam search and greedy search share.

Both searches keep hypotheses in a preallocated `[.., max_length + 1]`
token buffer (column 0 the start token), call the student's `next_fn`
(see `beam_search`'s module docstring for the contract) once a step inside
a `tf.while_loop` bounded by `max_length`, and may run that loop in phases
with a static `prefix_length` each (`prefix_lengths`). What differs is only
how a step picks tokens; the rest lives here, with the constraints both
apply to a step's choice (`check_constraints`, `banned_tokens`: fairseq's
`--min-len` and `--no-repeat-ngram-size`).
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


def check_constraints(min_length, no_repeat_ngram_size):
    """Raises ValueError unless `min_length` and `no_repeat_ngram_size` are
    ints >= 0 (0: off). A `min_length` at or above the buffer is allowed:
    the hypothesis is then cut at its maximum length, as a per-example cap
    below `min_length` cuts it."""
    for name, value in (
        ("min_length", min_length),
        ("no_repeat_ngram_size", no_repeat_ngram_size),
    ):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(
                f"`{name}` must be an int >= 0 (0: off). Received: "
                f"{name}={value!r}"
            )


def banned_tokens(
    token_ids,
    index,
    vocabulary_size,
    *,
    eos_id,
    min_length=0,
    no_repeat_ngram_size=0,
):
    """The tokens a step may not choose, or None when no constraint is on.

    Static shapes throughout (XLA): the n-grams are compared at every
    start position of the fixed-width buffer and those not yet complete
    are masked out, instead of slicing the hypothesis.

    Args:
        token_ids: int32 `[rows, width]`, the search's token buffer: column
            0 the start token, column `index` the last token, `pad_id`
            after it.
        index: scalar int32, the step (the token chosen now goes to column
            `index + 1`).
        vocabulary_size: int or scalar tensor.
        eos_id: int.
        min_length: int; EOS is banned while `index < min_length`.
        no_repeat_ngram_size: int n; with n > 0, a token is banned when it
            would complete an n-gram that already occurs in columns
            `0..index` (start token included).

    Returns:
        bool `[rows, vocabulary_size]`, True where banned, or None.
    """
    if not min_length and not no_repeat_ngram_size:
        return None
    rows = tf.shape(token_ids)[0]
    banned = tf.zeros([rows, vocabulary_size], tf.bool)
    if min_length:
        eos = tf.equal(tf.range(vocabulary_size), eos_id)[None, :]
        banned |= eos & (index < min_length)
    n = no_repeat_ngram_size
    width = token_ids.shape[1]
    if width is None:
        width = tf.shape(token_ids)[1]
    elif n > width:
        n = 0  # No n-gram fits in the buffer.
    if n:
        # The n-gram starting at column j is token_ids[:, j:j + n]; it
        # exists once j + n - 1 <= index. Its first n - 1 tokens against
        # the hypothesis' last n - 1 (columns index - n + 2 .. index).
        starts = width - n + 1
        matches = tf.broadcast_to(
            (tf.range(starts) + n - 1 <= index)[None, :], [rows, starts]
        )
        for offset in range(n - 1):
            # Negative columns only occur when no n-gram is complete yet.
            column = tf.maximum(index - n + 2 + offset, 0)
            last = tf.gather(token_ids, column, axis=1)
            matches &= tf.equal(
                token_ids[:, offset : offset + starts], last[:, None]
            )
        following = token_ids[:, n - 1 : n - 1 + starts]
        row_ids = tf.broadcast_to(tf.range(rows)[:, None], tf.shape(following))
        counts = tf.tensor_scatter_nd_add(
            tf.zeros([rows, vocabulary_size], tf.int32),
            tf.stack([row_ids, following], axis=-1),
            tf.cast(matches, tf.int32),
        )
        banned |= counts > 0
    return banned


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
