"""Resumable training: step count, optimizer state and data order survive."""

import glob
import io
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


# --- Progress, logs and plots ----------------------------------------------


def test_progress_line_counts_the_runs_steps_not_the_chunks(tmp_path, capsys):
    """Three chunks of 3 steps: the printed lines read step 3/9, 6/9, 9/9
    (Keras' own bar would print "Epoch 2/2" and "3/3" in chunk 2)."""
    model = _model()
    trainer.fit_resumable(
        model,
        _dataset_fn,
        model_dir=str(tmp_path),
        total_steps=9,
        checkpoint_every_steps=3,
        verbose=2,
    )
    lines = capsys.readouterr().out.splitlines()
    steps = [line.split()[1] for line in lines if line.startswith("step ")]
    assert steps == ["3/9", "6/9", "9/9"], lines
    assert not any("Epoch" in line for line in lines), lines
    assert " - loss: " in lines[-1] and "100%" in lines[-1], lines
    assert "left" not in lines[-1]  # Finished: nothing left.
    # Resumed at step 9 of 12: the line goes on from the run's step.
    trainer.fit_resumable(
        _model(),
        _dataset_fn,
        model_dir=str(tmp_path),
        total_steps=12,
        checkpoint_every_steps=3,
        verbose=2,
    )
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in lines if line.startswith("step")] == [
        "12/12"
    ], lines


def test_progress_line_time_per_step_and_time_left_from_a_fake_clock():
    """Seconds per step leave out the first (compiling) step; gradient
    accumulation counts updates, not batches."""
    model = _model()
    now = [100.0]
    stream = io.StringIO()
    progress = trainer.GlobalStepProgress(
        total_steps=1000,
        batches_per_step=2,
        verbose=1,
        clock=lambda: now[0],
        stream=stream,
        interval=0.0,
    )
    progress.set_model(model)
    model.optimizer.iterations.assign(400)  # Resumed at step 400.
    progress.on_train_begin()
    progress.on_train_batch_end(0, {"loss": 2.0})  # Half of step 401.
    progress.on_train_batch_end(1, {"loss": 1.5})  # Step 401 (compiled).
    now[0] += 30.0  # 10 more steps (20 batches), 3 s each.
    progress.on_train_batch_end(21, {"loss": 1.25, "accuracy": 0.0005})
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("step 400/1000 [") and "40%" in lines[0]
    assert "s/step" not in lines[0]  # Nothing measured yet.
    assert lines[2] == (
        "step 411/1000 [========............]  41% - 3 s/step - 29:27 left"
        " - loss: 1.2500 - accuracy: 5.0000e-04"
    )
    # 100 steps after step 401 at 36 s a step: 499 left, 4:59:24.
    assert progress.line(501, now=100.0 + 3600).endswith(
        "50% - 36 s/step - 4:59:24 left"
    )


def test_unmeasured_validation_metric_is_not_logged_as_zero(tmp_path):
    """A distilled student validated without teacher targets computes no
    `kd`: history and TensorBoard have `val_xent`, `val_loss` and no
    `val_kd` (Keras would report 0.0); training logs `kd`."""
    from bertkd_tf.training.distillation_model import DistillationModel
    from tests.training.distillation_model_test import make_data, make_student

    x, y, weights = make_data()
    model = DistillationModel(make_student(), 0.5, temperature=2.0)
    model.compile(optimizer=keras.optimizers.SGD(0.1))
    model(x)
    train = tf.data.Dataset.from_tensors((x, y, weights)).repeat()
    valid = tf.data.Dataset.from_tensors((x, y["labels"], weights))
    result = trainer.fit_resumable(
        model,
        lambda offset: train,
        model_dir=str(tmp_path),
        total_steps=2,
        checkpoint_every_steps=2,
        validation_dataset=valid,
        verbose=0,
    )
    assert result["kd"] > 0.0
    assert {"val_loss", "val_xent"} <= set(result), result
    assert "val_kd" not in result, result
    history = [json.loads(line) for line in open(tmp_path / "history.jsonl")]
    assert "val_kd" not in history[-1] and "kd" in history[-1]
    tags = _event_scalars(tmp_path / "logs" / "validation")
    assert set(tags) == {
        "evaluation_loss_vs_iterations",
        "evaluation_xent_vs_iterations",
    }, tags
    assert tags["evaluation_xent_vs_iterations"] == [
        (2, pytest.approx(result["val_xent"], rel=1e-6))
    ]


def _event_scalars(directory):
    """`{tag: [(step, value)]}` of the event files under `directory`."""
    scalars = {}
    for path in sorted(glob.glob(os.path.join(directory, "events.*"))):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                number = float(tf.make_ndarray(value.tensor))
                scalars.setdefault(value.tag, []).append((event.step, number))
    return scalars


def test_tensorboard_logs_at_global_steps_and_validation_plot(tmp_path):
    """Training scalars every `log_every_steps` at the run's step (across
    chunks), validation through keras' TensorBoard at the optimizer step,
    and `valid_loss.png` redrawn at each validation, atomically."""
    model = _model()
    trainer.fit_resumable(
        model,
        _dataset_fn,
        model_dir=str(tmp_path),
        total_steps=8,
        checkpoint_every_steps=4,
        validation_dataset=_dataset_fn(99).take(2),
        log_every_steps=2,
        verbose=0,
        plot_metrics=("val_loss", "val_missing"),
    )
    train = _event_scalars(tmp_path / "logs")
    assert [s for s, _ in train["train/loss"]] == [2, 4, 6, 8]
    assert [s for s, _ in train["train/learning_rate"]] == [2, 4, 6, 8]
    valid = _event_scalars(tmp_path / "logs" / "validation")
    history = [json.loads(line) for line in open(tmp_path / "history.jsonl")]
    assert valid["evaluation_loss_vs_iterations"] == [
        (4, pytest.approx(history[0]["val_loss"], rel=1e-6)),
        (8, pytest.approx(history[1]["val_loss"], rel=1e-6)),
    ]
    png = tmp_path / "valid_loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "valid_missing.png").exists()
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_validation_board_closes_its_writer_each_validation(tmp_path):
    """Each validation's TensorBoard file is complete when `evaluate` ends
    (read before the run ends)."""
    model = _model()
    board = trainer._ValidationBoard(str(tmp_path))
    model.optimizer.iterations.assign(7)
    model.evaluate(_dataset_fn(1).take(1), verbose=0, callbacks=[board])
    assert (
        _event_scalars(tmp_path / "validation")[
            "evaluation_loss_vs_iterations"
        ][0][0]
        == 7
    )
