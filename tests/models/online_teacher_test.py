"""Online C-MLM targets (CircularMaskTeacher) against the teacher's dump."""

import os

import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.data.batching import TokenBudgetBatcher
from bertkd_tf.data.student_features import (
    TEACHER_INPUTS,
    add_teacher_inputs,
    student_dataset,
)
from bertkd_tf.data.teacher_targets import attach_teacher_targets
from bertkd_tf.data.tokenized_pairs import TokenizedPairs
from bertkd_tf.models.online_teacher import CircularMaskTeacher
from bertkd_tf.models.transformer_backbone import TransformerSeq2SeqBackbone
from bertkd_tf.models.transformer_seq2seq import TransformerSeq2Seq
from bertkd_tf.training.distillation_model import DistillationModel
from tests.dumps import (
    MAX_LENGTH,
    make_dumped_work_dir,
    tiny_task,
    tiny_vocabulary,
)

K, P = 4, 7


@pytest.fixture(scope="module")
def dumped(tmp_path_factory):
    from tests.conftest import TINY_CORPUS

    work_dir = str(tmp_path_factory.mktemp("online") / "work")
    vocab = tiny_vocabulary()
    teacher = make_dumped_work_dir(
        work_dir, vocab, TINY_CORPUS, top_k=K, num_passes=P
    )
    tokenized = TokenizedPairs.from_pairs(
        tiny_task(TINY_CORPUS).read("train"), vocab, MAX_LENGTH, MAX_LENGTH
    )
    return {
        "work_dir": work_dir,
        "vocab": vocab,
        "teacher": teacher,
        "tokenized": tokenized,
    }


def _offline_batches(dumped):
    """The student's batches with the dumped targets joined (as distill
    reads them), teacher inputs added: `[(x, y, sample_weight)]`."""
    vocab = dumped["vocab"]
    examples = attach_teacher_targets(
        dumped["tokenized"].to_dataset(),
        os.path.join(dumped["work_dir"], "targets"),
        top_k=K,
        vocabulary=vocab,
    )
    batcher = TokenBudgetBatcher(160, [8, 16, 26], drop_remainder=False, seed=3)
    batches = student_dataset(examples, batcher, vocab.bos_id, vocab.eos_id)
    return list(batches.map(add_teacher_inputs))


def test_teacher_inputs_are_the_pairs_task_ids(dumped):
    vocab = dumped["vocab"]
    tokenized = dumped["tokenized"]
    by_target = {
        tuple(t.numpy().tolist()): s.numpy().tolist()
        for s, t in zip(tokenized.source, tokenized.target)
    }
    seen = 0
    for x, _, _ in _offline_batches(dumped):
        inputs = x[TEACHER_INPUTS]
        for source, target in zip(
            inputs["source_ids"].numpy(), inputs["target_ids"].numpy()
        ):
            target = tuple(target[target != 0].tolist())
            assert vocab.eos_id not in source.tolist()
            assert source[source != 0].tolist() == by_target[target]
            seen += 1
    assert seen == len(tokenized) == 40


def _tied(logits, tolerance):
    """bool `[..., K]`: entries whose logit is within `tolerance` of a
    neighbour in the sorted row (their order is not defined by float16)."""
    gaps = np.abs(np.diff(logits, axis=-1)) <= tolerance
    tied = np.zeros(logits.shape, bool)
    tied[..., 1:] |= gaps
    tied[..., :-1] |= gaps
    return tied


def test_online_targets_equal_the_dump(dumped):
    """Same teacher, same pairs: the online targets are the dumped ones,
    ids exactly where logits are not tied, logits to float16 rounding."""
    online = CircularMaskTeacher(dumped["teacher"], num_passes=P, top_k=K)
    compared = rows = 0
    for x, y, weight in _offline_batches(dumped):
        targets = online(x[TEACHER_INPUTS])
        ids = targets["teacher_ids"].numpy()
        logits = targets["teacher_logits"].numpy()
        assert ids.shape == y["teacher_ids"].shape  # rows = labels
        valid = weight.numpy() > 0
        # Beyond a pair's target + EOS: nothing (the labels are padding).
        assert np.all(ids[~valid] == 0) and np.all(logits[~valid] == 0)
        stored_ids = y["teacher_ids"].numpy()[valid]
        stored = y["teacher_logits"].numpy()[valid]
        ids, logits = ids[valid], logits[valid]
        # float16 keeps 11 significant bits: |error| <= |x| * 2^-11.
        np.testing.assert_allclose(stored, logits, rtol=2**-10, atol=1e-4)
        untied = ~_tied(logits, 2e-3 * np.abs(logits).max())
        np.testing.assert_array_equal(stored_ids[untied], ids[untied])
        compared += int(untied.sum())
        rows += len(ids)
    assert rows == sum(len(t) + 1 for t in dumped["tokenized"].target)
    # A random teacher's logits spread: most ids are compared exactly.
    assert compared > 0.9 * rows * K, (compared, rows * K)


def test_online_and_offline_distillation_losses_agree(dumped):
    """DistillationModel with the online teacher computes the loss that
    the dumped targets give (to float16 rounding)."""
    vocab = dumped["vocab"]
    tf.keras.utils.set_random_seed(0)
    student = TransformerSeq2Seq(
        TransformerSeq2SeqBackbone(
            vocabulary_size=vocab.size,
            num_layers=1,
            num_heads=2,
            hidden_dim=16,
            intermediate_dim=32,
            dropout=0.0,
        )
    )
    offline = DistillationModel(student, 0.5, temperature=2.0, top_k=K)
    online = DistillationModel(
        student,
        0.5,
        temperature=2.0,
        top_k=K,
        teacher=CircularMaskTeacher(dumped["teacher"], P, K),
    )
    for x, y, weight in _offline_batches(dumped)[:3]:
        expected = offline.compute_loss(x, y, offline(x), weight)
        loss = online.compute_loss(x, y["labels"], online(x), weight)
        assert float(loss) == pytest.approx(float(expected), rel=1e-3)
    # Without teacher inputs (validation) only the cross-entropy counts.
    x = {k: v for k, v in x.items() if k != TEACHER_INPUTS}
    online.kd_tracker.reset_state()
    online.xent_tracker.reset_state()
    loss = online.compute_loss(x, y["labels"], online(x), weight, False)
    assert float(online.kd_tracker.count) == 0.0
    assert float(loss) == pytest.approx(float(online.xent_tracker.result()))


def test_a_pair_too_long_for_the_teacher_fails(dumped):
    """A cut target would misalign the rows with the labels: refused."""
    online = CircularMaskTeacher(dumped["teacher"], P, K)
    too_long = online.preprocessor.max_sequence_length
    with pytest.raises(tf.errors.InvalidArgumentError, match="line up"):
        online(
            {
                "source_ids": np.full((1, 3), 7, "int32"),
                "target_ids": np.full((1, too_long), 8, "int32"),
            }
        )


def test_bad_arguments_raise(dumped):
    with pytest.raises(ValueError, match="CMLMTeacher"):
        CircularMaskTeacher(tf.keras.Sequential())
    with pytest.raises(ValueError, match="num_passes"):
        CircularMaskTeacher(dumped["teacher"], num_passes=0)
    with pytest.raises(ValueError, match="top_k"):
        CircularMaskTeacher(dumped["teacher"], top_k=10**6)


def test_frozen_and_saved_with_its_teacher(dumped, tmp_path):
    online = CircularMaskTeacher(dumped["teacher"], P, K)
    assert not dumped["teacher"].trainable and not online.trainable_weights
    path = str(tmp_path / "online.keras")
    x = {
        "source_ids": np.array([[7, 8, 9]], "int32"),
        "target_ids": np.array([[10, 11]], "int32"),
    }
    expected = online(x)
    online.save(path)
    restored = tf.keras.models.load_model(path)
    assert restored.num_passes == P and restored.top_k == K
    got = restored(x)
    np.testing.assert_array_equal(got["teacher_ids"], expected["teacher_ids"])
    np.testing.assert_allclose(
        got["teacher_logits"], expected["teacher_logits"], rtol=1e-6
    )
