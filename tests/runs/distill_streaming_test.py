"""distill with streamed teacher targets (`stream_targets=True`).

The dumps are written by `dump_teacher`'s record writer (see
tests/data/streaming_targets_test.py, whose `write_dump` is used here).
"""

import functools
import hashlib
import importlib.util
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf
from tensorflow.python.data.experimental.ops import distribute as tf_distribute

from bertkd_tf.data import teacher_targets
from bertkd_tf.data.batching import TokenBudgetBatcher
from bertkd_tf.data.task import Task
from bertkd_tf.data.tokenized_pairs import TokenizedPairs
from bertkd_tf.errors import ArtifactError
from bertkd_tf.models.transformer_backbone import TransformerSeq2SeqBackbone
from bertkd_tf.runs import distill, dump_teacher
from bertkd_tf.training import trainer

_spec = importlib.util.spec_from_file_location(
    "streaming_targets_test",
    os.path.join(
        os.path.dirname(os.path.dirname(__file__)),
        "data",
        "streaming_targets_test.py",
    ),
)
_streaming = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_streaming)
write_dump = _streaming.write_dump

K = 4


def _task(tiny_corpus):
    return Task(
        tiny_corpus, "de", "en", max_source_length=24, max_target_length=24
    )


def _tokenized(tiny_corpus, vocab):
    return TokenizedPairs.from_pairs(
        _task(tiny_corpus).read("train"), vocab, 24, 24
    )


@pytest.fixture
def work_dir(tmp_path, tiny_vocab, tiny_corpus):
    """vocab/ and targets/ (version 2, 5 shards, K 8); no teacher/ (its
    check is warned and skipped)."""
    work_dir = str(tmp_path / "work")
    tiny_vocab.save(os.path.join(work_dir, "vocab"))
    write_dump(
        os.path.join(work_dir, "targets"),
        _tokenized(tiny_corpus, tiny_vocab),
        tiny_vocab,
    )
    return work_dir


def _distill(work_dir, tiny_corpus, **kwargs):
    settings = dict(
        task=_task(tiny_corpus),
        work_dir=work_dir,
        backbone_fn=functools.partial(
            TransformerSeq2SeqBackbone,
            num_layers=1,
            num_heads=2,
            hidden_dim=16,
            intermediate_dim=32,
            dropout=0.0,
        ),
        top_k=K,
        temperature=2.0,
        warmup_steps=4,
        total_steps=2,
        tokens_per_batch=256,
        checkpoint_every_steps=2,
        distillation_weight=0.5,
        stream_targets=True,
        verbose=0,
    )
    settings.update(kwargs)
    return distill.run(**settings)


def test_distill_trains_on_streamed_targets(work_dir, tiny_corpus, monkeypatch):
    def no_load(*args, **kwargs):
        raise AssertionError("streaming must not load the targets in memory")

    monkeypatch.setattr(teacher_targets.TeacherTargets, "load", no_load)
    seeds = []
    dataset = teacher_targets.StreamingTargets.dataset

    def spy(self, seed=None, **kwargs):
        seeds.append(seed)
        assert self.top_k == K and self.stored_k == 8
        return dataset(self, seed=seed, **kwargs)

    monkeypatch.setattr(teacher_targets.StreamingTargets, "dataset", spy)
    result = _distill(work_dir, tiny_corpus)
    assert result["step"] == 2
    assert np.isfinite(result["kd"]) and result["kd"] > 0
    assert seeds and set(seeds) == {0}  # seed 0 + step 0 (build, chunk)


class _ReachedTraining(Exception):
    pass


def test_version1_dump_read_in_memory_with_a_note(
    work_dir, tiny_corpus, tiny_vocab, monkeypatch, caplog
):
    write_dump(
        os.path.join(work_dir, "targets_v1"),
        _tokenized(tiny_corpus, tiny_vocab),
        tiny_vocab,
        version=1,
    )
    loaded = []
    load = teacher_targets.TeacherTargets.load.__func__

    def spy(cls, *args, **kwargs):
        loaded.append(args[0])
        return load(cls, *args, **kwargs)

    monkeypatch.setattr(
        teacher_targets.TeacherTargets, "load", classmethod(spy)
    )

    def build_student(*args, **kwargs):
        raise _ReachedTraining()

    monkeypatch.setattr(distill, "build_student", build_student)
    with caplog.at_level("WARNING"), pytest.raises(_ReachedTraining):
        _distill(work_dir, tiny_corpus, targets_dir="targets_v1")
    assert "cannot be streamed (it is a version-1 dump" in caplog.text
    assert loaded == [os.path.join(work_dir, "targets_v1")]


def test_damaged_shard_refused_before_training(
    work_dir, tiny_corpus, monkeypatch
):
    def build_student(*args, **kwargs):
        raise AssertionError("must be refused before building the student")

    monkeypatch.setattr(distill, "build_student", build_student)
    shard = os.path.join(work_dir, "targets", dump_teacher.shard_name(2, 5))
    with open(shard, "r+b") as f:
        f.seek(os.path.getsize(shard) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0x01]))
    with pytest.raises(ArtifactError, match="sha256") as error:
        _distill(work_dir, tiny_corpus)
    assert shard in str(error.value)


class _Recorder(keras.Model):
    """Records a digest of every training batch it is given (eagerly)."""

    def __init__(self):
        super().__init__()
        self.w = self.add_weight(shape=(), initializer="zeros", name="w")
        self.batches = []

    def call(self, inputs):
        return inputs

    def train_step(self, data):
        x, y, _ = data
        digest = hashlib.sha256()
        for t in (
            x["encoder_token_ids"],
            x["decoder_token_ids"],
            y["teacher_ids"],
            y["teacher_logits"],
        ):
            digest.update(t.numpy().tobytes())
        self.batches.append(digest.hexdigest())
        self.optimizer.apply([tf.zeros_like(self.w)], [self.w])
        return {"loss": tf.constant(0.0)}


def _fit(train_dataset_fn, model_dir, total_steps):
    model = _Recorder()
    model.compile(optimizer=keras.optimizers.SGD(0.0), run_eagerly=True)
    x, _, _ = next(iter(train_dataset_fn(0).take(1)))
    model(x)
    trainer.fit_resumable(
        model,
        train_dataset_fn,
        model_dir=model_dir,
        total_steps=total_steps,
        checkpoint_every_steps=2,
        verbose=0,
    )
    return model.batches


def test_batches_of_step_n_same_from_start_or_resumed_at_n(
    tmp_path, work_dir, tiny_corpus, tiny_vocab
):
    """fit_resumable's contract with streamed targets: a run resumed at step
    4 sees at steps 4 and 5 the batches an uninterrupted run saw."""
    stream = teacher_targets.StreamingTargets.open(
        os.path.join(work_dir, "targets"), top_k=K
    )
    batcher = TokenBudgetBatcher(256, [16, 32], seed=7)

    def datasets():
        train_dataset_fn, _ = distill.make_datasets(
            None,
            None,
            batcher,
            tiny_vocab.bos_id,
            tiny_vocab.eos_id,
            train_examples_fn=lambda seed: stream.dataset(
                seed=seed, repeat=True, shuffle_buffer=16
            ),
        )
        return train_dataset_fn

    uninterrupted = _fit(datasets(), str(tmp_path / "a"), total_steps=6)
    assert len(uninterrupted) == 6
    first = _fit(datasets(), str(tmp_path / "b"), total_steps=4)
    resumed = _fit(datasets(), str(tmp_path / "b"), total_steps=6)
    assert first == uninterrupted[:4]
    assert resumed == uninterrupted[4:]
    # The data depends on the step: not the same batches again.
    assert uninterrupted[4:] != uninterrupted[:2]
    assert len(set(uninterrupted)) == 6
    with open(tmp_path / "b" / "history.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [2, 4, 6]


def test_input_context_of_each_worker():
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver

    class _Strategy:
        num_replicas_in_sync = 4

        def __init__(self, task_type, task_id):
            self.cluster_resolver = resolver(
                tf.train.ClusterSpec(
                    {"chief": ["c:1"], "worker": ["w:1", "w:2"]}
                ),
                task_type=task_type,
                task_id=task_id,
            )

    def pipeline(strategy):
        context = distill.input_context(strategy)
        return (context.num_input_pipelines, context.input_pipeline_id)

    assert pipeline(_Strategy("chief", 0)) == (3, 0)
    assert pipeline(_Strategy("worker", 0)) == (3, 1)
    assert pipeline(_Strategy("worker", 1)) == (3, 2)
    assert pipeline(tf.distribute.get_strategy()) == (1, 0)


def test_each_worker_trains_on_its_own_shards(
    work_dir, tiny_corpus, tiny_vocab
):
    """Worker i of 2 (its `input_context`) batches only the pairs of its
    shards, and `experimental_distribute_dataset` (what multi-worker `fit`
    applies) does not shard the batches again."""
    stream = teacher_targets.StreamingTargets.open(
        os.path.join(work_dir, "targets"), top_k=K
    )
    batcher = TokenBudgetBatcher(256, [16, 32], seed=7)
    tokenized = _tokenized(tiny_corpus, tiny_vocab)

    def labels(n):
        return tuple(tokenized.target[n].numpy().tolist()) + (
            tiny_vocab.eos_id,
        )

    def seen(dataset, batches=12):
        rows = set()
        for _, y, weight in dataset.take(batches):
            for row, w in zip(y["labels"].numpy(), weight.numpy()):
                rows.add(tuple(row[w > 0].tolist()))
        return rows

    def train_dataset_fn(context):
        return distill.make_datasets(
            None,
            None,
            batcher,
            tiny_vocab.bos_id,
            tiny_vocab.eos_id,
            train_examples_fn=lambda seed: stream.dataset(
                seed=seed,
                repeat=True,
                shuffle_buffer=16,
                input_context=context,
            ),
        )[0]

    per_shard = 8  # 40 pairs, 5 shards
    everything = seen(train_dataset_fn(tf.distribute.InputContext())(0))
    for index in range(2):
        mine = {
            labels(n)
            for s in range(index, 5, 2)
            for n in range(s * per_shard, (s + 1) * per_shard)
        }
        assert everything - mine  # one pipeline: other pairs come too
        dataset = train_dataset_fn(tf.distribute.InputContext(2, index))(0)
        assert (
            dataset.options().experimental_distribute.auto_shard_policy
            == tf.data.experimental.AutoShardPolicy.OFF
        )
        rows = seen(dataset)
        assert rows and rows <= mine
        distributed = tf_distribute._AutoShardDataset(dataset, 2, index, 2)
        assert seen(distributed) == rows
