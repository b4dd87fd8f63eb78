"""The teacher's stored top-K targets, joined with the student's pairs.

`dump_teacher` writes `WORK_DIR/targets/` (TFRecord shards plus
`manifest.json`, in the format this module owns: `MANIFEST_FILE`,
`FORMAT_VERSION`, `shard_name`, `RECORD_FEATURES` written by
`serialize_targets` and read by `parse_targets`); `TeacherTargets.load`
reads them into memory (a few tens of bytes per target position) and `join`
(from `TokenizedPairs`) or `attach` (to any `tf.data` of examples with an
`"id"`; `attach_teacher_targets` loads and attaches in one call) give the
student `{"id", "source_ids", "target_ids", "teacher_ids",
"teacher_logits"}` examples, the input of
`student_features.student_dataset`. The join is an in-memory hash-table
lookup and two slices per example: no file I/O while training.

Trust: the manifest records the fingerprints of the task vocabulary, the
teacher and the tokenized pairs the targets were dumped from, and the size
and sha256 of every finished shard. `load` refuses (`ArtifactError`)
targets of another vocabulary, teacher or data than the caller expects,
and a shard whose size or digest differs from the manifest's (a shard's
digest is computed once per process); a manifest of an older dump without
these fields is read with a warning.
"""

import hashlib
import json
import os

import numpy as np
import tensorflow as tf
from absl import logging

from bertkd_tf.checksums import sha256_of_file
from bertkd_tf.data.tokenized_pairs import TokenizedPairs
from bertkd_tf.errors import ArtifactError, ConfigError, MissingArtifactError

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1
REDUMP_ADVICE = (
    "Re-run dump_teacher with the same command: it rewrites damaged shards."
)

# The features of one record (one pair): `id`, `length` (rows `T` = target
# tokens + the EOS slot), `top_k` (K), `teacher_ids` (int32 little-endian
# `[T, K]`, task ids) and `teacher_logits` (float16 little-endian `[T, K]`),
# each row sorted by logit, highest first.
RECORD_FEATURES = {
    "id": tf.io.FixedLenFeature([], tf.int64),
    "length": tf.io.FixedLenFeature([], tf.int64),
    "top_k": tf.io.FixedLenFeature([], tf.int64),
    "teacher_ids": tf.io.FixedLenFeature([], tf.string),
    "teacher_logits": tf.io.FixedLenFeature([], tf.string),
}

# Shards whose digest matched in this process: (path, bytes, version, sha256).
_VERIFIED_SHARDS = set()


def shard_name(index, num_shards):
    """File name of shard `index` (0-based) of `num_shards`."""
    return f"targets-{index:05d}-of-{num_shards:05d}.tfrecord"


def serialize_targets(pair_id, top_ids, top_logits):
    """One pair's targets as a serialized `tf.train.Example` (the writer's
    side of `RECORD_FEATURES`).

    Deterministic: the features map is written in key order (without
    `deterministic=True` its order changes from process to process).
    """
    top_ids = np.ascontiguousarray(top_ids, "<i4")
    top_logits = np.ascontiguousarray(top_logits, "<f2")
    length, k = top_ids.shape

    def ints(value):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))

    def raw(array):
        return tf.train.Feature(
            bytes_list=tf.train.BytesList(value=[array.tobytes()])
        )

    example = tf.train.Example(
        features=tf.train.Features(
            feature={
                "id": ints(int(pair_id)),
                "length": ints(int(length)),
                "top_k": ints(int(k)),
                "teacher_ids": raw(top_ids),
                "teacher_logits": raw(top_logits),
            }
        )
    )
    return example.SerializeToString(deterministic=True)


def parse_targets(records):
    """A batch of serialized records (string `[N]`) as `RECORD_FEATURES`
    tensors `[N]` (the reader's side of `serialize_targets`)."""
    return tf.io.parse_example(records, RECORD_FEATURES)


def data_fingerprint(tokenized):
    """sha256 of the pair ids and their source/target task ids."""
    digest = hashlib.sha256(np.asarray(tokenized.ids, "<i8").tobytes())
    for side in (tokenized.source, tokenized.target):
        digest.update(np.asarray(side.row_splits.numpy(), "<i8").tobytes())
        digest.update(np.asarray(side.flat_values.numpy(), "<i4").tobytes())
    return digest.hexdigest()


def shard_info(path):
    """`{"bytes", "sha256"}` of a finished shard, as the manifest records."""
    return {
        "bytes": int(tf.io.gfile.stat(path).length),
        "sha256": sha256_of_file(path),
    }


def shard_problem(directory, name, info, use_cache=True):
    """What is wrong with finished shard `name` of a dump, or None.

    Args:
        directory: the targets directory.
        name: the shard's file name.
        info: its manifest entry (`bytes`, `sha256`; a dump of an older
            version has no `sha256`, and is checked by size only).
        use_cache: skip hashing a shard whose digest already matched in
            this process (same path, size and modification time).

    Returns:
        None if the file exists with the recorded size and sha256, else a
        phrase saying what differs (expected and actual values).
    """
    path = os.path.join(directory, name)
    if not tf.io.gfile.exists(path):
        return "the file is missing"
    if "://" in path:  # gs://, ...: what TensorFlow's file systems say.
        stat = tf.io.gfile.stat(path)
        size, version = stat.length, (stat.mtime_nsec,)
    else:  # gfile's mtime has whole seconds: a rewrite could hide in one.
        stat = os.stat(path)
        size = stat.st_size
        version = (stat.st_ino, stat.st_mtime_ns, stat.st_ctime_ns)
    expected_size = info.get("bytes")
    if expected_size is not None and size != int(expected_size):
        return f"it has {size} bytes, the manifest records {int(expected_size)}"
    expected = info.get("sha256")
    if expected is None:
        return None
    key = (path, size, version, expected)
    if use_cache and key in _VERIFIED_SHARDS:
        return None
    actual = sha256_of_file(path)
    if actual != expected:
        return f"its sha256 is {actual}, the manifest records {expected}"
    _VERIFIED_SHARDS.add(key)
    return None


def _warn_unrecorded(directory, field, what):
    logging.warning(
        "teacher targets: the manifest in %s records no %s (dumped by an "
        "older version): cannot check %s. Dump the teacher again (into a new "
        "output_dir) to record it.",
        directory,
        field,
        what,
    )


def _check_fingerprints(
    manifest,
    directory,
    vocabulary=None,
    teacher_fingerprint=None,
    teacher_dir=None,
    data_fingerprint=None,
):
    """Refuses targets of another vocabulary, teacher or data (warns when
    the manifest predates the field)."""
    if vocabulary is not None:
        stored = manifest.get("vocabulary_fingerprint")
        if stored is None:
            _warn_unrecorded(
                directory,
                "vocabulary fingerprint",
                "that the targets' ids are the student's task vocabulary",
            )
        elif stored != vocabulary.fingerprint:
            raise ArtifactError(
                f"The teacher targets in {directory!r} were dumped with "
                f"another task vocabulary (fingerprint {stored}) than the "
                f"student's (fingerprint {vocabulary.fingerprint}): their ids "
                "would mean other tokens. Dump the teacher again with this "
                "vocabulary (into a new dump_teacher.run.output_dir), or point "
                "distill.run.targets_dir at targets dumped with it."
            )
    if teacher_fingerprint is not None:
        stored = manifest.get("teacher_fingerprint")
        expected_from = f" in {teacher_dir!r}" if teacher_dir else ""
        if stored is None:
            _warn_unrecorded(
                directory,
                "teacher fingerprint",
                f"that the targets come from the teacher{expected_from}",
            )
        elif stored != teacher_fingerprint:
            dumped_from = manifest.get("teacher_dir")
            dumped_from = (
                f", teacher_dir {dumped_from!r}" if dumped_from else ""
            )
            raise ArtifactError(
                f"The teacher targets in {directory!r} were dumped from "
                f"another teacher (fingerprint {stored}{dumped_from}) than "
                f"the teacher{expected_from} (fingerprint "
                f"{teacher_fingerprint}): the student would learn another "
                "teacher's predictions. Dump this teacher's targets again "
                "(dump_teacher, into a new dump_teacher.run.output_dir) and "
                "point distill.run.targets_dir at them, point "
                "distill.run.targets_dir at targets this teacher dumped, or "
                "point distill.run.teacher_dir at the teacher that dumped "
                "these."
            )
    if data_fingerprint is not None:
        stored = manifest.get("data_fingerprint")
        if stored is None:
            _warn_unrecorded(
                directory,
                "data fingerprint",
                "that the targets were dumped from the pairs trained on",
            )
        elif stored != data_fingerprint:
            raise ArtifactError(
                f"The teacher targets in {directory!r} were dumped from other "
                f"pairs (data fingerprint {stored}) than the ones being "
                f"trained on (data fingerprint {data_fingerprint}): another "
                "corpus (DATA_DIR), max_train_pairs or length limit, so rows "
                "would be the teacher's predictions for other sentences. Dump "
                "the teacher again with the same task settings as distill "
                "(into a new dump_teacher.run.output_dir), or point "
                "distill.run.targets_dir at targets dumped from these pairs."
            )


class TeacherTargets:
    """Top-K teacher logits per target position, in memory, keyed by pair id.

    Row `t` of a pair is the teacher's prediction for the student's label
    `t` (target token `t`, the last row for EOS), so `T = len(target) + 1`
    rows; each row holds the K highest logits (float16 in memory, float32
    in the examples) and their task ids, highest first. Reading fewer than
    the stored K keeps the first K' of each row, which is the top-K'.

    Pairs without stored targets (`join(..., allow_missing=True)`) are
    dropped from the joined dataset, counted in `join_stats` and logged:
    a pair without targets cannot be distilled, and a made-up teacher
    distribution would silently train the student on something else.

    Args:
        ids: int64 `[N]` pair ids, ascending.
        row_splits: int64 `[N + 1]`, rows of pair `n` are
            `row_splits[n]:row_splits[n + 1]`.
        top_ids: int32 `[rows, K]` task ids.
        top_logits: float16 `[rows, K]` logits.
        manifest: the dump's manifest (fingerprints, K, P, ...).

    Example:
    >>> targets = TeacherTargets.load("work/targets", top_k=4, vocabulary=vocab)
    >>> dataset = targets.join(tokenized)  # TokenizedPairs of the student
    >>> batches = student_dataset(dataset, batcher, vocab.bos_id, vocab.eos_id)
    """

    def __init__(self, ids, row_splits, top_ids, top_logits, manifest=None):
        ids = np.asarray(ids, np.int64)
        row_splits = np.asarray(row_splits, np.int64)
        top_ids = np.asarray(top_ids, np.int32)
        top_logits = np.asarray(top_logits, np.float16)
        if len(row_splits) != len(ids) + 1 or row_splits[-1] != len(top_ids):
            raise ValueError(
                f"row_splits ({len(row_splits)} entries ending at "
                f"{row_splits[-1] if len(row_splits) else None}) do not fit "
                f"{len(ids)} ids and {len(top_ids)} rows."
            )
        if top_ids.shape != top_logits.shape or top_ids.ndim != 2:
            raise ValueError(
                f"top_ids {top_ids.shape} and top_logits {top_logits.shape} "
                "must both be [rows, K]."
            )
        if len(ids) > 1 and not np.all(np.diff(ids) > 0):
            raise ValueError(
                "Teacher target ids must be ascending and distinct; got "
                f"{ids[:10].tolist()}..."
            )
        self.ids = ids
        self.row_splits = row_splits
        self.top_ids = top_ids
        self.top_logits = top_logits
        self.manifest = dict(manifest or {})
        self.join_stats = {}

    def __len__(self):
        return len(self.ids)

    @property
    def top_k(self):
        return self.top_ids.shape[1]

    @property
    def lengths(self):
        """Rows (target tokens + EOS) of each pair, `[N]`."""
        return np.diff(self.row_splits)

    @classmethod
    def load(
        cls,
        directory,
        top_k=None,
        vocabulary=None,
        teacher_fingerprint=None,
        allow_incomplete=False,
        data_fingerprint=None,
        teacher_dir=None,
    ):
        """Reads a `dump_teacher` output directory.

        Args:
            directory: the targets directory (`WORK_DIR/targets`).
            top_k: K' <= the stored K (None: all stored).
            vocabulary: the student's `TaskVocabulary`; refused if the
                targets were dumped with another one.
            teacher_fingerprint: optional expected teacher fingerprint
                (`artifacts.teacher_fingerprint`); refused if the
                targets were dumped from another teacher.
            allow_incomplete: read a dump with shards still missing.
            data_fingerprint: optional `data_fingerprint` of the pairs the
                targets are for; refused if they were dumped from others.
            teacher_dir: where `teacher_fingerprint` comes from (named in
                the error message).

        Raises:
            MissingArtifactError: no manifest in `directory`.
            ArtifactError: a mismatched fingerprint, an incomplete dump, or
                a shard missing, or whose size, sha256 or records are not
                those the manifest records.
        """
        path = os.path.join(directory, MANIFEST_FILE)
        if not tf.io.gfile.exists(path):
            raise MissingArtifactError(
                f"No teacher targets in {directory!r} (missing "
                f"{MANIFEST_FILE}): run `--mode=dump_teacher` first."
            )
        try:
            with tf.io.gfile.GFile(path) as f:
                manifest = json.load(f)
        except json.JSONDecodeError as error:
            raise ArtifactError(
                f"{path} is not valid JSON ({error}): the manifest of the "
                "teacher targets is damaged. Delete the targets directory "
                "and run dump_teacher again."
            ) from None
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ArtifactError(
                f"{path}: format_version {manifest.get('format_version')!r}; "
                f"this reader reads {FORMAT_VERSION}. Dump the teacher again "
                "with this version (into a new output_dir)."
            )
        stored_k = int(manifest["top_k"])
        top_k = stored_k if top_k is None else int(top_k)
        if not 1 <= top_k <= stored_k:
            raise ConfigError(
                f"top_k={top_k} but {directory!r} stores K={stored_k}: "
                f"read at most {stored_k} (or dump again with a larger K)."
            )
        _check_fingerprints(
            manifest,
            directory,
            vocabulary=vocabulary,
            teacher_fingerprint=teacher_fingerprint,
            teacher_dir=teacher_dir,
            data_fingerprint=data_fingerprint,
        )
        shards = sorted(manifest["shards"])
        if not manifest.get("complete") and not allow_incomplete:
            raise ArtifactError(
                f"The dump in {directory!r} is incomplete ({len(shards)} of "
                f"{manifest['num_shards']} shards): run the same "
                "`dump_teacher` command again to finish it."
            )
        unrecorded = [
            n for n in shards if "sha256" not in manifest["shards"][n]
        ]
        if unrecorded:
            _warn_unrecorded(
                directory,
                "shard digests",
                f"{len(unrecorded)} shards beyond their size",
            )
        ids, lengths, id_bytes, logit_bytes = [], [], [], []
        for name in shards:
            shard_path = os.path.join(directory, name)
            problem = shard_problem(directory, name, manifest["shards"][name])
            if problem is not None:
                raise ArtifactError(
                    f"The teacher-target shard {shard_path} is damaged: "
                    f"{problem}. {REDUMP_ADVICE}"
                )
            records = tf.data.TFRecordDataset(shard_path)
            try:
                for batch in records.batch(4096).map(parse_targets):
                    if np.any(batch["top_k"].numpy() != stored_k):
                        raise ArtifactError(
                            f"The teacher-target shard {shard_path} holds "
                            f"records with K != {stored_k}, the manifest's. "
                            f"{REDUMP_ADVICE}"
                        )
                    ids.append(batch["id"].numpy())
                    lengths.append(batch["length"].numpy())
                    id_bytes.extend(batch["teacher_ids"].numpy().tolist())
                    logit_bytes.extend(batch["teacher_logits"].numpy().tolist())
            except (tf.errors.DataLossError, tf.errors.InvalidArgumentError):
                raise ArtifactError(
                    f"The teacher-target shard {shard_path} is damaged: its "
                    f"records cannot be read. {REDUMP_ADVICE}"
                ) from None
        ids = np.concatenate(ids) if ids else np.zeros([0], np.int64)
        lengths = (
            np.concatenate(lengths) if lengths else np.zeros([0], np.int64)
        )
        top_ids = np.frombuffer(b"".join(id_bytes), "<i4").reshape(-1, stored_k)
        top_logits = np.frombuffer(b"".join(logit_bytes), "<f2").reshape(
            -1, stored_k
        )
        if len(top_ids) != int(np.sum(lengths)):
            raise ArtifactError(
                f"{directory!r}: records hold {len(top_ids)} rows but their "
                f"lengths add up to {int(np.sum(lengths))}. {REDUMP_ADVICE}"
            )
        row_splits = np.concatenate([[0], np.cumsum(lengths)])
        logging.info(
            "teacher targets: %d pairs, %d positions, K=%d of %d, from %s",
            len(ids),
            len(top_ids),
            top_k,
            stored_k,
            directory,
        )
        return cls(
            ids,
            row_splits,
            np.ascontiguousarray(top_ids[:, :top_k]),
            np.ascontiguousarray(top_logits[:, :top_k]),
            manifest,
        )

    def lookup(self, pair_id):
        """`(ids int32 [T, K], logits float16 [T, K])` of one pair."""
        n = int(np.searchsorted(self.ids, pair_id))
        if n >= len(self.ids) or self.ids[n] != pair_id:
            raise KeyError(f"No teacher targets for pair id {pair_id}.")
        rows = slice(self.row_splits[n], self.row_splits[n + 1])
        return self.top_ids[rows], self.top_logits[rows]

    def join(self, tokenized, allow_missing=False):
        """The student's pairs with their teacher targets, as `tf.data`.

        Args:
            tokenized: the student's `TokenizedPairs` (same tokenization
                and length limits as the dump).
            allow_missing: drop (and count in `join_stats`) pairs without
                targets instead of raising.

        Returns:
            A `tf.data.Dataset` of `{"id", "source_ids", "target_ids",
            "teacher_ids" int32 [T, K], "teacher_logits" float32 [T, K]}`,
            `T = len(target_ids) + 1`, in the order of `tokenized`.
        """
        pair_ids = np.asarray(tokenized.ids, np.int64)
        n = np.searchsorted(self.ids, pair_ids)
        found = n < len(self.ids)
        found[found] = self.ids[n[found]] == pair_ids[found]
        missing = int(np.sum(~found))
        if missing and not allow_missing:
            examples = pair_ids[~found][:5].tolist()
            raise ArtifactError(
                f"{missing} of {len(pair_ids)} pairs have no teacher targets "
                f"(ids {examples}...): dump the teacher on the same data and "
                "limits, or pass allow_missing=True to drop them."
            )
        keep = np.flatnonzero(found)
        n = n[keep]
        rows = np.diff(self.row_splits)[n]
        expected = tokenized.target.row_lengths().numpy()[keep] + 1
        wrong = np.flatnonzero(rows != expected)
        if len(wrong):
            w = wrong[0]
            raise ArtifactError(
                f"Pair {pair_ids[keep][w]}: the teacher targets have {rows[w]} "
                f"rows but the student's target has {expected[w] - 1} tokens "
                f"+ EOS ({len(wrong)} such pairs): the dump used another "
                "tokenization or length limits."
            )
        self.join_stats = {
            "pairs": len(pair_ids),
            "joined": len(keep),
            "dropped_without_targets": missing,
        }
        if missing:
            logging.warning(
                "teacher targets: dropped %d of %d pairs without targets.",
                missing,
                len(pair_ids),
            )
            tokenized = TokenizedPairs(
                pair_ids[keep],
                tf.ragged.boolean_mask(tokenized.source, tf.constant(found)),
                tf.ragged.boolean_mask(tokenized.target, tf.constant(found)),
            )
        return self.attach(tokenized.to_dataset())

    def attach(self, dataset, allow_missing=False):
        """Adds the targets to a `tf.data` of examples with an `"id"`.

        Args:
            dataset: examples `{"id", "target_ids", ...}` (e.g.
                `TokenizedPairs.to_dataset()`).
            allow_missing: drop examples without targets instead of failing
                (a `tf.errors.InvalidArgumentError` naming the id) when
                iterating.

        Returns:
            The examples with `teacher_ids` (int32 `[T, K]`) and
            `teacher_logits` (float32 `[T, K]`), `T = len(target_ids) + 1`
            (checked per example).
        """
        table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(self.ids, tf.int64),
                tf.range(len(self.ids), dtype=tf.int64),
            ),
            default_value=-1,
        )
        row_splits = tf.constant(self.row_splits, tf.int64)
        top_ids = tf.constant(self.top_ids, tf.int32)
        top_logits = tf.constant(self.top_logits, tf.float16)

        def index_of(example):
            return table.lookup(tf.cast(example["id"], tf.int64))

        if allow_missing:
            dataset = dataset.filter(lambda e: index_of(e) >= 0)

        def add(example):
            n = index_of(example)
            check = tf.debugging.Assert(
                n >= 0, ["No teacher targets for pair id", example["id"]]
            )
            with tf.control_dependencies([check]):
                start = row_splits[tf.maximum(n, 0)]
                stop = row_splits[tf.maximum(n, 0) + 1]
            rows = tf.shape(example["target_ids"], out_type=tf.int64)[0] + 1
            check = tf.debugging.Assert(
                tf.equal(stop - start, rows),
                [
                    "Teacher targets of pair",
                    example["id"],
                    "have",
                    stop - start,
                    "rows; the student's target + EOS has",
                    rows,
                    "(another tokenization or length limits?)",
                ],
            )
            with tf.control_dependencies([check]):
                ids = top_ids[start:stop]
            logits = tf.cast(top_logits[start:stop], tf.float32)
            return {**example, "teacher_ids": ids, "teacher_logits": logits}

        return dataset.map(add, num_parallel_calls=tf.data.AUTOTUNE)


def attach_teacher_targets(
    dataset,
    targets_dir,
    split="train",
    top_k=None,
    vocabulary=None,
    allow_missing=False,
    teacher_fingerprint=None,
    teacher_dir=None,
    data_fingerprint=None,
):
    """Loads `targets_dir` and adds its targets to `dataset` by `"id"`.

    Args:
        dataset: examples `{"id", "source_ids", "target_ids"}`.
        targets_dir: a `dump_teacher` output directory.
        split: the split the targets must have been dumped from.
        top_k: K' <= the stored K (None: all).
        vocabulary: the student's `TaskVocabulary` (checked when given).
        allow_missing: drop examples without targets instead of failing.
        teacher_fingerprint: the expected teacher (checked when given).
        teacher_dir: where `teacher_fingerprint` comes from (for messages).
        data_fingerprint: `data_fingerprint` of the pairs of `dataset`
            (checked when given).
    """
    targets = TeacherTargets.load(
        targets_dir,
        top_k,
        vocabulary,
        teacher_fingerprint=teacher_fingerprint,
        teacher_dir=teacher_dir,
        data_fingerprint=data_fingerprint,
    )
    if targets.manifest.get("split") != split:
        raise ArtifactError(
            f"The teacher targets in {targets_dir!r} are of split "
            f"{targets.manifest.get('split')!r}, not {split!r}: dump the "
            f"{split!r} split (dump_teacher.run.split) or point at its "
            "targets directory."
        )
    return targets.attach(dataset, allow_missing=allow_missing)
