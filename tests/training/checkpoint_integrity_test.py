"""Checkpoints: exact resume with dropout, damaged checkpoints, leftovers.

A tiny dense model with dropout trains on random data in-process (seconds);
tests/runs/exact_resume_test.py kills real `bertkd` processes.
"""

import json
import logging
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.errors import ArtifactError
from bertkd_tf.training import trainer

DEAD_PID = 2**31 - 1  # Above any pid_max: never a live process.


class _Crash(Exception):
    pass


class _CrashAtStep(keras.callbacks.Callback):
    def __init__(self, step):
        super().__init__()
        self.step = step

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations.numpy()) == self.step:
            raise _Crash()


def _model(dropout=0.5):
    """A fresh compiled model; the same initial values every call."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((6,)),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(16, activation="relu"),
            keras.layers.Dropout(dropout),
            keras.layers.Dense(1),
        ]
    )
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    return model


def _dataset_fn(seed_offset):
    rng = np.random.default_rng(int(seed_offset))
    x = rng.normal(size=(64, 6)).astype("float32")
    y = x.sum(axis=1, keepdims=True)
    return tf.data.Dataset.from_tensor_slices((x, y)).batch(8).repeat()


def _fit(model, model_dir, total_steps=4, **kwargs):
    return trainer.fit_resumable(
        model,
        _dataset_fn,
        model_dir=str(model_dir),
        total_steps=total_steps,
        checkpoint_every_steps=2,
        verbose=0,
        **kwargs,
    )


def _weights(model):
    return [w.numpy() for w in model.weights]


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    """Weights after 4 steps, and the model dir (checkpoints 2 and 4)."""
    model_dir = tmp_path_factory.mktemp("uninterrupted")
    model = _model()
    assert _fit(model, model_dir)["step"] == 4
    return _weights(model), model_dir


def _copy_of(model_dir, tmp_path):
    import shutil

    target = tmp_path / "run"
    shutil.copytree(model_dir, target)
    return target


def test_checkpoint_holds_the_dropout_seed_states(uninterrupted):
    model = _model()
    states = trainer.seed_states(model)
    assert len(states) == 2  # One SeedGenerator a Dropout layer.
    initial = [s.numpy().copy() for s in states]
    _, model_dir = uninterrupted
    names = [
        name
        for name, _ in tf.train.list_variables(
            os.path.join(model_dir, "checkpoints", "ckpt-4")
        )
    ]
    assert sum(n.startswith("seed_states/") for n in names) == 2, names
    assert trainer.restore_latest(model, model_dir) == 4
    assert all(
        (s.numpy() != i).any() for s, i in zip(states, initial)
    )  # Advanced by the 4 steps.


def test_resume_after_crash_equals_uninterrupted_with_dropout(
    uninterrupted, tmp_path
):
    expected, _ = uninterrupted
    with pytest.raises(_Crash):
        _fit(_model(), tmp_path, callbacks=[_CrashAtStep(3)])
    model = _model()  # A new process would build it again.
    assert _fit(model, tmp_path)["step"] == 4
    _assert_same(_weights(model), expected)


def _flip_bytes(path, count=16):
    data = bytearray(open(path, "rb").read())
    middle = len(data) // 2
    for i in range(middle, middle + count):
        data[i] ^= 0xFF
    open(path, "wb").write(bytes(data))


def _truncate(path):
    data = open(path, "rb").read()
    open(path, "wb").write(data[: len(data) // 2])


def _empty(path):
    open(path, "wb").close()


DAMAGES = {
    "flipped_data": ("ckpt-4.data-00000-of-00001", _flip_bytes),
    "truncated_data": ("ckpt-4.data-00000-of-00001", _truncate),
    "empty_index": ("ckpt-4.index", _empty),
    "missing_index": ("ckpt-4.index", os.remove),
}


@pytest.mark.parametrize("damage", sorted(DAMAGES))
def test_damaged_latest_checkpoint_falls_back_to_an_intact_one(
    damage, uninterrupted, tmp_path, caplog
):
    expected, reference_dir = uninterrupted
    model_dir = _copy_of(reference_dir, tmp_path)
    name, corrupt = DAMAGES[damage]
    corrupt(str(model_dir / "checkpoints" / name))
    model = _model()
    with caplog.at_level(logging.WARNING):
        assert trainer.restore_latest(model, str(model_dir)) == 2
    warnings = " ".join(
        r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
    )
    assert "ckpt-4" in warnings and "ckpt-2" in warnings, warnings
    # The run goes on from step 2 and ends where the uninterrupted one did.
    model = _model()
    assert _fit(model, model_dir)["step"] == 4
    _assert_same(_weights(model), expected)
    assert tf.train.latest_checkpoint(str(model_dir / "checkpoints")).endswith(
        "ckpt-4"
    )
    history = (model_dir / "history.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in history] == [2, 4]


def test_damaged_checkpoint_list_is_rebuilt(uninterrupted, tmp_path, caplog):
    expected, reference_dir = uninterrupted
    model_dir = _copy_of(reference_dir, tmp_path)
    (model_dir / "checkpoints" / "checkpoint").write_text("")
    model = _model()
    with caplog.at_level(logging.WARNING):
        assert trainer.restore_latest(model, str(model_dir)) == 4
    assert "damaged" in caplog.text
    _assert_same(_weights(model), expected)
    assert _fit(_model(), model_dir)["step"] == 4  # The manager reads it.


def test_no_intact_checkpoint_is_an_artifact_error(uninterrupted, tmp_path):
    _, reference_dir = uninterrupted
    model_dir = _copy_of(reference_dir, tmp_path)
    checkpoints = model_dir / "checkpoints"
    for step in (2, 4):
        _truncate(str(checkpoints / f"ckpt-{step}.data-00000-of-00001"))
    with pytest.raises(ArtifactError) as error:
        trainer.restore_latest(_model(), str(model_dir))
    message = str(error.value)
    assert str(checkpoints) in message
    assert "ckpt-4" in message
    assert "delete" in message and "backup" in message
    assert "\n" not in message


def test_leftovers_of_interrupted_writes_removed_at_start(tmp_path, caplog):
    checkpoints = tmp_path / "checkpoints"
    stale = checkpoints / "ckpt-3_temp"
    stale.mkdir(parents=True)
    (stale / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x")
    (tmp_path / "tmp-final.weights.h5").write_bytes(b"half")
    (tmp_path / f"history.jsonl.tmp-{DEAD_PID}").write_text("x")
    live = tmp_path / f"notes.txt.tmp-{os.getpid()}"  # Being written.
    live.write_text("x")
    with caplog.at_level(logging.WARNING):
        assert _fit(_model(), tmp_path, total_steps=2)["step"] == 2
    assert not stale.exists()
    assert not (tmp_path / "tmp-final.weights.h5").exists()
    assert not (tmp_path / f"history.jsonl.tmp-{DEAD_PID}").exists()
    assert live.exists()
    assert str(stale) in caplog.text
    assert sorted(os.listdir(checkpoints)) == [
        "checkpoint",
        "ckpt-2.data-00000-of-00001",
        "ckpt-2.index",
    ]
