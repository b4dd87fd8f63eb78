"""Interim checkpoints and the graceful stop (`training.interruption`): a run
stopped inside a chunk (crash, SIGTERM, Ctrl-C) resumes from the step it
reached and ends with the weights of an uninterrupted run, bit for bit.

A tiny dense model with dropout trains in-process (seconds); chunks of 4
steps, 8 steps in all. tests/runs/exact_resume_test.py stops real `bertkd`
processes with SIGTERM.
"""

import json
import logging
import os
import signal

import keras
import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.errors import BertkdError, TrainingInterrupted
from bertkd_tf.training import interruption, trainer
from tests.training.checkpoint_integrity_test import _assert_same, _weights


class _Crash(Exception):
    pass


class _AtStep(keras.callbacks.Callback):
    """Calls `action()` once the optimizer has reached `step` updates."""

    def __init__(self, step, action):
        super().__init__()
        self.step = step
        self.action = action
        self.done = False

    def on_train_batch_end(self, batch, logs=None):
        if (
            not self.done
            and self.model.optimizer.iterations.numpy() >= self.step
        ):
            self.done = True
            self.action()


def _crash():
    raise _Crash()


def _model(accumulation=None):
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(0.5),
            keras.layers.Dense(1),
        ]
    )
    model.compile(
        optimizer=keras.optimizers.Adam(
            1e-2, gradient_accumulation_steps=accumulation
        ),
        loss="mse",
    )
    return model


def _dataset_fn(seed_offset):
    # 5 batches a pass: a chunk's batches cross the pass boundary.
    rng = np.random.default_rng(int(seed_offset))
    x = rng.normal(size=(40, 6)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    return (
        tf.data.Dataset.from_tensor_slices((x, y))
        .shuffle(40, seed=int(seed_offset))
        .batch(8)
        .repeat()
    )


def _fit(model, model_dir, **kwargs):
    kwargs.setdefault("interim_checkpoint_seconds", 1e-9)  # Every update.
    return trainer.fit_resumable(
        model,
        _dataset_fn,
        model_dir=str(model_dir),
        total_steps=8,
        checkpoint_every_steps=4,
        verbose=0,
        **kwargs,
    )


def _regular_checkpoints(model_dir):
    return sorted(
        name
        for name in os.listdir(model_dir / "checkpoints")
        if name.endswith(".index")
    )


def _interim(model_dir):
    directory = model_dir / "checkpoints" / "interim"
    return sorted(os.listdir(directory)) if directory.exists() else []


def _history_steps(model_dir):
    lines = (model_dir / "history.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines]


@pytest.fixture(scope="module", params=[None, 2], ids=["1batch", "2batches"])
def uninterrupted(request, tmp_path_factory):
    """`(accumulation, final weights)` of a run never stopped (without
    interim checkpoints)."""
    model = _model(request.param)
    _fit(
        model,
        tmp_path_factory.mktemp("uninterrupted"),
        interim_checkpoint_seconds=None,
    )
    return request.param, _weights(model)


def test_crash_inside_a_chunk_resumes_from_the_interim_checkpoint(
    uninterrupted, tmp_path, caplog
):
    accumulation, expected = uninterrupted
    with pytest.raises(_Crash):
        # The crash comes before the saver sees step 6: step 5 is the last
        # interim checkpoint.
        _fit(
            _model(accumulation),
            tmp_path,
            callbacks=[_AtStep(6, _crash)],
        )
    assert _interim(tmp_path) == ["step-5"]  # Only the newest is kept.
    assert _regular_checkpoints(tmp_path) == ["ckpt-4.index"]
    state = json.loads(
        (
            tmp_path / "checkpoints" / "interim" / "step-5" / "state.json"
        ).read_text()
    )
    assert state["chunk_start"] == 4 and state["elapsed_s"] > 0

    resumed = _model(accumulation)
    with caplog.at_level(logging.INFO, logger="absl"):
        result = _fit(resumed, tmp_path)
    assert "Resuming at step 5 of 8." in caplog.text
    assert result["step"] == 8
    _assert_same(_weights(resumed), expected)
    # The regular list never saw the interim checkpoint; the next regular
    # checkpoint removed it; the history has the chunk ends only.
    assert _regular_checkpoints(tmp_path) == ["ckpt-4.index", "ckpt-8.index"]
    assert _interim(tmp_path) == []
    assert _history_steps(tmp_path) == [4, 8]
    assert result["elapsed_s"] >= state["elapsed_s"]


@pytest.mark.parametrize(
    "signum,at_step",
    # In the second chunk, and in the first (before any regular checkpoint).
    [(signal.SIGTERM, 6), (signal.SIGINT, 6), (signal.SIGTERM, 2)],
)
def test_signal_stops_with_a_checkpoint_and_the_run_resumes_exactly(
    uninterrupted, tmp_path, signum, at_step
):
    accumulation, expected = uninterrupted
    previous = signal.getsignal(signum)
    with pytest.raises(TrainingInterrupted) as raised:
        _fit(
            _model(accumulation),
            tmp_path,
            interim_checkpoint_seconds=None,  # Only the stop writes one.
            callbacks=[_AtStep(at_step, lambda: os.kill(os.getpid(), signum))],
        )
    message = str(raised.value)
    name = signal.Signals(signum).name
    assert f"stopped on {name} at step {at_step} of 8" in message
    assert str(tmp_path / "checkpoints") in message
    assert "Run the same command again" in message
    assert raised.value.signum == signum
    assert isinstance(raised.value, BertkdError)
    assert signal.getsignal(signum) is previous  # Handlers restored.
    assert _interim(tmp_path) == [f"step-{at_step}"]

    resumed = _model(accumulation)
    assert _fit(resumed, tmp_path)["step"] == 8
    _assert_same(_weights(resumed), expected)
    assert _interim(tmp_path) == []


def test_signal_during_validation_stops_before_the_next_chunk(tmp_path):
    """A stop asked between chunks (here during validation) stops at the
    chunk end, whose regular checkpoint is written; no interim one."""

    model = _model()
    original_evaluate = model.evaluate

    def evaluate(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)
        return original_evaluate(*args, **kwargs)

    model.evaluate = evaluate
    with pytest.raises(TrainingInterrupted, match="at step 4 of 8"):
        _fit(
            model,
            tmp_path,
            validation_dataset=_dataset_fn(99).take(2),
        )
    assert _regular_checkpoints(tmp_path) == ["ckpt-4.index"]
    assert _interim(tmp_path) == []
    history = [
        json.loads(line)
        for line in (tmp_path / "history.jsonl").read_text().splitlines()
    ]
    assert [h["step"] for h in history] == [4]
    assert "val_loss" in history[0]


def test_damaged_interim_checkpoint_falls_back_to_the_regular_one(
    uninterrupted, tmp_path, caplog
):
    accumulation, expected = uninterrupted
    with pytest.raises(_Crash):
        _fit(_model(accumulation), tmp_path, callbacks=[_AtStep(6, _crash)])
    step_dir = tmp_path / "checkpoints" / "interim" / "step-5"
    data = next(p for p in step_dir.iterdir() if ".data-" in p.name)
    data.write_bytes(data.read_bytes()[:100])  # Truncated.

    resumed = _model(accumulation)
    with caplog.at_level(logging.INFO, logger="absl"):
        _fit(resumed, tmp_path)
    assert "step-5" in caplog.text and "is damaged or unreadable" in caplog.text
    assert "Resuming at step 4 of 8." in caplog.text
    _assert_same(_weights(resumed), expected)
    # The regular list was left as it was (its own checkpoints are intact).
    assert _regular_checkpoints(tmp_path) == ["ckpt-4.index", "ckpt-8.index"]


def test_unreadable_interim_state_is_damage_too(tmp_path, caplog):
    with pytest.raises(_Crash):
        _fit(_model(), tmp_path, callbacks=[_AtStep(6, _crash)])
    (tmp_path / "checkpoints" / "interim" / "step-5" / "state.json").write_text(
        "{"
    )
    with caplog.at_level(logging.INFO, logger="absl"):
        _fit(_model(), tmp_path)
    assert "state.json unreadable" in caplog.text
    assert "Resuming at step 4 of 8." in caplog.text


def test_unfinished_interim_write_is_removed_at_start(tmp_path, caplog):
    with pytest.raises(_Crash):
        _fit(_model(), tmp_path, callbacks=[_AtStep(6, _crash)])
    unfinished = tmp_path / "checkpoints" / "interim" / "step-6_temp"
    unfinished.mkdir()
    (unfinished / "ckpt.index").write_bytes(b"half")
    with caplog.at_level(logging.INFO, logger="absl"):
        _fit(_model(), tmp_path)
    assert not unfinished.exists()
    assert "unfinished checkpoint" in caplog.text
    assert "Resuming at step 5 of 8." in caplog.text


def test_no_interim_checkpoints_when_off(tmp_path):
    with pytest.raises(_Crash):
        _fit(
            _model(),
            tmp_path,
            interim_checkpoint_seconds=None,
            callbacks=[_AtStep(6, _crash)],
        )
    assert _interim(tmp_path) == []
    assert _regular_checkpoints(tmp_path) == ["ckpt-4.index"]


def test_interim_checkpoints_follow_the_clock():
    """The saver writes when `every_seconds` have passed since the last
    write, only at update boundaries and never at the chunk's end."""
    now = [0.0]
    written = []
    saver = interruption.InterimSaver(
        checkpoint=None,
        checkpoint_dir="unused",
        chunk_start=0,
        chunk_end=10,
        elapsed_before=100.0,
        every_seconds=60,
        batches_per_step=2,
        stop=None,
        clock=lambda: now[0],
    )

    class _Optimizer:
        iterations = tf.Variable(0, dtype="int64")

    class _Model:
        optimizer = _Optimizer()

    saver.set_model(_Model())
    original = interruption.write_interim
    interruption.write_interim = lambda c, d, step, start, elapsed: (
        written.append((step, start, elapsed))
    )
    try:
        saver.on_train_begin()
        for batch, (t, step) in enumerate(
            [(30, 0), (61, 1), (62, 1), (70, 2), (100, 2), (130, 3)]
        ):
            now[0] = t
            _Optimizer.iterations.assign(step)
            saver.on_train_batch_end(batch)
        now[0] = 500
        _Optimizer.iterations.assign(10)
        saver.on_train_batch_end(7)  # The chunk's end: no interim.
    finally:
        interruption.write_interim = original
    # Batch 1 (t 61) completes an update past 60 s; batch 2 is mid-update;
    # batch 5 (t 130) is 69 s after the last write.
    assert written == [(1, 0, 161.0), (3, 0, 230.0)]
