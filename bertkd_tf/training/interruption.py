"""Interim checkpoints: a run stopped between two regular checkpoints loses
(almost) nothing.

`fit_resumable` writes its regular checkpoints at chunk ends (every
`checkpoint_every_steps`). A run killed inside a chunk used to lose every
step since the chunk began: on a slow machine half an hour of training for a
chunk of 500 student steps. Two things now keep that work:

- An interim checkpoint every `interim_checkpoint_seconds` of training (10
  minutes in the runs): `checkpoints/interim/step-<N>/` holds the
  checkpoint of step N (model, optimizer, random generator states, as the
  regular ones) and `state.json`: the step its chunk started at and the
  training seconds so far. Written under a temporary name and renamed; only
  the newest is kept, and all are removed once the next regular checkpoint
  exists. They are not in the regular checkpoint list, so the retention of
  regular checkpoints (`keep_checkpoints`), the scoring of checkpoints and
  checkpoint averaging never see them.
- SIGTERM or SIGINT (Ctrl-C) stops the run after the update in progress,
  writes an interim checkpoint of that step and raises `TrainingInterrupted`
  (the `bertkd` binary prints it and exits with status 128 + the signal
  number). A second Ctrl-C stops at once, as before.

Resume: `restore_latest` takes the newest intact checkpoint, regular or
interim. From an interim one the run continues its chunk: the chunk's data
(`train_dataset_fn(chunk start)`) with the batches of the steps already
trained skipped, so it sees the batches and dropout masks an uninterrupted
run would, and ends with the same weights, bit for bit
(tests/training/interruption_test.py, tests/runs/exact_resume_test.py).

Single-worker strategies only (default, one or several local devices,
TPU): in a multi-worker cluster the workers would have to agree on the step
to stop at, so there only the regular checkpoints are written.
"""

import json
import os
import re
import shutil
import signal
import threading
import time

import keras
from absl import logging

from bertkd_tf.atomic_files import remove_stale_temporaries
from bertkd_tf.errors import TrainingInterrupted

INTERIM_DIR = "interim"
STATE_FILE = "state.json"
_NAME = re.compile(r"step-(\d+)")
PREFIX = "ckpt"  # The checkpoint inside `step-<N>/`.


def interim_dir(checkpoint_dir):
    return os.path.join(checkpoint_dir, INTERIM_DIR)


def remove_interim_leftovers(checkpoint_dir):
    """Removes interim checkpoints whose write was interrupted."""
    return remove_stale_temporaries(
        interim_dir(checkpoint_dir), r"step-\d+_temp", "unfinished checkpoint"
    )


def interim_checkpoints(checkpoint_dir):
    """`[(step, prefix, state)]` of the finished interim checkpoints, newest
    first (`state` is None where `state.json` is unreadable: such a
    checkpoint is reported as damaged when restored)."""
    directory = interim_dir(checkpoint_dir)
    if not os.path.isdir(directory):
        return []
    found = []
    for name in os.listdir(directory):
        match = _NAME.fullmatch(name)
        if match is None:
            continue
        path = os.path.join(directory, name)
        try:
            with open(os.path.join(path, STATE_FILE)) as f:
                state = json.load(f)
            state = {
                "chunk_start": int(state["chunk_start"]),
                "elapsed_s": float(state["elapsed_s"]),
            }
        except (OSError, ValueError, KeyError, TypeError):
            state = None
        found.append((int(match.group(1)), os.path.join(path, PREFIX), state))
    return sorted(found, key=lambda item: item[0], reverse=True)


def write_interim(checkpoint, checkpoint_dir, step, chunk_start, elapsed_s):
    """Writes the interim checkpoint of `step` (atomically: a temporary
    directory renamed) and removes the older ones. Returns its prefix."""
    directory = interim_dir(checkpoint_dir)
    final = os.path.join(directory, f"step-{step}")
    if os.path.isdir(final):  # Already written at this step.
        return os.path.join(final, PREFIX)
    temporary = final + "_temp"
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    # Created on first access: a checkpoint written before any regular save
    # would lack the counter a restoring `Checkpoint` creates and expects.
    checkpoint.save_counter  # noqa: B018
    checkpoint.write(os.path.join(temporary, PREFIX))
    with open(os.path.join(temporary, STATE_FILE), "w") as f:
        json.dump(
            {"chunk_start": int(chunk_start), "elapsed_s": round(elapsed_s, 2)},
            f,
        )
    os.rename(temporary, final)
    for other, prefix, _ in interim_checkpoints(checkpoint_dir):
        if other != step:
            shutil.rmtree(os.path.dirname(prefix), ignore_errors=True)
    logging.info("Interim checkpoint of step %d written to %s.", step, final)
    return os.path.join(final, PREFIX)


def remove_interim(checkpoint_dir):
    """Removes every interim checkpoint (a regular one is newer now)."""
    shutil.rmtree(interim_dir(checkpoint_dir), ignore_errors=True)


class GracefulStop:
    """While active (a context manager), SIGTERM and SIGINT set `signum`
    instead of killing the process; a second SIGINT raises
    `KeyboardInterrupt` at once. Installed only from the main thread (Python
    allows handlers nowhere else); the previous handlers are restored on
    exit."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self):
        self.signum = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signum == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        logging.warning(
            "%s received: stopping after the current training step, with a "
            "checkpoint of it.%s",
            signal.Signals(signum).name,
            " Press Ctrl-C again to stop at once."
            if signum == signal.SIGINT
            else "",
        )

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}
        return False


class InterimSaver(keras.callbacks.Callback):
    """Inside a chunk: writes an interim checkpoint every `every_seconds`
    (None: never) and stops `fit` after the update in progress once `stop`
    has caught a signal. Acts only at update boundaries (with gradient
    accumulation, a batch that completes an update)."""

    def __init__(
        self,
        checkpoint,
        checkpoint_dir,
        chunk_start,
        chunk_end,
        elapsed_before,
        every_seconds,
        batches_per_step,
        stop,
        clock=time.time,
    ):
        super().__init__()
        self.checkpoint = checkpoint
        self.checkpoint_dir = checkpoint_dir
        self.chunk_start = chunk_start
        self.chunk_end = chunk_end
        self.elapsed_before = elapsed_before
        self.every_seconds = every_seconds
        self.batches_per_step = batches_per_step
        self.stop = stop
        self.clock = clock
        self._started = None
        self._last_write = None

    def elapsed(self):
        """Training seconds of the run so far."""
        return self.elapsed_before + (self.clock() - self._started)

    def on_train_begin(self, logs=None):
        self._started = self._last_write = self.clock()

    def on_train_batch_end(self, batch, logs=None):
        if (batch + 1) % self.batches_per_step:
            return  # In the middle of an accumulated update.
        if self.stop is not None and self.stop.signum is not None:
            self.model.stop_training = True
            return
        if self.every_seconds is None:
            return
        if self.clock() - self._last_write < self.every_seconds:
            return
        step = int(self.model.optimizer.iterations.numpy())
        if step >= self.chunk_end:
            return  # The regular checkpoint follows.
        write_interim(
            self.checkpoint,
            self.checkpoint_dir,
            step,
            self.chunk_start,
            self.elapsed(),
        )
        self._last_write = self.clock()


def interrupted_error(signum, step, total_steps, checkpoint_dir):
    name = signal.Signals(signum).name
    return TrainingInterrupted(
        f"Training stopped on {name} at step {step} of {total_steps}; the "
        f"checkpoint of that step is in {checkpoint_dir}. Run the same "
        "command again to resume from it: the run continues with the "
        "batches and dropout masks it would have had without the stop.",
        signum=signum,
    )


def dataset_from(train_dataset_fn, chunk_start, step, batches_per_step):
    """The rest of the chunk started at `chunk_start`, from `step` on."""
    dataset = train_dataset_fn(chunk_start)
    skipped = (step - chunk_start) * batches_per_step
    if skipped:
        logging.info(
            "Skipping the %d batch(es) of steps %d-%d of this chunk, trained "
            "before the interim checkpoint.",
            skipped,
            chunk_start,
            step - 1,
        )
        dataset = dataset.skip(skipped)
    return dataset
