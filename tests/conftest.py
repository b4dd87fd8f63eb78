"""Shared fixtures: the tiny German-English corpus and its BERT vocabulary."""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TINY_CORPUS = os.path.join(FIXTURES, "tiny_de_en")
TINY_BERT_VOCAB = os.path.join(FIXTURES, "bert_vocab_uncased.txt")

# `make test` runs the suite in two processes (pytest-xdist, `--dist loadfile`:
# all tests of a file in one process, so a module's fixtures are built once).
# With `--no-loadscope-reorder` files are handed out in collection order (by
# default xdist sends the files with the most tests first), so the longest go
# first: the README's commands alone are about a quarter of the suite, and
# started last they leave the other process idle for minutes (measured: the
# README test started 37 minutes into a 2-process run). Longest first, from
# `pytest --durations` (session 14, AVX2-only machine): 778 s, 233 s, 214 s,
# 208 s, 178 s.
LONGEST_FILES = (
    "readme_test.py",
    "runs/train_teacher_test.py",
    "tools/converge_test.py",
    "decoding/generator_test.py",
    "runs/exact_resume_test.py",
)


def pytest_collection_modifyitems(config, items):
    """Moves the tests of `LONGEST_FILES` to the front, in that order; the
    rest keep their order (the sort is stable)."""
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    rank = {name: i for i, name in enumerate(LONGEST_FILES)}

    def position(item):
        relative = os.path.relpath(str(item.path), tests_dir)
        return rank.get(relative.replace(os.sep, "/"), len(rank))

    items.sort(key=position)


@pytest.fixture
def tiny_corpus():
    return TINY_CORPUS


@pytest.fixture
def tiny_bert_vocab():
    return TINY_BERT_VOCAB


@pytest.fixture
def tiny_vocab():
    """A TaskVocabulary built from the tiny corpus' training split."""
    from bertkd_tf.data.bert_word_piece_tokenizer import (
        BertWordPieceTokenizer,
        load_bert_vocabulary,
    )
    from bertkd_tf.data.task_vocabulary import TaskVocabulary
    from bertkd_tf.data.text_pairs import read_text_pairs

    tokenizer = BertWordPieceTokenizer(load_bert_vocabulary(TINY_BERT_VOCAB))
    pairs = read_text_pairs(TINY_CORPUS, "train", "de", "en")
    return TaskVocabulary.build(tokenizer, pairs.sources + pairs.targets)
