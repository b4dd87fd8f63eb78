"""Transformer encoder-decoder backbone (the student of the paper)."""

import math

import keras
import keras_hub
from keras import ops

from bertkd_tf.layers.fast_layers import (
    resolve_fast_layers,
    use_fast_layers,
)


@keras.saving.register_keras_serializable(package="bertkd_tf")
class TransformerSeq2SeqBackbone(keras.Model):
    """Transformer encoder-decoder ("Attention is all you need") backbone.

    The student of the paper (docs/METHOD.md §4): one token embedding
    shared by the source and the target, scaled by `sqrt(hidden_dim)` and
    tied to the output layer (see `TransformerSeq2Seq`), sinusoidal
    positions, pre- or post-LayerNorm layers from keras-hub. In pre-LN mode
    (`normalize_first=True`, the paper's setting) a final LayerNorm follows
    the last encoder layer and the last decoder layer, as in fairseq and
    OpenNMT. `dropout` is applied to the embeddings, the attention
    probabilities, and the outputs of every attention and feedforward block.

    Inputs are a dict of `encoder_token_ids`, `encoder_padding_mask`,
    `decoder_token_ids` and `decoder_padding_mask` (int32, `[batch, length]`);
    the output is the decoder hidden states `[batch, decoder_length,
    hidden_dim]`.

    Args:
        vocabulary_size: int, size of the shared source/target vocabulary.
        num_layers: int, layers of the encoder and of the decoder, unless
            `num_encoder_layers` / `num_decoder_layers` are given.
        num_heads: int, attention heads.
        hidden_dim: int, model width.
        intermediate_dim: int, width of the feedforward block.
        dropout: float, dropout rate (see above).
        max_sequence_length: int, the longest sequence the model is meant
            for (positions are sinusoidal, so this only sizes decoding
            caches and validates inputs of the decoding helpers).
        normalize_first: bool, pre-LayerNorm (True, paper) or post-LN.
        num_encoder_layers: optional int, overrides `num_layers` for the
            encoder.
        num_decoder_layers: optional int, overrides `num_layers` for the
            decoder.
        activation: feedforward activation, default "relu".
        layer_norm_epsilon: float, LayerNorm epsilon.
        dtype: a dtype policy, e.g. "mixed_bfloat16".
        fast_layers: True: the CPU fast paths of `bertkd_tf.layers`
            (`use_fast_layers`); False: stock keras / keras-hub layers only;
            None (default): True where no GPU or TPU is visible
            (`resolve_fast_layers`). Same function and weights either way.

    Example:
    ```python
    backbone = TransformerSeq2SeqBackbone(
        vocabulary_size=100, num_layers=1, num_heads=2, hidden_dim=16,
        intermediate_dim=32)
    hidden = backbone({
        "encoder_token_ids": np.array([[5, 6, 3]], "int32"),
        "encoder_padding_mask": np.array([[1, 1, 1]], "int32"),
        "decoder_token_ids": np.array([[2, 7]], "int32"),
        "decoder_padding_mask": np.array([[1, 1]], "int32"),
    })  # [1, 2, 16]
    ```
    """

    def __init__(
        self,
        vocabulary_size,
        num_layers,
        num_heads,
        hidden_dim,
        intermediate_dim,
        dropout=0.1,
        max_sequence_length=1024,
        normalize_first=True,
        num_encoder_layers=None,
        num_decoder_layers=None,
        activation="relu",
        layer_norm_epsilon=1e-5,
        dtype=None,
        fast_layers=None,
        **kwargs,
    ):
        use_fast = resolve_fast_layers(fast_layers)
        for name, value in [
            ("vocabulary_size", vocabulary_size),
            ("num_layers", num_layers),
            ("num_heads", num_heads),
            ("hidden_dim", hidden_dim),
            ("intermediate_dim", intermediate_dim),
            ("max_sequence_length", max_sequence_length),
        ]:
            if not isinstance(value, int) or value <= 0:
                raise ValueError(
                    f"`{name}` must be a positive int. Received: "
                    f"{name}={value!r}"
                )
        if hidden_dim % num_heads:
            raise ValueError(
                "`hidden_dim` must be divisible by `num_heads`. Received: "
                f"hidden_dim={hidden_dim}, num_heads={num_heads}"
            )
        if not 0.0 <= dropout < 1.0:
            raise ValueError(
                f"`dropout` must be in [0, 1). Received: dropout={dropout!r}"
            )
        encoder_layers = num_encoder_layers or num_layers
        decoder_layers = num_decoder_layers or num_layers

        # === Layers ===
        self.token_embedding = keras_hub.layers.ReversibleEmbedding(
            input_dim=vocabulary_size,
            output_dim=hidden_dim,
            tie_weights=True,
            # fairseq: N(0, d^-0.5), so the sqrt(d)-scaled input has unit
            # variance while the tied output layer stays small.
            embeddings_initializer=keras.initializers.RandomNormal(
                stddev=hidden_dim**-0.5
            ),
            dtype=dtype,
            name="token_embedding",
        )
        # Positions in float32: bf16 cannot represent positions > 256.
        self.position_encoding = keras_hub.layers.SinePositionEncoding(
            dtype="float32", name="position_encoding"
        )
        self.encoder_embeddings_dropout = keras.layers.Dropout(
            dropout, dtype=dtype, name="encoder_embeddings_dropout"
        )
        self.decoder_embeddings_dropout = keras.layers.Dropout(
            dropout, dtype=dtype, name="decoder_embeddings_dropout"
        )
        self.encoder_transformer_layers = [
            keras_hub.layers.TransformerEncoder(
                intermediate_dim=intermediate_dim,
                num_heads=num_heads,
                dropout=dropout,
                activation=activation,
                layer_norm_epsilon=layer_norm_epsilon,
                normalize_first=normalize_first,
                dtype=dtype,
                name=f"encoder_layer_{i}",
            )
            for i in range(encoder_layers)
        ]
        self.decoder_transformer_layers = [
            keras_hub.layers.TransformerDecoder(
                intermediate_dim=intermediate_dim,
                num_heads=num_heads,
                dropout=dropout,
                activation=activation,
                layer_norm_epsilon=layer_norm_epsilon,
                normalize_first=normalize_first,
                dtype=dtype,
                name=f"decoder_layer_{i}",
            )
            for i in range(decoder_layers)
        ]
        self.encoder_layer_norm = None
        self.decoder_layer_norm = None
        if normalize_first:
            self.encoder_layer_norm = keras.layers.LayerNormalization(
                epsilon=layer_norm_epsilon,
                dtype=dtype,
                name="encoder_layer_norm",
            )
            self.decoder_layer_norm = keras.layers.LayerNormalization(
                epsilon=layer_norm_epsilon,
                dtype=dtype,
                name="decoder_layer_norm",
            )
        self.embedding_scale = math.sqrt(hidden_dim)

        # === Functional Model ===
        inputs = {
            key: keras.Input(shape=(None,), dtype="int32", name=key)
            for key in (
                "encoder_token_ids",
                "encoder_padding_mask",
                "decoder_token_ids",
                "decoder_padding_mask",
            )
        }
        encoder_output = self._encode(
            inputs["encoder_token_ids"], inputs["encoder_padding_mask"]
        )
        x = self.embed_tokens(
            inputs["decoder_token_ids"], self.decoder_embeddings_dropout
        )
        for layer in self.decoder_transformer_layers:
            x = layer(
                decoder_sequence=x,
                encoder_sequence=encoder_output,
                decoder_padding_mask=inputs["decoder_padding_mask"],
                encoder_padding_mask=inputs["encoder_padding_mask"],
            )
        if self.decoder_layer_norm is not None:
            x = self.decoder_layer_norm(x)
        super().__init__(inputs=inputs, outputs=x, dtype=dtype, **kwargs)
        if use_fast:
            use_fast_layers(self)

        # === Config ===
        self.vocabulary_size = vocabulary_size
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.hidden_dim = hidden_dim
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.max_sequence_length = max_sequence_length
        self.normalize_first = normalize_first
        self.num_encoder_layers = num_encoder_layers
        self.num_decoder_layers = num_decoder_layers
        self.activation = activation
        self.layer_norm_epsilon = layer_norm_epsilon
        self.fast_layers = fast_layers

    def embed_tokens(self, token_ids, dropout_layer, start_index=0):
        """Scaled token embedding + sinusoidal positions + dropout.

        `start_index` is the position of the first token (cached decoding
        feeds one token at a time).
        """
        x = self.token_embedding(token_ids)
        x = ops.multiply(x, ops.cast(self.embedding_scale, x.dtype))
        positions = self.position_encoding(x, start_index=start_index)
        x = ops.add(x, ops.cast(positions, x.dtype))
        return dropout_layer(x)

    def _encode(self, token_ids, padding_mask):
        x = self.embed_tokens(token_ids, self.encoder_embeddings_dropout)
        for layer in self.encoder_transformer_layers:
            x = layer(x, padding_mask=padding_mask)
        if self.encoder_layer_norm is not None:
            x = self.encoder_layer_norm(x)
        return x

    def get_config(self):
        return {
            "vocabulary_size": self.vocabulary_size,
            "num_layers": self.num_layers,
            "num_heads": self.num_heads,
            "hidden_dim": self.hidden_dim,
            "intermediate_dim": self.intermediate_dim,
            "dropout": self.dropout,
            "max_sequence_length": self.max_sequence_length,
            "normalize_first": self.normalize_first,
            "num_encoder_layers": self.num_encoder_layers,
            "num_decoder_layers": self.num_decoder_layers,
            "activation": self.activation,
            "layer_norm_epsilon": self.layer_norm_epsilon,
            # As given: None follows the device of the machine that loads.
            "fast_layers": self.fast_layers,
            # A functional Model drops its own `dtype`; the layers keep it.
            "dtype": keras.dtype_policies.serialize(
                self.token_embedding.dtype_policy
            ),
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("dtype"), dict):
            config["dtype"] = keras.dtype_policies.deserialize(config["dtype"])
        return cls(**config)
