"""One-token decoder steps of a `TransformerSeq2Seq` for fast search.

`TransformerSeq2Seq.call_decoder_with_cache` follows keras-hub's cache
layout (one `[batch, layers, 2, length, heads, head_dim]` tensor) and runs
the keras-hub layers as they are. That is general but slow for search on a
CPU: every step slices each layer's cache out of the big tensor and stacks
it back (whole-cache copies), re-casts every weight under mixed precision,
and repeats the encoder's cross-attention keys/values once per beam.

`IncrementalDecoder` computes exactly the same function (tested against
`call_decoder_with_cache` and the teacher-forced forward pass) from the same
weights, arranged for the search loop:

- weights are read (and cast to the compute dtype) once per search, before
  the loop, by `prepare`;
- the self-attention cache is one `(keys, values)` pair per layer, each
  `[rows, heads, length, head_dim]`, updated in place at the step's index;
- cross-attention keys/values are computed once per *example*
  (`[batch, heads, source_length, head_dim]`) and shared by its `group_size`
  beams: queries are viewed as `[batch, group_size, heads, head_dim]`;
- attention softmax and the logits are float32.

Rows are example-major: row `b * group_size + g` is beam `g` of example `b`,
as in `decoding.beam_search`.

Beam search reorders the rows after every step. By default the state is the
caches alone and the search gathers them (every slot of every layer, every
step). `initial_state(..., track_origins=True)` instead keeps each row's
cache where it was written and records, per row and slot, which beam of the
example wrote it (`origins [rows, length]`); `reorder_state` then only
gathers those indices, and self-attention reads each slot from the beam it
came from (a gather fused into the attention arithmetic under XLA). The two
compute the same function; under XLA tracking origins is faster, in
TensorFlow's graph mode gathering the caches is.

`incremental_next_token` wraps it as the `NextToken` that
`TransformerSeq2Seq.next_token` hands the search (`decode_student`).
"""

import math

import keras
import tensorflow as tf

from bertkd_tf.decoding.next_token import NextToken
from bertkd_tf.decoding.search_loop import doubling_prefix_lengths

# Added to the scores of masked positions (float32 softmax).
_MASKED = -1.0e9
# First phase of the prefix-attention search under XLA (see beam_search).
PREFIX_PHASE = 16


def incremental_next_token(
    model,
    encoder_hidden,
    encoder_padding_mask,
    *,
    beam_size,
    buffer_length,
    xla=False,
    prefix_phases=False,
):
    """The `NextToken` of a `TransformerSeq2Seq` through `IncrementalDecoder`.

    Weights cast once, cross-attention keys/values computed once per
    example and shared by its beams, one self-attention cache of
    `buffer_length` slots per layer. `xla=True` arranges beam search for
    XLA's static shapes (faster there, slower in TensorFlow's graph mode):
    the state tracks which beam each cache slot came from instead of
    gathering the caches every step. Greedy search is the same in both.
    With `xla` and `prefix_phases`, beam search runs in phases of
    `PREFIX_PHASE`, twice that, ... steps that attend over only that prefix
    of the cache: faster steps, one compiled copy of the step per phase.
    """
    decoder = IncrementalDecoder(model)
    context = decoder.prepare(encoder_hidden, encoder_padding_mask)
    positions = decoder.position_table(buffer_length)

    def next_fn(token_ids, index, state, prefix_length=None):
        last = tf.gather(token_ids, index, axis=1)
        return decoder.step(
            context,
            last,
            index,
            state,
            group_size=beam_size,
            positions=positions,
            prefix_length=prefix_length,
        )

    track_origins = beam_size > 1 and xla
    initial_state = decoder.initial_state(
        tf.shape(encoder_hidden)[0], buffer_length, track_origins=track_origins
    )
    # Phases pay where the attention reads gathered slots (beam search
    # under XLA); greedy search's sliced cache costs a copy (measured).
    prefix_lengths = (
        doubling_prefix_lengths(buffer_length, PREFIX_PHASE)
        if track_origins and prefix_phases
        else None
    )
    return NextToken(
        next_fn, initial_state, decoder.reorder_state, prefix_lengths
    )


class IncrementalDecoder:
    """Fast one-token decoding of a `TransformerSeq2Seq` (see module doc).

    Args:
        model: a `TransformerSeq2Seq` (its backbone's layers are read, not
            copied: later weight updates are seen by later `prepare` calls).

    Example:
    ```python
    decoder = IncrementalDecoder(model)
    hidden = model.call_encoder(source_ids, source_mask)
    context = decoder.prepare(hidden, source_mask)
    state = decoder.initial_state(batch_size * beam, buffer_length)
    logits, state = decoder.step(context, last_tokens, index, state,
                                 group_size=beam)
    ```
    """

    def __init__(self, model):
        backbone = model.backbone
        self.backbone = backbone
        self.layers = list(backbone.decoder_transformer_layers)
        self.num_heads = backbone.num_heads
        self.head_dim = backbone.hidden_dim // backbone.num_heads
        self.hidden_dim = backbone.hidden_dim
        self.normalize_first = backbone.normalize_first
        self.activation = keras.activations.get(backbone.activation)
        self.compute_dtype = backbone.token_embedding.compute_dtype
        for layer in self.layers:
            if layer._cross_attention_layer is None:
                raise ValueError(
                    f"Decoder layer {layer.name!r} has no cross-attention; "
                    "IncrementalDecoder needs an encoder-decoder."
                )

    # --- Set-up, once per search ------------------------------------------

    def _cast(self, variable):
        return tf.cast(tf.convert_to_tensor(variable), self.compute_dtype)

    def _dense(self, dense, scale=None, heads_in=False):
        """A Dense/EinsumDense as a 2-D `(kernel [in, out], bias [out])` in
        the compute dtype. Attention kernels are `[d, heads, head_dim]`
        (projections) or, with `heads_in`, `[heads, head_dim, d]` (the
        output). `scale` folds the attention's query scaling in."""
        kernel = tf.convert_to_tensor(dense.kernel)
        if heads_in:
            kernel = tf.reshape(kernel, [-1, kernel.shape[-1]])
        else:
            kernel = tf.reshape(kernel, [kernel.shape[0], -1])
        bias = tf.reshape(tf.convert_to_tensor(dense.bias), [-1])
        if scale is not None:
            kernel, bias = kernel * scale, bias * scale
        return self._cast(kernel), self._cast(bias)

    def prepare(self, encoder_hidden_states, encoder_padding_mask):
        """Weights, cross-attention keys/values and mask for a search.

        Args:
            encoder_hidden_states: `[batch, source_length, hidden_dim]` from
                `call_encoder` (one row per example, not per beam).
            encoder_padding_mask: int `[batch, source_length]`.

        Returns:
            A dict of tensors (a "context") for `step`.
        """
        hidden = tf.cast(encoder_hidden_states, self.compute_dtype)
        batch_size = tf.shape(hidden)[0]
        scale = 1.0 / math.sqrt(self.head_dim)

        def heads_first(x):  # [batch, length, d] -> [batch, H, length, K]
            x = tf.reshape(x, [batch_size, -1, self.num_heads, self.head_dim])
            return tf.transpose(x, [0, 2, 1, 3])

        layers = []
        for layer in self.layers:
            attention = layer._self_attention_layer
            query = self._dense(attention._query_dense, scale)
            key = self._dense(attention._key_dense)
            value = self._dense(attention._value_dense)
            cross = layer._cross_attention_layer
            cross_key = self._dense(cross._key_dense)
            cross_value = self._dense(cross._value_dense)
            layers.append(
                {
                    # One matmul for the query, key and value.
                    "qkv": (
                        tf.concat([query[0], key[0], value[0]], axis=1),
                        tf.concat([query[1], key[1], value[1]], axis=0),
                    ),
                    "self_output": self._dense(
                        attention._output_dense, heads_in=True
                    ),
                    "cross_query": self._dense(cross._query_dense, scale),
                    "cross_output": self._dense(
                        cross._output_dense, heads_in=True
                    ),
                    "cross_key": heads_first(
                        tf.matmul(hidden, cross_key[0]) + cross_key[1]
                    ),
                    "cross_value": heads_first(
                        tf.matmul(hidden, cross_value[0]) + cross_value[1]
                    ),
                    "ffn_in": self._dense(
                        layer._feedforward_intermediate_dense
                    ),
                    "ffn_out": self._dense(layer._feedforward_output_dense),
                }
            )
        mask = tf.cast(encoder_padding_mask, tf.bool)
        cross_bias = tf.where(mask, 0.0, _MASKED)[:, None, None, :]
        return {
            "layers": layers,
            "embeddings": self._cast(self.backbone.token_embedding.embeddings),
            "cross_bias": cross_bias,  # [batch, 1, 1, source_length]
        }

    def initial_state(self, rows, buffer_length, track_origins=False):
        """Zero self-attention caches.

        Without `track_origins`: a tuple of `(keys, values)` per layer, each
        `[rows, heads, buffer_length, head_dim]`, to be reordered by
        gathering rows. With it: a dict with `caches` (a `(keys, values)`
        pair per layer, each `[rows, buffer_length, hidden_dim]`, never
        reordered) and `origins` (int32 `[rows, buffer_length]`, the beam
        within the example whose cache holds each slot of the row's
        hypothesis), to be reordered by `reorder_state`.
        """
        if not track_origins:
            shape = [rows, self.num_heads, buffer_length, self.head_dim]
        else:
            shape = [rows, buffer_length, self.hidden_dim]
        caches = tuple(
            (
                tf.zeros(shape, self.compute_dtype),
                tf.zeros(shape, self.compute_dtype),
            )
            for _ in self.layers
        )
        if not track_origins:
            return caches
        origins = tf.zeros([rows, buffer_length], tf.int32)
        return {"caches": caches, "origins": origins}

    @staticmethod
    def reorder_state(state, rows):
        """Row `r` of the result continues row `rows[r]` (beam search)."""
        if isinstance(state, dict):
            return {
                "caches": state["caches"],
                "origins": tf.gather(state["origins"], rows),
            }
        return tf.nest.map_structure(lambda t: tf.gather(t, rows), state)

    def position_table(self, buffer_length):
        """Sinusoidal positions `[buffer_length, hidden_dim]` (as embedded)."""
        zeros = tf.zeros([1, buffer_length, self.hidden_dim], tf.float32)
        return self.backbone.position_encoding(zeros)[0]

    # --- One step -----------------------------------------------------------

    # A sub-block's LayerNorm goes on its input (pre-LN, `normalize_first`)
    # or on the residual sum (post-LN), as in keras-hub's layers.
    def _pre_norm(self, layer_norm, x):
        return layer_norm(x) if self.normalize_first else x

    def _post_norm(self, layer_norm, x):
        return x if self.normalize_first else layer_norm(x)

    def _self_attention(self, h, params, cache, index, bias, prefix_length):
        """Over the cache (its first `prefix_length` slots when set), this
        position's keys/values written first (the query is pre-scaled);
        returns `(output [rows, d], cache)`."""
        rows, d = tf.shape(h)[0], self.hidden_dim
        qkv = _affine(h, params["qkv"])
        q, k, v = (
            tf.reshape(
                qkv[:, i * d : (i + 1) * d], [rows, self.num_heads, 1, -1]
            )
            for i in range(3)
        )
        keys, values = cache
        start = [0, 0, index, 0]
        keys = keras.ops.slice_update(keys, start, k)
        values = keras.ops.slice_update(values, start, v)
        new_cache = (keys, values)
        if prefix_length is not None:
            keys = keys[:, :, :prefix_length]
            values = values[:, :, :prefix_length]
        scores = tf.matmul(q, keys, transpose_b=True)  # [R, H, 1, L]
        probs = self._softmax(tf.cast(scores, tf.float32) + bias)
        o = tf.reshape(tf.matmul(probs, values), [rows, d])
        return _affine(o, params["self_output"]), new_cache

    def _cross_attention(self, h, params, bias, group_size):
        """Over the encoder, keys/values shared by a group's rows."""
        rows, d = tf.shape(h)[0], self.hidden_dim
        q = tf.reshape(
            _affine(h, params["cross_query"]),
            [-1, group_size, self.num_heads, self.head_dim],
        )
        q = tf.transpose(q, [0, 2, 1, 3])  # [B, H, G, K]
        scores = tf.matmul(q, params["cross_key"], transpose_b=True)
        probs = self._softmax(tf.cast(scores, tf.float32) + bias)
        o = tf.matmul(probs, params["cross_value"])  # [B, H, G, K]
        o = tf.reshape(tf.transpose(o, [0, 2, 1, 3]), [rows, d])
        return _affine(o, params["cross_output"])

    def _self_attention_by_origin(self, h, params, cache, index, bias, slots):
        """`_self_attention` over caches that are never reordered: the key
        and value of slot `l` of row `r` are read from row `slots[r, l]` of
        the `[rows * length]` flattened cache (see `step`)."""
        rows, d = tf.shape(h)[0], self.hidden_dim
        heads, head_dim = self.num_heads, self.head_dim
        qkv = _affine(h, params["qkv"])
        q, k, v = (qkv[:, i * d : (i + 1) * d] for i in range(3))
        keys, values = cache
        keys = keras.ops.slice_update(keys, [0, index, 0], k[:, None, :])
        values = keras.ops.slice_update(values, [0, index, 0], v[:, None, :])

        def read(cache):  # [rows, length, heads, head_dim], float32
            flat = tf.reshape(cache, [-1, heads, head_dim])
            return tf.cast(tf.gather(flat, slots), tf.float32)

        q = tf.cast(tf.reshape(q, [rows, 1, heads, head_dim]), tf.float32)
        scores = tf.reduce_sum(q * read(keys), axis=-1)  # [R, L, H]
        probs = tf.nn.softmax(scores + bias[None, :, None], axis=1)
        o = tf.reduce_sum(probs[..., None] * read(values), axis=1)
        o = tf.cast(tf.reshape(o, [rows, d]), self.compute_dtype)
        return _affine(o, params["self_output"]), (keys, values)

    def _softmax(self, scores):
        return tf.cast(tf.nn.softmax(scores, axis=-1), self.compute_dtype)

    def step(
        self,
        context,
        token_ids,
        index,
        state,
        group_size,
        positions=None,
        prefix_length=None,
    ):
        """Logits for the next token after `token_ids` at position `index`.

        Args:
            context: from `prepare`.
            token_ids: int `[rows]`, the tokens at position `index`, rows =
                batch * group_size.
            index: scalar int tensor, the position (0 for BOS).
            state: from `initial_state` or the previous step.
            group_size: int, rows per example (the beam size).
            positions: optional `position_table(buffer_length)` (computed
                here when None).
            prefix_length: optional static int > `index`: attend over the
                first `prefix_length` cache slots only (the later ones are
                masked anyway); phases of `beam_search` pass it.

        Returns:
            `(logits, state)`: float32 `[rows, vocabulary_size]` and the
            state with this position's keys/values written.
        """
        dtype = self.compute_dtype
        by_origin = isinstance(state, dict)
        if by_origin:
            origins, caches = state["origins"], state["caches"]
            buffer_length = origins.shape[1] or tf.shape(origins)[1]
        else:
            caches = state
            buffer_length = state[0][0].shape[2] or tf.shape(state[0][0])[2]
        # Slots attention reads: all, or the phase's prefix.
        visible = prefix_length or buffer_length
        slots = tf.range(visible)
        self_bias = tf.where(slots <= index, 0.0, _MASKED)  # [length]
        # The last argument of the self-attention: where each slot is read
        # (tracked origins), or how many slots are read (gathered caches).
        if by_origin:
            rows = tf.shape(origins)[0]
            # This position's slot is the row's own; earlier ones are where
            # the search's reordering left them.
            own_beam = tf.range(rows) % group_size
            origins = tf.where(
                tf.range(buffer_length)[None, :] == index,
                own_beam[:, None],
                origins,
            )
            # Row of the flattened [rows * length] cache for each slot.
            source_rows = tf.range(rows) - own_beam
            cache_slots = (
                source_rows[:, None] + origins[:, :visible]
            ) * buffer_length + slots[None, :]
            attend, reads = self._self_attention_by_origin, cache_slots
        else:
            attend, reads = self._self_attention, prefix_length
        if positions is None:
            positions = self.position_table(buffer_length)
        embeddings = context["embeddings"]
        x = tf.gather(embeddings, token_ids)
        x = x * tf.cast(self.backbone.embedding_scale, dtype)
        x = x + tf.cast(tf.gather(positions, index), dtype)[None, :]

        new_state = []
        for layer, params, cache in zip(self.layers, context["layers"], caches):
            norm = layer._self_attention_layer_norm
            out, cache = attend(
                self._pre_norm(norm, x), params, cache, index, self_bias, reads
            )
            new_state.append(cache)
            x = self._post_norm(norm, x + out)
            norm = layer._cross_attention_layer_norm
            out = self._cross_attention(
                self._pre_norm(norm, x),
                params,
                context["cross_bias"],
                group_size,
            )
            x = self._post_norm(norm, x + out)
            norm = layer._feedforward_layer_norm
            h = self.activation(
                _affine(self._pre_norm(norm, x), params["ffn_in"])
            )
            x = self._post_norm(norm, x + _affine(h, params["ffn_out"]))

        if self.backbone.decoder_layer_norm is not None:
            x = self.backbone.decoder_layer_norm(x)
        logits = tf.cast(tf.matmul(x, embeddings, transpose_b=True), tf.float32)
        if by_origin:
            return logits, {"caches": tuple(new_state), "origins": origins}
        return logits, tuple(new_state)


def _affine(x, kernel_and_bias):
    kernel, bias = kernel_and_bias
    return tf.matmul(x, kernel) + bias
