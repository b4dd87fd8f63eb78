"""dump_teacher with a left-to-right seq2seq teacher (teacher_kind='seq2seq'):
the same format as the C-MLM dump, the model's teacher-forced top-K, and
distill reading it."""

import functools
import json
import os
import shutil

import keras
import numpy as np
import pytest

from bertkd_tf.artifacts import save_student, teacher_fingerprint
from bertkd_tf.data.teacher_targets import TeacherTargets
from bertkd_tf.data.tokenized_pairs import TokenizedPairs
from bertkd_tf.errors import ArtifactError, ConfigError
from bertkd_tf.models.transformer_backbone import TransformerSeq2SeqBackbone
from bertkd_tf.models.transformer_seq2seq import TransformerSeq2Seq
from bertkd_tf.runs import distill, dump_teacher
from tests.dumps import (
    MAX_LENGTH,
    make_dumped_work_dir,
    tiny_task,
    tiny_vocabulary,
)

K = 4
BACKBONE = functools.partial(
    TransformerSeq2SeqBackbone,
    num_layers=1,
    num_heads=2,
    hidden_dim=16,
    intermediate_dim=32,
    dropout=0.0,
)


def _distill(work_dir, corpus, **kwargs):
    settings = dict(
        task=tiny_task(corpus),
        work_dir=work_dir,
        backbone_fn=BACKBONE,
        top_k=K,
        temperature=2.0,
        learning_rate=1.0,
        warmup_steps=4,
        total_steps=4,
        tokens_per_batch=256,
        checkpoint_every_steps=2,
        verbose=0,
    )
    settings.update(kwargs)
    return distill.run(**settings)


def _dump(work_dir, corpus, **kwargs):
    settings = dict(
        task=tiny_task(corpus),
        work_dir=work_dir,
        teacher_kind="seq2seq",
        teacher_dir="baseline",
        output_dir="targets_l2r",
        top_k=K,
        tokens_per_batch=2048,
        pairs_per_shard=16,
    )
    settings.update(kwargs)
    return dump_teacher.run(**settings)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """vocab/, a C-MLM teacher/ with its targets/, a trained baseline/ and
    the baseline's left-to-right targets in targets_l2r/."""
    from tests.conftest import TINY_CORPUS

    work_dir = str(tmp_path_factory.mktemp("l2r") / "work")
    vocab = tiny_vocabulary()
    make_dumped_work_dir(work_dir, vocab, TINY_CORPUS, top_k=K, num_passes=7)
    _distill(work_dir, TINY_CORPUS, distillation_weight=0.0)
    result = _dump(work_dir, TINY_CORPUS)
    return {
        "work_dir": work_dir,
        "vocab": vocab,
        "corpus": TINY_CORPUS,
        "result": result,
    }


def _manifest(directory):
    with open(os.path.join(directory, "manifest.json")) as f:
        return json.load(f)


def test_same_format_and_fingerprints_of_that_teacher(work):
    work_dir = work["work_dir"]
    assert work["result"]["complete"]
    l2r = _manifest(os.path.join(work_dir, "targets_l2r"))
    cmlm = _manifest(os.path.join(work_dir, "targets"))
    assert set(l2r) == set(cmlm)  # the same manifest
    assert l2r["teacher_kind"] == "seq2seq" and cmlm["teacher_kind"] == "cmlm"
    assert l2r["num_passes"] is None and cmlm["num_passes"] == 7
    assert l2r["teacher_dir"] == "baseline"
    assert l2r["teacher_fingerprint"] == teacher_fingerprint(
        os.path.join(work_dir, "baseline")
    )
    assert l2r["teacher_fingerprint"] != cmlm["teacher_fingerprint"]
    for key in ("vocabulary_fingerprint", "data_fingerprint", "num_pairs"):
        assert l2r[key] == cmlm[key], key
    assert l2r["num_positions"] == cmlm["num_positions"]


def test_top_1_is_the_argmax_of_the_teacher_forced_logits(work):
    """Every stored row against the model run on that pair alone."""
    vocab = work["vocab"]
    model = distill.load_student(os.path.join(work["work_dir"], "baseline"))
    targets = TeacherTargets.load(
        os.path.join(work["work_dir"], "targets_l2r"), vocabulary=vocab
    )
    tokenized = TokenizedPairs.from_pairs(
        tiny_task(work["corpus"]).read("train"), vocab, MAX_LENGTH, MAX_LENGTH
    )
    assert len(targets) == len(tokenized) == 40
    rows = compared = 0
    for pair_id, source, target in zip(
        tokenized.ids, tokenized.source, tokenized.target
    ):
        source, target = source.numpy(), target.numpy()
        encoder = np.concatenate([source, [vocab.eos_id]])[None]
        decoder = np.concatenate([[vocab.bos_id], target])[None]
        logits = np.asarray(
            model(
                {
                    "encoder_token_ids": encoder.astype("int32"),
                    "encoder_padding_mask": np.ones_like(encoder, "int32"),
                    "decoder_token_ids": decoder.astype("int32"),
                    "decoder_padding_mask": np.ones_like(decoder, "int32"),
                },
                training=False,
            )
        )[0]
        ids, stored = targets.lookup(pair_id)
        assert ids.shape == (len(target) + 1, K)  # target tokens + EOS
        best = np.sort(logits, axis=-1)[:, ::-1][:, :K]
        np.testing.assert_allclose(
            stored.astype("float32"), best, rtol=2**-10, atol=1e-4
        )
        clear = best[:, 0] - best[:, 1] > 2e-3 * np.abs(best[:, 0])
        np.testing.assert_array_equal(
            ids[clear, 0], np.argmax(logits, axis=-1)[clear]
        )
        rows += len(ids)
        compared += int(clear.sum())
    assert compared > 0.9 * rows, (compared, rows)


def test_distill_reads_the_seq2seq_targets(work, tmp_path):
    work_dir = str(tmp_path / "work")
    shutil.copytree(work["work_dir"], work_dir)
    # Checked against the teacher they come from: the C-MLM teacher (the
    # default teacher_dir) is refused, naming the setting.
    with pytest.raises(ArtifactError, match="distill.run.teacher_dir"):
        _distill(
            work_dir,
            work["corpus"],
            distillation_weight=0.5,
            targets_dir="targets_l2r",
            model_dir="student_l2r",
        )
    result = _distill(
        work_dir,
        work["corpus"],
        distillation_weight=0.5,
        targets_dir="targets_l2r",
        teacher_dir="baseline",
        model_dir="student_l2r",
        total_steps=4,
    )
    assert result["step"] == 4
    assert result["loss"] == pytest.approx(
        0.5 * result["xent"] + 0.5 * result["kd"], rel=1e-5
    )
    # The targets are the baseline's own predictions: kd is well below
    # the cross-entropy to the labels of a barely trained model.
    assert 0 < result["kd"] < result["xent"], result


def test_other_vocabulary_or_kind_refused(work, tmp_path):
    keras.utils.set_random_seed(0)
    other = TransformerSeq2Seq(BACKBONE(vocabulary_size=work["vocab"].size + 1))
    save_student(other, str(tmp_path / "other"))
    with pytest.raises(ArtifactError, match="predicts over .* ids"):
        _dump(
            work["work_dir"],
            work["corpus"],
            teacher_dir=str(tmp_path / "other"),
            output_dir=str(tmp_path / "out"),
        )
    with pytest.raises(ConfigError, match="teacher_kind must be one of"):
        _dump(work["work_dir"], work["corpus"], teacher_kind="bert")
