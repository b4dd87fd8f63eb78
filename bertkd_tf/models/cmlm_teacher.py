"""The C-MLM teacher: BERT plus a masked-LM head over the task vocabulary."""

import json
import os

import keras
import keras_hub
import numpy as np
from keras import ops

from bertkd_tf.data.bert_word_piece_tokenizer import resolve_bert_directory
from bertkd_tf.keras_compat import MultiWorkerFitMixin
from bertkd_tf.layers.fast_layers import (
    resolve_fast_layers,
    use_fast_layers,
)

HEAD_LAYER_NAMES = (
    "mlm_transform_dense",
    "mlm_transform_layer_norm",
    "mlm_output_dense",
)


def _bert_kernel_initializer():
    return keras.initializers.TruncatedNormal(stddev=0.02)


@keras.saving.register_keras_serializable(package="bertkd_tf")
class CMLMTeacher(MultiWorkerFitMixin, keras.Model):
    """BERT as a conditional masked LM predicting task-vocabulary tokens.

    A keras-hub `BertBackbone` reads `[CLS] source [SEP] target [SEP]` (BERT
    ids); the head runs only at `mask_positions`: BERT's MLM transform
    (dense, GELU, LayerNorm) then a projection onto the task vocabulary. At
    construction the projection's row of task token `i` is BERT's input
    embedding of `bert_ids[i]` (kernel `[hidden_dim, task_vocab]`), the bias
    is zero, and the weights are not tied to the embedding. Logits are
    float32 whatever the dtype policy.

    Inputs (dict, int32): `token_ids`, `segment_ids`, `padding_mask`
    `[B, L]` and `mask_positions` `[B, M]`. Output: logits
    `[B, M, task_vocab]`.

    Constructors: `CMLMTeacher(backbone, bert_ids)`, `from_scratch(...)`,
    `from_huggingface(directory, bert_ids)` (local Hugging Face BERT:
    `config.json`, `model.safetensors`, `vocab.txt`), `from_preset(preset,
    bert_ids)` (keras-hub preset name or directory, or a Hugging Face
    directory). Where the checkpoint carries an MLM head, its transform
    (dense + LayerNorm) is loaded; the projection always starts from the
    input embeddings.

    Args:
        backbone: a `keras_hub.models.BertBackbone`.
        bert_ids: int sequence `[task_vocab]`: task id -> BERT id.
        layer_norm_epsilon: float. Epsilon of the head's LayerNorm.
        dtype: dtype policy of the head (default: the backbone's).
        fast_layers: True: the CPU fast paths of `bertkd_tf.layers` in the
            backbone and the head (`use_fast_layers`); False: stock keras /
            keras-hub layers only; None (default): True where no GPU or TPU
            is visible (`resolve_fast_layers`). Same function and weights
            either way.

    Example:
    ```python
    teacher = CMLMTeacher.from_scratch(
        bert_ids=np.arange(20), vocabulary_size=30, num_layers=1,
        num_heads=2, hidden_dim=8, intermediate_dim=16)
    logits = teacher({
        "token_ids": np.array([[2, 5, 3, 4, 3]]),
        "segment_ids": np.array([[0, 0, 0, 1, 1]]),
        "padding_mask": np.ones((1, 5), "int32"),
        "mask_positions": np.array([[3]]),
    })  # [1, 1, 20]
    ```
    """

    def __init__(
        self,
        backbone,
        bert_ids,
        layer_norm_epsilon=1e-12,
        dtype=None,
        fast_layers=None,
        **kwargs,
    ):
        use_fast = resolve_fast_layers(fast_layers)
        bert_ids = np.asarray(bert_ids)
        if bert_ids.ndim != 1 or bert_ids.size == 0:
            raise ValueError(
                "`bert_ids` must be a non-empty 1-D sequence of BERT ids. "
                f"Received: shape={bert_ids.shape}"
            )
        if bert_ids.min() < 0 or bert_ids.max() >= backbone.vocabulary_size:
            raise ValueError(
                "`bert_ids` must lie in [0, backbone.vocabulary_size="
                f"{backbone.vocabulary_size}). Received: min={bert_ids.min()}, "
                f"max={bert_ids.max()}"
            )
        head_dtype = dtype if dtype is not None else backbone.dtype_policy

        # === Layers ===
        self.backbone = backbone
        # The pooled ([CLS]) output is unused: freeze it (no gradients).
        backbone.get_layer("pooled_dense").trainable = False
        self.mlm_transform_dense = keras.layers.Dense(
            backbone.hidden_dim,
            activation="gelu",
            kernel_initializer=_bert_kernel_initializer(),
            dtype=head_dtype,
            name="mlm_transform_dense",
        )
        self.mlm_transform_layer_norm = keras.layers.LayerNormalization(
            epsilon=layer_norm_epsilon,
            dtype=head_dtype,
            name="mlm_transform_layer_norm",
        )
        self.mlm_output_dense = keras.layers.Dense(
            len(bert_ids),
            kernel_initializer=_bert_kernel_initializer(),
            bias_initializer="zeros",
            dtype=head_dtype,
            name="mlm_output_dense",
        )
        self.logits_cast = keras.layers.Activation(
            "linear", dtype="float32", name="logits"
        )

        # === Functional Model ===
        inputs = {
            "token_ids": keras.Input(
                shape=(None,), dtype="int32", name="token_ids"
            ),
            "segment_ids": keras.Input(
                shape=(None,), dtype="int32", name="segment_ids"
            ),
            "padding_mask": keras.Input(
                shape=(None,), dtype="int32", name="padding_mask"
            ),
            "mask_positions": keras.Input(
                shape=(None,), dtype="int32", name="mask_positions"
            ),
        }
        sequence_output = backbone(
            {
                "token_ids": inputs["token_ids"],
                "segment_ids": inputs["segment_ids"],
                "padding_mask": inputs["padding_mask"],
            }
        )["sequence_output"]
        # Hidden states at the masked positions only: [B, M, hidden].
        x = ops.take_along_axis(
            sequence_output,
            ops.expand_dims(inputs["mask_positions"], axis=-1),
            axis=1,
        )
        x = self.mlm_transform_dense(x)
        x = self.mlm_transform_layer_norm(x)
        logits = self.logits_cast(self.mlm_output_dense(x))
        super().__init__(inputs=inputs, outputs=logits, **kwargs)
        if use_fast:
            use_fast_layers(self)

        # === Config ===
        self.bert_ids = [int(i) for i in bert_ids]
        self.layer_norm_epsilon = layer_norm_epsilon
        self.head_dtype = dtype
        self.fast_layers = fast_layers

        self.initialize_output_rows()

    @property
    def vocabulary_size(self):
        """Size of the task vocabulary (the number of logits)."""
        return len(self.bert_ids)

    def initialize_output_rows(self):
        """Sets projection rows to BERT's input embeddings, bias to zero."""
        embeddings = ops.convert_to_numpy(
            self.backbone.token_embedding.embeddings
        )
        kernel = np.transpose(embeddings[np.asarray(self.bert_ids)])
        self.mlm_output_dense.kernel.assign(kernel)
        self.mlm_output_dense.bias.assign(
            np.zeros([self.vocabulary_size], "float32")
        )

    def load_mlm_transform(self, dense_kernel, dense_bias, gamma, beta):
        """Loads the MLM transform (`dense_kernel` is `[in, out]`)."""
        self.mlm_transform_dense.kernel.assign(dense_kernel)
        self.mlm_transform_dense.bias.assign(dense_bias)
        self.mlm_transform_layer_norm.gamma.assign(gamma)
        self.mlm_transform_layer_norm.beta.assign(beta)

    def get_config(self):
        # Not the functional config: rebuilt from the constructor args.
        return {
            "name": self.name,
            "trainable": self.trainable,
            "backbone": keras.layers.serialize(self.backbone),
            "bert_ids": list(self.bert_ids),
            "layer_norm_epsilon": self.layer_norm_epsilon,
            "dtype": self.head_dtype,
            # As given: None follows the device of the machine that loads.
            "fast_layers": self.fast_layers,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["backbone"] = keras.layers.deserialize(config["backbone"])
        return cls(**config)

    @classmethod
    def from_scratch(
        cls,
        bert_ids,
        vocabulary_size=None,
        num_layers=2,
        num_heads=2,
        hidden_dim=32,
        intermediate_dim=64,
        dropout=0.1,
        max_sequence_length=512,
        dtype=None,
        fast_layers=None,
    ):
        """A randomly initialised BERT of the given size.

        Args:
            bert_ids: task id -> BERT id.
            vocabulary_size: BERT vocabulary size (default `max(bert_ids)+1`).
            num_layers, num_heads, hidden_dim, intermediate_dim, dropout,
            max_sequence_length, dtype: as `keras_hub.models.BertBackbone`.
            fast_layers: as `CMLMTeacher` (None: follow the device).
        """
        if vocabulary_size is None:
            vocabulary_size = int(np.max(bert_ids)) + 1
        backbone = keras_hub.models.BertBackbone(
            vocabulary_size=vocabulary_size,
            num_layers=num_layers,
            num_heads=num_heads,
            hidden_dim=hidden_dim,
            intermediate_dim=intermediate_dim,
            dropout=dropout,
            max_sequence_length=max_sequence_length,
            dtype=dtype,
        )
        return cls(
            backbone=backbone, bert_ids=bert_ids, fast_layers=fast_layers
        )

    @classmethod
    def from_huggingface(
        cls, directory, bert_ids, dropout=0.1, dtype=None, fast_layers=None
    ):
        """Loads a local Hugging Face BERT directory.

        The directory holds `config.json` (`model_type: bert`),
        `model.safetensors` (or a sharded index) and `vocab.txt`. Weights
        may carry the `bert.` prefix (BertForMaskedLM); when
        `cls.predictions.transform.*` is present the MLM transform is loaded.

        Args:
            directory: path of the directory.
            bert_ids: task id -> BERT id.
            dropout: float. Dropout of the backbone.
            dtype: dtype policy (e.g. "mixed_bfloat16"); None: the global one.
            fast_layers: as `CMLMTeacher` (None: follow the device).
        """
        directory = os.fspath(directory)
        config_path = os.path.join(directory, "config.json")
        if not os.path.isfile(config_path):
            raise ValueError(
                "`directory` must be a Hugging Face BERT directory with "
                f"config.json. Received: directory={directory!r}"
            )
        with open(config_path) as f:
            model_type = json.load(f).get("model_type")
        if model_type != "bert":
            raise ValueError(
                "Expected a BERT checkpoint (config.json model_type 'bert'). "
                f"Received: model_type={model_type!r} in {directory!r}"
            )
        teacher = cls._from_backbone_preset(
            directory, bert_ids, dropout, dtype, fast_layers
        )
        transform = _read_hf_mlm_transform(directory)
        if transform is not None:
            teacher.load_mlm_transform(*transform)
        return teacher

    @classmethod
    def from_preset(
        cls, preset, bert_ids, dropout=0.1, dtype=None, fast_layers=None
    ):
        """Loads a keras-hub preset (name or directory) or a HF directory.

        For keras-hub presets that ship masked-LM task weights
        (`bert_base_multi`, `bert_base_en_uncased`, ...), the MLM transform
        comes from `keras_hub.models.BertMaskedLM`. Needs network for
        preset names.

        Args:
            preset: keras-hub preset name (e.g. "bert_base_multi"), a
                directory (keras-hub preset or Hugging Face BERT), or an
                installed model package name ("all-MiniLM-L6-v2").
            bert_ids: task id -> BERT id.
            dropout: float. Dropout of the backbone (presets with MLM task
                weights keep their own).
            dtype: dtype policy; None: the global one.
            fast_layers: as `CMLMTeacher` (None: follow the device).
        """
        directory = resolve_bert_directory(preset)
        if directory is not None and _is_huggingface_dir(directory):
            return cls.from_huggingface(
                directory, bert_ids, dropout, dtype, fast_layers
            )
        # keras-hub has no public test for a preset's task weights; its own
        # `Task.from_preset` asks this function (docs/ARCHITECTURE.md,
        # "Private APIs we rely on").
        from keras_hub.src.utils.preset_utils import check_file_exists

        if check_file_exists(preset, "task.weights.h5"):
            # The backbone keeps the preset's dropout here.
            masked_lm = keras_hub.models.BertMaskedLM.from_preset(
                preset, preprocessor=None, dtype=dtype
            )
            teacher = cls(
                backbone=masked_lm.backbone,
                bert_ids=bert_ids,
                fast_layers=fast_layers,
            )
            teacher.load_mlm_transform(
                *mlm_transform_weights(masked_lm.masked_lm_head)
            )
            return teacher
        return cls._from_backbone_preset(
            preset, bert_ids, dropout, dtype, fast_layers
        )

    @classmethod
    def _from_backbone_preset(cls, preset, bert_ids, dropout, dtype, fast):
        backbone = keras_hub.models.BertBackbone.from_preset(
            preset, dropout=dropout, dtype=dtype
        )
        return cls(backbone=backbone, bert_ids=bert_ids, fast_layers=fast)


# The weights of a `keras_hub.layers.MaskedLMHead`'s transform, by the end
# of their (public) variable paths.
MLM_TRANSFORM_PATHS = (
    "intermediate_dense/kernel",
    "intermediate_dense/bias",
    "intermediate_layer_norm/gamma",
    "intermediate_layer_norm/beta",
)


def mlm_transform_weights(head):
    """`(kernel [in, out], bias, gamma, beta)` of a built
    `keras_hub.layers.MaskedLMHead`'s transform (dense + LayerNorm), found
    by their variable paths (`.../intermediate_dense/kernel`, ...)."""
    found = {}
    for weight in head.weights:
        for suffix in MLM_TRANSFORM_PATHS:
            if weight.path.endswith("/" + suffix):
                found[suffix] = ops.convert_to_numpy(weight)
    missing = [suffix for suffix in MLM_TRANSFORM_PATHS if suffix not in found]
    if missing:
        raise ValueError(
            f"The masked-LM head {head.name!r} has no weights ending in "
            f"{missing}; its weights: {[w.path for w in head.weights]}."
        )
    return tuple(found[suffix] for suffix in MLM_TRANSFORM_PATHS)


def _is_huggingface_dir(directory):
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return "model_type" in json.load(f)


def _read_hf_mlm_transform(directory):
    """`(kernel [in, out], bias, gamma, beta)` or None without an MLM head."""
    from safetensors import safe_open

    index_path = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index_path):
        with open(index_path) as f:
            weight_map = json.load(f)["weight_map"]
    else:
        single = "model.safetensors"
        if not os.path.isfile(os.path.join(directory, single)):
            raise ValueError(
                f"No model.safetensors in {directory!r}: found "
                f"{sorted(os.listdir(directory))}"
            )
        with safe_open(os.path.join(directory, single), "np") as f:
            weight_map = {key: single for key in f.keys()}
    prefix = "cls.predictions.transform."
    names = {
        "kernel": ["dense.weight"],
        "bias": ["dense.bias"],
        "gamma": ["LayerNorm.weight", "LayerNorm.gamma"],
        "beta": ["LayerNorm.bias", "LayerNorm.beta"],
    }
    found = {}
    for slot, candidates in names.items():
        for name in candidates:
            if prefix + name in weight_map:
                found[slot] = prefix + name
                break
    if len(found) < len(names):
        return None
    values = {}
    for slot, key in found.items():
        with safe_open(os.path.join(directory, weight_map[key]), "np") as f:
            values[slot] = f.get_tensor(key)
    # PyTorch Linear weights are [out, in].
    return (
        np.transpose(values["kernel"]),
        values["bias"],
        values["gamma"],
        values["beta"],
    )
