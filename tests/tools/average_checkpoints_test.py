"""tools/average_checkpoints.py: the average equals the mean of weights."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf import checksums
from bertkd_tf.errors import ArtifactError
from bertkd_tf.models.transformer_backbone import TransformerSeq2SeqBackbone
from bertkd_tf.models.transformer_seq2seq import TransformerSeq2Seq
from bertkd_tf.runs import distill
from bertkd_tf.training import trainer
from bertkd_tf.training.distillation_model import DistillationModel
from tests.tools.tool_loader import load_tool

average_checkpoints = load_tool("average_checkpoints")


def _model_dir_with_checkpoints(tmp_path):
    """Checkpoints 1-4 of random student weights and the student config;
    returns `(model_dir, [weights of checkpoint 1, ..., 4])`."""
    model_dir = str(tmp_path)
    student = TransformerSeq2Seq(
        TransformerSeq2SeqBackbone(
            vocabulary_size=20,
            num_layers=1,
            num_heads=2,
            hidden_dim=8,
            intermediate_dim=16,
        )
    )
    model = DistillationModel(student, distillation_weight=0.0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    model.optimizer.build(model.trainable_variables)
    checkpoint = trainer.make_checkpoint(model)
    manager = tf.train.CheckpointManager(
        checkpoint, os.path.join(model_dir, trainer.CHECKPOINT_DIR), 5
    )
    rng = np.random.default_rng(0)
    saved = []
    for step in range(1, 5):
        values = [
            rng.normal(size=w.shape).astype("float32") for w in student.weights
        ]
        for w, v in zip(student.weights, values):
            w.assign(v)
        manager.save(checkpoint_number=step)
        saved.append(values)
    distill.save_student(student, model_dir)
    return model_dir, saved


def test_average_equals_mean_of_checkpoints(tmp_path):
    model_dir, saved = _model_dir_with_checkpoints(tmp_path)
    output, paths = average_checkpoints.average_checkpoints(model_dir, 3)
    assert [os.path.basename(p) for p in paths] == [
        "ckpt-2",
        "ckpt-3",
        "ckpt-4",
    ]
    averaged = distill.load_student(
        model_dir, weights_file=os.path.basename(output)
    )
    for i, w in enumerate(averaged.weights):
        expected = np.mean([s[i] for s in saved[1:]], axis=0)
        np.testing.assert_allclose(w.numpy(), expected, rtol=1e-6, atol=1e-7)


def test_averaged_weights_have_a_checksum(tmp_path):
    model_dir, _ = _model_dir_with_checkpoints(tmp_path)
    output, _ = average_checkpoints.average_checkpoints(model_dir, 2)
    assert output == os.path.join(model_dir, "averaged.weights.h5")
    with open(output + ".sha256") as f:
        assert f.read() == (
            f"{checksums.sha256_of_file(output)}  averaged.weights.h5\n"
        )
    assert not [n for n in os.listdir(model_dir) if "tmp" in n]
    data = bytearray(open(output, "rb").read())
    data[len(data) // 2] ^= 0xFF
    open(output, "wb").write(bytes(data))
    with pytest.raises(ArtifactError, match="averaged.weights.h5"):
        distill.load_student(model_dir, weights_file="averaged.weights.h5")


def test_no_checkpoints_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoints"):
        average_checkpoints.average_checkpoints(str(tmp_path), 3)
