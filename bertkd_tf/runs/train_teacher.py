"""`train_teacher`: fine-tune BERT as a conditional masked LM (C-MLM).

Reads `WORK_DIR/vocab/` (from `prepare`) and the text pairs, trains a
`CMLMTeacher` through `fit_resumable` and writes, under `WORK_DIR/teacher/`:

- `checkpoints/` (model + optimizer, every `checkpoint_every_steps`, the last
  `keep_checkpoints` kept); the same command after a crash resumes there;
- `logs/` (TensorBoard), `history.jsonl` (step, wall time, training and
  validation loss/accuracy per chunk), `valid_accuracy.png` (the validation
  accuracy over steps, redrawn at each validation);
- the final teacher, for `dump_teacher`: `final.weights.h5` plus
  `teacher_config.json` (`keras.saving.serialize_keras_object` of the
  teacher). Load it with
  `bertkd_tf.artifacts.load_teacher(WORK_DIR/teacher)`.

Validation: masked-token loss (`token_loss`) and accuracy (`accuracy`) over
the valid split, masks drawn with the fixed `valid_mask_seed`, so numbers
are comparable across runs and steps.

Batches: pairs are cut to fit `max_sequence_length` (longer side first),
bucketed by packed length (a bucket every `bucket_step` tokens) with a
token budget (`TokenBudgetBatcher`), and
masked per batch by `CMLMPreprocessor`. Every pass over the data draws new
masks (the pass number is folded into the mask seed) and a new order.
"""

import os

import keras
import tensorflow as tf
from absl import logging

from bertkd_tf import locking

# F401: FINAL_WEIGHTS, TEACHER_CONFIG and load_teacher are re-exported from
# their former home here; `bertkd_tf.artifacts` owns them.
from bertkd_tf.artifacts import (  # noqa: F401
    FINAL_WEIGHTS,
    TEACHER_CONFIG,
    TEACHER_DIR,
    load_teacher,
    load_vocabulary,
    save_teacher,
)
from bertkd_tf.data.batching import (
    TokenBudgetBatcher,
    default_bucket_boundaries,
)
from bertkd_tf.data.tokenized_pairs import TokenizedPairs
from bertkd_tf.losses.token_cross_entropy import TokenCrossEntropy
from bertkd_tf.models.cmlm_preprocessor import CMLMPreprocessor
from bertkd_tf.training import trainer
from bertkd_tf.training.fused_adam import FusedAdam
from bertkd_tf.training.schedules import LinearWarmupDecay
from bertkd_tf.training.strategy import get_strategy

# Names (substrings) of variables without weight decay: biases, LayerNorm.
NO_DECAY = ["bias", "gamma", "beta"]
# Distinct passes over the data within one chunk of training.
_PASSES_PER_CHUNK = 1_000_003


def compile_teacher(
    teacher,
    *,
    peak_learning_rate,
    warmup_steps,
    total_steps,
    weight_decay=0.01,
    clipnorm=1.0,
    gradient_accumulation_steps=None,
    jit_compile=False,
):
    """Compiles `teacher` for C-MLM training (call inside strategy scope).

    AdamW as `FusedAdam(weight_decay=...)` (one update kernel a variable;
    no decay on biases and LayerNorm), linear warm-up then linear
    decay to zero, gradients clipped to global norm `clipnorm` (as PyTorch's
    `clip_grad_norm_` in the reference); masked-token cross-entropy averaged
    over the real mask slots; weighted `accuracy` and `token_loss` metrics.

    `gradient_accumulation_steps = n` (None, 0 or 1: none) makes one update
    of the mean gradient of `n` batches (keras' optimizer argument; the
    schedule and `iterations` count updates); `jit_compile` compiles the
    train step with XLA.
    """
    if gradient_accumulation_steps in (0, 1):
        gradient_accumulation_steps = None
    optimizer = FusedAdam(
        learning_rate=LinearWarmupDecay(
            peak_learning_rate, warmup_steps, total_steps
        ),
        weight_decay=weight_decay,
        beta_1=0.9,
        beta_2=0.999,
        epsilon=1e-6,
        global_clipnorm=clipnorm,
        gradient_accumulation_steps=gradient_accumulation_steps,
    )
    optimizer.exclude_from_weight_decay(var_names=NO_DECAY)
    teacher.compile(
        optimizer=optimizer,
        loss=TokenCrossEntropy(label_smoothing=0.0),
        weighted_metrics=[
            keras.metrics.SparseCategoricalAccuracy(name="accuracy"),
            keras.metrics.SparseCategoricalCrossentropy(
                from_logits=True, name="token_loss"
            ),
        ],
        jit_compile=bool(jit_compile),
    )
    return teacher


def make_datasets(
    preprocessor,
    batcher,
    train_pairs,
    valid_pairs=None,
    valid_preprocessor=None,
):
    """`(train_dataset_fn, valid_dataset)` for `fit_resumable`.

    `train_dataset_fn(seed_offset)` is infinite: passes over the data are
    shuffled with seed `batcher.seed + seed_offset` and pass `e` is masked
    with mask round (`epoch`) `seed_offset * 1_000_003 + e`.
    """

    def truncate(example):
        source, target = preprocessor.truncate(
            example["source_ids"], example["target_ids"]
        )
        return {**example, "source_ids": source, "target_ids": target}

    def packed_length(example):
        return (
            tf.shape(example["source_ids"])[0]
            + tf.shape(example["target_ids"])[0]
            + 3
        )

    base = train_pairs.to_dataset().map(truncate)
    size = len(train_pairs)

    def train_dataset_fn(seed_offset):
        round_id = int(seed_offset) * _PASSES_PER_CHUNK

        def tag_pass(index, example):
            return {**example, "epoch": round_id + index // size}

        # Reshuffled every pass; a pass is `size` consecutive examples.
        passes = (
            base.shuffle(
                size,
                seed=batcher.seed + int(seed_offset),
                reshuffle_each_iteration=True,
            )
            .repeat()
            .enumerate()
            .map(tag_pass)
        )
        batches = batcher(passes, packed_length, seed_offset=seed_offset)
        return batches.map(
            preprocessor, num_parallel_calls=tf.data.AUTOTUNE
        ).prefetch(tf.data.AUTOTUNE)

    valid_dataset = None
    if valid_pairs is not None:
        valid_batcher = TokenBudgetBatcher(
            batcher.tokens_per_batch,
            batcher.bucket_boundaries,
            num_replicas=batcher.num_replicas,
            drop_remainder=False,
        )
        valid_dataset = (
            valid_batcher(valid_pairs.to_dataset().map(truncate), packed_length)
            .map(valid_preprocessor or preprocessor)
            .cache()
        )
        # One pass fills the cache and gives Keras the number of batches.
        batches = sum(1 for _ in valid_dataset)
        valid_dataset = valid_dataset.apply(
            tf.data.experimental.assert_cardinality(batches)
        )
    return train_dataset_fn, valid_dataset


def run(
    *,
    task,
    work_dir,
    teacher_fn,
    max_sequence_length=256,
    max_predictions=None,
    mask_probability=0.15,
    tokens_per_batch=16384,
    bucket_step=2,
    total_steps=100_000,
    warmup_fraction=0.05,
    peak_learning_rate=5e-5,
    weight_decay=0.01,
    clipnorm=1.0,
    gradient_accumulation_steps=None,
    jit_compile=False,
    checkpoint_every_steps=1000,
    validate_every_steps=None,
    keep_checkpoints=3,
    interim_checkpoint_minutes=10.0,
    max_valid_pairs=None,
    strategy="default",
    tpu_address=None,
    logical_devices=None,
    mixed_precision=False,
    seed=0,
    valid_mask_seed=12345,
    verbose="auto",
):
    """Fine-tunes the C-MLM teacher.

    Args:
        task: the `Task` (pairs, splits, length limits: training pairs over
            `task.max_source_length`/`max_target_length` are dropped).
        work_dir: the pipeline's work directory (`vocab/` in, `teacher/`
            out).
        teacher_fn: `(bert_ids, dtype) -> CMLMTeacher`, e.g.
            `CMLMTeacher.from_preset` bound in gin with the preset.
        max_sequence_length: packed length cap (`[CLS] src [SEP] tgt [SEP]`);
            longer pairs are cut, longer side first.
        max_predictions: fixed mask slots per row (None: per batch).
        mask_probability: C-MLM masking rate (0.15).
        tokens_per_batch: global token budget of a batch (padding included).
        bucket_step: n (default 2): a length bucket every n tokens of
            packed length; None: the default ladder of
            `default_bucket_boundaries` (fewer shapes, more padding:
            docs/PERFORMANCE.md, "Teacher and dump throughput").
        total_steps: training steps (the schedule decays to 0 there).
        warmup_fraction: share of `total_steps` for linear warm-up.
        peak_learning_rate: learning rate after warm-up.
        weight_decay: AdamW decay (none on biases and LayerNorm).
        clipnorm: global gradient-norm clip.
        gradient_accumulation_steps: batches per update (None: 1): an
            update sees `n * tokens_per_batch` tokens (the paper's teacher
            batches are 16k-512k tokens).
        jit_compile: compile the train step with XLA.
        checkpoint_every_steps: checkpoint (and chunk) period.
        validate_every_steps: validation period (multiple of the above).
        keep_checkpoints: checkpoints kept.
        interim_checkpoint_minutes: inside a chunk, an interim checkpoint
            every this many minutes of training (None or 0: none); SIGTERM /
            Ctrl-C stop the run with one (`training.interruption`).
        max_valid_pairs: optional cap on validation pairs (the first N).
        strategy: `default | mirrored | multi_worker | tpu`.
        tpu_address: TPU name/address for `strategy="tpu"`.
        logical_devices: split the CPU into N logical devices first (gin
            `LOGICAL_DEVICES`): `mirrored` then runs N replicas on a CPU.
        mixed_precision: train in `mixed_bfloat16` (logits and loss stay
            float32).
        seed: seed of initialisation, data order and training masks.
        valid_mask_seed: fixed mask seed of the validation set.
        verbose: Keras progress bar setting.

    Returns:
        The last history record (`step`, `elapsed_s`, `loss`, `accuracy`,
        `val_accuracy`, ...) plus `output_dir`.
    """
    if not 0.0 <= warmup_fraction < 1.0:
        raise ValueError(
            f"warmup_fraction must be in [0, 1); got {warmup_fraction!r}."
        )
    keras.utils.set_random_seed(seed)
    distribution = get_strategy(
        strategy, tpu_address=tpu_address, logical_devices=logical_devices
    )
    replicas = distribution.num_replicas_in_sync
    output_dir = os.path.join(work_dir, TEACHER_DIR)
    tf.io.gfile.makedirs(output_dir)
    _lock = locking.hold(output_dir)  # One writer (LockedError otherwise).

    vocab = load_vocabulary(work_dir)

    def tokenize(split, max_pairs=None):
        return TokenizedPairs.from_pairs(
            task.read(split, max_pairs=max_pairs),
            vocab,
            task.max_source_length,
            task.max_target_length,
        )

    train_pairs = tokenize("train")
    valid_pairs = (
        tokenize("valid", max_valid_pairs) if task.valid_split else None
    )

    def preprocessor_with(mask_seed):
        return CMLMPreprocessor(
            vocab.bert_ids,
            max_sequence_length=max_sequence_length,
            mask_probability=mask_probability,
            max_predictions=max_predictions,
            seed=mask_seed,
        )

    batcher = TokenBudgetBatcher(
        tokens_per_batch,
        default_bucket_boundaries(max_sequence_length, step=bucket_step),
        num_replicas=replicas,
        seed=seed,
    )
    train_dataset_fn, valid_dataset = make_datasets(
        preprocessor_with(seed),
        batcher,
        train_pairs,
        valid_pairs,
        preprocessor_with(valid_mask_seed),
    )

    with distribution.scope():
        teacher = teacher_fn(
            bert_ids=vocab.bert_ids,
            dtype="mixed_bfloat16" if mixed_precision else None,
        )
        compile_teacher(
            teacher,
            peak_learning_rate=peak_learning_rate,
            warmup_steps=int(warmup_fraction * total_steps),
            total_steps=total_steps,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            gradient_accumulation_steps=gradient_accumulation_steps,
            jit_compile=jit_compile,
        )
    logging.info(
        "teacher: %d parameters, task vocabulary %d, %d training pairs, "
        "%d replicas",
        teacher.count_params(),
        vocab.size,
        len(train_pairs),
        replicas,
    )
    result = trainer.fit_resumable(
        teacher,
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
        plot_metrics=("val_accuracy",),
    )
    save_teacher(teacher, output_dir)
    logging.info("teacher saved to %s: %s", output_dir, result)
    return {**result, "output_dir": output_dir}
