"""A second student: a GRU encoder-decoder with attention, plain logits."""

import keras
import tensorflow as tf
from keras import ops

from bertkd_tf.decoding.next_token import NextToken

# Added to the attention scores of padding (float32 softmax).
_MASKED = -1.0e9


@keras.saving.register_keras_serializable(package="bertkd_tf")
class RecurrentSeq2Seq(keras.Model):
    """GRU encoder-decoder with dot-product attention (Luong et al. 2015).

    A student that is not a `TransformerSeq2Seq`, built from stock Keras
    layers only (`Embedding`, `GRU`, `GRUCell`, `RNN`, `Dense`). It takes
    the student features of docs/ARCHITECTURE.md and returns float32
    logits `[batch, decoder_length, vocabulary_size]` from an output layer
    with its own kernel and bias: a `KDStudent` and a `SearchableStudent`
    (`models/student.py`), not a `TiedOutputStudent`, so
    `DistillationModel` trains it on the logits path, and its search step
    is the decoder GRU cell with the GRU state as its cache (no
    `IncrementalDecoder`).

    Encoder: a GRU over the embedded source (padding masked); its last
    state starts the decoder. Decoder step `t`: `h_t = GRU(embed(y_t),
    h_{t-1})`, attention `a = softmax(q(h_t) . encoder_states)` over the
    real source tokens, `logits = W tanh(C [h_t; a . encoder_states]) + b`.

    Args:
        vocabulary_size: int, task vocabulary size (shared by source and
            target, as the Transformer student's).
        embedding_dim: int, token embedding size.
        hidden_dim: int, GRU state size.
        max_sequence_length: int, the longest encoder input searches pad
            to (`Generator`'s default `max_source_length`).

    Example:
    ```python
    model = RecurrentSeq2Seq(vocabulary_size=100, hidden_dim=32)
    logits = model({
        "encoder_token_ids": np.array([[5, 6, 3]], "int32"),
        "encoder_padding_mask": np.array([[1, 1, 1]], "int32"),
        "decoder_token_ids": np.array([[2, 7]], "int32"),
        "decoder_padding_mask": np.array([[1, 1]], "int32"),
    })  # [1, 2, 100] float32
    ```
    """

    def __init__(
        self,
        vocabulary_size,
        embedding_dim=32,
        hidden_dim=64,
        max_sequence_length=128,
        **kwargs,
    ):
        super().__init__(**kwargs)
        for name, value in (
            ("vocabulary_size", vocabulary_size),
            ("embedding_dim", embedding_dim),
            ("hidden_dim", hidden_dim),
            ("max_sequence_length", max_sequence_length),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, int)
                or value < 1
            ):
                raise ValueError(
                    f"`{name}` must be a positive int. Received: "
                    f"{name}={value!r}"
                )
        self.vocabulary_size = vocabulary_size
        self.embedding_dim = embedding_dim
        self.hidden_dim = hidden_dim
        self.max_sequence_length = max_sequence_length
        self.token_embedding = keras.layers.Embedding(
            vocabulary_size,
            embedding_dim,
            name="token_embedding",
            dtype=self.dtype_policy,
        )
        self.encoder_rnn = keras.layers.GRU(
            hidden_dim,
            return_sequences=True,
            return_state=True,
            name="encoder",
            dtype=self.dtype_policy,
        )
        self.decoder_cell = keras.layers.GRUCell(
            hidden_dim, name="decoder_cell", dtype=self.dtype_policy
        )
        self.decoder_rnn = keras.layers.RNN(
            self.decoder_cell,
            return_sequences=True,
            name="decoder",
            dtype=self.dtype_policy,
        )
        self.attention_query = keras.layers.Dense(
            hidden_dim,
            use_bias=False,
            name="attention_query",
            dtype=self.dtype_policy,
        )
        self.combine = keras.layers.Dense(
            hidden_dim,
            activation="tanh",
            name="combine",
            dtype=self.dtype_policy,
        )
        self.output_projection = keras.layers.Dense(
            vocabulary_size, name="output_projection", dtype=self.dtype_policy
        )

    # --- Forward pass ------------------------------------------------------

    def call_encoder(self, encoder_token_ids, encoder_padding_mask):
        """`(states [batch, source_length, hidden], last state [batch,
        hidden])`: what `next_token` reads (one row per example)."""
        mask = ops.cast(encoder_padding_mask, "bool")
        embedded = self.token_embedding(encoder_token_ids)
        states, last = self.encoder_rnn(embedded, mask=mask)
        return states, last

    def _output(self, decoder_states, encoder_states, encoder_padding_mask):
        """Logits from decoder states `[..., hidden]` (rank 3: `[batch, T,
        hidden]`; rank 2: one step, `[rows, hidden]`)."""
        one_step = len(decoder_states.shape) == 2
        if one_step:
            decoder_states = decoder_states[:, None, :]
        query = self.attention_query(decoder_states)
        scores = ops.cast(
            ops.einsum("btd,bsd->bts", query, encoder_states), "float32"
        )
        bias = ops.where(
            ops.cast(encoder_padding_mask, "bool")[:, None, :], 0.0, _MASKED
        )
        weights = ops.cast(ops.softmax(scores + bias, axis=-1), query.dtype)
        context = ops.einsum("bts,bsd->btd", weights, encoder_states)
        combined = self.combine(
            ops.concatenate([decoder_states, context], axis=-1)
        )
        logits = ops.cast(self.output_projection(combined), "float32")
        return logits[:, 0] if one_step else logits

    def call(self, inputs, training=None):
        encoder_states, last = self.call_encoder(
            inputs["encoder_token_ids"], inputs["encoder_padding_mask"]
        )
        embedded = self.token_embedding(inputs["decoder_token_ids"])
        decoder_states = self.decoder_rnn(
            embedded, initial_state=[last], training=training
        )
        return self._output(
            decoder_states, encoder_states, inputs["encoder_padding_mask"]
        )

    # --- Search (SearchableStudent) ----------------------------------------

    def next_token(
        self,
        encoder_outputs,
        encoder_padding_mask,
        *,
        settings,
        buffer_length,
        bos_id,
    ):
        """One decoder GRU step a call; the cache is the GRU state.

        The encoder states and mask are repeated once per beam (rows are
        example-major); the state `{"h": [rows, hidden]}` is reordered by
        the search's gather. `settings.use_cache=False` is the same: the
        state is this model's whole prefix summary.
        """
        encoder_states, last = encoder_outputs
        beam_size = settings.beam_size
        states = tf.repeat(encoder_states, beam_size, axis=0)
        mask = tf.repeat(encoder_padding_mask, beam_size, axis=0)

        def next_fn(token_ids, index, state):
            tokens = tf.gather(token_ids, index, axis=1)
            output, _ = self.decoder_cell(
                self.token_embedding(tokens), [state["h"]], training=False
            )
            return self._output(output, states, mask), {"h": output}

        return NextToken(next_fn, {"h": last})

    # --- Config ------------------------------------------------------------

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "embedding_dim": self.embedding_dim,
                "hidden_dim": self.hidden_dim,
                "max_sequence_length": self.max_sequence_length,
            }
        )
        return config
