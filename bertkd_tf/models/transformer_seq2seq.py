"""Transformer seq2seq task model: backbone + tied output layer."""

import keras
from keras import ops

from bertkd_tf.decoding.incremental_decoder import incremental_next_token
from bertkd_tf.decoding.next_token import recomputing_next_token
from bertkd_tf.models.transformer_backbone import TransformerSeq2SeqBackbone


@keras.saving.register_keras_serializable(package="bertkd_tf")
class TransformerSeq2Seq(keras.Model):
    """Transformer encoder-decoder that returns next-token logits.

    Calling the model on the student features of ARCHITECTURE.md
    (`encoder_token_ids`, `encoder_padding_mask`, `decoder_token_ids`,
    `decoder_padding_mask`) returns teacher-forced logits
    `[batch, decoder_length, vocabulary_size]` in float32, also under a
    mixed precision policy (the projection runs in the compute dtype, the
    result is cast so the losses and softmax see float32). The output layer
    is the transposed token embedding (tied weights).

    It is a student in the sense of `models/student.py`: trainable with KD
    through the fused loss (`TiedOutputStudent`: `call_with_hidden`,
    `tied_output_embedding`) and searchable (`SearchableStudent`:
    `call_encoder`, `next_token`, the latter through `IncrementalDecoder`).

    For incremental decoding it also exposes, with the semantics of
    keras-hub's `BartSeq2SeqLM`:
    - `call_encoder(encoder_token_ids, encoder_padding_mask)` -> encoder
      hidden states `[batch, source_length, hidden_dim]`;
    - `call_decoder_with_cache(...)` -> `(logits, hidden_states,
      self_attention_cache, cross_attention_cache)` over fixed-shape caches
      `[batch, num_decoder_layers, 2, length, num_heads, head_dim]` (use
      `initialize_cache` to make them). Pass
      `cross_attention_cache_update_index=0` once to fill the cross-attention
      cache from the encoder states and `None` afterwards to reuse it.

    Args:
        backbone: a `TransformerSeq2SeqBackbone`.

    Example:
    ```python
    backbone = TransformerSeq2SeqBackbone(
        vocabulary_size=100, num_layers=1, num_heads=2, hidden_dim=16,
        intermediate_dim=32)
    model = TransformerSeq2Seq(backbone=backbone)
    logits = model({
        "encoder_token_ids": np.array([[5, 6, 3]], "int32"),
        "encoder_padding_mask": np.array([[1, 1, 1]], "int32"),
        "decoder_token_ids": np.array([[2, 7]], "int32"),
        "decoder_padding_mask": np.array([[1, 1]], "int32"),
    })  # [1, 2, 100] float32
    ```
    """

    def __init__(self, backbone, **kwargs):
        if not isinstance(backbone, TransformerSeq2SeqBackbone):
            raise ValueError(
                "`backbone` must be a TransformerSeq2SeqBackbone. Received: "
                f"backbone={backbone!r}"
            )
        # === Layers ===
        self.backbone = backbone
        # Cast the logits to float32 (a layer, so it shows in summaries).
        self.logits_cast = keras.layers.Activation(
            "linear", dtype="float32", name="logits"
        )

        # === Functional Model ===
        inputs = backbone.input
        hidden_states = backbone(inputs)
        logits = self.logits_cast(
            backbone.token_embedding(hidden_states, reverse=True)
        )
        super().__init__(inputs=inputs, outputs=logits, **kwargs)

    # --- Student protocol (models/student.py) ----------------------------

    def call_with_hidden(self, inputs, training=None):
        """`(logits, hidden)`: the model's logits and the final decoder
        states `[batch, decoder_length, hidden_dim]` they are computed from
        (`logits = float32(hidden @ embeddings^T)`)."""
        hidden = self.backbone(inputs, training=training)
        logits = self.logits_cast(
            self.backbone.token_embedding(hidden, reverse=True)
        )
        return logits, hidden

    @property
    def tied_output_embedding(self):
        """The token embeddings `[vocabulary, hidden_dim]` when the output
        layer is exactly the tied `hidden @ embeddings^T` (no separate
        reverse dtype, soft cap or quantization), else None."""
        embedding = self.backbone.token_embedding
        if (
            embedding.tie_weights
            and embedding.reverse_dtype is None
            and embedding.logit_soft_cap is None
            and embedding.quantization_mode is None
        ):
            return embedding.embeddings
        return None

    def next_token(
        self,
        encoder_outputs,
        encoder_padding_mask,
        *,
        settings,
        buffer_length,
        bos_id,
    ):
        """The search's `NextToken` (decoding/next_token.py): through
        `IncrementalDecoder` (`settings.use_cache`, laid out for XLA with
        `settings.jit_compile`), else recomputing the decoder prefix with
        `call_decoder_with_cache` every step."""
        if settings.use_cache:
            return incremental_next_token(
                self,
                encoder_outputs,
                encoder_padding_mask,
                beam_size=settings.beam_size,
                buffer_length=buffer_length,
                xla=settings.jit_compile,
                prefix_phases=settings.prefix_phases,
            )
        return recomputing_next_token(
            self,
            encoder_outputs,
            encoder_padding_mask,
            beam_size=settings.beam_size,
            buffer_length=buffer_length,
            bos_id=bos_id,
        )

    # --- Incremental decoding -------------------------------------------

    @property
    def num_decoder_layers(self):
        return len(self.backbone.decoder_transformer_layers)

    def call_encoder(self, encoder_token_ids, encoder_padding_mask):
        """Runs the encoder; returns `[batch, source_length, hidden_dim]`."""
        return self.backbone._encode(encoder_token_ids, encoder_padding_mask)

    def initialize_cache(self, batch_size, decoder_max_length, source_length):
        """Zero caches for `call_decoder_with_cache`.

        Returns `(self_attention_cache, cross_attention_cache)` with shapes
        `[batch, num_decoder_layers, 2, decoder_max_length, heads, head_dim]`
        and `[batch, num_decoder_layers, 2, source_length, heads, head_dim]`.
        """
        num_heads = self.backbone.num_heads
        head_dim = self.backbone.hidden_dim // num_heads
        dtype = self.backbone.token_embedding.compute_dtype
        self_shape = [
            batch_size,
            self.num_decoder_layers,
            2,
            decoder_max_length,
            num_heads,
            head_dim,
        ]
        cross_shape = list(self_shape)
        cross_shape[3] = source_length
        return ops.zeros(self_shape, dtype), ops.zeros(cross_shape, dtype)

    def call_decoder_with_cache(
        self,
        encoder_hidden_states,
        encoder_padding_mask,
        decoder_token_ids,
        self_attention_cache=None,
        self_attention_cache_update_index=None,
        cross_attention_cache=None,
        cross_attention_cache_update_index=None,
    ):
        """Decoder forward pass over key/value caches (as BartSeq2SeqLM).

        Args:
            encoder_hidden_states: `[batch, source_length, hidden_dim]` from
                `call_encoder`.
            encoder_padding_mask: int `[batch, source_length]`.
            decoder_token_ids: int `[batch, n]`, the tokens at positions
                `self_attention_cache_update_index .. + n - 1`.
            self_attention_cache: `[batch, layers, 2, max_length, heads,
                head_dim]`.
            self_attention_cache_update_index: int or int tensor, position of
                the first of `decoder_token_ids`.
            cross_attention_cache: `[batch, layers, 2, source_length, heads,
                head_dim]`.
            cross_attention_cache_update_index: `0` to compute the cross
                attention keys/values from `encoder_hidden_states`, `None` to
                reuse the cache.

        Returns:
            `(logits, hidden_states, self_attention_cache,
            cross_attention_cache)`; logits are float32
            `[batch, n, vocabulary_size]`.
        """
        backbone = self.backbone
        start_index = (
            0
            if self_attention_cache_update_index is None
            else self_attention_cache_update_index
        )
        x = backbone.embed_tokens(
            decoder_token_ids,
            backbone.decoder_embeddings_dropout,
            start_index=start_index,
        )
        self_caches = []
        cross_caches = []
        for i, layer in enumerate(backbone.decoder_transformer_layers):
            x, next_self_cache, next_cross_cache = layer(
                decoder_sequence=x,
                encoder_sequence=encoder_hidden_states,
                encoder_padding_mask=encoder_padding_mask,
                self_attention_cache=self_attention_cache[:, i, ...],
                self_attention_cache_update_index=(
                    self_attention_cache_update_index
                ),
                cross_attention_cache=cross_attention_cache[:, i, ...],
                cross_attention_cache_update_index=(
                    cross_attention_cache_update_index
                ),
            )
            self_caches.append(next_self_cache)
            cross_caches.append(next_cross_cache)
        if self_attention_cache_update_index is not None:
            self_attention_cache = ops.stack(self_caches, axis=1)
        if cross_attention_cache_update_index is not None:
            cross_attention_cache = ops.stack(cross_caches, axis=1)
        if backbone.decoder_layer_norm is not None:
            x = backbone.decoder_layer_norm(x)
        logits = self.logits_cast(backbone.token_embedding(x, reverse=True))
        return logits, x, self_attention_cache, cross_attention_cache

    # --- Config ------------------------------------------------------------

    def get_config(self):
        return {
            "backbone": keras.saving.serialize_keras_object(self.backbone),
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.saving.deserialize_keras_object(
            config["backbone"]
        )
        return cls(**config)

    # --- Generation --------------------------------------------------------

    def generate(
        self,
        inputs,
        vocabulary=None,
        beam_size=4,
        length_penalty=0.6,
        max_length=100,
        max_length_margin=50,
        num_return_sequences=None,
        return_scores=False,
        jit_compile=True,
        **kwargs,
    ):
        """Decodes strings or source token ids (see `decoding.Generator`).

        The `Generator`, and with it every compiled search function, is
        cached on the model, so repeated calls compile once per (source
        bucket, padded batch size, decoding settings).

        Args:
            inputs: list of strings (needs `vocabulary`) or source token ids
                without EOS (list of int lists, ragged, or dense padded).
            vocabulary: a `TaskVocabulary` (kept for later calls).
            beam_size: int; 1 is greedy search.
            length_penalty: float, GNMT exponent.
            max_length: int, the most tokens generated.
            max_length_margin: int or None, per-example cap `source_length +
                max_length_margin`.
            num_return_sequences: None or n <= beam_size for the n best.
            return_scores: bool, also return the scores.
            jit_compile: bool, compile the search with XLA.
            **kwargs: other `Generator.generate` arguments (`use_cache`,
                `output`).

        Returns:
            One output per input (strings for string inputs, else id lists);
            with `return_scores`, `(outputs, scores)`.
        """
        from bertkd_tf.decoding.generator import Generator

        generator = self.__dict__.get("_cached_generator")
        if generator is None or generator.jit_compile != jit_compile:
            generator = Generator(self, vocabulary, jit_compile=jit_compile)
            # Plain dict entry: not tracked as a layer or checkpoint value.
            self.__dict__["_cached_generator"] = generator
        elif vocabulary is not None:
            generator.vocabulary = vocabulary
        return generator.generate(
            inputs,
            beam_size=beam_size,
            length_penalty=length_penalty,
            max_length=max_length,
            max_length_margin=max_length_margin,
            num_return_sequences=num_return_sequences,
            return_scores=return_scores,
            **kwargs,
        )
