"""distill refuses teacher targets of another vocabulary, teacher or data.

The checks run when the targets are attached, before the student is built:
`build_student` is replaced by a stand-in that stops the run, so reaching it
means the targets were accepted.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.data.task import Task
from bertkd_tf.data.task_vocabulary import TaskVocabulary
from bertkd_tf.data.tokenized_pairs import TokenizedPairs
from bertkd_tf.errors import ArtifactError
from bertkd_tf.runs import distill, dump_teacher

K = 4


class _ReachedTraining(Exception):
    """The targets were accepted: the run got to building the student."""


@pytest.fixture(autouse=True)
def stop_before_training(monkeypatch):
    def build_student(*args, **kwargs):
        raise _ReachedTraining()

    monkeypatch.setattr(distill, "build_student", build_student)


def _task(tiny_corpus):
    return Task(
        tiny_corpus, "de", "en", max_source_length=24, max_target_length=24
    )


def _tokenized(tiny_corpus, vocab):
    task = _task(tiny_corpus)
    return TokenizedPairs.from_pairs(task.read("train"), vocab, 24, 24)


def _save_fake_teacher(directory, weights):
    """`teacher_fingerprint` hashes these two files' bytes."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "teacher_config.json"), "w") as f:
        f.write('{"class_name": "CMLMTeacher"}')
    with open(os.path.join(directory, "final.weights.h5"), "wb") as f:
        f.write(weights)
    return dump_teacher.teacher_fingerprint(directory)


def _write_targets(directory, tokenized, vocab, **fingerprints):
    """A one-shard dump as `dump_teacher` writes it, with made-up rows."""
    os.makedirs(directory)
    records = []
    for n in range(len(tokenized)):
        rows = len(tokenized.target[n]) + 1
        ids = np.arange(rows * K, dtype=np.int32).reshape(rows, K) % vocab.size
        logits = np.tile(np.arange(K, 0, -1, dtype=np.float16), [rows, 1])
        records.append(
            dump_teacher.serialize_targets(int(tokenized.ids[n]), ids, logits)
        )
    name = dump_teacher.shard_name(0, 1)
    info = dump_teacher._write_records(os.path.join(directory, name), records)
    manifest = {
        "format_version": dump_teacher.FORMAT_VERSION,
        "split": "train",
        "teacher_fingerprint": "t" * 64,
        "vocabulary_fingerprint": vocab.fingerprint,
        "data_fingerprint": dump_teacher.data_fingerprint(tokenized),
        "top_k": K,
        "num_passes": 7,
        "compute_dtype": "float32",
        "num_pairs": len(tokenized),
        "pairs_per_shard": len(tokenized),
        "num_shards": 1,
        "shards": {name: {"pairs": len(records), **info}},
        "complete": True,
    }
    manifest.update(fingerprints)
    for key in [k for k, v in manifest.items() if v is None]:
        del manifest[key]  # an older dump's manifest
    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return directory


@pytest.fixture
def work_dir(tmp_path, tiny_vocab, tiny_corpus):
    """vocab/, a (fake) teacher/ and targets/ that match both."""
    work_dir = str(tmp_path / "work")
    tiny_vocab.save(os.path.join(work_dir, "vocab"))
    fingerprint = _save_fake_teacher(
        os.path.join(work_dir, "teacher"), b"teacher one"
    )
    _write_targets(
        os.path.join(work_dir, "targets"),
        _tokenized(tiny_corpus, tiny_vocab),
        tiny_vocab,
        teacher_fingerprint=fingerprint,
    )
    return work_dir


def _distill(work_dir, tiny_corpus, **kwargs):
    return distill.run(
        task=_task(tiny_corpus),
        work_dir=work_dir,
        top_k=K,
        tokens_per_batch=256,
        distillation_weight=0.5,
        verbose=0,
        **kwargs,
    )


def test_distill_accepts_targets_of_its_teacher_vocabulary_and_data(
    work_dir, tiny_corpus
):
    with pytest.raises(_ReachedTraining):
        _distill(work_dir, tiny_corpus)


def test_distill_refuses_targets_of_another_vocabulary(
    work_dir, tiny_corpus, tiny_vocab
):
    other = TaskVocabulary(
        tiny_vocab.tokenizer, tiny_vocab.bert_ids[:-1], tiny_vocab.counts[:-1]
    )
    _write_targets(
        os.path.join(work_dir, "targets_other_vocab"),
        _tokenized(tiny_corpus, tiny_vocab),
        other,
        teacher_fingerprint=dump_teacher.teacher_fingerprint(
            os.path.join(work_dir, "teacher")
        ),
    )
    with pytest.raises(ArtifactError, match="another task vocabulary") as error:
        _distill(work_dir, tiny_corpus, targets_dir="targets_other_vocab")
    assert other.fingerprint in str(error.value)
    assert tiny_vocab.fingerprint in str(error.value)


def test_distill_refuses_targets_of_another_teacher(work_dir, tiny_corpus):
    dumped_by = dump_teacher.teacher_fingerprint(
        os.path.join(work_dir, "teacher")
    )
    # The teacher trained on (or retrained) after the dump.
    os.rename(
        os.path.join(work_dir, "teacher"), os.path.join(work_dir, "teacher_1")
    )
    now = _save_fake_teacher(os.path.join(work_dir, "teacher"), b"teacher two")
    with pytest.raises(ArtifactError, match="another teacher") as error:
        _distill(work_dir, tiny_corpus)
    message = str(error.value)
    assert dumped_by in message and now in message
    assert "targets_dir" in message and "dump_teacher" in message
    # Pointing at the teacher that dumped them is accepted.
    with pytest.raises(_ReachedTraining):
        _distill(work_dir, tiny_corpus, teacher_dir="teacher_1")


def test_distill_without_a_teacher_dir_warns_and_goes_on(
    work_dir, tiny_corpus, caplog
):
    with caplog.at_level("WARNING"), pytest.raises(_ReachedTraining):
        _distill(work_dir, tiny_corpus, teacher_dir="no_such_teacher")
    assert "cannot check which teacher" in caplog.text


def test_distill_refuses_targets_of_other_pairs(
    work_dir, tiny_corpus, tiny_vocab
):
    """Same ids and lengths, other tokens: only the data fingerprint sees
    it (the per-example row check passes)."""
    tokenized = _tokenized(tiny_corpus, tiny_vocab)
    other = TokenizedPairs(
        tokenized.ids,
        tokenized.source,
        tf.ragged.map_flat_values(lambda v: v + 1, tokenized.target),
    )
    _write_targets(
        os.path.join(work_dir, "targets_other_data"),
        other,
        tiny_vocab,
        teacher_fingerprint=dump_teacher.teacher_fingerprint(
            os.path.join(work_dir, "teacher")
        ),
    )
    with pytest.raises(ArtifactError, match="other pairs") as error:
        _distill(work_dir, tiny_corpus, targets_dir="targets_other_data")
    assert dump_teacher.data_fingerprint(other) in str(error.value)
    assert dump_teacher.data_fingerprint(tokenized) in str(error.value)


def test_distill_reads_targets_of_an_older_dump_with_warnings(
    work_dir, tiny_corpus, tiny_vocab, caplog
):
    _write_targets(
        os.path.join(work_dir, "targets_old"),
        _tokenized(tiny_corpus, tiny_vocab),
        tiny_vocab,
        teacher_fingerprint=None,
        data_fingerprint=None,
    )
    with caplog.at_level("WARNING"), pytest.raises(_ReachedTraining):
        _distill(work_dir, tiny_corpus, targets_dir="targets_old")
    assert "records no teacher fingerprint" in caplog.text
    assert "records no data fingerprint" in caplog.text
