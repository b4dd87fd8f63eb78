"""Resumable training: step count, optimizer state and data order survive."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.training import trainer


def _model(seed=0):
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4,))
    outputs = keras.layers.Dense(1)(keras.layers.Dense(8, "relu")(inputs))
    model = keras.Model(inputs, outputs)
    model.compile(keras.optimizers.Adam(0.01), loss="mse")
    return model


def _dataset_fn(seed_offset):
    rng = np.random.default_rng(seed_offset)
    x = rng.normal(size=(64, 4)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()


def _fit(model, model_dir, total_steps):
    return trainer.fit_resumable(
        model,
        _dataset_fn,
        model_dir=model_dir,
        total_steps=total_steps,
        checkpoint_every_steps=5,
        validation_dataset=_dataset_fn(99).take(2),
        validate_every_steps=10,
        verbose=0,
    )


def test_resume_matches_uninterrupted_run(tmp_path):
    straight = _model()
    _fit(straight, str(tmp_path / "a"), 20)

    first = _model()
    _fit(first, str(tmp_path / "b"), 10)  # "Crash" after step 10.
    resumed = _model(seed=1)  # A fresh process: other initial weights.
    result = _fit(resumed, str(tmp_path / "b"), 20)

    assert result["step"] == 20
    assert int(resumed.optimizer.iterations.numpy()) == 20
    for a, b in zip(straight.get_weights(), resumed.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    history = [
        json.loads(line) for line in open(tmp_path / "b" / "history.jsonl")
    ]
    assert [h["step"] for h in history] == [5, 10, 15, 20]
    assert "val_loss" in history[1] and "val_loss" not in history[0]


def test_keeps_only_recent_checkpoints(tmp_path):
    model = _model()
    trainer.fit_resumable(
        model,
        _dataset_fn,
        model_dir=str(tmp_path),
        total_steps=25,
        checkpoint_every_steps=5,
        keep_checkpoints=2,
        verbose=0,
    )
    index_files = sorted(
        f for f in os.listdir(tmp_path / "checkpoints") if f.endswith(".index")
    )
    assert index_files == ["ckpt-20.index", "ckpt-25.index"]


def test_finished_run_does_nothing_more(tmp_path):
    model = _model()
    _fit(model, str(tmp_path), 10)
    again = _model()
    result = _fit(again, str(tmp_path), 10)
    assert result["step"] == 10
    assert int(again.optimizer.iterations.numpy()) == 10


def test_validate_every_must_be_multiple_of_chunk(tmp_path):
    with pytest.raises(ValueError, match="multiple of checkpoint_every_steps"):
        trainer.fit_resumable(
            _model(),
            _dataset_fn,
            model_dir=str(tmp_path),
            total_steps=10,
            checkpoint_every_steps=4,
            validate_every_steps=6,
        )


def test_gradient_accumulation_counts_updates(tmp_path):
    keras.utils.set_random_seed(0)
    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(
        keras.optimizers.Adam(0.01, gradient_accumulation_steps=2), loss="mse"
    )
    result = trainer.fit_resumable(
        model,
        _dataset_fn,
        model_dir=str(tmp_path),
        total_steps=6,
        checkpoint_every_steps=3,
        verbose=0,
    )
    assert result["step"] == 6
    assert int(model.optimizer.iterations.numpy()) == 6
    assert int(model.optimizer._iterations.numpy()) == 12  # batches seen
    index_files = sorted(
        f for f in os.listdir(tmp_path / "checkpoints") if f.endswith(".index")
    )
    assert index_files == ["ckpt-3.index", "ckpt-6.index"]
