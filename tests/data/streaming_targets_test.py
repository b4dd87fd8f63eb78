"""StreamingTargets: whole examples streamed from version-2 shards.

The dumps here are written by `dump_teacher`'s own record writer
(`dump_pairs`, with a made-up teacher function), so the records are those a
real dump holds.
"""

import json
import os

import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.data.experimental.ops import distribute as tf_distribute

from bertkd_tf.data.batching import (
    TokenBudgetBatcher,
    default_bucket_boundaries,
)
from bertkd_tf.data.task_vocabulary import TaskVocabulary
from bertkd_tf.data.teacher_targets import (
    FORMAT_VERSION,
    StreamingTargets,
    TeacherTargets,
    serialize_targets,
    stream_problem,
)
from bertkd_tf.data.text_pairs import read_text_pairs
from bertkd_tf.data.tokenized_pairs import TokenizedPairs
from bertkd_tf.errors import ArtifactError, ConfigError, MissingArtifactError
from bertkd_tf.runs import dump_teacher

K = 8


def _rows(source, target, k, vocabulary_size, eos_id):
    """Made-up top-K rows of a pair: best id the label, logits descending,
    depending on the source too (so pairs differ)."""
    labels = np.append(target, eos_id)
    ids = (labels[:, None] + np.arange(k)[None, :]) % vocabulary_size
    logits = (
        10.0
        - np.arange(k)[None, :]
        - 0.01 * np.arange(len(labels))[:, None]
        + 0.125 * (int(np.sum(source)) % 17)
    )
    return ids.astype(np.int32), logits.astype(np.float16)


def _fake_top_k_fn(k, vocab):
    """`make_top_k_fn`'s contract, rows from `_rows`."""

    def top_k_fn(source_ids, target_ids):
        source_ids = np.asarray(source_ids)
        target_ids = np.asarray(target_ids)
        batch, width = target_ids.shape
        top_ids = np.zeros([batch, width + 1, k], np.int32)
        top_logits = np.zeros([batch, width + 1, k], np.float16)
        coverage = np.zeros([batch, width + 1], np.int32)
        rows = np.zeros([batch], np.int32)
        for b in range(batch):
            target = target_ids[b][target_ids[b] != 0]
            source = source_ids[b][source_ids[b] != 0]
            ids, logits = _rows(source, target, k, vocab.size, vocab.eos_id)
            n = len(ids)
            top_ids[b, :n], top_logits[b, :n] = ids, logits
            coverage[b, :n] = 1
            rows[b] = n
        return tuple(
            tf.constant(a) for a in (top_ids, top_logits, coverage, rows)
        )

    return top_k_fn


def write_dump(
    directory,
    tokenized,
    vocab,
    k=K,
    shards=5,
    version=FORMAT_VERSION,
    split="train",
):
    """A dump as `dump_teacher.run` writes it (version 1: no token ids)."""
    os.makedirs(directory, exist_ok=True)
    per_shard = -(-len(tokenized) // shards)
    batcher = TokenBudgetBatcher(
        512, default_bucket_boundaries(64), drop_remainder=False
    )
    manifest = {
        "format_version": version,
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
    }
    for s in range(shards):
        part = dump_teacher._slice(
            tokenized, s * per_shard, (s + 1) * per_shard
        )
        records = dump_teacher.dump_pairs(
            part, _fake_top_k_fn(k, vocab), batcher
        )
        if version == 1:
            records = [_without_token_ids(record) for record in records]
        name = dump_teacher.shard_name(s, shards)
        info = dump_teacher._write_records(
            os.path.join(directory, name), records
        )
        manifest["shards"][name] = {
            "pairs": len(part),
            "positions": int(np.sum(part.lengths()[1] + 1)),
            **info,
        }
    dump_teacher._update_totals(manifest)
    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    return directory


def _without_token_ids(record):
    feature = tf.train.Example.FromString(record).features.feature
    assert "source_ids" in feature and "target_ids" in feature
    return serialize_targets(
        feature["id"].int64_list.value[0],
        np.frombuffer(
            feature["teacher_ids"].bytes_list.value[0], "<i4"
        ).reshape(feature["length"].int64_list.value[0], -1),
        np.frombuffer(
            feature["teacher_logits"].bytes_list.value[0], "<f2"
        ).reshape(feature["length"].int64_list.value[0], -1),
    )


@pytest.fixture
def tokenized(tiny_corpus, tiny_vocab):
    pairs = read_text_pairs(tiny_corpus, "train", "de", "en")
    return TokenizedPairs.from_pairs(pairs, tiny_vocab, 24, 24)


@pytest.fixture
def dump(tmp_path, tokenized, tiny_vocab):
    return write_dump(str(tmp_path / "targets"), tokenized, tiny_vocab)


def _examples(dataset):
    return [{k: v.numpy() for k, v in e.items()} for e in dataset]


def _assert_same_examples(got, want):
    assert len(got) == len(want)
    for a, b in zip(got, want):
        assert sorted(a) == sorted(b)
        for key in a:
            assert a[key].dtype == b[key].dtype, key
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_dump_records_carry_the_pairs_token_ids(dump, tokenized):
    """dump_teacher's writer: version 2, each record the pair's ids."""
    with open(os.path.join(dump, "manifest.json")) as f:
        assert json.load(f)["format_version"] == 2 == FORMAT_VERSION
    name = dump_teacher.shard_name(1, 5)
    record = next(iter(tf.data.TFRecordDataset(os.path.join(dump, name))))
    feature = tf.train.Example.FromString(record.numpy()).features.feature
    n = list(tokenized.ids).index(feature["id"].int64_list.value[0])
    assert n == 8  # shard 1 of 5 starts at pair 8 (40 pairs)
    assert list(feature["source_ids"].int64_list.value) == (
        tokenized.source[n].numpy().tolist()
    )
    assert list(feature["target_ids"].int64_list.value) == (
        tokenized.target[n].numpy().tolist()
    )
    with pytest.raises(ValueError, match="target rows"):
        serialize_targets(1, np.zeros([3, 2]), np.zeros([3, 2]), [5], [6, 7, 8])


def test_streamed_examples_equal_the_in_memory_join(dump, tokenized):
    joined = _examples(TeacherTargets.load(dump).join(tokenized))
    stream = StreamingTargets.open(dump)
    # Unshuffled, one shard at a time: the join's order, field for field.
    in_order = _examples(stream.dataset(cycle_length=1))
    _assert_same_examples(in_order, joined)
    # Shuffled and interleaved: the same examples, in another order.
    shuffled = _examples(stream.dataset(seed=3, shuffle_buffer=16))
    assert [int(e["id"]) for e in shuffled] != [int(e["id"]) for e in joined]
    by_id = sorted(shuffled, key=lambda e: int(e["id"]))
    _assert_same_examples(by_id, sorted(joined, key=lambda e: int(e["id"])))


def test_reading_k4_of_k8_slices_each_record(dump, tokenized):
    full = _examples(StreamingTargets.open(dump).dataset(cycle_length=1))
    four = StreamingTargets.open(dump, top_k=4)
    assert (four.top_k, four.stored_k) == (4, 8)
    got = _examples(four.dataset(cycle_length=1))
    assert len(got) == len(full) == 40
    for a, b in zip(got, full):
        assert a["teacher_ids"].shape == (len(a["target_ids"]) + 1, 4)
        np.testing.assert_array_equal(a["teacher_ids"], b["teacher_ids"][:, :4])
        np.testing.assert_array_equal(
            a["teacher_logits"], b["teacher_logits"][:, :4]
        )
    memory = TeacherTargets.load(dump, top_k=4).join(tokenized)
    _assert_same_examples(got, _examples(memory))
    with pytest.raises(ConfigError, match="top_k=9 but .* stores K=8"):
        StreamingTargets.open(dump, top_k=9)


def test_seeded_order_is_a_function_of_the_seed(dump):
    stream = StreamingTargets.open(dump)

    def ids(seed, count=80, **kwargs):
        dataset = stream.dataset(seed=seed, repeat=True, **kwargs)
        return [int(e["id"]) for e in dataset.take(count)]

    assert ids(5) == ids(5)
    assert ids(5) != ids(6)
    # Without the example buffer, each pass is every pair once, and the
    # next pass takes the shards in another order.
    passes = ids(5, shuffle_buffer=0)
    first, second = passes[:40], passes[40:]
    everything = sorted(int(e["id"]) for e in stream.dataset())
    assert sorted(first) == sorted(second) == everything
    assert first != second


def test_per_worker_shards_are_disjoint_and_cover_the_dump(dump):
    stream = StreamingTargets.open(dump)
    everything = sorted(int(e["id"]) for e in stream.dataset())
    seen = []
    for index in range(3):
        context = tf.distribute.InputContext(
            num_input_pipelines=3, input_pipeline_id=index
        )
        assert stream.worker_shards(3, index) == stream.shards[index::3]
        ids = [
            int(e["id"]) for e in stream.dataset(seed=1, input_context=context)
        ]
        assert ids and len(set(ids)) == len(ids)
        seen.append(set(ids))
    assert not (seen[0] & seen[1] or seen[0] & seen[2] or seen[1] & seen[2])
    assert sorted(seen[0] | seen[1] | seen[2]) == everything
    with pytest.raises(ConfigError, match="5 shards for 6 input pipelines"):
        stream.worker_shards(6, 0)


def test_auto_shard_by_file_gives_each_worker_its_shards(dump, tokenized):
    """What `experimental_distribute_dataset` does on N workers: the FILE
    policy of the dataset shards the shard files, not the examples."""
    stream = StreamingTargets.open(dump)
    dataset = stream.dataset(seed=2, shuffle_buffer=8)
    assert (
        dataset.options().experimental_distribute.auto_shard_policy
        == tf.data.experimental.AutoShardPolicy.FILE
    )
    per_shard = 8  # 40 pairs in 5 shards
    seen = []
    for index in range(2):
        worker = tf_distribute._AutoShardDataset(dataset, 2, index, 2)
        ids = sorted(int(e["id"]) for e in worker)
        shards = stream.shards[index::2]
        want = sorted(
            int(tokenized.ids[n])
            for s in shards
            for n in range(
                int(s[8:13]) * per_shard, (int(s[8:13]) + 1) * per_shard
            )
        )
        assert ids == want
        seen.extend(ids)
    assert sorted(seen) == sorted(int(i) for i in tokenized.ids)


def _damage(path, how):
    with open(path, "r+b") as f:
        if how == "truncate":
            f.truncate(os.path.getsize(path) - 7)
        else:  # one bit in the middle of a record's payload
            f.seek(os.path.getsize(path) // 2)
            byte = f.read(1)
            f.seek(-1, os.SEEK_CUR)
            f.write(bytes([byte[0] ^ 0x10]))


@pytest.mark.parametrize(
    "how, what",
    [("truncate", "bytes, the manifest records"), ("flip", "sha256")],
)
def test_damaged_shard_refused_before_streaming(dump, how, what):
    stream = StreamingTargets.open(dump)  # digests now cached
    shard = os.path.join(dump, dump_teacher.shard_name(3, 5))
    _damage(shard, how)
    with pytest.raises(ArtifactError, match=what) as error:
        StreamingTargets.open(dump)
    assert shard in str(error.value)
    assert "re-run dump_teacher" in str(error.value).lower()
    # An already opened reader checks again when it builds a dataset.
    with pytest.raises(ArtifactError, match=what):
        stream.dataset(seed=0, repeat=True)
    # A worker reading other shards is not stopped by this one.
    unverified = StreamingTargets.open(dump, verify=False)
    context = tf.distribute.InputContext(2, 0)  # shards 0, 2, 4
    assert len(list(unverified.dataset(input_context=context))) == 24
    with pytest.raises(ArtifactError, match=what):
        unverified.dataset(input_context=tf.distribute.InputContext(2, 1))


def test_manifest_checks_as_the_in_memory_reader(
    tmp_path, dump, tokenized, tiny_vocab
):
    other = TaskVocabulary(
        tiny_vocab.tokenizer, tiny_vocab.bert_ids[:-1], tiny_vocab.counts[:-1]
    )
    with pytest.raises(ArtifactError, match="another task vocabulary"):
        StreamingTargets.open(dump, vocabulary=other)
    with pytest.raises(ArtifactError, match="another teacher"):
        StreamingTargets.open(dump, teacher_fingerprint="0" * 64)
    with pytest.raises(ArtifactError, match="other pairs"):
        StreamingTargets.open(dump, data_fingerprint="1" * 64)
    with pytest.raises(ArtifactError, match="of split 'train', not 'valid'"):
        StreamingTargets.open(dump, split="valid")
    StreamingTargets.open(
        dump,
        vocabulary=tiny_vocab,
        teacher_fingerprint="t" * 64,
        data_fingerprint=dump_teacher.data_fingerprint(tokenized),
        split="train",
    )
    path = os.path.join(dump, "manifest.json")
    with open(path) as f:
        manifest = json.load(f)
    del manifest["shards"][dump_teacher.shard_name(4, 5)]
    manifest["complete"] = False
    with open(path, "w") as f:
        json.dump(manifest, f)
    with pytest.raises(ArtifactError, match=r"incomplete \(4 of 5 shards\)"):
        StreamingTargets.open(dump)
    with pytest.raises(MissingArtifactError, match="dump_teacher"):
        StreamingTargets.open(str(tmp_path / "none"))


def test_version1_dump_is_read_in_memory_not_streamed(
    tmp_path, tokenized, tiny_vocab
):
    old = write_dump(str(tmp_path / "v1"), tokenized, tiny_vocab, version=1)
    assert "version-1 dump" in stream_problem(old)
    with pytest.raises(ArtifactError, match="cannot be streamed") as error:
        StreamingTargets.open(old)
    assert "stream_targets=False" in str(error.value)
    # The in-memory reader reads it, with the same targets as version 2.
    new = write_dump(str(tmp_path / "v2"), tokenized, tiny_vocab)
    assert stream_problem(new) is None
    _assert_same_examples(
        _examples(TeacherTargets.load(old).join(tokenized)),
        _examples(StreamingTargets.open(new).dataset(cycle_length=1)),
    )


def test_record_not_matching_its_target_fails_while_streaming(
    tmp_path, tokenized, tiny_vocab
):
    """A record whose rows are not its target + EOS (a writer bug; the
    digest is then the writer's) fails when read, not silently."""
    directory = str(tmp_path / "bad")
    os.makedirs(directory)
    rows = np.zeros([4, K])
    record = serialize_targets(0, rows, rows, [5], [6, 7, 8])
    example = tf.train.Example.FromString(
        serialize_targets(1, rows, rows, [5], [6, 7, 8])
    )
    del example.features.feature["target_ids"].int64_list.value[-1]
    bad = example.SerializeToString(deterministic=True)
    name = dump_teacher.shard_name(0, 1)
    info = dump_teacher._write_records(
        os.path.join(directory, name), [record, bad]
    )
    manifest = {
        "format_version": 2,
        "split": "train",
        "top_k": K,
        "num_pairs": 2,
        "num_shards": 1,
        "complete": True,
        "shards": {name: {"pairs": 2, **info}},
    }
    with open(os.path.join(directory, "manifest.json"), "w") as f:
        json.dump(manifest, f)
    with pytest.raises(tf.errors.InvalidArgumentError, match="target tokens"):
        list(StreamingTargets.open(directory).dataset())
