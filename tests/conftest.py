"""Shared fixtures: the tiny German-English corpus and its BERT vocabulary."""

import os

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

FIXTURES = os.path.join(os.path.dirname(__file__), "fixtures")
TINY_CORPUS = os.path.join(FIXTURES, "tiny_de_en")
TINY_BERT_VOCAB = os.path.join(FIXTURES, "bert_vocab_uncased.txt")


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
