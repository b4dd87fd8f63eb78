"""Every writing mode takes its output directory's lock before writing.

Each run is called with its directory already locked (here, by this
process: `DirectoryLock` refuses a second holder whatever the process) and
must fail with `LockedError` before doing any work.
"""

import os

import keras
import pytest

from bertkd_tf.data.bert_word_piece_tokenizer import (
    BertWordPieceTokenizer,
    load_bert_vocabulary,
)
from bertkd_tf.data.task import Task
from bertkd_tf.data.task_vocabulary import TaskVocabulary
from bertkd_tf.data.text_pairs import read_text_pairs
from bertkd_tf.decoding.search_settings import SearchSettings
from bertkd_tf.errors import LockedError
from bertkd_tf.locking import DirectoryLock
from bertkd_tf.models.transformer_backbone import TransformerSeq2SeqBackbone
from bertkd_tf.models.transformer_seq2seq import TransformerSeq2Seq
from bertkd_tf.runs import distill, dump_teacher, export, prepare, train_teacher


@pytest.fixture
def task(tiny_corpus):
    return Task(tiny_corpus, "de", "en", valid_split="valid")


@pytest.mark.parametrize(
    "mode, directory",
    [
        ("prepare", "vocab"),
        ("train_teacher", "teacher"),
        ("dump_teacher", "targets"),
        ("distill", "student"),
        ("distill_baseline", "baseline"),
    ],
)
def test_writing_runs_refuse_a_locked_directory(
    mode, directory, task, tmp_path, tiny_bert_vocab
):
    work_dir = str(tmp_path / "work")
    runs = {
        "prepare": lambda: prepare.run(
            task=task, work_dir=work_dir, bert=tiny_bert_vocab
        ),
        "train_teacher": lambda: train_teacher.run(
            task=task, work_dir=work_dir, teacher_fn=None
        ),
        "dump_teacher": lambda: dump_teacher.run(task=task, work_dir=work_dir),
        "distill": lambda: distill.run(task=task, work_dir=work_dir),
        "distill_baseline": lambda: distill.run(
            task=task, work_dir=work_dir, distillation_weight=0.0
        ),
    }
    locked = os.path.join(work_dir, directory)
    with DirectoryLock(locked):
        with pytest.raises(LockedError, match=f"{locked} is being written"):
            runs[mode]()
    # Nothing else was written next to the lock.
    assert os.listdir(locked) == []


def test_export_refuses_a_locked_export_directory(
    tmp_path, tiny_bert_vocab, tiny_corpus
):
    tokenizer = BertWordPieceTokenizer(load_bert_vocabulary(tiny_bert_vocab))
    pairs = read_text_pairs(tiny_corpus, "train", "de", "en")
    vocabulary = TaskVocabulary.build(tokenizer, pairs.sources + pairs.targets)
    work = tmp_path / "work"
    vocabulary.save(str(work / "vocab"))
    keras.utils.set_random_seed(0)
    backbone = TransformerSeq2SeqBackbone(
        vocabulary_size=vocabulary.size,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=12,
    )
    distill.save_student(TransformerSeq2Seq(backbone), str(work / "student"))
    export_dir = str(work / "export")
    with DirectoryLock(export_dir):
        with pytest.raises(LockedError, match=f"{export_dir} is being"):
            export.run(
                work_dir=str(work),
                search=SearchSettings(
                    beam_size=1, max_length=4, jit_compile=False
                ),
            )
    assert os.listdir(export_dir) == []
