"""The teacher's stored top-K targets, joined with the student's pairs.

`dump_teacher` writes `WORK_DIR/targets/` (TFRecord shards plus
`manifest.json`, in the format this module owns: `MANIFEST_FILE`,
`FORMAT_VERSION`, `shard_name`, `RECORD_FEATURES` written by
`serialize_targets` and read by `parse_targets`). Two readers give the
student `{"id", "source_ids", "target_ids", "teacher_ids",
"teacher_logits"}` examples, the input of
`student_features.student_dataset`:

- `StreamingTargets` (`distill.run.stream_targets=True`, the default):
  format version 2 records carry the pair's task ids with its targets, so
  the examples are streamed straight from the shards (a few shards
  interleaved, a bounded shuffle buffer, K' sliced per record): memory does
  not grow with the dump; each worker under `tf.distribute` reads its own
  shards (auto-shard policy FILE, or `input_context`).
- `TeacherTargets.load` reads every shard into memory (a few tens of bytes
  per target position) and `join` (from `TokenizedPairs`) or `attach` (to
  any `tf.data` of examples with an `"id"`; `attach_teacher_targets` loads
  and attaches in one call) add the targets by id: an in-memory hash-table
  lookup and two slices per example. It reads dumps of both versions
  (version 1 records hold the targets only: `stream_problem` says so).

Trust: the manifest records the fingerprints of the task vocabulary, the
teacher and the tokenized pairs the targets were dumped from, and the size
and sha256 of every finished shard. Both readers refuse (`ArtifactError`)
targets of another vocabulary, teacher or data than the caller expects,
and a shard whose size or digest differs from the manifest's, before
reading a record (a shard's digest is computed once per process); a
manifest of an older dump without these fields is read with a warning.
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
# 2: records also carry the pair's `source_ids` / `target_ids` (what the
# streaming reader trains on); 1: targets only (read in memory, joined by id).
FORMAT_VERSION = 2
READABLE_VERSIONS = (1, 2)
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
# Version 2 adds the pair's task ids (int64 lists, no BOS/EOS), so a record
# is a whole training example: `StreamingTargets` needs no join.
TOKEN_FEATURES = {
    "source_ids": tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64),
    "target_ids": tf.io.RaggedFeature(tf.int64, row_splits_dtype=tf.int64),
}

# Shards whose digest matched in this process: (path, bytes, version, sha256).
_VERIFIED_SHARDS = set()


def shard_name(index, num_shards):
    """File name of shard `index` (0-based) of `num_shards`."""
    return f"targets-{index:05d}-of-{num_shards:05d}.tfrecord"


def serialize_targets(
    pair_id, top_ids, top_logits, source_ids=None, target_ids=None
):
    """One pair's targets as a serialized `tf.train.Example` (the writer's
    side of `RECORD_FEATURES`, and of `TOKEN_FEATURES` when the pair's
    `source_ids` and `target_ids` are given: a version-2 record).

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

    feature = {
        "id": ints(int(pair_id)),
        "length": ints(int(length)),
        "top_k": ints(int(k)),
        "teacher_ids": raw(top_ids),
        "teacher_logits": raw(top_logits),
    }
    if (source_ids is None) != (target_ids is None):
        raise ValueError("Give both source_ids and target_ids, or neither.")
    if source_ids is not None:
        if len(target_ids) + 1 != length:
            raise ValueError(
                f"Pair {pair_id}: {length} target rows for "
                f"{len(target_ids)} target tokens (+ EOS)."
            )
        for key, values in (
            ("source_ids", source_ids),
            ("target_ids", target_ids),
        ):
            feature[key] = tf.train.Feature(
                int64_list=tf.train.Int64List(
                    value=np.asarray(values, np.int64).tolist()
                )
            )
    example = tf.train.Example(features=tf.train.Features(feature=feature))
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


def _verify_shard(directory, name, info):
    """Raises `ArtifactError` naming shard `name` if `shard_problem` finds
    one."""
    problem = shard_problem(directory, name, info)
    if problem is not None:
        raise ArtifactError(
            f"The teacher-target shard {os.path.join(directory, name)} is "
            f"damaged: {problem}. {REDUMP_ADVICE}"
        )


def read_manifest(directory):
    """The manifest of a targets directory (`MissingArtifactError` if there
    is none, `ArtifactError` if it is not JSON)."""
    path = os.path.join(directory, MANIFEST_FILE)
    if not tf.io.gfile.exists(path):
        raise MissingArtifactError(
            f"No teacher targets in {directory!r} (missing "
            f"{MANIFEST_FILE}): run `--mode=dump_teacher` first."
        )
    try:
        with tf.io.gfile.GFile(path) as f:
            return json.load(f)
    except json.JSONDecodeError as error:
        raise ArtifactError(
            f"{path} is not valid JSON ({error}): the manifest of the "
            "teacher targets is damaged. Delete the targets directory "
            "and run dump_teacher again."
        ) from None


def _open_manifest(
    directory,
    top_k,
    vocabulary=None,
    teacher_fingerprint=None,
    teacher_dir=None,
    data_fingerprint=None,
    allow_incomplete=False,
    split=None,
):
    """The checks both readers make before reading a record: the manifest
    exists and is of a readable version, K' <= K, the fingerprints match,
    the dump is complete (unless allowed) and of `split` (when given).

    Returns:
        `(manifest, top_k)`, `top_k` resolved (None: the stored K).
    """
    manifest = read_manifest(directory)
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        raise ArtifactError(
            f"{os.path.join(directory, MANIFEST_FILE)}: format_version "
            f"{version!r}; this reader reads {list(READABLE_VERSIONS)}. Dump "
            "the teacher again with this version (into a new output_dir)."
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
    if split is not None and manifest.get("split") != split:
        raise ArtifactError(
            f"The teacher targets in {directory!r} are of split "
            f"{manifest.get('split')!r}, not {split!r}: dump the "
            f"{split!r} split (dump_teacher.run.split) or point at its "
            "targets directory."
        )
    unrecorded = [n for n in shards if "sha256" not in manifest["shards"][n]]
    if unrecorded:
        _warn_unrecorded(
            directory,
            "shard digests",
            f"{len(unrecorded)} shards beyond their size",
        )
    return manifest, top_k


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
        manifest, top_k = _open_manifest(
            directory,
            top_k,
            vocabulary=vocabulary,
            teacher_fingerprint=teacher_fingerprint,
            teacher_dir=teacher_dir,
            data_fingerprint=data_fingerprint,
            allow_incomplete=allow_incomplete,
        )
        stored_k = int(manifest["top_k"])
        shards = sorted(manifest["shards"])
        ids, lengths, id_bytes, logit_bytes = [], [], [], []
        for name in shards:
            shard_path = os.path.join(directory, name)
            _verify_shard(directory, name, manifest["shards"][name])
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


# Streaming ---------------------------------------------------------------

# Shards read at once (interleaved) and examples in the shuffle buffer of
# `StreamingTargets.dataset` when it shuffles.
STREAM_CYCLE_LENGTH = 4
STREAM_SHUFFLE_BUFFER = 16384
# Records parsed together (one vectorized parse, then unbatched).
_PARSE_BATCH = 1024


def stream_problem(directory):
    """Why the dump in `directory` cannot be streamed, or None if it can.

    Streaming needs version-2 records (with the pairs' `source_ids` and
    `target_ids`); a version-1 dump holds targets only and is read in memory
    (`TeacherTargets`), joined with the pairs by id. Looks at the manifest
    and the first record of the first shard (a damaged or missing shard is
    left to the readers' checks).

    Raises:
        MissingArtifactError: no manifest in `directory`.
    """
    manifest = read_manifest(directory)
    version = manifest.get("format_version")
    if version not in READABLE_VERSIONS:
        return None  # Refused, with its message, by the reader.
    if version < 2:
        return (
            f"it is a version-{version} dump (targets without the pairs' "
            "token ids)"
        )
    shards = sorted(manifest.get("shards", {}))
    if not shards:
        return None
    try:
        first = tf.data.TFRecordDataset(os.path.join(directory, shards[0]))
        for record in first.take(1):
            feature = tf.train.Example.FromString(record.numpy()).features
            if not all(key in feature.feature for key in TOKEN_FEATURES):
                return (
                    "its records hold no source_ids/target_ids (written "
                    "without the pairs' token ids)"
                )
    except (tf.errors.OpError, ValueError):
        return None  # The verification names the damaged shard.
    return None


class StreamingTargets:
    """Teacher targets streamed from the dump's shards, in bounded memory.

    A version-2 record holds a whole training example (the pair's task ids
    and its top-K rows), so the student's examples are read straight from
    the shards: no global join, no table of all pairs. Memory is a few
    shards' read buffers, the parse batch and the shuffle buffer,
    independent of the dump's size (tools/bench_targets.py). Reading K' <
    K slices each record's rows after decoding it.

    Trust: `open` makes `TeacherTargets.load`'s checks (fingerprints of the
    vocabulary, teacher and data; complete dump; split) and, with
    `verify=True`, checks every shard's size and sha256 against the
    manifest before any record is streamed (hashing the whole dump once per
    process: the time is in docs/PERFORMANCE.md); `dataset` checks again
    the shards it reads (a `stat` per shard once hashed in this process).
    A shard changed *after* that check is still caught by TFRecord's
    per-record CRCs (`tf.errors.DataLossError` while iterating) and by the
    per-record checks of `dataset` (K, row counts, byte sizes:
    `tf.errors.InvalidArgumentError`), not by its digest.

    Order: without a seed, shard after shard in the dump's order
    (`cycle_length=1`: the order of the training pairs, i.e. of
    `TeacherTargets.join`). With a seed: each pass over the data takes the
    shards in a new seeded order, reads `cycle_length` of them interleaved
    (round robin, deterministic) and shuffles the serialized records in a
    buffer of `shuffle_buffer`. The order is a function of the seed only, so
    `fit_resumable`'s contract holds (a step's batches depend only on the
    step); it is not the in-memory path's order, which shuffles all pairs
    at once (a buffer of the whole data set).

    Example:
    >>> targets = StreamingTargets.open("work/targets", top_k=4,
    ...                                 vocabulary=vocab, split="train")
    >>> examples = targets.dataset(seed=0, repeat=True)
    >>> batches = student_dataset(examples, batcher, vocab.bos_id,
    ...                           vocab.eos_id)
    """

    def __init__(self, directory, manifest, top_k):
        self.directory = directory
        self.manifest = dict(manifest)
        self.stored_k = int(manifest["top_k"])
        self.top_k = int(top_k)
        self.shards = sorted(manifest["shards"])

    @classmethod
    def open(
        cls,
        directory,
        top_k=None,
        vocabulary=None,
        teacher_fingerprint=None,
        teacher_dir=None,
        data_fingerprint=None,
        split=None,
        allow_incomplete=False,
        verify=True,
    ):
        """Checks a `dump_teacher` output directory for streaming.

        Args: as `TeacherTargets.load`, plus
            split: the split the targets must be of (None: any).
            verify: check every shard's size and sha256 now (False: each
                `dataset` checks the shards it reads, e.g. one worker's).

        Raises:
            MissingArtifactError: no manifest in `directory`.
            ArtifactError: what `TeacherTargets.load` refuses, and a dump
                that cannot be streamed (`stream_problem`: version 1).
        """
        manifest, top_k = _open_manifest(
            directory,
            top_k,
            vocabulary=vocabulary,
            teacher_fingerprint=teacher_fingerprint,
            teacher_dir=teacher_dir,
            data_fingerprint=data_fingerprint,
            allow_incomplete=allow_incomplete,
            split=split,
        )
        problem = stream_problem(directory)
        if problem is not None:
            raise ArtifactError(
                f"The teacher targets in {directory!r} cannot be streamed: "
                f"{problem}. Read them in memory (TeacherTargets.load; "
                "distill.run.stream_targets=False) or dump the teacher again "
                "with this version (into a new dump_teacher.run.output_dir)."
            )
        targets = cls(directory, manifest, top_k)
        if verify:
            targets.verify()
        logging.info(
            "teacher targets: streaming %d shards (%s pairs), K=%d of %d, "
            "from %s",
            len(targets.shards),
            manifest.get("num_pairs"),
            top_k,
            targets.stored_k,
            directory,
        )
        return targets

    def verify(self, shards=None):
        """Checks `shards` (default all) against the manifest's size and
        sha256 (`ArtifactError` naming the first damaged one)."""
        for name in self.shards if shards is None else shards:
            _verify_shard(self.directory, name, self.manifest["shards"][name])

    def worker_shards(self, num_workers, index):
        """The shards input pipeline `index` of `num_workers` reads: every
        `num_workers`-th from `index` (as `tf.data.Dataset.shard`)."""
        if not 0 <= index < num_workers:
            raise ValueError(f"index {index} not in [0, {num_workers}).")
        if len(self.shards) < num_workers:
            raise ConfigError(
                f"The dump in {self.directory!r} has {len(self.shards)} "
                f"shards for {num_workers} input pipelines: every pipeline "
                "needs one. Dump again with a smaller "
                "dump_teacher.run.pairs_per_shard."
            )
        return self.shards[index::num_workers]

    def dataset(
        self,
        seed=None,
        repeat=False,
        shuffle_buffer=STREAM_SHUFFLE_BUFFER,
        cycle_length=STREAM_CYCLE_LENGTH,
        input_context=None,
    ):
        """The training examples, streamed.

        Args:
            seed: None: the dump's order (shards in order, `cycle_length`
                of them interleaved); else the shards' order (per pass) and
                the example shuffle are seeded by it.
            repeat: pass over the data forever (training): every pair once
                a pass; each pass takes the shards in a new order and
                shuffles anew when shuffling.
            shuffle_buffer: records in the shuffle buffer (with a seed;
                serialized, at the stored K: a K 64 record of 30 rows is
                ~11.5 kB, so 16,384 of them ~190 MB).
            cycle_length: shards read at once, interleaved.
            input_context: a `tf.distribute.InputContext`: read only this
                input pipeline's shards (`worker_shards`) and switch
                auto-sharding off (what `distill` does:
                `distill.input_context`). Without it the dataset's
                auto-shard policy is FILE, so `experimental_distribute_dataset`
                of these examples (or of a pipeline of maps, batches and
                shuffles over them) gives each worker its own shards; TF's
                rewrite cannot pass `group_by_window` (the token-budget
                batcher), so batched pipelines need `input_context`.

        Returns:
            A `tf.data.Dataset` of `{"id" int64, "source_ids" int32 [S],
            "target_ids" int32 [T - 1], "teacher_ids" int32 [T, K'],
            "teacher_logits" float32 [T, K']}`, as `TeacherTargets.join`.
        """
        shards = self.shards
        if input_context is not None:
            shards = self.worker_shards(
                input_context.num_input_pipelines,
                input_context.input_pipeline_id,
            )
        self.verify(shards)
        paths = [os.path.join(self.directory, name) for name in shards]
        files = tf.data.Dataset.from_tensor_slices(paths)
        if seed is not None:
            files = files.shuffle(
                len(paths), seed=int(seed), reshuffle_each_iteration=True
            )
        cycle_length = max(1, min(int(cycle_length), len(paths)))
        records = files.interleave(
            tf.data.TFRecordDataset,
            cycle_length=cycle_length,
            block_length=1,
            num_parallel_calls=cycle_length,
            deterministic=True,
        )
        if seed is not None and shuffle_buffer:
            # Serialized records: one string an element shuffles faster
            # than the parsed examples (measured: 1.6x the pass's speed).
            records = records.shuffle(
                int(shuffle_buffer),
                seed=int(seed) + 1,
                reshuffle_each_iteration=True,
            )
        examples = (
            records.batch(_PARSE_BATCH)
            .map(
                self._parse,
                num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True,
            )
            .unbatch()
        )
        if repeat:  # Whole passes: every pair once, then the next pass.
            examples = examples.repeat()
        options = tf.data.Options()
        options.deterministic = True
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.FILE
            if input_context is None
            else tf.data.experimental.AutoShardPolicy.OFF
        )
        return examples.with_options(options)

    def _parse(self, records):
        """A batch of version-2 records -> ragged example tensors, with the
        teacher rows cut to K'."""
        features = tf.io.parse_example(
            records, {**RECORD_FEATURES, **TOKEN_FEATURES}
        )
        k = self.stored_k
        lengths = features["length"]
        target = features["target_ids"]
        advice = f" in {self.directory}. {REDUMP_ADVICE}"

        def byte_count(key):
            return tf.cast(tf.strings.length(features[key]), tf.int64)

        checks = [
            tf.debugging.assert_equal(
                features["top_k"],
                tf.constant(k, tf.int64),
                message=f"A teacher-target record with K != {k}{advice}",
            ),
            tf.debugging.assert_equal(
                lengths,
                target.row_lengths() + 1,
                message=(
                    "A teacher-target record whose rows are not its target "
                    f"tokens + EOS{advice}"
                ),
            ),
            tf.debugging.assert_equal(
                byte_count("teacher_ids"),
                lengths * (4 * k),
                message=f"A teacher-target record with short ids{advice}",
            ),
            tf.debugging.assert_equal(
                byte_count("teacher_logits"),
                lengths * (2 * k),
                message=f"A teacher-target record with short logits{advice}",
            ),
        ]
        with tf.control_dependencies(checks):
            ids = tf.io.decode_raw(
                tf.strings.reduce_join(features["teacher_ids"]), tf.int32
            )
            logits = tf.io.decode_raw(
                tf.strings.reduce_join(features["teacher_logits"]),
                tf.float16,
            )
        ids = tf.reshape(ids, [-1, k])[:, : self.top_k]
        logits = tf.cast(
            tf.reshape(logits, [-1, k])[:, : self.top_k], tf.float32
        )

        def ragged(rows):
            return tf.RaggedTensor.from_row_lengths(
                rows, lengths, validate=False
            )

        return {
            "id": features["id"],
            "source_ids": tf.cast(features["source_ids"], tf.int32),
            "target_ids": tf.cast(target, tf.int32),
            "teacher_ids": ragged(ids),
            "teacher_logits": ragged(logits),
        }
