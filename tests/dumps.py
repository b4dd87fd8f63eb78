"""A real teacher-target dump of the tiny fixture corpus, for the tests of
the readers of dumps (data/teacher_targets, runs/distill)."""

import os

import keras

from bertkd_tf.data.task import Task
from bertkd_tf.models.cmlm_teacher import CMLMTeacher
from bertkd_tf.runs import dump_teacher, train_teacher

MAX_LENGTH = 24  # source and target limits of the task (all 40 pairs fit)


def tiny_vocabulary():
    """The TaskVocabulary of the tiny corpus (as conftest's `tiny_vocab`)."""
    from bertkd_tf.data.bert_word_piece_tokenizer import (
        BertWordPieceTokenizer,
        load_bert_vocabulary,
    )
    from bertkd_tf.data.task_vocabulary import TaskVocabulary
    from bertkd_tf.data.text_pairs import read_text_pairs
    from tests.conftest import TINY_BERT_VOCAB, TINY_CORPUS

    tokenizer = BertWordPieceTokenizer(load_bert_vocabulary(TINY_BERT_VOCAB))
    pairs = read_text_pairs(TINY_CORPUS, "train", "de", "en")
    return TaskVocabulary.build(tokenizer, pairs.sources + pairs.targets)


def tiny_task(corpus):
    return Task(
        corpus,
        "de",
        "en",
        max_source_length=MAX_LENGTH,
        max_target_length=MAX_LENGTH,
    )


def make_dumped_work_dir(work_dir, vocab, corpus, top_k, num_passes, seed=1):
    """`work_dir` with `vocab/`, a random tiny `teacher/` and the
    `targets/` that `dump_teacher.run` writes for the task's train split.

    Returns the saved teacher (as loaded back from `teacher/`)."""
    vocab.save(os.path.join(work_dir, "vocab"))
    keras.utils.set_random_seed(seed)
    teacher = CMLMTeacher.from_scratch(
        vocab.bert_ids,
        vocabulary_size=vocab.tokenizer.vocabulary_size,
        num_layers=1,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=64,
    )
    teacher_dir = os.path.join(work_dir, "teacher")
    train_teacher.save_teacher(teacher, teacher_dir)
    dump_teacher.run(
        task=tiny_task(corpus),
        work_dir=work_dir,
        top_k=top_k,
        num_passes=num_passes,
        tokens_per_batch=2048,
        pairs_per_shard=16,
    )
    return train_teacher.load_teacher(teacher_dir)
