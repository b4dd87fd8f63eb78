"""TeacherTargets: reading dumps, K' <= K, joining and aligning by id."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.data.batching import TokenBudgetBatcher
from bertkd_tf.data.student_features import student_dataset
from bertkd_tf.data.task_vocabulary import TaskVocabulary
from bertkd_tf.data.teacher_targets import (
    TeacherTargets,
    attach_teacher_targets,
)
from bertkd_tf.data.text_pairs import read_text_pairs
from bertkd_tf.data.tokenized_pairs import TokenizedPairs
from bertkd_tf.errors import ArtifactError
from bertkd_tf.runs import dump_teacher

K = 8


def _fake_rows(labels, k, vocabulary_size):
    """Top-K rows whose best id is the label; logits descending."""
    length = len(labels)
    ids = (labels[:, None] + np.arange(k)[None, :]) % vocabulary_size
    logits = 10.0 - np.arange(k)[None, :] - 0.01 * np.arange(length)[:, None]
    return ids.astype(np.int32), logits.astype(np.float16)


def _write_dump(
    directory,
    tokenized,
    vocab,
    k=K,
    skip=(),
    shards=2,
    complete=True,
    split="train",
):
    """A dump as `dump_teacher` writes it, with made-up rows."""
    os.makedirs(directory, exist_ok=True)
    per_shard = -(-len(tokenized) // shards)
    manifest = {
        "format_version": dump_teacher.FORMAT_VERSION,
        "split": split,
        "teacher_fingerprint": "t" * 64,
        "vocabulary_fingerprint": vocab.fingerprint,
        "data_fingerprint": dump_teacher.data_fingerprint(tokenized),
        "top_k": k,
        "num_passes": 7,
        "compute_dtype": "float32",
        "num_pairs": len(tokenized),
        "pairs_per_shard": per_shard,
        "num_shards": shards,
        "shards": {},
        "complete": complete,
    }
    for s in range(shards if complete else shards - 1):
        records = []
        for n in range(s * per_shard, min((s + 1) * per_shard, len(tokenized))):
            pair_id = int(tokenized.ids[n])
            if pair_id in skip:
                continue
            labels = np.append(tokenized.target[n].numpy(), vocab.eos_id)
            records.append(
                dump_teacher.serialize_targets(
                    pair_id, *_fake_rows(labels, k, vocab.size)
                )
            )
        name = dump_teacher.shard_name(s, shards)
        info = dump_teacher._write_records(
            os.path.join(directory, name), records
        )
        manifest["shards"][name] = {"pairs": len(records), **info}
    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return directory


@pytest.fixture
def tokenized(tiny_corpus, tiny_vocab):
    pairs = read_text_pairs(tiny_corpus, "train", "de", "en")
    return TokenizedPairs.from_pairs(pairs, tiny_vocab, 24, 24)


def test_reads_every_pair_with_stored_k(tmp_path, tokenized, tiny_vocab):
    directory = _write_dump(str(tmp_path / "t"), tokenized, tiny_vocab)
    targets = TeacherTargets.load(directory, vocabulary=tiny_vocab)
    assert len(targets) == len(tokenized) == 40
    assert targets.top_k == K
    np.testing.assert_array_equal(targets.ids, tokenized.ids)
    np.testing.assert_array_equal(targets.lengths, tokenized.lengths()[1] + 1)
    labels = np.append(tokenized.target[5].numpy(), tiny_vocab.eos_id)
    ids, logits = targets.lookup(int(tokenized.ids[5]))
    want_ids, want_logits = _fake_rows(labels, K, tiny_vocab.size)
    np.testing.assert_array_equal(ids, want_ids)
    np.testing.assert_array_equal(logits, want_logits)
    with pytest.raises(KeyError, match="pair id 999"):
        targets.lookup(999)


def test_reading_k4_from_k8(tmp_path, tokenized, tiny_vocab):
    directory = _write_dump(str(tmp_path / "t"), tokenized, tiny_vocab)
    full = TeacherTargets.load(directory)
    four = TeacherTargets.load(directory, top_k=4)
    assert four.top_k == 4
    np.testing.assert_array_equal(four.top_ids, full.top_ids[:, :4])
    np.testing.assert_array_equal(four.top_logits, full.top_logits[:, :4])
    example = next(iter(four.join(tokenized)))
    assert example["teacher_ids"].shape == (len(example["target_ids"]) + 1, 4)
    assert example["teacher_logits"].dtype == tf.float32
    with pytest.raises(ValueError, match="top_k=9 but .* stores K=8"):
        TeacherTargets.load(directory, top_k=9)


@pytest.fixture(scope="module")
def real_dump(tmp_path_factory):
    """A dump written by `dump_teacher.run` (random tiny teacher, P=64 so
    every copy masks exactly one slot) and the teacher it came from."""
    from tests.conftest import TINY_CORPUS
    from tests.dumps import make_dumped_work_dir, tiny_vocabulary

    work_dir = str(tmp_path_factory.mktemp("real_dump") / "work")
    vocab = tiny_vocabulary()
    teacher = make_dumped_work_dir(
        work_dir, vocab, TINY_CORPUS, top_k=4, num_passes=64
    )
    return os.path.join(work_dir, "targets"), teacher, vocab


def _best_with_each_slot_masked(teacher, preprocessor, source, target):
    """Per target slot `t` (EOS slot last): the teacher's best id and its
    margin over the second best, in one pass of copies that each mask only
    slot `t` (no padding)."""
    packed = preprocessor.pack(
        tf.constant(source, tf.int32), tf.constant(target, tf.int32)
    )
    rows = len(target) + 1
    positions = int(packed["target_start"]) + np.arange(rows)
    token_ids = np.tile(packed["token_ids"].numpy(), (rows, 1))
    token_ids[np.arange(rows), positions] = preprocessor.mask_token_id
    logits = teacher(
        {
            "token_ids": token_ids,
            "segment_ids": np.tile(packed["segment_ids"].numpy(), (rows, 1)),
            "padding_mask": np.tile(packed["padding_mask"].numpy(), (rows, 1)),
            "mask_positions": positions[:, None].astype("int32"),
        },
        training=False,
    ).numpy()[:, 0]
    top2 = np.sort(logits, axis=-1)[:, -2:]
    return logits.argmax(-1), top2[:, 1] - top2[:, 0]


def test_alignment_with_student_labels(real_dump, tokenized):
    """Row t of a real dump, read and batched with the student's labels,
    is the teacher's prediction for label t: its top-1 is the argmax of the
    teacher with exactly that target slot masked (the EOS slot last)."""
    from bertkd_tf.models.cmlm_preprocessor import CMLMPreprocessor

    directory, teacher, vocab = real_dump
    targets = TeacherTargets.load(directory, top_k=3, vocabulary=vocab)
    dataset = targets.join(tokenized)
    assert targets.join_stats == {
        "pairs": 40,
        "joined": 40,
        "dropped_without_targets": 0,
    }
    preprocessor = CMLMPreprocessor(vocab.bert_ids, max_sequence_length=64)
    expected = {}
    for n in range(len(tokenized)):
        source = tokenized.source[n].numpy()
        target = tokenized.target[n].numpy()
        key = (tuple(source) + (vocab.eos_id,), tuple(target) + (vocab.eos_id,))
        expected[key] = _best_with_each_slot_masked(
            teacher, preprocessor, source, target
        )
    batcher = TokenBudgetBatcher(256, [16, 32], drop_remainder=False)
    batches = student_dataset(dataset, batcher, vocab.bos_id, vocab.eos_id)
    seen = checked = 0
    for x, y, sample_weight in batches:
        labels = y["labels"].numpy()
        assert y["teacher_ids"].shape == labels.shape + (3,)
        assert y["teacher_logits"].shape == labels.shape + (3,)
        real = sample_weight.numpy() > 0
        assert np.all(y["teacher_logits"].numpy()[~real] == 0)
        assert np.all(y["teacher_ids"].numpy()[~real] == 0)
        encoder = x["encoder_token_ids"].numpy()
        encoder_real = x["encoder_padding_mask"].numpy() > 0
        for row in range(len(labels)):
            key = (
                tuple(encoder[row][encoder_real[row]]),
                tuple(labels[row][real[row]]),
            )
            best, margin = expected[key]
            top1 = y["teacher_ids"].numpy()[row, real[row], 0]
            clear = margin > 1e-4  # float32 near-ties may go either way
            np.testing.assert_array_equal(top1[clear], best[clear])
            checked += int(clear.sum())
            # Rows are sorted by logit, highest first.
            row_logits = y["teacher_logits"].numpy()[row, real[row]]
            assert np.all(np.diff(row_logits, axis=-1) <= 0)
        last = real.sum(axis=1) - 1
        assert np.all(labels[np.arange(len(labels)), last] == vocab.eos_id)
        # Labels are the decoder inputs shifted by one (BOS first).
        decoder = x["decoder_token_ids"].numpy()
        np.testing.assert_array_equal(
            decoder[:, 1:][real[:, 1:]], labels[:, :-1][real[:, 1:]]
        )
        seen += len(labels)
    assert seen == 40
    assert checked >= 0.95 * int(targets.lengths.sum())


def test_attach_to_a_dataset(tmp_path, tokenized, tiny_vocab):
    directory = _write_dump(str(tmp_path / "t"), tokenized, tiny_vocab)
    dataset = attach_teacher_targets(
        tokenized.to_dataset().shuffle(40, seed=1),
        directory,
        top_k=2,
        vocabulary=tiny_vocab,
    )
    targets = TeacherTargets.load(directory, top_k=2)
    count = 0
    for example in dataset:
        ids, logits = targets.lookup(int(example["id"]))
        np.testing.assert_array_equal(example["teacher_ids"], ids)
        np.testing.assert_array_equal(
            example["teacher_logits"], logits.astype("float32")
        )
        count += 1
    assert count == 40
    with pytest.raises(ValueError, match="of split 'train', not 'valid'"):
        attach_teacher_targets(tokenized.to_dataset(), directory, "valid")


def test_missing_pairs_refused_unless_allowed(tmp_path, tokenized, tiny_vocab):
    missing = {int(tokenized.ids[3]), int(tokenized.ids[30])}
    directory = _write_dump(
        str(tmp_path / "t"), tokenized, tiny_vocab, skip=missing
    )
    targets = TeacherTargets.load(directory)
    with pytest.raises(ValueError, match="2 of 40 pairs have no teacher"):
        targets.join(tokenized)
    dataset = targets.join(tokenized, allow_missing=True)
    assert targets.join_stats["dropped_without_targets"] == 2
    ids = [int(e["id"]) for e in dataset]
    assert len(ids) == 38 and not missing & set(ids)
    # The tf.data path: an error naming the pair, or the pair dropped.
    with pytest.raises(tf.errors.InvalidArgumentError, match="No teacher"):
        list(targets.attach(tokenized.to_dataset()))
    kept = targets.attach(tokenized.to_dataset(), allow_missing=True)
    assert sorted(int(e["id"]) for e in kept) == sorted(ids)


def test_other_tokenization_refused(tmp_path, tokenized, tiny_vocab):
    directory = _write_dump(str(tmp_path / "t"), tokenized, tiny_vocab)
    targets = TeacherTargets.load(directory)
    shorter = TokenizedPairs(
        tokenized.ids, tokenized.source, tokenized.target[:, :3]
    )
    with pytest.raises(ValueError, match="rows but the student's target"):
        targets.join(shorter)
    with pytest.raises(tf.errors.InvalidArgumentError, match="rows"):
        list(targets.attach(shorter.to_dataset()))


def test_other_vocabulary_or_incomplete_refused(
    tmp_path, tokenized, tiny_vocab
):
    directory = _write_dump(str(tmp_path / "t"), tokenized, tiny_vocab)
    other = TaskVocabulary(
        tiny_vocab.tokenizer, tiny_vocab.bert_ids[:-1], tiny_vocab.counts[:-1]
    )
    with pytest.raises(ValueError, match="another task vocabulary"):
        TeacherTargets.load(directory, vocabulary=other)
    with pytest.raises(ArtifactError, match="another teacher"):
        TeacherTargets.load(directory, teacher_fingerprint="0" * 64)
    partial = _write_dump(
        str(tmp_path / "p"), tokenized, tiny_vocab, complete=False
    )
    with pytest.raises(ValueError, match=r"incomplete \(1 of 2 shards\)"):
        TeacherTargets.load(partial)
    half = TeacherTargets.load(partial, allow_incomplete=True)
    assert len(half) == 20
    with pytest.raises(FileNotFoundError, match="dump_teacher"):
        TeacherTargets.load(str(tmp_path / "none"))


# Fingerprints and damaged shards (issue 16) -----------------------------------


def test_other_teacher_or_data_refused_naming_both_fingerprints(
    tmp_path, tokenized, tiny_vocab
):
    directory = _write_dump(str(tmp_path / "t"), tokenized, tiny_vocab)
    with pytest.raises(ArtifactError) as error:
        attach_teacher_targets(
            tokenized.to_dataset(),
            directory,
            teacher_fingerprint="0" * 64,
            teacher_dir="/w/teacher",
        )
    message = str(error.value)
    assert "t" * 64 in message and "0" * 64 in message
    assert "/w/teacher" in message and "targets_dir" in message
    # Same ids and lengths, other tokens: only the data fingerprint sees it.
    other = TokenizedPairs(
        tokenized.ids,
        tokenized.source,
        tf.ragged.map_flat_values(lambda v: v + 1, tokenized.target),
    )
    other_fingerprint = dump_teacher.data_fingerprint(other)
    with pytest.raises(ArtifactError, match="other pairs") as error:
        attach_teacher_targets(
            other.to_dataset(), directory, data_fingerprint=other_fingerprint
        )
    assert other_fingerprint in str(error.value)
    assert dump_teacher.data_fingerprint(tokenized) in str(error.value)
    attach_teacher_targets(
        tokenized.to_dataset(),
        directory,
        vocabulary=tiny_vocab,
        teacher_fingerprint="t" * 64,
        data_fingerprint=dump_teacher.data_fingerprint(tokenized),
    )


def _rewrite_manifest(directory, change):
    path = os.path.join(directory, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    change(manifest)
    with open(path, "w") as f:
        json.dump(manifest, f)


def test_old_manifest_without_fingerprints_or_digests_warns(
    tmp_path, tokenized, tiny_vocab, caplog
):
    directory = _write_dump(str(tmp_path / "t"), tokenized, tiny_vocab)

    def make_old(manifest):
        for key in ("teacher_fingerprint", "data_fingerprint"):
            del manifest[key]
        for info in manifest["shards"].values():
            del info["sha256"]

    _rewrite_manifest(directory, make_old)
    with caplog.at_level("WARNING"):
        targets = TeacherTargets.load(
            directory,
            vocabulary=tiny_vocab,
            teacher_fingerprint="0" * 64,
            data_fingerprint="1" * 64,
        )
    assert len(targets) == 40
    warnings = caplog.text
    for field in ("teacher fingerprint", "data fingerprint", "shard digests"):
        assert f"records no {field}" in warnings, field


def _damage(path, how):
    with open(path, "r+b") as f:
        if how == "truncate":
            f.truncate(os.path.getsize(path) - 7)
        else:  # flip one bit in the middle of a record's payload
            f.seek(os.path.getsize(path) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x10]))


@pytest.mark.parametrize(
    "how, what",
    [("truncate", r"bytes, the manifest records"), ("flip", "sha256")],
)
def test_damaged_shard_refused_naming_it(
    tmp_path, tokenized, tiny_vocab, how, what
):
    directory = _write_dump(str(tmp_path / "t"), tokenized, tiny_vocab)
    assert len(TeacherTargets.load(directory)) == 40  # digests now cached
    shard = os.path.join(directory, dump_teacher.shard_name(1, 2))
    _damage(shard, how)
    with pytest.raises(ArtifactError, match=what) as error:
        TeacherTargets.load(directory)
    message = str(error.value)
    assert shard in message
    assert "re-run dump_teacher with the same command" in message.lower()


def test_unreadable_shard_of_old_dump_refused_naming_it(
    tmp_path, tokenized, tiny_vocab
):
    """Without recorded digests, a bit flip is still reported by name."""
    directory = _write_dump(str(tmp_path / "t"), tokenized, tiny_vocab)

    def make_old(manifest):
        for info in manifest["shards"].values():
            del info["sha256"]

    _rewrite_manifest(directory, make_old)
    shard = os.path.join(directory, dump_teacher.shard_name(0, 2))
    _damage(shard, "flip")
    with pytest.raises(ArtifactError, match="cannot be read") as error:
        TeacherTargets.load(directory)
    assert shard in str(error.value)
