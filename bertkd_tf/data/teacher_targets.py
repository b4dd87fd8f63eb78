"""The teacher's stored top-K targets, joined with the student's pairs.

`dump_teacher` writes `WORK_DIR/targets/` (TFRecord shards plus
`manifest.json`); `TeacherTargets.load` reads them into memory (a few tens
of bytes per target position) and `join` (from `TokenizedPairs`) or
`attach` (to any `tf.data` of examples with an `"id"`;
`attach_teacher_targets` loads and attaches in one call) give the student
`{"id", "source_ids", "target_ids", "teacher_ids", "teacher_logits"}`
examples, the input of
`student_features.student_dataset`. The join is an in-memory hash-table
lookup and two slices per example: no file I/O while training.
"""

import json
import os

import numpy as np
import tensorflow as tf
from absl import logging

from bertkd_tf.data.tokenized_pairs import TokenizedPairs

MANIFEST_FILE = "manifest.json"
FORMAT_VERSION = 1

_FEATURES = {
    "id": tf.io.FixedLenFeature([], tf.int64),
    "length": tf.io.FixedLenFeature([], tf.int64),
    "top_k": tf.io.FixedLenFeature([], tf.int64),
    "teacher_ids": tf.io.FixedLenFeature([], tf.string),
    "teacher_logits": tf.io.FixedLenFeature([], tf.string),
}


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
    ):
        """Reads a `dump_teacher` output directory.

        Args:
            directory: the targets directory (`WORK_DIR/targets`).
            top_k: K' <= the stored K (None: all stored).
            vocabulary: the student's `TaskVocabulary`; refused if the
                targets were dumped with another one.
            teacher_fingerprint: optional expected teacher fingerprint.
            allow_incomplete: read a dump with shards still missing.
        """
        path = os.path.join(directory, MANIFEST_FILE)
        if not tf.io.gfile.exists(path):
            raise FileNotFoundError(
                f"No teacher targets in {directory!r} (missing "
                f"{MANIFEST_FILE}): run `--mode=dump_teacher` first."
            )
        with tf.io.gfile.GFile(path) as f:
            manifest = json.load(f)
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(
                f"{path}: format_version {manifest.get('format_version')!r}; "
                f"this reader reads {FORMAT_VERSION}."
            )
        stored_k = int(manifest["top_k"])
        top_k = stored_k if top_k is None else int(top_k)
        if not 1 <= top_k <= stored_k:
            raise ValueError(
                f"top_k={top_k} but {directory!r} stores K={stored_k}: "
                f"read at most {stored_k} (or dump again with a larger K)."
            )
        if (
            vocabulary is not None
            and vocabulary.fingerprint != manifest["vocabulary_fingerprint"]
        ):
            raise ValueError(
                f"The targets in {directory!r} were dumped with another task "
                f"vocabulary (fingerprint {manifest['vocabulary_fingerprint']}"
                f", the student's is {vocabulary.fingerprint}): their ids "
                "would mean other tokens. Dump the teacher again."
            )
        if (
            teacher_fingerprint is not None
            and teacher_fingerprint != manifest["teacher_fingerprint"]
        ):
            raise ValueError(
                f"The targets in {directory!r} come from teacher "
                f"{manifest['teacher_fingerprint']}, not the expected "
                f"{teacher_fingerprint}."
            )
        shards = sorted(manifest["shards"])
        if not manifest.get("complete") and not allow_incomplete:
            raise ValueError(
                f"The dump in {directory!r} is incomplete ({len(shards)} of "
                f"{manifest['num_shards']} shards): run the same "
                "`dump_teacher` command again to finish it."
            )
        ids, lengths, id_bytes, logit_bytes = [], [], [], []
        for name in shards:
            records = tf.data.TFRecordDataset(os.path.join(directory, name))
            for batch in records.batch(4096).map(
                lambda r: tf.io.parse_example(r, _FEATURES)
            ):
                if np.any(batch["top_k"].numpy() != stored_k):
                    raise ValueError(f"{name}: records with K != {stored_k}.")
                ids.append(batch["id"].numpy())
                lengths.append(batch["length"].numpy())
                id_bytes.extend(batch["teacher_ids"].numpy().tolist())
                logit_bytes.extend(batch["teacher_logits"].numpy().tolist())
        ids = np.concatenate(ids) if ids else np.zeros([0], np.int64)
        lengths = (
            np.concatenate(lengths) if lengths else np.zeros([0], np.int64)
        )
        top_ids = np.frombuffer(b"".join(id_bytes), "<i4").reshape(-1, stored_k)
        top_logits = np.frombuffer(b"".join(logit_bytes), "<f2").reshape(
            -1, stored_k
        )
        if len(top_ids) != int(np.sum(lengths)):
            raise ValueError(
                f"{directory!r}: records hold {len(top_ids)} rows but their "
                f"lengths add up to {int(np.sum(lengths))}."
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
            raise ValueError(
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
            raise ValueError(
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
):
    """Loads `targets_dir` and adds its targets to `dataset` by `"id"`.

    Args:
        dataset: examples `{"id", "source_ids", "target_ids"}`.
        targets_dir: a `dump_teacher` output directory.
        split: the split the targets must have been dumped from.
        top_k: K' <= the stored K (None: all).
        vocabulary: the student's `TaskVocabulary` (checked when given).
        allow_missing: drop examples without targets instead of failing.
    """
    targets = TeacherTargets.load(targets_dir, top_k, vocabulary)
    if targets.manifest.get("split") != split:
        raise ValueError(
            f"The targets in {targets_dir!r} are of split "
            f"{targets.manifest.get('split')!r}, not {split!r}."
        )
    return targets.attach(dataset, allow_missing=allow_missing)
