"""Parallel text pairs from files or TFDS, with a stable integer id each."""

import collections
import gzip
import os

import numpy as np
import tensorflow as tf
from absl import logging

from bertkd_tf.errors import ConfigError, DataError, MissingInputError


def _open_binary(path):
    return gzip.open(path, "rb") if path.endswith(".gz") else open(path, "rb")


def _resolve(data_dir, split, language):
    """`<data_dir>/<split>.<language>`, or the same with `.gz`."""
    plain = os.path.join(data_dir, f"{split}.{language}")
    for candidate in (plain, plain + ".gz"):
        if os.path.exists(candidate):
            return candidate
    raise FileNotFoundError(
        f"No file for split {split!r}, language {language!r}: expected "
        f"{plain} or {plain}.gz (data_dir={data_dir!r}). Check DATA_DIR "
        "(the task's data_dir) and the task's split names and languages."
    )


def _decode(raw, path, line_number):
    try:
        return raw.decode("utf-8").rstrip("\r\n").strip()
    except UnicodeDecodeError as error:
        raise DataError(
            f"{path}:{line_number}: not valid UTF-8 ({error.reason} at byte "
            f"{error.start}); the corpus must be UTF-8 text."
        ) from None


def _count_rest(handle):
    return sum(1 for _ in handle)


class TextPairs:
    """Source/target text pairs held in memory, each with a stable `id`.

    The `id` of a pair is its 0-based line number in the files (or its index
    in the TFDS split), so it stays the same whatever is dropped; later
    stages join teacher targets to pairs by it. Pairs with an empty source
    or target are dropped and counted in `stats`.

    Args:
        ids: int64 array of pair ids.
        sources: list of source strings.
        targets: list of target strings.
        stats: dict of counts: `read`, `kept`, `dropped_<reason>`.
        name: where the pairs came from (for messages).

    Example:
    >>> pairs = read_text_pairs("data/multi30k", "train", "de", "en")
    >>> len(pairs), pairs.stats["kept"]
    (29000, 29000)
    >>> dataset = pairs.to_dataset()  # {"id", "source", "target"}
    """

    def __init__(self, ids, sources, targets, stats=None, name=""):
        if not len(ids) == len(sources) == len(targets):
            raise ValueError(
                f"ids, sources and targets differ in length: {len(ids)}, "
                f"{len(sources)}, {len(targets)}."
            )
        self.ids = np.asarray(ids, dtype=np.int64)
        self.sources = list(sources)
        self.targets = list(targets)
        self.stats = dict(stats or {"read": len(ids), "kept": len(ids)})
        self.name = name

    def __len__(self):
        return len(self.ids)

    def to_dataset(self):
        """A `tf.data.Dataset` of `{"id", "source", "target"}`."""
        return tf.data.Dataset.from_tensor_slices(
            {
                "id": self.ids,
                "source": tf.constant(self.sources, dtype=tf.string),
                "target": tf.constant(self.targets, dtype=tf.string),
            }
        )

    def take(self, count):
        """The first `count` pairs (e.g. a documented subset)."""
        return TextPairs(
            self.ids[:count],
            self.sources[:count],
            self.targets[:count],
            {**self.stats, "kept": min(count, len(self))},
            self.name,
        )


def _log_stats(name, stats):
    logging.info(
        "%s: %s",
        name,
        ", ".join(f"{key}={value}" for key, value in stats.items()),
    )


def _collect(rows, name):
    """Keeps non-empty pairs from `(id, source, target)` rows; counts drops."""
    ids, sources, targets = [], [], []
    stats = collections.Counter()
    for pair_id, source, target in rows:
        stats["read"] += 1
        if not source:
            stats["dropped_empty_source"] += 1
        elif not target:
            stats["dropped_empty_target"] += 1
        else:
            ids.append(pair_id)
            sources.append(source)
            targets.append(target)
    stats["kept"] = len(ids)
    ordered = {"read": stats.pop("read", 0), "kept": stats.pop("kept")}
    ordered.update(sorted(stats.items()))
    _log_stats(name, ordered)
    return TextPairs(ids, sources, targets, ordered, name)


def _file_rows(source_path, target_path):
    with _open_binary(source_path) as src, _open_binary(target_path) as tgt:
        line_number = 0
        while True:
            raw_source, raw_target = src.readline(), tgt.readline()
            if not raw_source or not raw_target:
                if raw_source or raw_target:
                    source_count = line_number + bool(raw_source)
                    target_count = line_number + bool(raw_target)
                    source_count += _count_rest(src)
                    target_count += _count_rest(tgt)
                    raise DataError(
                        "Parallel files differ in line count: "
                        f"{source_path} has {source_count} lines, "
                        f"{target_path} has {target_count}. Line i of one "
                        "must translate line i of the other: fix or "
                        "re-extract the corpus."
                    )
                return
            line_number += 1
            yield (
                line_number - 1,
                _decode(raw_source, source_path, line_number),
                _decode(raw_target, target_path, line_number),
            )


def read_text_pairs(
    data_dir, split, source_language, target_language, max_pairs=None
):
    """Reads `<data_dir>/<split>.<lang>` (plain or `.gz`) into `TextPairs`.

    Args:
        data_dir: the corpus directory.
        split: file stem, e.g. `"train"`, `"valid"`, `"val"`.
        source_language: source file suffix, e.g. `"de"`.
        target_language: target file suffix, e.g. `"en"`.
        max_pairs: read at most this many lines (None: all).

    Raises:
        FileNotFoundError: a file is missing (both candidate names quoted).
        DataError (a ValueError): line counts differ (both files and
            counts named), or a line is not UTF-8 (file and line named).
    """
    source_path = _resolve(data_dir, split, source_language)
    target_path = _resolve(data_dir, split, target_language)
    rows = _file_rows(source_path, target_path)
    if max_pairs is not None:
        rows = (row for row in rows if row[0] < max_pairs)
    name = f"{data_dir}/{split}.{{{source_language},{target_language}}}"
    return _collect(rows, name)


def read_tfds_pairs(
    name,
    split,
    source_key,
    target_key,
    data_dir=None,
    download=False,
    max_pairs=None,
):
    """Reads a TFDS catalogue dataset into `TextPairs`.

    Translation datasets (`wmt14_translate/de-en`,
    `ted_hrlr_translate/pt_to_en`) use language codes as keys;
    summarization ones use `article`/`highlights` (`cnn_dailymail`) or
    `document`/`summary` (`gigaword`). The id is the example's index in the
    split (files read in order).

    Args:
        name: TFDS name, e.g. `"wmt14_translate/de-en"`.
        split: TFDS split, e.g. `"train"`, `"validation"`.
        source_key: feature holding the source text, e.g. `"de"`.
        target_key: feature holding the target text, e.g. `"en"`.
        data_dir: TFDS data directory (None: TFDS' default).
        download: whether TFDS may download and prepare the data (off by
            default: runs never touch the network unless asked).
        max_pairs: read at most this many examples.

    Raises:
        MissingInputError (a FileNotFoundError): the dataset is not
            prepared in `data_dir` and `download` is off; names the gin
            settings (`task.Task.download`, `task.Task.data_dir`) and
            `tools/get_data/fetch.py`.
        ConfigError: TFDS has no dataset `name`.
    """
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise ConfigError(
            f"TFDS has no dataset {name!r} (task.Task.tfds_name): check the "
            "name against the TFDS catalogue "
            "(https://www.tensorflow.org/datasets/catalog)."
        ) from None
    if download:
        builder.download_and_prepare()
    elif not builder.is_prepared():
        raise MissingInputError(
            f"The TFDS dataset {name!r} (version {builder.info.version}) is "
            f"not prepared in {builder.data_dir_root} (task.Task.data_dir, "
            "set by DATA_DIR), and the task may not download it "
            "(task.Task.download = False, the default: runs never touch the "
            "network unless asked). Prepare it once with `python "
            f"tools/get_data/fetch.py tfds:{name} DATA_DIR` (network), or "
            "let the run download it with "
            "--gin_bindings='task.Task.download = True', or point DATA_DIR "
            "at the TFDS data directory that holds it."
        )
    dataset = builder.as_dataset(split=split, shuffle_files=False)
    keys = set(dataset.element_spec)
    for key, role in ((source_key, "source_key"), (target_key, "target_key")):
        if key not in keys:
            raise ValueError(
                f"{role}={key!r} is not a feature of TFDS dataset {name!r}; "
                f"its features are {sorted(keys)}."
            )
    if max_pairs is not None:
        dataset = dataset.take(max_pairs)

    def rows():
        for index, example in enumerate(tfds.as_numpy(dataset)):
            yield (
                index,
                example[source_key].decode("utf-8").strip(),
                example[target_key].decode("utf-8").strip(),
            )

    return _collect(rows(), f"tfds:{name}[{split}]")
