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
"""

import math

import keras
import tensorflow as tf
from tensorflow.compiler.tf2xla.python.xla import dynamic_update_slice

# Added to the scores of masked positions (float32 softmax).
_MASKED = -1.0e9


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

    def _attention_weights(self, attention):
        return {
            name: (
                self._cast(dense.kernel),
                self._cast(dense.bias),
            )
            for name, dense in (
                ("query", attention._query_dense),
                ("key", attention._key_dense),
                ("value", attention._value_dense),
                ("output", attention._output_dense),
            )
        }

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
        layers = []
        for layer in self.layers:
            self_attention = self._attention_weights(
                layer._self_attention_layer
            )
            cross_attention = self._attention_weights(
                layer._cross_attention_layer
            )
            cross = {}
            for name in ("key", "value"):
                kernel, bias = cross_attention.pop(name)
                cross[name] = (
                    tf.einsum("bsd,dhk->bhsk", hidden, kernel)
                    + (bias[:, None, :])
                )
            layers.append(
                {
                    "self_attention": self_attention,
                    "cross_attention": cross_attention,
                    "cross_key": cross["key"],
                    "cross_value": cross["value"],
                    "ffn_in": (
                        self._cast(
                            layer._feedforward_intermediate_dense.kernel
                        ),
                        self._cast(layer._feedforward_intermediate_dense.bias),
                    ),
                    "ffn_out": (
                        self._cast(layer._feedforward_output_dense.kernel),
                        self._cast(layer._feedforward_output_dense.bias),
                    ),
                }
            )
        mask = tf.cast(encoder_padding_mask, tf.bool)
        cross_bias = tf.where(mask, 0.0, _MASKED)[:, None, None, :]
        return {
            "layers": layers,
            "embeddings": self._cast(self.backbone.token_embedding.embeddings),
            "cross_bias": cross_bias,  # [batch, 1, 1, source_length]
        }

    def initial_state(self, rows, buffer_length):
        """Zero self-attention caches: a tuple of `(keys, values)` per layer,
        each `[rows, heads, buffer_length, head_dim]`."""
        shape = [rows, self.num_heads, buffer_length, self.head_dim]
        return tuple(
            (
                tf.zeros(shape, self.compute_dtype),
                tf.zeros(shape, self.compute_dtype),
            )
            for _ in self.layers
        )

    def position_table(self, buffer_length):
        """Sinusoidal positions `[buffer_length, hidden_dim]` (as embedded)."""
        zeros = tf.zeros([1, buffer_length, self.hidden_dim], tf.float32)
        return self.backbone.position_encoding(zeros)[0]

    # --- One step -----------------------------------------------------------

    def _softmax(self, scores):
        return tf.cast(tf.nn.softmax(scores, axis=-1), self.compute_dtype)

    def step(
        self, context, token_ids, index, state, group_size, positions=None
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

        Returns:
            `(logits, state)`: float32 `[rows, vocabulary_size]` and the
            caches with this position's keys/values written.
        """
        dtype = self.compute_dtype
        heads, head_dim = self.num_heads, self.head_dim
        buffer_length = state[0][0].shape[2] or tf.shape(state[0][0])[2]
        if positions is None:
            positions = self.position_table(buffer_length)
        embeddings = context["embeddings"]
        x = tf.gather(embeddings, token_ids)
        x = x * tf.cast(self.backbone.embedding_scale, dtype)
        x = x + tf.cast(tf.gather(positions, index), dtype)[None, :]

        scale = tf.cast(1.0 / math.sqrt(head_dim), dtype)
        slots = tf.range(buffer_length)
        self_bias = tf.where(slots <= index, 0.0, _MASKED)  # [length]
        rows = tf.shape(token_ids)[0]
        new_state = []
        for layer, params, (keys, values) in zip(
            self.layers, context["layers"], state
        ):
            # Self-attention over the cache.
            attention = params["self_attention"]
            residual = x
            h = (
                layer._self_attention_layer_norm(x)
                if self.normalize_first
                else x
            )
            q = tf.einsum("rd,dhk->rhk", h, attention["query"][0])
            q = (q + attention["query"][1]) * scale
            k = tf.einsum("rd,dhk->rhk", h, attention["key"][0])
            v = tf.einsum("rd,dhk->rhk", h, attention["value"][0])
            k = k + attention["key"][1]
            v = v + attention["value"][1]
            start = [0, 0, index, 0]
            keys = _write_slot(keys, k, start)
            values = _write_slot(values, v, start)
            new_state.append((keys, values))
            scores = tf.einsum("rhk,rhlk->rhl", q, keys)
            probs = self._softmax(tf.cast(scores, tf.float32) + self_bias)
            o = tf.einsum("rhl,rhlk->rhk", probs, values)
            o = tf.einsum("rhk,hkd->rd", o, attention["output"][0])
            x = residual + o + attention["output"][1]
            if not self.normalize_first:
                x = layer._self_attention_layer_norm(x)

            # Cross-attention, keys/values shared by a group's rows.
            attention = params["cross_attention"]
            residual = x
            h = (
                layer._cross_attention_layer_norm(x)
                if self.normalize_first
                else x
            )
            q = tf.einsum("rd,dhk->rhk", h, attention["query"][0])
            q = (q + attention["query"][1]) * scale
            q = tf.reshape(q, [-1, group_size, heads, head_dim])
            scores = tf.einsum("bghk,bhsk->bghs", q, params["cross_key"])
            probs = self._softmax(
                tf.cast(scores, tf.float32) + context["cross_bias"]
            )
            o = tf.einsum("bghs,bhsk->bghk", probs, params["cross_value"])
            o = tf.reshape(o, [rows, heads, head_dim])
            o = tf.einsum("rhk,hkd->rd", o, attention["output"][0])
            x = residual + o + attention["output"][1]
            if not self.normalize_first:
                x = layer._cross_attention_layer_norm(x)

            # Feedforward.
            residual = x
            h = layer._feedforward_layer_norm(x) if self.normalize_first else x
            kernel, bias = params["ffn_in"]
            h = self.activation(tf.matmul(h, kernel) + bias)
            kernel, bias = params["ffn_out"]
            x = residual + tf.matmul(h, kernel) + bias
            if not self.normalize_first:
                x = layer._feedforward_layer_norm(x)

        if self.backbone.decoder_layer_norm is not None:
            x = self.backbone.decoder_layer_norm(x)
        logits = tf.matmul(x, embeddings, transpose_b=True)
        return tf.cast(logits, tf.float32), tuple(new_state)


def _write_slot(cache, update, start):
    """Writes `update [rows, heads, head_dim]` at `cache[:, :, index]`."""
    return dynamic_update_slice(cache, update[:, :, None, :], start)
