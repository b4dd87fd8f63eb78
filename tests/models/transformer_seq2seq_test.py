"""Tests of TransformerSeq2SeqBackbone and TransformerSeq2Seq."""

import os

import keras
import numpy as np
import pytest

from bertkd_tf.models.transformer_backbone import TransformerSeq2SeqBackbone
from bertkd_tf.models.transformer_seq2seq import TransformerSeq2Seq
from tests.testing import tiny_transformer_student

VOCAB = 50


def make_model(normalize_first=True, dtype=None, **kwargs):
    return tiny_transformer_student(
        VOCAB,
        0,
        num_layers=2,
        normalize_first=normalize_first,
        dtype=dtype,
        **kwargs,
    )


def make_inputs():
    return {
        "encoder_token_ids": np.array(
            [[5, 6, 7, 3, 0], [8, 9, 10, 11, 3]], "int32"
        ),
        "encoder_padding_mask": np.array(
            [[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]], "int32"
        ),
        "decoder_token_ids": np.array(
            [[2, 12, 13, 14], [2, 15, 0, 0]], "int32"
        ),
        "decoder_padding_mask": np.array([[1, 1, 1, 1], [1, 1, 0, 0]], "int32"),
    }


def test_output_shape_and_float32():
    logits = make_model()(make_inputs())
    assert tuple(logits.shape) == (2, 4, VOCAB)
    assert logits.dtype == "float32"


def test_mixed_bfloat16_logits_are_float32():
    model = make_model(dtype="mixed_bfloat16")
    assert model.backbone.token_embedding.compute_dtype == "bfloat16"
    logits = model(make_inputs())
    assert logits.dtype == "float32"
    assert np.all(np.isfinite(np.asarray(logits)))


def test_output_layer_is_tied_to_embedding():
    model = make_model()
    inputs = make_inputs()
    hidden = model.backbone(inputs)
    embeddings = np.asarray(model.backbone.token_embedding.embeddings)
    expected = np.asarray(hidden) @ embeddings.T
    np.testing.assert_allclose(model(inputs), expected, rtol=1e-5, atol=1e-5)
    # One embedding matrix in the whole model (source, target, output).
    shapes = [tuple(w.shape) for w in model.weights]
    assert shapes.count((VOCAB, 16)) == 1


def test_encoder_padding_is_ignored():
    model = make_model()
    inputs = make_inputs()
    changed = {k: v.copy() for k, v in inputs.items()}
    changed["encoder_token_ids"][0, 4] = 40  # A padded slot.
    np.testing.assert_allclose(
        model(inputs)[0], model(changed)[0], rtol=1e-5, atol=1e-6
    )


def test_decoder_is_causal():
    model = make_model()
    inputs = make_inputs()
    changed = {k: v.copy() for k, v in inputs.items()}
    changed["decoder_token_ids"][0, 3] = 40
    a, b = np.asarray(model(inputs)), np.asarray(model(changed))
    np.testing.assert_allclose(a[0, :3], b[0, :3], rtol=1e-5, atol=1e-6)
    assert np.abs(a[0, 3] - b[0, 3]).max() > 1e-4


@pytest.mark.parametrize("normalize_first", [True, False])
def test_cached_decoding_matches_teacher_forcing(normalize_first):
    model = make_model(normalize_first=normalize_first)
    inputs = make_inputs()
    full = np.asarray(model(inputs))
    encoder_states = model.call_encoder(
        inputs["encoder_token_ids"], inputs["encoder_padding_mask"]
    )
    self_cache, cross_cache = model.initialize_cache(2, 6, 5)
    assert tuple(self_cache.shape) == (2, 2, 2, 6, 2, 8)
    assert tuple(cross_cache.shape) == (2, 2, 2, 5, 2, 8)
    steps = []
    for t in range(4):
        logits, hidden, self_cache, cross_cache = model.call_decoder_with_cache(
            encoder_states,
            inputs["encoder_padding_mask"],
            inputs["decoder_token_ids"][:, t : t + 1],
            self_attention_cache=self_cache,
            self_attention_cache_update_index=t,
            cross_attention_cache=cross_cache,
            cross_attention_cache_update_index=0 if t == 0 else None,
        )
        assert logits.dtype == "float32"
        assert tuple(hidden.shape) == (2, 1, 16)
        steps.append(np.asarray(logits))
    cached = np.concatenate(steps, axis=1)
    # Row 0 has no decoder padding; row 1 only its real positions.
    np.testing.assert_allclose(cached[0], full[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cached[1, :2], full[1, :2], rtol=1e-4, atol=1e-5)


def test_config_round_trip_and_keras_file(tmp_path):
    model = make_model(num_encoder_layers=1, dtype="mixed_bfloat16")
    config = model.backbone.get_config()
    assert config["num_encoder_layers"] == 1
    assert config["dtype"]["config"]["name"] == "mixed_bfloat16"
    assert len(model.backbone.encoder_transformer_layers) == 1
    assert len(model.backbone.decoder_transformer_layers) == 2
    clone = TransformerSeq2Seq.from_config(model.get_config())
    assert clone.backbone.get_config() == model.backbone.get_config()

    model = make_model()
    path = os.path.join(tmp_path, "student.keras")
    model.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, TransformerSeq2Seq)
    np.testing.assert_allclose(
        restored(make_inputs()), model(make_inputs()), rtol=1e-6
    )


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"hidden_dim": 15}, "hidden_dim=15, num_heads=2"),
        ({"num_layers": 0}, "num_layers=0"),
        ({"dropout": 1.5}, "dropout=1.5"),
    ],
)
def test_bad_arguments_raise(kwargs, message):
    args = dict(
        vocabulary_size=VOCAB,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=message):
        TransformerSeq2SeqBackbone(**args)


def test_task_needs_our_backbone():
    with pytest.raises(ValueError, match="TransformerSeq2SeqBackbone"):
        TransformerSeq2Seq(backbone=keras.layers.Dense(3))
