"""tools/average_checkpoints.py: the average equals the mean of weights."""

import importlib.util
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.models.transformer_backbone import TransformerSeq2SeqBackbone
from bertkd_tf.models.transformer_seq2seq import TransformerSeq2Seq
from bertkd_tf.runs import distill
from bertkd_tf.training import trainer
from bertkd_tf.training.distillation_model import DistillationModel

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
spec = importlib.util.spec_from_file_location(
    "average_checkpoints", os.path.join(REPO, "tools", "average_checkpoints.py")
)
average_checkpoints = importlib.util.module_from_spec(spec)
spec.loader.exec_module(average_checkpoints)


def test_average_equals_mean_of_checkpoints(tmp_path):
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


def test_no_checkpoints_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoints"):
        average_checkpoints.average_checkpoints(str(tmp_path), 3)
