"""`dump_teacher`: the teacher's top-K soft targets for every target position.

Reads `WORK_DIR/vocab/` (from `prepare`), the trained teacher in
`WORK_DIR/teacher/` (from `train_teacher`) and the task's training pairs,
tokenized and filtered exactly as the student reads them
(`TokenizedPairs` with the task's length limits). Writes
`WORK_DIR/targets/`:

- `targets-SSSSS-of-NNNNN.tfrecord`: one `tf.train.Example` per pair, in
  pair order: `id` (int64), `length` (int64: rows `T` = target tokens + the
  EOS slot), `top_k` (int64), `teacher_ids` (bytes: int32 little-endian
  `[T, K]`, task ids) and `teacher_logits` (bytes: float16 little-endian
  `[T, K]`), each row sorted by logit, highest first, and (format version
  2) the pair's `source_ids` and `target_ids` (int64 lists of task ids, no
  BOS/EOS), so the student can stream whole examples from the shards (the
  format, with `serialize_targets` and the readers, is
  `bertkd_tf.data.teacher_targets`);
- `manifest.json`: fingerprints of the teacher checkpoint, the task
  vocabulary and the tokenized pairs, K, P, the number of pairs and
  positions, the shard layout and the finished shards with their size and
  sha256. No wall-clock times: two dumps of the same teacher and data have
  byte-identical shards and manifests.

Circular masks (docs/METHOD.md §2, `bertkd_tf.models.circular_masks`): a
pair with `T` rows gets `n = min(P, T)` copies; copy `i` masks target slots
`i, i + n, i + 2n, ...`, so every slot is masked exactly once and the
source never. All copies of a batch of pairs go through the teacher in one
forward pass; only the top-K of each masked position leaves the device.

Teachers (`teacher_kind`): `'cmlm'` (default) reads a C-MLM teacher
(`train_teacher`'s `teacher_config.json`) and masks it circularly;
`'seq2seq'` reads any trained student-architecture model (a `distill`
output directory such as `WORK_DIR/baseline`, `student_config.json`) and
stores its teacher-forced top-K at each target position, the EOS position
included (`bertkd_tf.models.seq2seq_top_k`): the paper's left-to-right
teacher of the ablation. Same records and manifest (`teacher_kind` is
recorded; `num_passes` is None for `seq2seq`), fingerprints of that
model's files; `distill.run.teacher_dir` then names the same directory.

Robustness: a shard is written to a temporary name and renamed when
complete, then recorded in the manifest with its size and sha256. Records
are serialized deterministically (fixed feature order), so a shard's bytes
depend only on its pairs and the teacher, not on the process. Running the
same command again checks the finished shards against the manifest,
rewrites any missing or damaged one (saying so in the log) and writes the
missing ones: the result is byte-identical to an uninterrupted run (a
shard's batches depend only on its own pairs). Targets from another
teacher, vocabulary, data, K, P or precision are refused, never mixed.
"""

import json
import os
import time

import numpy as np
import tensorflow as tf
from absl import logging

from bertkd_tf import locking

# F401: teacher_fingerprint, TARGETS_DIR and the format's names are
# re-exported from their former home here; `bertkd_tf.artifacts` owns the
# layout, `bertkd_tf.data.teacher_targets` the targets' format.
from bertkd_tf.artifacts import (  # noqa: F401
    TARGETS_DIR,
    TEACHER_DIR,
    check_teacher_vocabulary,
    load_student,
    load_teacher,
    load_vocabulary,
    teacher_fingerprint,
)
from bertkd_tf.atomic_files import write_text_atomic
from bertkd_tf.data import teacher_targets
from bertkd_tf.data.batching import (
    TokenBudgetBatcher,
    default_bucket_boundaries,
)
from bertkd_tf.data.teacher_targets import (  # noqa: F401
    FORMAT_VERSION,
    MANIFEST_FILE,
    data_fingerprint,
    serialize_targets,
    shard_info,
    shard_name,
    shard_problem,
)
from bertkd_tf.data.tokenized_pairs import TokenizedPairs
from bertkd_tf.durations import format_duration
from bertkd_tf.errors import (
    ArtifactError,
    ConfigError,
    DataError,
    MissingArtifactError,
)
from bertkd_tf.models.circular_masks import (  # noqa: F401 (re-exported)
    circular_mask_slots,
    make_top_k_fn,
    masked_copies,
)
from bertkd_tf.models.cmlm_preprocessor import CMLMPreprocessor
from bertkd_tf.models.seq2seq_top_k import make_seq2seq_top_k_fn
from bertkd_tf.training.strategy import get_strategy

MAX_TOP_K = 64
# `cmlm`: a C-MLM teacher from train_teacher (circular masks); `seq2seq`: a
# left-to-right seq2seq model from distill (teacher-forced logits).
TEACHER_KINDS = ("cmlm", "seq2seq")
# Settings that must match for shards of two runs to be mixed.
LAYOUT_KEYS = (
    "format_version",
    "split",
    "teacher_fingerprint",
    "vocabulary_fingerprint",
    "data_fingerprint",
    "top_k",
    "num_passes",
    "compute_dtype",
    "num_pairs",
    "pairs_per_shard",
    "num_shards",
)


def read_manifest(directory):
    """The manifest of a targets directory, or None if there is none (a
    damaged one is refused by `teacher_targets.read_manifest`)."""
    try:
        return teacher_targets.read_manifest(directory)
    except MissingArtifactError:
        return None


def _write_json_atomic(path, value):
    write_text_atomic(path, json.dumps(value, indent=2, sort_keys=True))


# Records -----------------------------------------------------------------


def _padded(ragged, rows):
    """Rows `rows` of a ragged int32 tensor as a 0-padded numpy array."""
    splits = ragged.row_splits.numpy()
    values = ragged.flat_values.numpy()
    lengths = splits[rows + 1] - splits[rows]
    out = np.zeros([len(rows), max(int(lengths.max()), 1)], np.int32)
    for i, (start, n) in enumerate(zip(splits[rows], lengths)):
        out[i, :n] = values[start : start + n]
    return out


def token_budget_batches(tokenized, batcher):
    """Row indices of `tokenized` per batch, by packed length.

    Pairs are taken in order of packed length (`[CLS] src [SEP] tgt
    [SEP]`; ties keep the pair order) and cut into consecutive batches
    whose rows times their longest packed length stay within
    `batcher.tokens_per_batch` (at most `batcher.max_batch_size` rows
    where set). Each batch is padded only to its own longest pair: on
    Multi30k 2.0% of the positions computed are padding (2,000 pairs; 1.3%
    over a 4,096-pair shard) against 10.1% with batches of one length
    bucket, and the dump runs 1.18x faster (docs/PERFORMANCE.md, "Teacher
    and dump throughput"). The dump's function takes any shape without
    retracing, so the many widths cost nothing. Deterministic: depends
    only on the lengths of `tokenized`; `batcher.bucket_boundaries[-1]`
    bounds the packed length.
    """
    source_lengths, target_lengths = tokenized.lengths()
    packed = source_lengths + target_lengths + 3
    longest = batcher.bucket_boundaries[-1]
    if packed.size and packed.max() > longest:
        raise ValueError(
            f"A pair packs to {packed.max()} tokens, more than the last "
            f"bucket boundary {longest}."
        )
    budget = int(batcher.tokens_per_batch)
    cap = int(batcher.max_batch_size or budget)
    batches, current = [], []
    for row in np.argsort(packed, kind="stable"):
        width = int(packed[row])
        if current and (
            (len(current) + 1) * width > budget or len(current) == cap
        ):
            batches.append(np.asarray(current))
            current = []
        current.append(row)
    if current:
        batches.append(np.asarray(current))
    return batches


def _slice(tokenized, start, stop):
    return TokenizedPairs(
        tokenized.ids[start:stop],
        tokenized.source[start:stop],
        tokenized.target[start:stop],
    )


class _Progress:
    """Logs pairs, positions, pairs/s and the time left every
    `every_seconds` (and when forced). The time left is the positions
    still to dump at the positions/s so far (a pair's cost grows with its
    length; positions measure it). `clock` is for tests."""

    def __init__(
        self, total_pairs, total_positions, every_seconds, clock=time.monotonic
    ):
        self.total_pairs = total_pairs
        self.total_positions = total_positions
        self.every_seconds = every_seconds
        self.clock = clock
        self.pairs = 0
        self.positions = 0
        self.start = clock()
        self.last = self.start

    def message(self, now):
        elapsed = max(now - self.start, 1e-9)
        rate = self.positions / elapsed
        text = (
            f"dump: {self.pairs}/{self.total_pairs} pairs "
            f"({100.0 * self.pairs / max(self.total_pairs, 1):.1f}%), "
            f"{self.positions}/{self.total_positions} positions, "
            f"{self.pairs / elapsed:.1f} pairs/s, {rate:.0f} positions/s, "
            f"{format_duration(elapsed)} elapsed"
        )
        if self.positions < self.total_positions:
            if rate > 0:
                left = (self.total_positions - self.positions) / rate
                text += f", ETA {format_duration(left)} left"
            else:
                text += ", ETA unknown"
        return text

    def update(self, pairs, positions, force=False):
        self.pairs += pairs
        self.positions += positions
        now = self.clock()
        if not force and now - self.last < self.every_seconds:
            return
        self.last = now
        logging.info("%s", self.message(now))


class _ReplicatedTopK:
    """`top_k_fn` with each batch's rows split over the replicas of
    `strategy` (one device: `top_k_fn` itself).

    Every replica gets the same number of rows (the last row repeated to
    fill, its copies dropped from the results) at the batch's padded
    width, so a row's outputs are those of a one-device pass over the same
    batch: the shards are the same bytes (tests/runs/dump_teacher_test.py).
    """

    def __init__(self, top_k_fn, strategy=None):
        self.top_k_fn = top_k_fn
        self.strategy = strategy
        self.replicas = strategy.num_replicas_in_sync if strategy else 1

    def __call__(self, source, target):
        if self.replicas == 1:
            return [t.numpy() for t in self.top_k_fn(source, target)]
        rows = len(source)
        per_replica = -(-rows // self.replicas)
        fill = np.arange(per_replica * self.replicas)
        fill = np.minimum(fill, rows - 1)
        parts = [
            (source[fill[i :: self.replicas]], target[fill[i :: self.replicas]])
            for i in range(self.replicas)
        ]

        def inputs(side):
            return self.strategy.experimental_distribute_values_from_function(
                lambda context: tf.constant(
                    parts[context.replica_id_in_sync_group][side]
                )
            )

        # A Python function, not the `tf.function` itself: MirroredStrategy
        # would hand a `tf.function` the per-replica values undivided.
        outputs = self.strategy.run(
            lambda s, t: self.top_k_fn(s, t), args=(inputs(0), inputs(1))
        )
        local = [
            [t.numpy() for t in self.strategy.experimental_local_results(o)]
            for o in outputs
        ]
        results = []
        for per_replica_outputs in local:
            merged = np.empty(
                (len(fill),) + per_replica_outputs[0].shape[1:],
                per_replica_outputs[0].dtype,
            )
            for i, part in enumerate(per_replica_outputs):
                merged[i :: self.replicas] = part
            results.append(merged[:rows])
        return results


def dump_pairs(tokenized, top_k_fn, batcher, progress=None):
    """Serialized target records of `tokenized`, in its pair order.

    Args:
        tokenized: `TokenizedPairs` (one shard).
        top_k_fn: from `make_top_k_fn`, or a `_ReplicatedTopK` of it
            (numpy arrays out).
        batcher: a `TokenBudgetBatcher` over packed lengths: its token
            budget, `max_batch_size` and last boundary
            (`token_budget_batches`; its shuffling is not used).
        progress: optional `_Progress`, updated per batch.
    """
    expected = tokenized.lengths()[1] + 1
    # The pairs' task ids go into the records (version 2: streamable).
    sides = [
        (side.row_splits.numpy(), side.flat_values.numpy())
        for side in (tokenized.source, tokenized.target)
    ]
    results = [None] * len(tokenized)
    for rows in token_budget_batches(tokenized, batcher):
        top_ids, top_logits, coverage, lengths = (
            np.asarray(t)
            for t in top_k_fn(
                _padded(tokenized.source, rows),
                _padded(tokenized.target, rows),
            )
        )
        for b, row in enumerate(rows):
            pair_id = int(tokenized.ids[row])
            length = int(lengths[b])
            if length != expected[row]:
                raise ValueError(
                    f"Pair {pair_id}: the teacher input kept {length - 1} of "
                    f"{expected[row] - 1} target tokens: the pair was cut to "
                    "fit the teacher's max_sequence_length."
                )
            if not np.all(coverage[b, :length] == 1):
                raise AssertionError(
                    f"Pair {pair_id}: slots masked {coverage[b, :length]} "
                    "times; each must be masked exactly once."
                )
            source_ids, target_ids = (
                values[splits[row] : splits[row + 1]]
                for splits, values in sides
            )
            results[row] = serialize_targets(
                pair_id,
                top_ids[b, :length],
                top_logits[b, :length],
                source_ids=source_ids,
                target_ids=target_ids,
            )
        if progress is not None:
            progress.update(len(rows), int(np.sum(lengths)))
    return results


def _write_records(path, records):
    """Writes `records` to `path` through a temporary name; returns the
    finished shard's `{"bytes", "sha256"}`."""
    temp = f"{path}.tmp-{os.getpid()}"
    with tf.io.TFRecordWriter(temp) as writer:
        for record in records:
            writer.write(record)
    tf.io.gfile.rename(temp, path, overwrite=True)
    return shard_info(path)


def _unrecorded_shard_problem(path, info):
    """Checks a shard of an older dump (no sha256 recorded): its records'
    checksums and count. None if sound, else what is wrong."""
    try:
        count = sum(1 for _ in tf.data.TFRecordDataset(path))
    except tf.errors.DataLossError:
        return "its records cannot be read"
    if "pairs" in info and count != int(info["pairs"]):
        return f"it holds {count} records, the manifest records {info['pairs']}"
    return None


def _finished_shards(manifest, output_dir):
    """The manifest's shards that are intact on disk.

    Checks each against its recorded size and sha256 and logs (warning)
    every missing or damaged one, which is then written again. A shard of
    an older dump without a recorded digest is checked by its records and
    gets its digest recorded.
    """
    done = {}
    for name, info in sorted(manifest["shards"].items()):
        path = os.path.join(output_dir, name)
        problem = shard_problem(output_dir, name, info, use_cache=False)
        if problem is None and "sha256" not in info:
            problem = _unrecorded_shard_problem(path, info)
            if problem is None:
                info = dict(info, **shard_info(path))
                logging.info(
                    "dump: %s (of an older dump) is sound; recorded its sha256",
                    path,
                )
        if problem is None:
            done[name] = info
        else:
            logging.warning(
                "dump: %s is damaged (%s): writing it again.", path, problem
            )
    return done


def _check_layout(manifest, layout, output_dir):
    different = {
        key: (manifest.get(key), layout[key])
        for key in LAYOUT_KEYS
        if manifest.get(key) != layout[key]
    }
    if different:
        details = "; ".join(
            f"{key}: stored {old!r}, now {new!r}"
            for key, (old, new) in different.items()
        )
        raise ArtifactError(
            f"The targets in {output_dir!r} were dumped with other settings "
            f"({details}). Refusing to mix them: use another output_dir or "
            "delete that directory to dump again."
        )


def _load_dump_teacher(teacher_kind, teacher_dir, vocab, work_dir, dtype):
    """`(teacher, vocabulary_size, max_sequence_length or None)` of a
    `teacher_kind` teacher, refusing one over another task vocabulary."""
    if teacher_kind == "cmlm":
        teacher = load_teacher(teacher_dir, dtype=dtype)
        check_teacher_vocabulary(teacher, vocab, teacher_dir, work_dir)
        return (
            teacher,
            teacher.vocabulary_size,
            int(teacher.backbone.max_sequence_length),
        )
    teacher = load_student(teacher_dir, dtype=dtype)
    # Logits of a one-token pair: how many ids the model predicts over.
    size = int(
        teacher(
            {
                "encoder_token_ids": tf.constant([[vocab.eos_id]]),
                "encoder_padding_mask": tf.constant([[1]]),
                "decoder_token_ids": tf.constant([[vocab.bos_id]]),
                "decoder_padding_mask": tf.constant([[1]]),
            },
            training=False,
        ).shape[-1]
    )
    if size != vocab.size:
        raise ArtifactError(
            f"The seq2seq teacher in {teacher_dir!r} predicts over {size} "
            f"ids, but the task vocabulary in {work_dir}/vocab has "
            f"{vocab.size} (fingerprint {vocab.fingerprint[:12]}): it was "
            "trained in another work_dir. Dump a model trained on this "
            "work_dir's vocabulary (its baseline/ or student/), or run in "
            "the work_dir it was trained in."
        )
    backbone = getattr(teacher, "backbone", None)
    longest = getattr(backbone, "max_sequence_length", None)
    return teacher, size, None if longest is None else int(longest)


def run(
    *,
    task,
    work_dir,
    teacher_dir=None,
    teacher_kind="cmlm",
    output_dir=None,
    split="train",
    top_k=8,
    num_passes=7,
    tokens_per_batch=32768,
    pairs_per_shard=4096,
    mixed_precision=False,
    max_new_shards=None,
    log_every_seconds=60.0,
    strategy="default",
    tpu_address=None,
    logical_devices=None,
):
    """Dumps the teacher's top-K logits for every target position.

    Args:
        task: the `Task` (its data and length limits, as the student's).
        work_dir: the pipeline's work directory (`vocab/`, `teacher/` in).
        teacher_dir: the saved teacher (default `work_dir/teacher`; a
            relative path is under `work_dir`): a `train_teacher` output
            for `teacher_kind='cmlm'`, a `distill` output (e.g.
            `'baseline'`) for `'seq2seq'`.
        teacher_kind: `'cmlm'` (circular masks over a C-MLM teacher) or
            `'seq2seq'` (a left-to-right model's teacher-forced logits).
        output_dir: where the targets go (default `work_dir/targets`, or
            `work_dir/targets_<split>` for a split other than train; a
            relative path is under `work_dir`).
        split: the task split to dump.
        top_k: K, logits kept per position (1..64).
        num_passes: P, copies per pair (circular masks; unused, and
            recorded as None, for `'seq2seq'`).
        tokens_per_batch: teacher tokens per forward pass, all copies and
            padding included.
        pairs_per_shard: pairs per TFRecord shard (the unit of resuming).
        mixed_precision: run the teacher in `mixed_bfloat16`.
        max_new_shards: stop after writing this many shards (None: all);
            the next run goes on from there.
        log_every_seconds: progress log period (pairs/s, time left).
        strategy: `default | mirrored | multi_worker | tpu`: with several
            replicas each forward pass splits its batch's rows over them
            (`_ReplicatedTopK`); the shards are the same bytes.
        tpu_address: TPU name/address for `strategy="tpu"`.
        logical_devices: split the CPU into N logical devices first (gin
            `LOGICAL_DEVICES`): `mirrored` then runs N replicas on a CPU.

    Returns:
        `{"output_dir", "num_pairs", "num_positions", "bytes",
        "complete", "seconds", "positions_per_second"}`.
    """
    if not 1 <= int(top_k) <= MAX_TOP_K:
        raise ConfigError(f"top_k must be in [1, {MAX_TOP_K}]; got {top_k!r}.")
    if teacher_kind not in TEACHER_KINDS:
        raise ConfigError(
            f"dump_teacher.run.teacher_kind must be one of {TEACHER_KINDS}; "
            f"got {teacher_kind!r}. 'cmlm' dumps a train_teacher teacher, "
            "'seq2seq' a distill output (teacher_dir='baseline')."
        )
    if int(num_passes) < 1:
        raise ConfigError(f"num_passes must be >= 1; got {num_passes!r}.")
    if int(pairs_per_shard) < 1:
        raise ConfigError(
            f"pairs_per_shard must be >= 1; got {pairs_per_shard!r}."
        )
    top_k, num_passes = int(top_k), int(num_passes)
    if strategy == "multi_worker":
        raise ConfigError(
            "dump_teacher runs on the replicas of one machine (strategy "
            "'mirrored', with LOGICAL_DEVICES on a CPU) or a TPU; with "
            "'multi_worker' every worker would write every shard. On "
            "several machines, give each its own shards instead: the same "
            "output_dir on shared storage, and max_new_shards per run."
        )
    distribution = get_strategy(
        strategy, tpu_address=tpu_address, logical_devices=logical_devices
    )
    # Relative directories are under work_dir (absolute ones stay as given).
    teacher_dir = os.path.join(work_dir, teacher_dir or TEACHER_DIR)
    if output_dir is None:
        output_dir = (
            TARGETS_DIR if split == "train" else f"{TARGETS_DIR}_{split}"
        )
    output_dir = os.path.join(work_dir, output_dir)
    tf.io.gfile.makedirs(output_dir)
    _lock = locking.hold(output_dir)  # One writer (LockedError otherwise).

    vocab = load_vocabulary(work_dir)
    fingerprint = teacher_fingerprint(teacher_dir)
    dtype = "mixed_bfloat16" if mixed_precision else None
    with distribution.scope():  # Mirrored variables with replicas.
        teacher, teacher_vocabulary_size, teacher_max = _load_dump_teacher(
            teacher_kind, teacher_dir, vocab, work_dir, dtype
        )
    if top_k > teacher_vocabulary_size:
        raise ConfigError(
            f"top_k={top_k} exceeds the task vocabulary size "
            f"{teacher_vocabulary_size}."
        )
    tokenized = TokenizedPairs.from_pairs(
        task.read(split),
        vocab,
        task.max_source_length,
        task.max_target_length,
    )
    source_lengths, target_lengths = tokenized.lengths()
    num_pairs = len(tokenized)
    if num_pairs == 0:
        raise DataError(
            f"No {split!r} pairs left after tokenizing (task data "
            f"{task.data_dir or task.tfds_name!r}): check the data and the "
            "task's length limits."
        )
    max_packed = int(np.max(source_lengths + target_lengths)) + 3
    # C-MLM: [CLS] src [SEP] tgt [SEP]; seq2seq: src + EOS, BOS + tgt.
    longest = (
        max_packed
        if teacher_kind == "cmlm"
        else int(np.max(np.maximum(source_lengths, target_lengths))) + 1
    )
    if teacher_max is not None and longest > teacher_max:
        raise ConfigError(
            f"The longest pair packs to {longest} tokens, more than the "
            f"teacher's max_sequence_length={teacher_max}; lower the task's "
            "max_source_length/max_target_length."
        )
    if teacher_kind == "seq2seq":
        num_passes = None
    num_shards = -(-num_pairs // int(pairs_per_shard))
    layout = {
        "format_version": FORMAT_VERSION,
        "split": split,
        "teacher_fingerprint": fingerprint,
        "vocabulary_fingerprint": vocab.fingerprint,
        "data_fingerprint": data_fingerprint(tokenized),
        "top_k": top_k,
        "num_passes": num_passes,
        "compute_dtype": "bfloat16" if mixed_precision else "float32",
        "num_pairs": num_pairs,
        "pairs_per_shard": int(pairs_per_shard),
        "num_shards": num_shards,
    }
    manifest = read_manifest(output_dir)
    if manifest is None:
        # Relative to work_dir when inside it: the manifest does not depend
        # on where the work directory lies.
        relative = os.path.relpath(teacher_dir, work_dir)
        manifest = dict(
            layout,
            teacher_kind=teacher_kind,
            shards={},
            teacher_dir=teacher_dir if relative.startswith("..") else relative,
        )
    else:
        _check_layout(manifest, layout, output_dir)
    # Leftovers of a crash mid-shard.
    for name in tf.io.gfile.listdir(output_dir):
        if ".tmp-" in name:
            tf.io.gfile.remove(os.path.join(output_dir, name))
    done = _finished_shards(manifest, output_dir)
    if done != manifest["shards"]:
        manifest["shards"] = done
        _update_totals(manifest)
        _write_json_atomic(os.path.join(output_dir, MANIFEST_FILE), manifest)
    todo = [
        s for s in range(num_shards) if shard_name(s, num_shards) not in done
    ]
    logging.info(
        "dump_teacher: %d pairs in %d shards (%d to write), K=%d, P=%s, %s, "
        "%d replica(s), into %s",
        num_pairs,
        num_shards,
        len(todo),
        top_k,
        num_passes,
        layout["compute_dtype"],
        distribution.num_replicas_in_sync,
        output_dir,
    )

    if teacher_kind == "cmlm":
        preprocessor = CMLMPreprocessor(
            vocab.bert_ids, max_sequence_length=teacher_max
        )
        top_k_fn = make_top_k_fn(teacher, preprocessor, num_passes, top_k)
    else:
        top_k_fn = make_seq2seq_top_k_fn(
            teacher, top_k, vocab.bos_id, vocab.eos_id
        )
    top_k_fn = _ReplicatedTopK(
        top_k_fn,
        distribution if distribution.num_replicas_in_sync > 1 else None,
    )
    boundaries = default_bucket_boundaries(max_packed)
    # The budget counts every copy: a pair has at most P copies.
    batcher = TokenBudgetBatcher(
        max(int(tokens_per_batch) // (num_passes or 1), boundaries[-1]),
        boundaries,
        drop_remainder=False,
    )
    if max_new_shards is not None:
        todo = todo[: int(max_new_shards)]
    pairs_per_shard = int(pairs_per_shard)
    rows = target_lengths + 1  # target tokens + the EOS slot
    shards = {
        s: slice(s * pairs_per_shard, (s + 1) * pairs_per_shard) for s in todo
    }
    progress = _Progress(
        sum(len(rows[part]) for part in shards.values()),
        int(sum(np.sum(rows[part]) for part in shards.values())),
        log_every_seconds,
    )
    start = time.time()
    for s, part in shards.items():
        shard = _slice(tokenized, part.start, part.stop)
        records = dump_pairs(shard, top_k_fn, batcher, progress)
        name = shard_name(s, num_shards)
        info = _write_records(os.path.join(output_dir, name), records)
        manifest["shards"][name] = {
            "pairs": len(shard),
            "positions": int(np.sum(rows[part])),
            "bytes": info["bytes"],
            "sha256": info["sha256"],
            "first_id": int(shard.ids[0]),
            "last_id": int(shard.ids[-1]),
        }
        _update_totals(manifest)
        _write_json_atomic(os.path.join(output_dir, MANIFEST_FILE), manifest)
        logging.info(
            "dump: wrote %s (%d pairs, %d bytes)",
            name,
            len(shard),
            info["bytes"],
        )
    progress.update(0, 0, force=True)
    seconds = time.time() - start
    _update_totals(manifest)
    _write_json_atomic(os.path.join(output_dir, MANIFEST_FILE), manifest)
    result = {
        "output_dir": output_dir,
        "num_pairs": num_pairs,
        "num_positions": manifest["num_positions"],
        "bytes": manifest["bytes"],
        "complete": manifest["complete"],
        "seconds": round(seconds, 2),
        "positions_per_second": round(
            progress.positions / max(seconds, 1e-9), 1
        ),
    }
    logging.info("dump_teacher: %s", result)
    return result


def _update_totals(manifest):
    shards = manifest["shards"]
    manifest["num_positions"] = sum(v["positions"] for v in shards.values())
    manifest["bytes"] = sum(v["bytes"] for v in shards.values())
    manifest["complete"] = len(shards) == manifest["num_shards"]
