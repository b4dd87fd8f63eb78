"""What a student gives the search: `SearchableStudent` and `NextToken`.

The searches (`beam_search`, `greedy_search`) know nothing of models: they
call a `next_fn` (the contract is in `beam_search`'s module docstring). A
student is searchable when it can run its encoder once and then hand out,
for that encoded batch, a next-token function with its cache:

```
encoder_outputs = student.call_encoder(encoder_token_ids, encoder_padding_mask)
step = student.next_token(encoder_outputs, encoder_padding_mask,
                          settings=settings, buffer_length=length,
                          bos_id=bos_id)  # a NextToken
```

`decode_student` (`decoding/decode.py`) does exactly this and runs the
search; `Generator` and the SavedModel export both go through it.
`TransformerSeq2Seq` implements `next_token` with `IncrementalDecoder`
(`use_cache=True`) or `recomputing_next_token` (`use_cache=False`);
`RecurrentSeq2Seq` with its GRU state. Nothing here depends on a model
class.
"""

from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import tensorflow as tf


class NextToken(NamedTuple):
    """A student's next-token function for one encoded batch.

    Attributes:
        next_fn: `(token_ids, index, state) -> (logits, state)` as in
            `beam_search`; rows are example-major (`b * beam_size + k`).
            With `prefix_lengths` it must also take `prefix_length=`.
        initial_state: nested tensors with one row per *example* (the
            search repeats each row `beam_size` times), or `()`.
        reorder_state: optional `(state, rows) -> state` for a state that
            follows beam search's reordering more cheaply than gathering
            every tensor (None: the search gathers).
        prefix_lengths: optional static phases for the loop (see
            `beam_search`); None runs one loop.
    """

    next_fn: Callable
    initial_state: Any = ()
    reorder_state: Callable | None = None
    prefix_lengths: tuple | list | None = None


@runtime_checkable
class SearchableStudent(Protocol):
    """A student the searches can decode (see the module docstring).

    - `call_encoder(encoder_token_ids, encoder_padding_mask)`: int32
      `[batch, source_length]` each -> whatever `next_token` reads (e.g.
      hidden states `[batch, source_length, d]`); one row per example.
    - `next_token(encoder_outputs, encoder_padding_mask, *, settings,
      buffer_length, bos_id)` -> `NextToken`. `settings` is the
      `SearchSettings` (beam size for tiling the encoder outputs per beam,
      `jit_compile` for the layout, `use_cache`, `prefix_phases`);
      `buffer_length` the static number of steps (cache slots).
    """

    def call_encoder(self, encoder_token_ids, encoder_padding_mask): ...

    def next_token(
        self,
        encoder_outputs,
        encoder_padding_mask,
        *,
        settings,
        buffer_length,
        bos_id,
    ): ...


def check_searchable(model):
    """Raises ValueError unless `model` is a `SearchableStudent`."""
    for method in ("call_encoder", "next_token"):
        if not callable(getattr(model, method, None)):
            raise ValueError(
                f"`model` must have a `{method}` method to be searched (a "
                "SearchableStudent: `call_encoder` and `next_token`, see "
                "bertkd_tf/decoding/next_token.py; TransformerSeq2Seq and "
                f"RecurrentSeq2Seq have them). Received: {model!r}"
            )


def recomputing_next_token(
    model,
    encoder_hidden,
    encoder_padding_mask,
    *,
    beam_size,
    buffer_length,
    bos_id,
):
    """A `NextToken` that runs the whole decoder prefix every step.

    For models with keras-hub BART's `initialize_cache` and
    `call_decoder_with_cache` (`TransformerSeq2Seq`): the baseline a cache
    is measured against (`SearchSettings(use_cache=False)`). The encoder's
    cross-attention keys/values are computed once, by one decoder step on
    BOS at batch size (its self-attention cache is thrown away).
    """
    batch_size = tf.shape(encoder_hidden)[0]
    source_length = tf.shape(encoder_hidden)[1]
    self_cache, cross_cache = model.initialize_cache(
        batch_size, buffer_length, source_length
    )
    start = tf.fill([batch_size, 1], bos_id)
    _, _, _, cross_cache = model.call_decoder_with_cache(
        encoder_hidden,
        encoder_padding_mask,
        start,
        self_attention_cache=self_cache,
        self_attention_cache_update_index=0,
        cross_attention_cache=cross_cache,
        cross_attention_cache_update_index=0,
    )
    encoder_hidden = tf.repeat(encoder_hidden, beam_size, axis=0)
    encoder_mask = tf.repeat(encoder_padding_mask, beam_size, axis=0)
    cross_cache = tf.repeat(cross_cache, beam_size, axis=0)

    def next_fn(token_ids, index, state):
        fresh, _ = model.initialize_cache(
            tf.shape(token_ids)[0], buffer_length, source_length
        )
        logits, _, _, _ = model.call_decoder_with_cache(
            encoder_hidden,
            encoder_mask,
            token_ids[:, :buffer_length],
            self_attention_cache=fresh,
            self_attention_cache_update_index=0,
            cross_attention_cache=cross_cache,
            cross_attention_cache_update_index=None,
        )
        return tf.gather(logits, index, axis=1), state

    return NextToken(next_fn, ())
