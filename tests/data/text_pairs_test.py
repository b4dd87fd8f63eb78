"""Readers: ids, drops by reason, and the errors a user sees on bad input."""

import gzip

import pytest

from bertkd_tf.data.text_pairs import TextPairs, read_text_pairs


def _write(path, lines, opener=open):
    with opener(path, "wb") as f:
        f.write(lines)


def test_reads_fixture_with_stable_ids(tiny_corpus):
    pairs = read_text_pairs(tiny_corpus, "train", "de", "en")
    assert len(pairs) == 40
    assert pairs.ids.tolist() == list(range(40))
    assert pairs.sources[0] == "Ein Hund läuft über die Wiese."
    assert pairs.targets[0] == "A dog runs across the meadow."
    assert pairs.stats == {"read": 40, "kept": 40}


def test_gzip_and_empty_lines_dropped_and_counted(tmp_path):
    _write(tmp_path / "train.de.gz", b"a\n\nc\nd\n", gzip.open)
    _write(tmp_path / "train.en", b"A\nB\n\nD\n")
    pairs = read_text_pairs(str(tmp_path), "train", "de", "en")
    assert pairs.ids.tolist() == [0, 3]  # ids are line numbers, kept stable
    assert pairs.targets == ["A", "D"]
    assert pairs.stats == {
        "read": 4,
        "kept": 2,
        "dropped_empty_source": 1,
        "dropped_empty_target": 1,
    }


def test_line_count_mismatch_names_both_files_and_counts(tmp_path):
    _write(tmp_path / "train.de", b"a\nb\nc\n")
    _write(tmp_path / "train.en", b"A\nB\n")
    with pytest.raises(ValueError) as error:
        read_text_pairs(str(tmp_path), "train", "de", "en")
    message = str(error.value)
    assert "train.de has 3 lines" in message
    assert "train.en has 2" in message


def test_invalid_utf8_names_file_and_line(tmp_path):
    _write(tmp_path / "train.de", b"gut\nschl\xe4cht\n")
    _write(tmp_path / "train.en", b"good\nbad\n")
    with pytest.raises(ValueError, match=r"train\.de:2: not valid UTF-8"):
        read_text_pairs(str(tmp_path), "train", "de", "en")


def test_missing_file_names_expected_paths(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"test\.de or .*test\.de\.gz"):
        read_text_pairs(str(tmp_path), "test", "de", "en")


def test_to_dataset_yields_id_source_target(tiny_corpus):
    pairs = read_text_pairs(tiny_corpus, "valid", "de", "en")
    first = next(iter(pairs.to_dataset()))
    assert set(first) == {"id", "source", "target"}
    assert int(first["id"]) == 0
    assert first["target"].numpy().decode() == "A man runs in the park."


def test_max_pairs_and_take(tiny_corpus):
    pairs = read_text_pairs(tiny_corpus, "train", "de", "en", max_pairs=5)
    assert len(pairs) == 5
    assert len(pairs.take(2)) == 2
    with pytest.raises(ValueError, match="differ in length"):
        TextPairs([0, 1], ["a"], ["b"])
