"""Tests of use_fast_layers on the student and the teacher."""

import keras
import numpy as np

from bertkd_tf.models.fast_dropout import FastDropout
from bertkd_tf.models.fast_layer_normalization import FastLayerNormalization
from bertkd_tf.models.fast_layers import use_fast_layers
from bertkd_tf.models.matmul_projections import MatMulEinsumDense
from bertkd_tf.models.transformer_backbone import TransformerSeq2SeqBackbone
from bertkd_tf.models.transformer_seq2seq import TransformerSeq2Seq

REPLACED = {
    keras.layers.EinsumDense: MatMulEinsumDense,
    keras.layers.Dropout: FastDropout,
    keras.layers.LayerNormalization: FastLayerNormalization,
}


def replaced_layers(model):
    """{keras class: [its layers in the model]} for the replaced classes."""
    found = {base: [] for base in REPLACED}
    for layer in model._flatten_layers():
        for base in REPLACED:
            if isinstance(layer, base):
                found[base].append(layer)
    return found


def test_student_uses_them_and_serializes_unchanged(tmp_path):
    keras.utils.set_random_seed(0)
    model = TransformerSeq2Seq(
        TransformerSeq2SeqBackbone(
            vocabulary_size=30,
            num_layers=1,
            num_heads=2,
            hidden_dim=16,
            intermediate_dim=32,
            dropout=0.1,
        )
    )
    found = replaced_layers(model)
    # Projections: encoder self-attention 4, decoder self and cross 8.
    # Dropouts: 2 embeddings; encoder layer: attention probabilities and 2
    # residual; decoder layer: 2 attention probabilities and 3 residual.
    # Layer norms: encoder layer 2, decoder layer 3, 2 final.
    counts = {base: len(layers) for base, layers in found.items()}
    assert counts == {
        keras.layers.EinsumDense: 12,
        keras.layers.Dropout: 10,
        keras.layers.LayerNormalization: 7,
    }
    for base, layers in found.items():
        assert all(type(layer) is REPLACED[base] for layer in layers)
    # Nothing is left to switch.
    assert set(use_fast_layers(model).values()) == {0}

    inputs = {
        "encoder_token_ids": np.array([[5, 6, 3]], "int32"),
        "encoder_padding_mask": np.array([[1, 1, 1]], "int32"),
        "decoder_token_ids": np.array([[2, 7, 8]], "int32"),
        "decoder_padding_mask": np.array([[1, 1, 1]], "int32"),
    }
    path = str(tmp_path / "model.keras")
    model.save(path)
    restored = keras.models.load_model(path)
    for base, layers in replaced_layers(restored).items():
        assert all(type(layer) is REPLACED[base] for layer in layers)
    np.testing.assert_allclose(
        restored(inputs), model(inputs), rtol=1e-6, atol=1e-6
    )
    # The weights keep keras' names, so checkpoints of either load.
    assert [w.path for w in restored.weights] == [w.path for w in model.weights]


def test_teacher_uses_them():
    from bertkd_tf.models.cmlm_teacher import CMLMTeacher

    teacher = CMLMTeacher.from_scratch(
        bert_ids=np.arange(10),
        vocabulary_size=40,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=16,
    )
    for base, layers in replaced_layers(teacher).items():
        assert layers and all(type(layer) is REPLACED[base] for layer in layers)
