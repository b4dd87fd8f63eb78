"""The search graph of a student: `decode_student`, and how to shard it.

This is the one place the search graph is built. `Generator` (host-side
batching, one compiled function per bucket) and the SavedModel export
(`ServingModule`, dynamic shapes) both call `decode_student`; they differ
only in the shapes they feed it and in `tf.function`'s `jit_compile`.
"""

import os

import tensorflow as tf

from bertkd_tf.decoding.beam_search import beam_search
from bertkd_tf.decoding.greedy_search import greedy_search
from bertkd_tf.decoding.next_token import check_searchable
from bertkd_tf.decoding.search_loop import decode_lengths

# Hypotheses (examples x beam) a shard keeps at least under
# `search_shards="auto"`: measured on 2 cores, two shards of 10 beam-5
# rows (batch 4) are 1.3x one search, two of 4 greedy rows (batch 8) 0.9x.
MIN_SHARD_ROWS = 10


def _power_of_two_at_most(value):
    return 1 << (max(1, int(value)).bit_length() - 1)


def auto_search_shards(batch_size, beam_size=1, threads=None):
    """Concurrent searches for a batch under `search_shards="auto"`.

    On a CPU-only machine: as many as TensorFlow runs ops concurrently (its
    inter-op threads; by default the cores), a power of two, each with at
    least `MIN_SHARD_ROWS` hypotheses (`batch_size * beam_size / shards`).
    With a GPU or TPU visible: 1 (the accelerator runs one search at a
    time). `threads` overrides TensorFlow's inter-op thread count.
    """
    if any(
        device.device_type != "CPU"
        for device in tf.config.list_physical_devices()
    ):
        return 1
    if threads is None:
        threads = tf.config.threading.get_inter_op_parallelism_threads()
        threads = threads or os.cpu_count() or 1
    rows = batch_size * beam_size
    return _power_of_two_at_most(max(1, min(threads, rows // MIN_SHARD_ROWS)))


def check_search_shards(search_shards):
    """Returns `search_shards` if it is `"auto"` or a power of two >= 1."""
    if search_shards != "auto" and (
        isinstance(search_shards, bool)
        or not isinstance(search_shards, int)
        or search_shards < 1
        or search_shards & (search_shards - 1)
    ):
        raise ValueError(
            "`search_shards` must be 'auto' or a power of two >= 1. "
            f"Received: search_shards={search_shards!r}"
        )
    return search_shards


def decode_student(
    model,
    encoder_token_ids,
    encoder_padding_mask,
    settings,
    *,
    buffer_length,
    bos_id,
    eos_id,
    pad_id,
):
    """Graph: encoder inputs -> (ids, scores) by greedy or beam search.

    The encoder runs once (`model.call_encoder`); the student's
    `next_token` (a `SearchableStudent`, see `decoding/next_token.py`)
    gives the next-token function, its cache and layout, which greedy
    search (`settings.beam_size == 1`) or beam search runs for at most
    `buffer_length` steps; each example stops at `source length +
    settings.max_length_margin` (source with EOS). `settings.min_length`
    and `settings.no_repeat_ngram_size` constrain both searches.

    Args:
        model: a `SearchableStudent` (`call_encoder`, `next_token`).
        encoder_token_ids: int32 `[batch, source_length]`, source + EOS,
            padded with `pad_id`.
        encoder_padding_mask: int32 `[batch, source_length]`.
        settings: the `SearchSettings`. `jit_compile` picks the layout for
            XLA's static shapes (see `incremental_next_token`); the caller
            decides whether the function is compiled.
        buffer_length: int, the static number of steps (cache slots).
        bos_id, eos_id, pad_id: special ids.

    Returns:
        `(sequences, scores)` as `beam_search` / `greedy_search` return
        them: int32 `[batch, buffer_length]` (or `[batch, n, ...]` with
        `num_return_sequences`) and float32 scores.
    """
    check_searchable(model)
    batch_size = tf.shape(encoder_token_ids)[0]
    encoder_outputs = model.call_encoder(
        encoder_token_ids, encoder_padding_mask
    )
    max_lengths = decode_lengths(
        tf.reduce_sum(encoder_padding_mask, axis=1),
        buffer_length,
        settings.max_length_margin,
    )
    step = model.next_token(
        encoder_outputs,
        encoder_padding_mask,
        settings=settings,
        buffer_length=buffer_length,
        bos_id=bos_id,
    )
    initial_ids = tf.fill([batch_size], bos_id)
    if settings.beam_size == 1:
        return greedy_search(
            step.next_fn,
            initial_ids,
            step.initial_state,
            max_length=buffer_length,
            eos_id=eos_id,
            max_lengths=max_lengths,
            pad_id=pad_id,
            prefix_lengths=step.prefix_lengths,
            min_length=settings.min_length,
            no_repeat_ngram_size=settings.no_repeat_ngram_size,
        )
    return beam_search(
        step.next_fn,
        initial_ids,
        step.initial_state,
        beam_size=settings.beam_size,
        max_length=buffer_length,
        eos_id=eos_id,
        length_penalty=settings.length_penalty,
        max_lengths=max_lengths,
        num_return_sequences=settings.num_return_sequences,
        pad_id=pad_id,
        reorder_state=step.reorder_state,
        prefix_lengths=step.prefix_lengths,
        min_length=settings.min_length,
        no_repeat_ngram_size=settings.no_repeat_ngram_size,
    )
