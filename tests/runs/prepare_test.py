"""prepare mode: a malformed valid split is refused, a missing one is not."""

import os
import shutil

import pytest

from bertkd_tf.data.task import Task
from bertkd_tf.errors import DataError
from bertkd_tf.runs import prepare


@pytest.fixture
def corpus(tmp_path, tiny_corpus):
    directory = tmp_path / "corpus"
    shutil.copytree(tiny_corpus, directory)
    return directory


def test_valid_split_with_mismatched_line_counts_is_refused(
    corpus, tmp_path, tiny_bert_vocab
):
    with open(corpus / "valid.en", "a") as f:
        f.write("one line too many\n")
    task = Task(str(corpus), "de", "en", valid_split="valid")
    work_dir = tmp_path / "work"
    with pytest.raises(DataError) as error:
        prepare.run(task=task, work_dir=str(work_dir), bert=tiny_bert_vocab)
    message = " ".join(str(error.value).split())
    assert f"{corpus}/valid.de has 8 lines" in message
    assert f"{corpus}/valid.en has 9" in message
    # Nothing that later stages would take for a finished vocabulary.
    assert not os.path.exists(work_dir / "vocab" / prepare.STATS_FILE)


def test_missing_or_unset_valid_split_is_only_logged(
    corpus, tmp_path, tiny_bert_vocab
):
    for valid_split in ("absent", None):
        task = Task(str(corpus), "de", "en", valid_split=valid_split)
        work_dir = tmp_path / f"work_{valid_split}"
        result = prepare.run(
            task=task, work_dir=str(work_dir), bert=tiny_bert_vocab
        )
        assert sorted(result["stats"]["splits"]) == ["train"]
