"""distill: tiny baseline and distilled runs, resume, the saved student."""

import functools
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.data.task import Task
from bertkd_tf.models.transformer_backbone import TransformerSeq2SeqBackbone
from bertkd_tf.models.transformer_seq2seq import TransformerSeq2Seq
from bertkd_tf.runs import distill

K = 3


def fake_teacher_targets(dataset, targets_dir, split, top_k):
    """Stands in for the dump reader: targets peaked on the true labels."""
    assert split == "train" and top_k == K

    def attach(example):
        labels = tf.concat([example["target_ids"], [3]], axis=0)
        ids = tf.stack([labels, labels + 1, tf.ones_like(labels)], axis=1)
        logits = tf.tile([[4.0, 1.0, 0.0]], [tf.shape(labels)[0], 1])
        return {**example, "teacher_ids": ids, "teacher_logits": logits}

    return dataset.map(attach)


@pytest.fixture()
def work_dir(tmp_path, tiny_vocab):
    tiny_vocab.save(str(tmp_path / "vocab"))
    return str(tmp_path)


def _run(work_dir, tiny_corpus, **kwargs):
    settings = dict(
        task=Task(
            tiny_corpus, "de", "en", max_source_length=24, max_target_length=24
        ),
        work_dir=work_dir,
        backbone_fn=functools.partial(
            TransformerSeq2SeqBackbone,
            num_layers=1,
            num_heads=2,
            hidden_dim=16,
            intermediate_dim=32,
            dropout=0.0,
        ),
        teacher_targets_fn=fake_teacher_targets,
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


def _history(directory):
    with open(os.path.join(directory, "history.jsonl")) as f:
        return [json.loads(line) for line in f if line.strip()]


def test_distill_run_resume_and_saved_student(work_dir, tiny_corpus):
    result = _run(work_dir, tiny_corpus, distillation_weight=0.5)
    student_dir = os.path.join(work_dir, "student")
    assert result["output_dir"] == student_dir
    assert result["step"] == 4
    history = _history(student_dir)
    assert [r["step"] for r in history] == [2, 4]
    for key in ("loss", "xent", "kd", "val_loss", "val_xent"):
        assert np.isfinite(history[-1][key]), key
    # Validation has no targets: its loss is the cross-entropy.
    assert history[-1]["val_loss"] == pytest.approx(history[-1]["val_xent"])
    assert os.path.exists(os.path.join(student_dir, "logs"))

    student = distill.load_student(student_dir)
    assert isinstance(student, TransformerSeq2Seq)
    final = [w.numpy() for w in student.weights]

    # Resume: a longer run continues at step 4, not from scratch.
    result = _run(work_dir, tiny_corpus, distillation_weight=0.5, total_steps=6)
    assert result["step"] == 6
    assert [r["step"] for r in _history(student_dir)] == [2, 4, 6]
    moved = distill.load_student(student_dir)
    assert any(
        np.abs(a - b.numpy()).max() > 0 for a, b in zip(final, moved.weights)
    )


def test_baseline_goes_to_baseline_dir_without_targets(work_dir, tiny_corpus):
    def no_targets(*args):
        raise AssertionError("the baseline must not read teacher targets")

    result = _run(
        work_dir,
        tiny_corpus,
        distillation_weight=0.0,
        teacher_targets_fn=no_targets,
        total_steps=2,
        gradient_accumulation_steps=2,
    )
    assert result["output_dir"] == os.path.join(work_dir, "baseline")
    assert result["step"] == 2
    assert "kd" not in result and result["loss"] == result["xent"]
    model = distill.load_student(result["output_dir"], dtype="mixed_bfloat16")
    assert model.backbone.token_embedding.compute_dtype == "bfloat16"


def test_missing_student_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="student_config.json"):
        distill.load_student(str(tmp_path))
