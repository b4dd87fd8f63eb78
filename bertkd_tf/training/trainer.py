"""Resumable `fit`: chunks of steps, checkpoints, validation, logs.

Every training mode (`train_teacher`, `distill`) trains through
`fit_resumable`, so resume, checkpoint retention, TensorBoard and the
`history.jsonl` log behave the same everywhere.

Why chunks: the run is a sequence of Keras `fit` calls of
`checkpoint_every_steps` steps each. The data of a chunk comes from
`train_dataset_fn(seed_offset=step)`, so the batches a step sees depend only
on the step: a run killed (even with kill -9) and started again continues
from its last checkpoint, optimizer state and step count included, and sees
the same data an uninterrupted run would have seen.
"""

import json
import os
import shutil
import time

import keras
import tensorflow as tf
from absl import logging

from bertkd_tf.atomic_files import write_text_atomic

HISTORY_FILE = "history.jsonl"
CHECKPOINT_DIR = "checkpoints"


def _is_chief(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.cluster_spec().as_dict():
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    return task_type in (None, "chief") or (
        task_type == "worker"
        and task_id == 0
        and "chief" not in resolver.cluster_spec().as_dict()
    )


def _checkpoint_dir(model_dir, strategy):
    """Non-chief workers save into a throw-away directory (as TF requires)."""
    if _is_chief(strategy):
        return os.path.join(model_dir, CHECKPOINT_DIR)
    task_id = strategy.cluster_resolver.task_id
    return os.path.join(model_dir, f"workertemp_{task_id}", CHECKPOINT_DIR)


def make_checkpoint(model):
    """The `tf.train.Checkpoint` of a compiled model and its optimizer."""
    return tf.train.Checkpoint(model=model, optimizer=model.optimizer)


def restore_latest(model, model_dir):
    """Restores the newest checkpoint under `model_dir`; returns its step.

    The model must be built and compiled. Returns 0 (and changes nothing)
    when there is no checkpoint yet.
    """
    directory = os.path.join(model_dir, CHECKPOINT_DIR)
    latest = tf.train.latest_checkpoint(directory)
    if latest is None:
        return 0
    strategy = model.distribute_strategy
    with strategy.scope():
        model.optimizer.build(model.trainable_variables)
    make_checkpoint(model).restore(latest).assert_existing_objects_matched()
    step = int(model.optimizer.iterations.numpy())
    logging.info("Restored %s (step %d).", latest, step)
    return step


class _StepLogger(keras.callbacks.Callback):
    """Writes training metrics to TensorBoard every `log_every_steps`."""

    def __init__(self, writer, log_every_steps):
        super().__init__()
        self.writer = writer
        self.log_every_steps = log_every_steps

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if self.writer is None or step % self.log_every_steps:
            return
        with self.writer.as_default(step=step):
            for name, value in (logs or {}).items():
                tf.summary.scalar(f"train/{name}", float(value))
            learning_rate = self.model.optimizer.learning_rate
            tf.summary.scalar("train/learning_rate", float(learning_rate))


def _read_elapsed(history_path):
    """Training seconds already spent, from the last line of the history."""
    if not os.path.exists(history_path):
        return 0.0
    elapsed = 0.0
    with open(history_path) as f:
        for line in f:
            line = line.strip()
            if line:
                elapsed = json.loads(line).get("elapsed_s", elapsed)
    return elapsed


def fit_resumable(
    model,
    train_dataset_fn,
    *,
    model_dir,
    total_steps,
    checkpoint_every_steps,
    validation_dataset=None,
    validate_every_steps=None,
    keep_checkpoints=3,
    log_every_steps=50,
    callbacks=(),
    verbose="auto",
):
    """Trains `model` to `total_steps`, resuming from `model_dir` if it can.

    Args:
        model: a built, compiled `keras.Model` (compiled inside the strategy
            scope when distributed).
        train_dataset_fn: `seed_offset -> tf.data.Dataset` of
            `(x, y, sample_weight)`, infinite (repeated). Called once a chunk
            with the step the chunk starts at.
        model_dir: output directory: `checkpoints/`, `logs/` (TensorBoard),
            `history.jsonl`.
        total_steps: the optimizer step to stop at.
        checkpoint_every_steps: chunk length; a checkpoint is written after
            every chunk (and at the end).
        validation_dataset: optional finite dataset for `model.evaluate`.
        validate_every_steps: how often to validate; a multiple of
            `checkpoint_every_steps` (defaults to it).
        keep_checkpoints: how many recent checkpoints to keep.
        log_every_steps: TensorBoard logging period of training metrics.
        callbacks: extra Keras callbacks for every chunk.
        verbose: passed to `fit` (progress bar).

    Returns:
        A dict: `step`, `elapsed_s` and the last training and validation
        metrics (validation ones prefixed `val_`).

    Example:
    >>> fit_resumable(model, make_dataset, model_dir="/tmp/run",
    ...               total_steps=1000, checkpoint_every_steps=200)
    """
    if checkpoint_every_steps <= 0:
        raise ValueError(
            f"checkpoint_every_steps must be > 0; got {checkpoint_every_steps}."
        )
    validate_every_steps = validate_every_steps or checkpoint_every_steps
    if validate_every_steps % checkpoint_every_steps:
        raise ValueError(
            f"validate_every_steps ({validate_every_steps}) must be a "
            f"multiple of checkpoint_every_steps ({checkpoint_every_steps})."
        )
    if not model.built:
        raise ValueError(
            "fit_resumable needs a built model (call it on one batch first)."
        )
    if model.optimizer is None:
        raise ValueError("fit_resumable needs a compiled model.")
    strategy = model.distribute_strategy
    chief = _is_chief(strategy)
    tf.io.gfile.makedirs(model_dir)

    checkpoint = make_checkpoint(model)
    checkpoint_dir = _checkpoint_dir(model_dir, strategy)
    manager = tf.train.CheckpointManager(
        checkpoint, checkpoint_dir, max_to_keep=keep_checkpoints
    )
    step = restore_latest(model, model_dir)
    history_path = os.path.join(model_dir, HISTORY_FILE)
    elapsed = _read_elapsed(history_path) if step else 0.0
    if step == 0 and chief and os.path.exists(history_path):
        os.remove(history_path)  # A fresh start: drop a stale history.
    if step:
        logging.info("Resuming at step %d of %d.", step, total_steps)

    writer = None
    if chief:
        writer = tf.summary.create_file_writer(os.path.join(model_dir, "logs"))
    logger = _StepLogger(writer, log_every_steps)
    num_chunks = -(-total_steps // checkpoint_every_steps)
    # With gradient accumulation a step (an update) takes several batches.
    batches_per_step = model.optimizer.gradient_accumulation_steps or 1
    result = {"step": step, "elapsed_s": elapsed}

    while step < total_steps:
        chunk = step // checkpoint_every_steps
        steps = min(checkpoint_every_steps * (chunk + 1), total_steps) - step
        start = time.time()
        history = model.fit(
            train_dataset_fn(step),
            initial_epoch=chunk,
            epochs=chunk + 1,
            steps_per_epoch=steps * batches_per_step,
            callbacks=[logger, *callbacks],
            verbose=verbose,
            shuffle=False,  # The dataset shuffles itself, by seed.
        )
        elapsed += time.time() - start
        step = int(model.optimizer.iterations.numpy())
        manager.save(checkpoint_number=step)
        record = {"step": step, "elapsed_s": round(elapsed, 2)}
        record.update({k: float(v[-1]) for k, v in history.history.items()})
        if validation_dataset is not None and (
            step % validate_every_steps == 0 or step >= total_steps
        ):
            scores = model.evaluate(
                validation_dataset, return_dict=True, verbose=0
            )
            record.update({f"val_{k}": float(v) for k, v in scores.items()})
            if writer is not None:
                with writer.as_default(step=step):
                    for name, value in scores.items():
                        tf.summary.scalar(f"valid/{name}", float(value))
            logging.info(
                "step %d validation: %s",
                step,
                ", ".join(f"{k}={v:.4f}" for k, v in scores.items()),
            )
        if chief:
            with open(history_path, "a") as f:
                f.write(json.dumps(record) + "\n")
        result = record
        logging.info("chunk %d/%d done: %s", chunk + 1, num_chunks, record)

    if not chief:
        shutil.rmtree(os.path.dirname(checkpoint_dir), ignore_errors=True)
    if writer is not None:
        writer.flush()
    return result


def save_final(model, directory, config_file, weights_file):
    """Writes a trained model for inference: its Keras config as JSON and
    its weights (`.weights.h5`), without optimizer state, each to a
    temporary name first and then renamed, so a crash never leaves a
    half-written file under the final name.

    Under a multi-worker strategy only the chief writes.
    """
    if not _is_chief(model.distribute_strategy):
        return
    from keras.src.saving import saving_lib

    write_text_atomic(
        os.path.join(directory, config_file),
        json.dumps(keras.saving.serialize_keras_object(model)),
    )
    weights_path = os.path.join(directory, weights_file)
    temporary = os.path.join(directory, "tmp-" + weights_file)
    saving_lib.save_weights_only(
        model, temporary, objects_to_skip=_optimizer_of(model)
    )
    os.replace(temporary, weights_path)


def load_final_weights(model, path):
    """Loads weights written by `save_final` (optimizer state not expected,
    even when `model` is compiled)."""
    from keras.src.saving import saving_lib

    saving_lib.load_weights_only(
        model, path, objects_to_skip=_optimizer_of(model)
    )


def _optimizer_of(model):
    """`[optimizer]` of a compiled model, else None: what `save_final` and
    `load_final_weights` leave out. Keras' own `save_weights` stores a
    compiled model's optimizer (three times the model's size with Adam);
    inference needs none."""
    return [model.optimizer] if getattr(model, "optimizer", None) else None
