"""Tokenizer and task vocabulary: ids, round trips, files."""

import numpy as np
import pytest
import tensorflow as tf

from bertkd_tf.data.bert_word_piece_tokenizer import (
    BertWordPieceTokenizer,
    escape_moses,
    is_uncased,
    load_bert_vocabulary,
)
from bertkd_tf.data.task_vocabulary import TaskVocabulary
from bertkd_tf.data.text_pairs import read_text_pairs


def test_specials_first_and_bos_eos(tiny_vocab):
    assert tiny_vocab.tokens[:5] == [
        "[PAD]",
        "[UNK]",
        "[CLS]",
        "[SEP]",
        "[MASK]",
    ]
    assert (tiny_vocab.bos_id, tiny_vocab.eos_id) == (2, 3)
    bert = tiny_vocab.tokenizer.vocabulary
    for task_id, bert_id in enumerate(tiny_vocab.bert_ids):
        assert bert[bert_id] == tiny_vocab.tokens[task_id]


def test_most_frequent_first(tiny_vocab):
    counts = tiny_vocab.counts[5:]
    assert np.all(np.diff(counts) <= 0)
    assert tiny_vocab.tokens[5] == "##."  # every sentence ends with one


def test_round_trip_text_ids_text(tiny_corpus, tiny_vocab):
    pairs = read_text_pairs(tiny_corpus, "train", "de", "en")
    ids = tiny_vocab.tokenize(pairs.targets)
    assert ids.dtype == tf.int32
    graph = [t.decode() for t in tiny_vocab.detokenize(ids).numpy()]
    python = [tiny_vocab.decode(row) for row in ids.to_list()]
    expected = [tiny_vocab.normalize_reference(t) for t in pairs.targets]
    assert graph == expected
    assert python == expected
    assert expected[0] == "a dog runs across the meadow."


def test_punctuation_inside_a_word_becomes_suffix_pieces(tiny_vocab):
    ids = tiny_vocab.tokenize(["a dog. the cat."]).to_list()[0]
    assert [tiny_vocab.tokens[i] for i in ids] == [
        "a",
        "dog",
        "##.",
        "the",
        "cat",
        "##.",
    ]


def test_detokenize_stops_at_eos_and_skips_pad_bos(tiny_vocab):
    dog = tiny_vocab.tokenize(["dog"]).to_list()[0][0]
    cat = tiny_vocab.tokenize(["cat"]).to_list()[0][0]
    ids = [[2, dog, cat, 3, dog, 0], [dog, 0, 0, 0, 0, 0]]
    texts = tiny_vocab.detokenize(tf.constant(ids)).numpy().tolist()
    assert texts == [b"dog cat", b"dog"]
    assert tiny_vocab.decode(ids[0]) == "dog cat"


def test_unknown_words_map_to_unk(tiny_vocab):
    ids = tiny_vocab.tokenize(["zebra"]).to_list()[0]
    assert tiny_vocab.unk_id in ids


def test_accents_stripped_for_uncased(tiny_vocab):
    assert tiny_vocab.tokenizer.lowercase
    ids = tiny_vocab.tokenize(["Läuft Über"]).to_list()[0]
    assert tiny_vocab.decode(ids) == "lauft uber"


def test_moses_escapes_round_trip(tiny_bert_vocab):
    tokenizer = BertWordPieceTokenizer(
        load_bert_vocabulary(tiny_bert_vocab), moses_escapes=True
    )
    text = "the dog &apos;s ball &quot; a &amp; b &quot;"
    vocab = TaskVocabulary.build(tokenizer, [text])
    ids = vocab.tokenize([text])
    assert vocab.decode(ids.to_list()[0]) == text
    assert vocab.detokenize(ids).numpy()[0].decode() == text
    assert escape_moses("a & 'b'") == "a &amp; &apos;b&apos;"


def test_min_count_drops_rare_pieces(tiny_corpus, tiny_bert_vocab):
    tokenizer = BertWordPieceTokenizer(load_bert_vocabulary(tiny_bert_vocab))
    pairs = read_text_pairs(tiny_corpus, "train", "de", "en")
    texts = pairs.sources + pairs.targets
    everything = TaskVocabulary.build(tokenizer, texts, min_count=1)
    frequent = TaskVocabulary.build(tokenizer, texts, min_count=3)
    assert frequent.size < everything.size
    assert np.all(frequent.counts[5:] >= 3)
    with pytest.raises(ValueError, match="min_count must be >= 1"):
        TaskVocabulary.build(tokenizer, texts, min_count=0)


def test_save_load_round_trip(tmp_path, tiny_vocab):
    tiny_vocab.save(str(tmp_path))
    loaded = TaskVocabulary.load(str(tmp_path))
    assert loaded.tokens == tiny_vocab.tokens
    np.testing.assert_array_equal(loaded.bert_ids, tiny_vocab.bert_ids)
    assert loaded.fingerprint == tiny_vocab.fingerprint
    text = ["Zwei Kinder spielen mit einem Ball."]
    assert (
        loaded.tokenize(text).to_list() == tiny_vocab.tokenize(text).to_list()
    )


def test_load_rejects_mismatched_file(tmp_path, tiny_vocab):
    tiny_vocab.save(str(tmp_path))
    path = tmp_path / "task_vocabulary.tsv"
    lines = path.read_text().splitlines()
    lines[6] = "dog\t5\t1"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"task_vocabulary.tsv:7: token 'dog'"):
        TaskVocabulary.load(str(tmp_path))


def test_missing_vocabulary_says_run_prepare(tmp_path):
    with pytest.raises(FileNotFoundError, match="--mode=prepare"):
        TaskVocabulary.load(str(tmp_path))


def test_case_follows_vocabulary():
    assert is_uncased(["[PAD]", "[UNK]", "a", "##b"])
    assert not is_uncased(["[PAD]", "The", "a"])
    cased = BertWordPieceTokenizer(
        ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "The", "the", "dog"]
    )
    assert not cased.lowercase
    assert cased.tokenize(["The dog"]).to_list() == [[5, 7]]


def test_vocabulary_without_specials_is_rejected(tmp_path):
    path = tmp_path / "vocab.txt"
    path.write_text("a\nb\n")
    with pytest.raises(ValueError, match=r"lacks the special tokens"):
        load_bert_vocabulary(str(path))
