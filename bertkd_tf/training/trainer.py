"""Resumable `fit`: chunks of steps, checkpoints, validation, logs.

Every training mode (`train_teacher`, `distill`) trains through
`fit_resumable`, so resume, checkpoint retention, TensorBoard and the
`history.jsonl` log behave the same everywhere.

Why chunks: the run is a sequence of Keras `fit` calls of
`checkpoint_every_steps` steps each. The data of a chunk comes from
`train_dataset_fn(seed_offset=step)`, so the batches a step sees depend only
on the step: a run killed (even with kill -9) and started again continues
from its last checkpoint, optimizer state, step count and the state of every
random generator (the `SeedGenerator`s of dropout) included, and sees the
same data and draws the same dropout masks an uninterrupted run would have:
it ends with the same weights, bit for bit.

Damage and leftovers: a checkpoint that fails to restore (a truncated or
corrupted file) is skipped, with a warning, for the newest one that restores;
the temporary directories of an interrupted checkpoint write are removed at
the next start. Final weights files get a SHA-256 sidecar
(`bertkd_tf.checksums`), checked when they are loaded.
"""

import contextlib
import json
import os
import re
import shutil
import time

import keras
import tensorflow as tf
from absl import logging

from bertkd_tf import checksums
from bertkd_tf.atomic_files import remove_stale_temporaries, write_text_atomic
from bertkd_tf.durations import format_duration
from bertkd_tf.errors import ArtifactError
from bertkd_tf.layers.fast_layers import loading_layout
from bertkd_tf.training import interruption

HISTORY_FILE = "history.jsonl"
CHECKPOINT_DIR = "checkpoints"


def _multi_worker(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    return bool(resolver is not None and resolver.cluster_spec().as_dict())


def _is_chief(strategy):
    if not _multi_worker(strategy):
        return True
    resolver = strategy.cluster_resolver
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


def seed_states(model):
    """The state variables of every random generator of `model`: the keras
    `SeedGenerator` of each `Dropout` / `FastDropout` (and any other layer
    drawing random numbers), in a fixed order (`model.variables`').

    They advance at every training step; a checkpoint without them resumes
    with the dropout masks of step 0 again, not those an uninterrupted run
    would draw.
    """
    ids = set()
    for layer in model._flatten_layers(include_self=True, recursive=True):
        for generator in getattr(layer, "_seed_generators", ()):
            ids.add(id(generator.state))
    return [v for v in model.variables if id(v) in ids]


SEED_STATES = "seed_states"


def make_checkpoint(model, with_seed_states=True):
    """The `tf.train.Checkpoint` of a compiled model, its optimizer and the
    states of its random generators (`seed_states`, under "seed_states")."""
    objects = {"model": model, "optimizer": model.optimizer}
    states = seed_states(model) if with_seed_states else []
    if states:
        objects[SEED_STATES] = states
    return tf.train.Checkpoint(**objects)


def _checkpoint_step(prefix):
    match = re.search(r"-(\d+)$", prefix)
    return int(match.group(1)) if match else -1


def _checkpoint_candidates(directory):
    """`(prefixes newest first, state_file_readable)`: the checkpoints the
    state file lists and those whose index file exists (a damaged state
    file hides none)."""
    prefixes = set()
    readable = True
    try:
        state = tf.train.get_checkpoint_state(directory)
    except Exception as error:  # noqa: BLE001 (a damaged state file)
        logging.warning(
            "The checkpoint list %s is damaged (%s); looking for checkpoint "
            "files instead.",
            os.path.join(directory, "checkpoint"),
            error,
        )
        state, readable = None, False
    if state is not None:
        for path in state.all_model_checkpoint_paths:
            if not os.path.isabs(path):
                path = os.path.join(directory, path)
            prefixes.add(path)
        if state.model_checkpoint_path:
            path = state.model_checkpoint_path
            if not os.path.isabs(path):
                path = os.path.join(directory, path)
            prefixes.add(path)
    for name in tf.io.gfile.listdir(directory):
        if name.endswith(".index"):
            prefixes.add(os.path.join(directory, name[: -len(".index")]))
    newest_first = sorted(prefixes, key=_checkpoint_step, reverse=True)
    return newest_first, readable


def _has_seed_states(prefix):
    names = tf.train.load_checkpoint(prefix).get_variable_to_shape_map()
    return any(name.startswith(SEED_STATES + "/") for name in names)


def _restore(model, prefix):
    """Restores one checkpoint (raises if it is damaged or mismatched)."""
    with_seeds = _has_seed_states(prefix)
    if not with_seeds and seed_states(model):
        logging.warning(
            "%s holds no random generator states (written before they were "
            "checkpointed): the run resumes with fresh dropout seeds, so it "
            "will not equal an uninterrupted run bit for bit.",
            prefix,
        )
    checkpoint = make_checkpoint(model, with_seed_states=with_seeds)
    checkpoint.restore(prefix).assert_existing_objects_matched()


def _first_line(error):
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


def restore_latest(model, model_dir):
    """Restores the newest intact checkpoint under `model_dir`; returns its
    step.

    The model must be built and compiled. Returns 0 (and changes nothing)
    when there is no checkpoint yet. The newest may be an interim one
    (`bertkd_tf.training.interruption`). A checkpoint that fails to restore
    (a truncated, corrupted or empty file) is skipped with a warning naming
    it and the one used instead; the checkpoint list is then rewritten (by
    the chief) to end at the regular one used, so the run continues from
    there.

    Raises:
        ArtifactError: there are checkpoints, but none restores.
    """
    return _restore_newest(model, model_dir)[0]


def _restore_newest(model, model_dir):
    """`(step, interim state or None)` of the checkpoint `restore_latest`
    restores (the state: `chunk_start` and `elapsed_s` of an interim
    checkpoint)."""
    directory = os.path.join(model_dir, CHECKPOINT_DIR)
    if not tf.io.gfile.isdir(directory):
        return 0, None
    candidates, state_readable = _checkpoint_candidates(directory)
    found = interruption.interim_checkpoints(directory)
    interim = {prefix: state for _, prefix, state in found}
    steps = {prefix: step for step, prefix, _ in found}
    candidates = sorted(
        [*candidates, *interim],
        key=lambda p: steps.get(p, _checkpoint_step(p)),
        reverse=True,
    )
    if not candidates:
        return 0, None
    strategy = model.distribute_strategy
    with strategy.scope():
        model.optimizer.build(model.trainable_variables)
    damaged = []
    for prefix in candidates:
        try:
            if prefix in interim and interim[prefix] is None:
                raise ArtifactError(f"{interruption.STATE_FILE} unreadable")
            _restore(model, prefix)
        except Exception as error:  # noqa: BLE001 (any damage: skip it)
            logging.warning(
                "Checkpoint %s is damaged or unreadable (%s); trying the "
                "next older one.",
                prefix,
                _first_line(error),
            )
            damaged.append((prefix, error))
            continue
        step = int(model.optimizer.iterations.numpy())
        if damaged:
            logging.warning(
                "Skipped the damaged checkpoint(s) %s; resuming from %s "
                "(step %d) instead.",
                ", ".join(p for p, _ in damaged),
                prefix,
                step,
            )
        damaged_regular = [d for d in damaged if d[0] not in interim]
        if (damaged_regular or not state_readable) and _is_chief(strategy):
            # The list of regular checkpoints, ending at the newest intact
            # one not after the step restored (interim ones are not listed).
            kept = sorted(
                (
                    p
                    for p in candidates
                    if p not in dict(damaged)
                    and p not in interim
                    and _checkpoint_step(p) <= step
                ),
                key=_checkpoint_step,
            )
            if kept:
                tf.compat.v1.train.update_checkpoint_state(
                    directory, kept[-1], all_model_checkpoint_paths=kept
                )
            elif tf.io.gfile.exists(os.path.join(directory, "checkpoint")):
                tf.io.gfile.remove(os.path.join(directory, "checkpoint"))
        logging.info("Restored %s (step %d).", prefix, step)
        return step, interim.get(prefix)
    newest, error = damaged[0]
    raise ArtifactError(
        f"None of the {len(candidates)} checkpoint(s) in {directory} can be "
        f"restored (the newest, {os.path.basename(newest)}: "
        f"{_first_line(error)}). If the files are damaged, restore the "
        f"directory from a backup, or delete {directory} to train from "
        "scratch; if the model's settings changed since they were written, "
        "use the old settings or another output directory."
    )


def remove_leftovers(model_dir):
    """Removes what interrupted writes left in `model_dir`: checkpoint
    temporaries (`checkpoints/ckpt-N_temp/`) and temporary weights and text
    files of dead processes. Call before training (only the chief writes
    there). Returns the removed paths."""
    removed = remove_stale_temporaries(
        os.path.join(model_dir, CHECKPOINT_DIR),
        r".+_temp",
        "unfinished checkpoint",
    )
    removed += interruption.remove_interim_leftovers(
        os.path.join(model_dir, CHECKPOINT_DIR)
    )
    removed += remove_stale_temporaries(
        model_dir,
        r"tmp-.+\.weights\.h5|.+\.tmp-(?P<pid>\d+)",
        "unfinished file",
    )
    return removed


class _StepLogger(keras.callbacks.Callback):
    """Writes training metrics to TensorBoard every `log_every_steps`
    optimizer steps, at the run's global step.

    Kept instead of `keras.callbacks.TensorBoard(update_freq=N)` for the
    training metrics because TensorBoard numbers its batch summaries by a
    counter that restarts at every `fit` call (one per chunk here) and
    counts batches, not optimizer updates (gradient accumulation), and its
    epoch summaries by the epoch (a chunk): a resumed or chunked run would
    write several values at the same step. The validation metrics go
    through `keras.callbacks.TensorBoard` (`_ValidationBoard`), which
    writes them at `optimizer.iterations`.
    """

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


def unmeasured_metrics(model):
    """Names of `model.metrics` that no batch updated since their last
    reset: a `Mean`-like tracker (`count` 0) that the step skipped, such as
    `DistillationModel`'s `kd` during a validation without teacher
    targets. Keras reports those as 0.0; `fit_resumable` leaves them out
    of its logs instead."""
    names = set()
    for metric in model.metrics:
        count = getattr(metric, "count", None)
        if count is None or not hasattr(count, "numpy"):
            continue
        if float(count.numpy()) == 0.0:
            names.add(metric.name)
    return names


class _ValidationBoard(keras.callbacks.TensorBoard):
    """`keras.callbacks.TensorBoard` for `model.evaluate`: writes each
    validation metric as `evaluation_<name>_vs_iterations` under
    `logs/validation/`, at the optimizer step, leaving out the metrics no
    batch updated (`unmeasured_metrics`), and flushes at once."""

    def __init__(self, log_dir):
        super().__init__(log_dir=log_dir, write_graph=False, profile_batch=0)

    def on_test_end(self, logs=None):
        skipped = unmeasured_metrics(self.model)
        logs = {k: v for k, v in (logs or {}).items() if k not in skipped}
        super().on_test_end(logs)
        # TensorBoard closes (flushes) its writers at the end of training;
        # `evaluate` never ends one, so close them here.
        self.on_train_end()


def _format_value(value):
    value = float(value)
    return f"{value:.4f}" if abs(value) > 1e-3 or value == 0 else f"{value:.4e}"


class GlobalStepProgress(keras.callbacks.Callback):
    """The progress line of a `fit_resumable` run, in the run's steps.

    Keras' own bar counts the steps of one `fit` call, and `fit_resumable`
    calls `fit` once a chunk: it would read "Epoch 2/2" and "500/1000"
    half-way through chunk 2 of 3. This line reads
    `step 1500/3000 [=====.....] 50% - 0.52 s/step - 13:00 left - loss:
    ...`: optimizer updates (`batches_per_step` batches each with gradient
    accumulation) out of `total_steps`, the seconds a step takes and the
    time left, measured from the first step this process finished (its
    compile time left out; checkpoints and validations counted in), and the
    chunk's running metrics.

    `verbose` as Keras': 0 silent, 1 a line updated in place on a terminal
    (a new line every `interval` seconds otherwise, default 30), 2 one line
    per chunk. `clock` and `stream` are for tests.
    """

    def __init__(
        self,
        total_steps,
        batches_per_step=1,
        verbose=1,
        clock=time.monotonic,
        stream=None,
        interval=None,
        width=20,
    ):
        super().__init__()
        self.total_steps = int(total_steps)
        self.batches_per_step = int(batches_per_step or 1)
        self.verbose = 1 if verbose == "auto" else int(verbose)
        self.clock = clock
        self.stream = stream
        self.width = width
        self._interval = interval
        self._first_step = 0
        self._reference = None  # (time, step) after the first step.
        self._last_print = None
        self._width_printed = 0

    def _out(self):
        import sys

        return self.stream or sys.stdout

    def _dynamic(self):
        stream = self._out()
        return (
            keras.config.is_interactive_logging_enabled()
            and hasattr(stream, "isatty")
            and stream.isatty()
        )

    def line(self, step, logs=None, now=None):
        """The progress text at global `step` (no end of line)."""
        now = self.clock() if now is None else now
        total = max(self.total_steps, 1)
        done = min(step, total)
        filled = int(self.width * done / total)
        text = (
            f"step {step}/{self.total_steps} "
            f"[{'=' * filled}{'.' * (self.width - filled)}] "
            f"{100 * done // total:3d}%"
        )
        if self._reference is not None and step > self._reference[1]:
            start, first = self._reference
            per_step = (now - start) / (step - first)
            text += f" - {per_step:.3g} s/step"
            if step < self.total_steps:
                left = per_step * (self.total_steps - step)
                text += f" - {format_duration(left)} left"
        for name, value in (logs or {}).items():
            try:
                text += f" - {name}: {_format_value(value)}"
            except (TypeError, ValueError):
                continue
        return text

    def _show(self, text, final):
        if not keras.config.is_interactive_logging_enabled():
            logging.info("%s", text)
            return
        stream = self._out()
        if self._dynamic():
            padding = " " * max(self._width_printed - len(text), 0)
            stream.write("\r" + text + padding + ("\n" if final else ""))
            self._width_printed = 0 if final else len(text)
        else:
            stream.write(text + "\n")
        stream.flush()

    def on_train_begin(self, logs=None):
        self._first_step = int(self.model.optimizer.iterations.numpy())
        self._width_printed = 0

    def on_train_batch_end(self, batch, logs=None):
        step = self._first_step + (batch + 1) // self.batches_per_step
        now = self.clock()
        if self._reference is None and step > self._first_step:
            self._reference = (now, step)  # The first update is done.
        if self.verbose != 1:
            return
        interval = self._interval
        if interval is None:
            interval = 0.1 if self._dynamic() else 30.0
        if self._last_print is not None and now - self._last_print < interval:
            return
        self._last_print = now
        self._show(self.line(step, logs, now), final=False)

    def on_epoch_end(self, epoch, logs=None):
        if not self.verbose:
            return
        step = int(self.model.optimizer.iterations.numpy())
        now = self.clock()
        self._last_print = now
        self._show(self.line(step, logs, now), final=True)


def _drop_history_after(history_path, step):
    """Drops the records of steps after `step` (a run resumed from an
    older checkpoint than its last one writes them again)."""
    if not os.path.exists(history_path):
        return
    with open(history_path) as f:
        lines = [line for line in f if line.strip()]
    kept = [line for line in lines if json.loads(line).get("step", 0) <= step]
    if len(kept) < len(lines):
        write_text_atomic(history_path, "".join(kept))


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


def _end_of_chunk(
    model,
    history,
    step,
    elapsed,
    *,
    validation_dataset,
    validated,
    model_dir,
    history_path,
    chief,
    plot_metrics,
):
    """Validates (if `validated`), appends the chunk's record to the
    history (and the plots); returns the record."""
    record = {"step": step, "elapsed_s": round(elapsed, 2)}
    skipped = unmeasured_metrics(model)
    record.update(
        {
            k: float(v[-1])
            for k, v in history.history.items()
            if k not in skipped
        }
    )
    if validated:
        board = (
            [_ValidationBoard(os.path.join(model_dir, "logs"))] if chief else []
        )
        scores = model.evaluate(
            validation_dataset,
            return_dict=True,
            verbose=0,
            callbacks=board,
        )
        # A metric the validation step never updates (`kd` without teacher
        # targets) would read 0.0: left out.
        skipped = unmeasured_metrics(model)
        scores = {k: v for k, v in scores.items() if k not in skipped}
        record.update({f"val_{k}": float(v) for k, v in scores.items()})
        logging.info(
            "step %d validation: %s",
            step,
            ", ".join(f"{k}={v:.4f}" for k, v in scores.items()),
        )
    if chief:
        with open(history_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if validated:
            _plot_history(model_dir, history_path, plot_metrics)
    return record


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
    plot_metrics=(),
    interim_checkpoint_seconds=600.0,
):
    """Trains `model` to `total_steps`, resuming from `model_dir` if it can.

    Args:
        model: a built, compiled `keras.Model` (compiled inside the strategy
            scope when distributed).
        train_dataset_fn: `seed_offset -> tf.data.Dataset` of
            `(x, y, sample_weight)`, infinite (repeated). Called once a chunk
            with the step the chunk starts at.
        model_dir: output directory: `checkpoints/`, `logs/` (TensorBoard:
            `train/<metric>` and `train/learning_rate` every
            `log_every_steps`, `validation/evaluation_<metric>_vs_iterations`
            at each validation), `history.jsonl`, the `plot_metrics` PNGs.
        total_steps: the optimizer step to stop at.
        checkpoint_every_steps: chunk length; a checkpoint is written after
            every chunk (and at the end).
        validation_dataset: optional finite dataset for `model.evaluate`.
        validate_every_steps: how often to validate; a multiple of
            `checkpoint_every_steps` (defaults to it).
        keep_checkpoints: how many recent checkpoints to keep.
        log_every_steps: TensorBoard logging period of training metrics.
        callbacks: extra Keras callbacks for every chunk.
        verbose: the progress line (`GlobalStepProgress`: global steps,
            s/step, time left): 0 none, 1 / "auto" updated, 2 one a chunk.
        plot_metrics: history keys (e.g. `("val_accuracy",)`) drawn over
            the steps into `model_dir/valid_<name>.png` (the `val_` prefix
            dropped) after each validation, atomically (`bertkd_tf.plots`).
        interim_checkpoint_seconds: inside a chunk, an interim checkpoint
            every this many seconds of training (None or 0: none); SIGTERM
            and SIGINT stop the run with one (`TrainingInterrupted`). See
            `bertkd_tf.training.interruption`.

    Returns:
        A dict: `step`, `elapsed_s` and the last training and validation
        metrics (validation ones prefixed `val_`).

    Raises:
        TrainingInterrupted: a SIGTERM / SIGINT stopped the run (after a
            checkpoint of the step reached).

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
    if chief:
        remove_leftovers(model_dir)

    # Restored first: it repairs a damaged checkpoint list, which the
    # manager reads.
    step, interim_state = _restore_newest(model, model_dir)
    checkpoint = make_checkpoint(model)
    checkpoint_dir = _checkpoint_dir(model_dir, strategy)
    manager = tf.train.CheckpointManager(
        checkpoint, checkpoint_dir, max_to_keep=keep_checkpoints
    )
    history_path = os.path.join(model_dir, HISTORY_FILE)
    if step and chief:
        _drop_history_after(history_path, step)
    elapsed = _read_elapsed(history_path) if step else 0.0
    if interim_state is not None:
        elapsed = interim_state["elapsed_s"]
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
    progress = GlobalStepProgress(
        total_steps, batches_per_step, verbose=verbose if chief else 0
    )
    result = {"step": step, "elapsed_s": elapsed}
    # Interim checkpoints and the graceful stop: single-worker only (the
    # workers of a cluster would have to agree on the step to stop at).
    single_worker = not _multi_worker(strategy)
    every_seconds = (
        (interim_checkpoint_seconds or None) if single_worker else None
    )
    stop = interruption.GracefulStop() if single_worker else None

    def stop_if_asked():
        if stop is not None and stop.signum is not None:
            raise interruption.interrupted_error(
                stop.signum, step, total_steps, checkpoint_dir
            )

    with stop if stop is not None else contextlib.nullcontext():
        while step < total_steps:
            stop_if_asked()
            # A chunk's data comes from `train_dataset_fn(chunk_start)`; a
            # run resumed from an interim checkpoint continues its chunk.
            chunk_start = step
            if interim_state is not None:
                start_of = interim_state["chunk_start"]
                end_of = min(
                    checkpoint_every_steps
                    * (start_of // checkpoint_every_steps + 1),
                    total_steps,
                )
                if start_of <= step < end_of:
                    chunk_start = start_of
                interim_state = None
            chunk = chunk_start // checkpoint_every_steps
            chunk_end = min(checkpoint_every_steps * (chunk + 1), total_steps)
            saver = interruption.InterimSaver(
                checkpoint,
                checkpoint_dir,
                chunk_start,
                chunk_end,
                elapsed,
                every_seconds,
                batches_per_step,
                stop,
            )
            start = time.time()
            history = model.fit(
                interruption.dataset_from(
                    train_dataset_fn, chunk_start, step, batches_per_step
                ),
                initial_epoch=chunk,
                epochs=chunk + 1,
                steps_per_epoch=(chunk_end - step) * batches_per_step,
                callbacks=[logger, progress, *callbacks, saver],
                # Keras' bar would count the chunk's steps: `progress`
                # shows the run's.
                verbose=0,
                shuffle=False,  # The dataset shuffles itself, by seed.
            )
            elapsed += time.time() - start
            step = int(model.optimizer.iterations.numpy())
            stopped = stop is not None and stop.signum is not None
            if stopped and step < chunk_end:  # Inside the chunk.
                if chief:
                    interruption.write_interim(
                        checkpoint, checkpoint_dir, step, chunk_start, elapsed
                    )
                stop_if_asked()
            manager.save(checkpoint_number=step)
            if chief:
                interruption.remove_interim(checkpoint_dir)
            result = _end_of_chunk(
                model,
                history,
                step,
                elapsed,
                validation_dataset=validation_dataset,
                validated=validation_dataset is not None
                and (step % validate_every_steps == 0 or step >= total_steps),
                model_dir=model_dir,
                history_path=history_path,
                chief=chief,
                plot_metrics=plot_metrics,
            )
            logging.info("chunk %d/%d done: %s", chunk + 1, num_chunks, result)
        stop_if_asked()

    if not chief:
        shutil.rmtree(os.path.dirname(checkpoint_dir), ignore_errors=True)
    if writer is not None:
        writer.flush()
    return result


def _plot_history(model_dir, history_path, keys):
    """`model_dir/valid_<name>.png` for each history key in `keys`."""
    from bertkd_tf import plots

    for key in keys:
        steps, values = plots.history_curve(history_path, key)
        if not steps:
            continue
        name = key[len("val_") :] if key.startswith("val_") else key
        try:
            plots.write_curves_png(
                os.path.join(model_dir, f"valid_{name}.png"),
                {
                    os.path.basename(os.path.normpath(model_dir)): (
                        steps,
                        values,
                    )
                },
                "training step",
                f"validation {name}",
            )
        except Exception as error:  # noqa: BLE001 (a plot never stops a run)
            logging.warning("Could not plot %s: %s", key, _first_line(error))


def save_final(model, directory, config_file, weights_file):
    """Writes a trained model for inference: its Keras config as JSON and
    its weights (`.weights.h5`, with a SHA-256 sidecar: `write_weights`),
    without optimizer state, each to a temporary name first and then
    renamed, so a crash never leaves a half-written file under the final
    name.

    Under a multi-worker strategy only the chief writes.
    """
    if not _is_chief(model.distribute_strategy):
        return
    write_text_atomic(
        os.path.join(directory, config_file),
        json.dumps(keras.saving.serialize_keras_object(model)),
    )
    write_weights(model, os.path.join(directory, weights_file))


def write_weights(model, path):
    """Writes `model`'s weights (no optimizer state) to `path`, a
    `.weights.h5` file, atomically, and records its SHA-256 in
    `path + ".sha256"` (`bertkd_tf.checksums`); returns the digest.

    Order: the complete file under a temporary name, its digest, the old
    sidecar removed, the rename, the new sidecar. A crash at any point
    leaves the old file and sidecar, or the new file without a sidecar
    (loaded with a warning), never a file that fails its check.
    """
    from keras.src.saving import saving_lib

    directory, name = os.path.split(path)
    temporary = os.path.join(directory, "tmp-" + name)
    saving_lib.save_weights_only(
        model, temporary, objects_to_skip=_optimizer_of(model)
    )
    digest = checksums.sha256_of_file(temporary)
    sidecar = checksums.checksum_path(path)
    if os.path.exists(sidecar):
        os.remove(sidecar)
    os.replace(temporary, path)
    checksums.write_checksum(path, digest)
    return digest


def load_final_weights(model, path, remedy=None):
    """Loads weights written by `save_final` / `write_weights` (optimizer
    state not expected, even when `model` is compiled), after checking the
    file against its recorded SHA-256 (a file without one loads with a
    warning). A file written with `bertkd_tf.layers`' fast layers on loads
    into a model with them off, and the reverse (`loading_layout`).

    Args:
        model: the built model to load into.
        path: the `.weights.h5` file.
        remedy: what to tell the user to do when the file is missing or
            damaged, e.g. "re-run `bertkd --mode=train_teacher` with the same
            settings"; a general hint by default.

    Raises:
        MissingArtifactError: no file at `path`.
        ArtifactError: the file is damaged (its digest differs from the
            recorded one, or it cannot be read as weights of `model`).
    """
    from keras.src.saving import saving_lib

    checksums.verify_file(path, remedy)
    try:
        # The file may have been written with the fast layers on or off
        # (bertkd_tf.layers): its class-named entries decide for the load.
        with loading_layout(model, path):
            saving_lib.load_weights_only(
                model, path, objects_to_skip=_optimizer_of(model)
            )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ArtifactError(
            f"Cannot load the weights in {path}: {_first_line(error)}. The "
            "file is damaged (truncated?) or belongs to another model "
            "configuration: "
            + (
                remedy
                or "re-run the stage that wrote it with the same settings"
            )
            + "."
        ) from error


def _optimizer_of(model):
    """`[optimizer]` of a compiled model, else None: what `save_final` and
    `load_final_weights` leave out. Keras' own `save_weights` stores a
    compiled model's optimizer (three times the model's size with Adam);
    inference needs none."""
    return [model.optimizer] if getattr(model, "optimizer", None) else None
