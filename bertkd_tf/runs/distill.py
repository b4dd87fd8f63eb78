"""`distill`: train the student, with the teacher's soft targets or without.

`distillation_weight > 0` trains the distilled student of the paper
(`(1 - w) * label-smoothed xent + w * top-K KD`, docs/METHOD.md §3) on the
teacher targets dumped by `dump_teacher` (`teacher_targets='offline'`, the
default) or computed inside each train step by the frozen C-MLM teacher of
`teacher_dir` (`teacher_targets='online'`: the circular masks of the batch
in one teacher forward pass, top-K at each position, the function the dump
uses, `models.online_teacher.CircularMaskTeacher`; no dump needed, each
step pays the teacher's forward pass over P copies of the batch);
`distillation_weight = 0` trains the plain Transformer baseline (no targets
needed).

Reads `WORK_DIR/vocab/` (from `prepare`), the task's text pairs and, when
distilling, the teacher targets under `WORK_DIR/targets/`: streamed from
the shards (`stream_targets=True`: `teacher_targets.StreamingTargets`,
memory bounded by a few shards) or loaded into memory and joined with the
pairs by id (`stream_targets=False`, a version-1 dump, or a custom
`teacher_targets_fn`). Writes into `WORK_DIR/<model_dir>/` (`student/` when
distilling, `baseline/` otherwise, unless `model_dir` is given):

- `checkpoints/` (model + optimizer every `checkpoint_every_steps`, the last
  `keep_checkpoints` kept): the same command after a crash or kill -9
  resumes at the last checkpoint with the step count, optimizer state and
  data order of an uninterrupted run;
- `logs/` (TensorBoard: loss, xent, kd, learning rate; validation loss),
  `history.jsonl` (one record per chunk);
- the final student for `evaluate`/`export`: `student_config.json`
  (`keras.saving.serialize_keras_object` of the `TransformerSeq2Seq`) and
  `final.weights.h5`. Load it with
  `bertkd_tf.artifacts.load_student(WORK_DIR/student)`.
  `tools/average_checkpoints.py` writes an averaged weights file next to it.

Optimisation (docs/METHOD.md §4): Adam(0.9, 0.98, eps 1e-9) (as `FusedAdam`),
the noam schedule `learning_rate * d^-0.5 * min(step^-0.5, step * warmup^-1.5)`,
token-budget batches (`tokens_per_batch` is the global budget of one batch; with
`gradient_accumulation_steps = n` an update sees n batches),
`mixed_precision` (`mixed_bfloat16`; logits and losses stay float32) and
`jit_compile` (XLA) as options. Validation reports the label-smoothed
cross-entropy (`val_loss = val_xent`, comparable between baseline and
student) every `validate_every_steps`.
"""

import functools
import os

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from bertkd_tf import locking

# F401: the layout constants and the student's save/load are re-exported
# from their former home here; `bertkd_tf.artifacts` owns them.
from bertkd_tf.artifacts import (  # noqa: F401
    BASELINE_DIR,
    FINAL_WEIGHTS,
    STUDENT_CONFIG,
    STUDENT_DIR,
    TARGETS_DIR,
    TEACHER_CONFIG,
    TEACHER_DIR,
    VOCAB_DIR,
    check_teacher_vocabulary,
    load_student,
    load_teacher,
    load_vocabulary,
    save_student,
    student_from_config,
    teacher_fingerprint,
)
from bertkd_tf.data import teacher_targets
from bertkd_tf.data.batching import (
    TokenBudgetBatcher,
    default_bucket_boundaries,
)
from bertkd_tf.data.student_features import (
    add_teacher_inputs,
    student_dataset,
)
from bertkd_tf.data.tokenized_pairs import TokenizedPairs
from bertkd_tf.errors import ConfigError, MissingArtifactError
from bertkd_tf.models.online_teacher import CircularMaskTeacher
from bertkd_tf.models.transformer_backbone import TransformerSeq2SeqBackbone
from bertkd_tf.models.transformer_seq2seq import TransformerSeq2Seq
from bertkd_tf.training import trainer
from bertkd_tf.training.distillation_model import DistillationModel
from bertkd_tf.training.fused_adam import FusedAdam
from bertkd_tf.training.schedules import NoamSchedule
from bertkd_tf.training.strategy import get_strategy


def build_student(vocabulary_size, backbone_fn=None, dtype=None):
    """A `TransformerSeq2Seq` over `backbone_fn(vocabulary_size, dtype)`.

    `backbone_fn` defaults to `TransformerSeq2SeqBackbone` (gin binds its
    size arguments in `gin/models/transformer_*.gin`).
    """
    backbone_fn = backbone_fn or TransformerSeq2SeqBackbone
    backbone = backbone_fn(vocabulary_size=vocabulary_size, dtype=dtype)
    return TransformerSeq2Seq(backbone=backbone)


def _expected_teacher(teacher_dir, targets_dir):
    """The fingerprint of the teacher in `teacher_dir`, or None (warned)
    when it holds no finished teacher."""
    fingerprint = None
    if teacher_dir is not None:
        if tf.io.gfile.isdir(teacher_dir):
            try:
                fingerprint = teacher_fingerprint(teacher_dir)
            except FileNotFoundError:
                logging.warning(
                    "distill: %s holds no finished teacher: cannot check "
                    "that the targets in %s come from it.",
                    teacher_dir,
                    targets_dir,
                )
        else:
            logging.warning(
                "distill: no teacher in %s: cannot check which teacher the "
                "targets in %s come from.",
                teacher_dir,
                targets_dir,
            )
    return fingerprint


def _default_teacher_targets_fn(
    dataset,
    targets_dir,
    split,
    top_k,
    *,
    vocabulary=None,
    train_pairs=None,
    teacher_dir=None,
):
    """`attach_teacher_targets`, refusing (`ArtifactError`) targets dumped
    with another task vocabulary than `vocabulary`, from other pairs than
    `train_pairs` (the `TokenizedPairs` of `dataset`), or from another
    teacher than the one saved in `teacher_dir` (checked when it holds a
    finished teacher)."""
    return teacher_targets.attach_teacher_targets(
        dataset,
        targets_dir,
        split=split,
        top_k=top_k,
        vocabulary=vocabulary,
        teacher_fingerprint=_expected_teacher(teacher_dir, targets_dir),
        teacher_dir=teacher_dir,
        data_fingerprint=(
            None
            if train_pairs is None
            else teacher_targets.data_fingerprint(train_pairs)
        ),
    )


def _open_streaming_targets(
    targets_dir, split, top_k, *, vocabulary, train_pairs, teacher_dir
):
    """`StreamingTargets.open` with the checks of
    `_default_teacher_targets_fn` (vocabulary, teacher, data, split, every
    shard's size and sha256), or None, with a warning, when the dump cannot
    be streamed (a version-1 dump: read in memory as before)."""
    problem = teacher_targets.stream_problem(targets_dir)
    if problem is not None:
        logging.warning(
            "distill: the teacher targets in %s cannot be streamed (%s): "
            "reading them in memory and joining them with the pairs by id "
            "instead. Dump the teacher again (into a new output_dir) to "
            "stream them.",
            targets_dir,
            problem,
        )
        return None
    return teacher_targets.StreamingTargets.open(
        targets_dir,
        top_k,
        vocabulary=vocabulary,
        teacher_fingerprint=_expected_teacher(teacher_dir, targets_dir),
        teacher_dir=teacher_dir,
        data_fingerprint=teacher_targets.data_fingerprint(train_pairs),
        split=split,
    )


def input_context(distribution):
    """This process's share of the input under `distribution`: a
    `tf.distribute.InputContext` with its index among the workers of the
    cluster (chief first) and their number; one pipeline without a cluster
    and under `TPUStrategy` (one client process feeds every TPU host).

    Streamed targets are sharded by it explicitly (each worker reads its own
    shard files) rather than by `experimental_distribute_dataset`'s FILE
    auto-sharding, which cannot reach the files through the token-budget
    batching (TensorFlow 2.21 stops at `group_by_window`'s captured
    tensors: "Did not find a shardable source").
    """
    from tensorflow.python.distribute import multi_worker_util

    replicas = distribution.num_replicas_in_sync
    resolver = getattr(distribution, "cluster_resolver", None)
    spec = resolver.cluster_spec() if resolver is not None else None
    if (
        isinstance(distribution, tf.distribute.TPUStrategy)
        or spec is None
        or not spec.as_dict()
        or resolver.task_type not in ("chief", "worker")
    ):
        return tf.distribute.InputContext(1, 0, replicas)
    return tf.distribute.InputContext(
        multi_worker_util.worker_count(spec, resolver.task_type),
        multi_worker_util.id_in_cluster(
            spec, resolver.task_type, resolver.task_id
        ),
        replicas,
    )


TEACHER_TARGETS = ("offline", "online")


def _check_teacher_targets(teacher_targets, distillation_weight, jit_compile):
    """Whether the targets are computed online; refuses contradictory
    settings with one paragraph (`ConfigError`)."""
    if teacher_targets not in TEACHER_TARGETS:
        raise ConfigError(
            f"distill.run.teacher_targets (gin macro TEACHER_TARGETS) must "
            f"be one of {TEACHER_TARGETS}; got {teacher_targets!r}. "
            "'offline' reads dump_teacher's targets, 'online' computes them "
            "in each train step from the teacher in distill.run.teacher_dir."
        )
    if teacher_targets != "online":
        return False
    if distillation_weight <= 0:
        raise ConfigError(
            "TEACHER_TARGETS='online' with DISTILLATION_WEIGHT=0: the "
            "baseline never uses the teacher, so it would be loaded and run "
            "for nothing. Set DISTILLATION_WEIGHT > 0 to distill online, or "
            "TEACHER_TARGETS='offline' for the baseline."
        )
    if jit_compile:
        raise ConfigError(
            "TEACHER_TARGETS='online' cannot run with JIT_COMPILE=True: the "
            "circular masks make as many teacher copies as the batch's "
            "target lengths call for (dynamic shapes, which XLA does not "
            "compile). Set JIT_COMPILE=False, or dump the targets "
            "(--mode=dump_teacher) and train offline with XLA."
        )
    return True


def _online_teacher_dir(work_dir, teacher_dir):
    """The trained C-MLM teacher's directory, or a one-paragraph
    `MissingArtifactError` saying how to get one."""
    directory = os.path.join(work_dir, teacher_dir or TEACHER_DIR)
    if not tf.io.gfile.exists(os.path.join(directory, TEACHER_CONFIG)):
        raise MissingArtifactError(
            f"TEACHER_TARGETS='online' needs a trained C-MLM teacher, and "
            f"{directory!r} holds none (no {TEACHER_CONFIG}): train one "
            "first (--mode=train_teacher, into WORK_DIR/teacher), or point "
            "distill.run.teacher_dir at a teacher directory (relative to "
            "WORK_DIR or absolute). A seq2seq teacher (a baseline) cannot "
            "run online: dump its targets with dump_teacher.run.teacher_kind"
            "='seq2seq' and train offline."
        )
    return directory


def _load_online_teacher(
    teacher_dir, vocab, work_dir, train_pairs, *, num_passes, top_k, dtype
):
    """The frozen `CircularMaskTeacher` over the teacher in `teacher_dir`,
    refusing a teacher of another task vocabulary or one too short for the
    training pairs."""
    teacher = load_teacher(teacher_dir, dtype=dtype)
    check_teacher_vocabulary(teacher, vocab, teacher_dir, work_dir)
    if top_k > teacher.vocabulary_size:
        raise ConfigError(
            f"top_k={top_k} exceeds the task vocabulary size "
            f"{teacher.vocabulary_size}."
        )
    if int(num_passes) < 1:
        raise ConfigError(f"num_passes must be >= 1; got {num_passes!r}.")
    source_lengths, target_lengths = train_pairs.lengths()
    longest = int(np.max(source_lengths + target_lengths)) + 3
    teacher_max = int(teacher.backbone.max_sequence_length)
    if longest > teacher_max:
        raise ConfigError(
            f"The longest training pair packs to {longest} teacher tokens "
            f"([CLS] src [SEP] tgt [SEP]), more than the teacher's "
            f"max_sequence_length={teacher_max} in {teacher_dir!r}: the "
            "teacher would cut it and its rows would not match the labels. "
            "Lower the task's max_source_length/max_target_length."
        )
    logging.info(
        "distill: online targets from the teacher in %s (fingerprint %s), "
        "P=%d, K=%d",
        teacher_dir,
        teacher_fingerprint(teacher_dir)[:12],
        num_passes,
        top_k,
    )
    return CircularMaskTeacher(
        teacher, num_passes=int(num_passes), top_k=int(top_k)
    )


def make_datasets(
    train_pairs,
    valid_pairs,
    batcher,
    bos_id,
    eos_id,
    attach_targets=None,
    train_examples_fn=None,
    teacher_inputs=False,
):
    """`(train_dataset_fn, valid_dataset)` for `fit_resumable`.

    `train_dataset_fn(seed_offset)` is infinite; pass `e` over the data is
    shuffled with seed `batcher.seed + seed_offset` (reshuffled each pass).
    `attach_targets(dataset)` adds the teacher targets to the training
    examples (offline distillation); `teacher_inputs=True` adds
    `x["teacher_inputs"]` (the pairs' task ids) to the training batches
    (online distillation); validation uses the labels only.
    `train_examples_fn(seed)`, when given, is the infinite, shuffled
    training examples instead (`StreamingTargets.dataset`: examples with
    their targets, streamed; `train_pairs` and `attach_targets` are then
    not used for training).
    """
    if train_examples_fn is None:
        base = train_pairs.to_dataset()
        if attach_targets is not None:
            base = attach_targets(base)
        size = len(train_pairs)

        def train_examples_fn(seed):
            return base.shuffle(
                size, seed=seed, reshuffle_each_iteration=True
            ).repeat()

    def train_dataset_fn(seed_offset):
        examples = train_examples_fn(batcher.seed + int(seed_offset))
        batches = student_dataset(
            examples, batcher, bos_id, eos_id, seed_offset=seed_offset
        )
        if teacher_inputs:
            batches = batches.map(
                add_teacher_inputs, num_parallel_calls=tf.data.AUTOTUNE
            )
        return batches.prefetch(tf.data.AUTOTUNE)

    valid_dataset = None
    if valid_pairs is not None and len(valid_pairs):
        valid_batcher = TokenBudgetBatcher(
            batcher.tokens_per_batch,
            batcher.bucket_boundaries,
            num_replicas=batcher.num_replicas,
            drop_remainder=False,
        )
        valid_dataset = student_dataset(
            valid_pairs.to_dataset(), valid_batcher, bos_id, eos_id
        ).cache()
        batches = sum(1 for _ in valid_dataset)
        valid_dataset = valid_dataset.apply(
            tf.data.experimental.assert_cardinality(batches)
        )
    return train_dataset_fn, valid_dataset


def compile_student_model(
    model,
    *,
    learning_rate,
    hidden_dim,
    warmup_steps,
    adam_beta_1=0.9,
    adam_beta_2=0.98,
    adam_epsilon=1e-9,
    clipnorm=None,
    gradient_accumulation_steps=None,
    jit_compile=False,
):
    """Compiles a `DistillationModel` (call inside the strategy scope)."""
    optimizer = FusedAdam(
        learning_rate=NoamSchedule(learning_rate, hidden_dim, warmup_steps),
        beta_1=adam_beta_1,
        beta_2=adam_beta_2,
        epsilon=adam_epsilon,
        global_clipnorm=clipnorm,
        gradient_accumulation_steps=gradient_accumulation_steps,
    )
    model.compile(optimizer=optimizer, jit_compile=jit_compile)
    return model


def run(
    task,
    work_dir,
    backbone_fn=None,
    model_dir=None,
    distillation_weight=0.5,
    temperature=10.0,
    top_k=8,
    label_smoothing=0.1,
    distillation_form="paper",
    teacher_targets="offline",
    num_passes=7,
    targets_dir=None,
    teacher_targets_fn=None,
    teacher_dir=None,
    learning_rate=2.0,
    warmup_steps=8000,
    total_steps=100_000,
    tokens_per_batch=6144,
    gradient_accumulation_steps=None,
    adam_beta_1=0.9,
    adam_beta_2=0.98,
    adam_epsilon=1e-9,
    clipnorm=None,
    checkpoint_every_steps=1000,
    validate_every_steps=None,
    keep_checkpoints=5,
    interim_checkpoint_minutes=10.0,
    max_valid_pairs=None,
    strategy="default",
    tpu_address=None,
    logical_devices=None,
    mixed_precision=False,
    jit_compile=False,
    fuse_output_layer=True,
    stream_targets=True,
    stream_shuffle_buffer=teacher_targets.STREAM_SHUFFLE_BUFFER,
    seed=0,
    verbose="auto",
):
    """Trains the student (or the baseline); returns the last history record.

    Args:
        task: a `Task` (data, languages, splits, length limits).
        work_dir: the pipeline's work directory (`vocab/`, `targets/` in;
            `student/` or `baseline/` out).
        backbone_fn: `(vocabulary_size, dtype) -> TransformerSeq2SeqBackbone`
            (gin: `@transformer_backbone.TransformerSeq2SeqBackbone` with its
            sizes bound in `gin/models/`).
        model_dir: output directory name under `work_dir`; default
            `student` when `distillation_weight > 0`, else `baseline`.
        distillation_weight: the weight of the KD term (paper's alpha).
        temperature: teacher temperature T.
        top_k: teacher logits used per position (K; the dump may hold more).
        label_smoothing: smoothing of the cross-entropy term.
        distillation_form: `"paper"` or `"hinton"`.
        teacher_targets: `"offline"` (read `dump_teacher`'s targets from
            `targets_dir`) or `"online"` (load the C-MLM teacher of
            `teacher_dir`, frozen, and compute its top-K targets inside
            each train step with `num_passes` circular masks; not with
            `jit_compile`). The student's batches then carry the pairs'
            task ids (`x["teacher_inputs"]`); checkpoints hold the frozen
            teacher too, so a resumed run goes on with the teacher it
            started with.
        num_passes: P, circular-mask copies per pair (online only; the
            dump's own setting offline).
        targets_dir: the teacher targets (default `work_dir/targets`; a
            relative path is under `work_dir`).
        teacher_targets_fn: `(dataset, targets_dir, split, top_k) ->
            dataset` adding `teacher_ids` / `teacher_logits` (`[T + 1, K]`,
            aligned with `target + [EOS]`) to `{"id", "source_ids",
            "target_ids"}` examples; default
            `bertkd_tf.data.teacher_targets.attach_teacher_targets`,
            which refuses targets dumped with another task vocabulary, from
            other training pairs or from another teacher than the one in
            `teacher_dir`.
        teacher_dir: offline, the teacher the default targets must come
            from (default `work_dir/teacher`, checked when it holds a
            finished teacher; `'baseline'` for targets dumped from a
            seq2seq teacher); online, the trained C-MLM teacher to load
            (default `work_dir/teacher`). A relative path is under
            `work_dir`.
        learning_rate: noam scale factor (paper: 1 baseline, 2 distilled).
        warmup_steps: noam warm-up steps.
        total_steps: optimizer updates to train for.
        tokens_per_batch: global token budget of one batch.
        gradient_accumulation_steps: batches per update (None: 1).
        adam_beta_1, adam_beta_2, adam_epsilon: Adam settings.
        clipnorm: optional global gradient-norm clip.
        checkpoint_every_steps: checkpoint (and chunk) period.
        validate_every_steps: validation period (multiple of the above).
        keep_checkpoints: checkpoints kept (average them with
            `tools/average_checkpoints.py`).
        interim_checkpoint_minutes: inside a chunk, an interim checkpoint
            every this many minutes of training (None or 0: none); SIGTERM /
            Ctrl-C stop the run with one (`training.interruption`).
        max_valid_pairs: validate on the first N valid pairs only.
        strategy: `default | mirrored | multi_worker | tpu`.
        tpu_address: TPU name/address for `strategy="tpu"`.
        logical_devices: split the CPU into N logical devices first (gin
            `LOGICAL_DEVICES`): `mirrored` then runs N replicas on a CPU.
        mixed_precision: train in `mixed_bfloat16`.
        jit_compile: compile the train step with XLA.
        fuse_output_layer: compute the student's tied output layer inside
            the loss (`DistillationModel`; False: logits, then the losses).
        stream_targets: stream the training examples with their targets
            from the dump's shards (`teacher_targets.StreamingTargets`:
            memory bounded by a few shards, whatever the dump's size; the
            shards' order is seeded per pass, then examples are shuffled in
            a buffer of `stream_shuffle_buffer`) instead of loading all
            targets into memory and joining them with the pairs by id (one
            uniform shuffle of all pairs per pass). Same checks either way;
            other batches (docs/ARCHITECTURE.md). A version-1 dump, or a
            custom `teacher_targets_fn`, is read in memory (warned).
        stream_shuffle_buffer: examples in the streaming shuffle buffer.
        seed: seed of initialisation and data order.
        verbose: Keras progress bar setting.
    """
    if gradient_accumulation_steps in (0, 1):
        gradient_accumulation_steps = None
    online = _check_teacher_targets(
        teacher_targets, distillation_weight, jit_compile
    )
    keras.utils.set_random_seed(seed)
    distribution = get_strategy(
        strategy, tpu_address=tpu_address, logical_devices=logical_devices
    )
    replicas = distribution.num_replicas_in_sync
    distilling = distillation_weight > 0
    if model_dir is None:
        model_dir = STUDENT_DIR if distilling else BASELINE_DIR
    output_dir = os.path.join(work_dir, model_dir)
    tf.io.gfile.makedirs(output_dir)
    _lock = locking.hold(output_dir)  # One writer (LockedError otherwise).

    vocab = load_vocabulary(work_dir)
    train_pairs = TokenizedPairs.from_pairs(
        task.read("train"),
        vocab,
        task.max_source_length,
        task.max_target_length,
    )
    valid_pairs = None
    if task.valid_split:
        valid_pairs = TokenizedPairs.from_pairs(
            task.read("valid", max_pairs=max_valid_pairs),
            vocab,
            task.max_source_length,
            task.max_target_length,
        )
    attach_targets = train_examples_fn = stream = None
    online_teacher_dir = None
    if online:
        online_teacher_dir = _online_teacher_dir(work_dir, teacher_dir)
    elif distilling:
        # Relative to work_dir unless absolute.
        targets_dir = os.path.join(work_dir, targets_dir or TARGETS_DIR)
        teacher_dir = os.path.join(work_dir, teacher_dir or TEACHER_DIR)
        if stream_targets and teacher_targets_fn is not None:
            logging.warning(
                "distill: stream_targets=True ignored: a teacher_targets_fn "
                "is given; it attaches the targets in memory."
            )
        elif stream_targets:
            stream = _open_streaming_targets(
                targets_dir,
                "train",
                top_k,
                vocabulary=vocab,
                train_pairs=train_pairs,
                teacher_dir=teacher_dir,
            )
        if stream is not None:
            context = input_context(distribution)

            def train_examples_fn(seed):
                return stream.dataset(
                    seed=seed,
                    repeat=True,
                    shuffle_buffer=stream_shuffle_buffer,
                    input_context=context,
                )

        else:
            targets_fn = teacher_targets_fn or functools.partial(
                _default_teacher_targets_fn,
                vocabulary=vocab,
                train_pairs=train_pairs,
                teacher_dir=teacher_dir,
            )

            def attach_targets(dataset):
                return targets_fn(dataset, targets_dir, "train", top_k)

    # +1: EOS on the encoder side, BOS/EOS on the decoder side.
    longest = max(task.max_source_length, task.max_target_length) + 1
    batcher = TokenBudgetBatcher(
        tokens_per_batch,
        default_bucket_boundaries(longest),
        num_replicas=replicas,
        seed=seed,
    )
    train_dataset_fn, valid_dataset = make_datasets(
        train_pairs,
        valid_pairs,
        batcher,
        vocab.bos_id,
        vocab.eos_id,
        attach_targets=attach_targets,
        train_examples_fn=train_examples_fn,
        teacher_inputs=online,
    )

    with distribution.scope():
        student = build_student(
            vocab.size,
            backbone_fn=backbone_fn,
            dtype="mixed_bfloat16" if mixed_precision else None,
        )
        teacher = None
        if online:
            teacher = _load_online_teacher(
                online_teacher_dir,
                vocab,
                work_dir,
                train_pairs,
                num_passes=num_passes,
                top_k=top_k,
                dtype="mixed_bfloat16" if mixed_precision else None,
            )
        model = DistillationModel(
            student,
            distillation_weight=distillation_weight,
            temperature=temperature,
            label_smoothing=label_smoothing,
            distillation_form=distillation_form,
            teacher=teacher,
            top_k=top_k,
            fuse_output_layer=fuse_output_layer,
        )
        compile_student_model(
            model,
            learning_rate=learning_rate,
            hidden_dim=student.backbone.hidden_dim,
            warmup_steps=warmup_steps,
            adam_beta_1=adam_beta_1,
            adam_beta_2=adam_beta_2,
            adam_epsilon=adam_epsilon,
            clipnorm=clipnorm,
            gradient_accumulation_steps=gradient_accumulation_steps,
            jit_compile=jit_compile,
        )
        x, _, _ = next(iter(train_dataset_fn(0).take(1)))
        model(x)  # Build.
    logging.info(
        "%s: %d parameters, task vocabulary %d, %d training pairs, "
        "distillation_weight %s, %d replica(s)",
        model_dir,
        student.count_params(),
        vocab.size,
        len(train_pairs),
        distillation_weight,
        replicas,
    )
    result = trainer.fit_resumable(
        model,
        train_dataset_fn,
        model_dir=output_dir,
        total_steps=total_steps,
        checkpoint_every_steps=checkpoint_every_steps,
        validation_dataset=valid_dataset,
        validate_every_steps=validate_every_steps,
        keep_checkpoints=keep_checkpoints,
        verbose=verbose,
        interim_checkpoint_seconds=(
            60.0 * interim_checkpoint_minutes
            if interim_checkpoint_minutes
            else None
        ),
    )
    save_student(student, output_dir)
    logging.info("student saved to %s: %s", output_dir, result)
    return {**result, "output_dir": output_dir}
