"""TFDS tasks: what `tools/get_data` prepares, the task reads; an absent
dataset is reported naming the gin settings. A tiny registered TFDS builder
stands in for Gigaword (no network)."""

import os
import shutil
import sys

import pytest
import tensorflow_datasets as tfds
from etils import epath

from bertkd_tf.data.task import Task
from bertkd_tf.errors import ConfigError, MissingInputError

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
sys.path.insert(0, os.path.join(REPO, "tools"))

from get_data import corpora  # noqa: E402
from get_data.downloads import DownloadError  # noqa: E402

NAME = "bertkd_tiny_summaries"
ROWS = {
    "train": [
        ("the cat sat on the mat all day .", "cat sat"),
        ("stocks rose on tuesday in tokyo .", "stocks rise"),
        ("a storm hit the coast at night .", "storm hits coast"),
    ],
    "validation": [("rain fell in paris .", "paris rain")],
}


class BertkdTinySummaries(tfds.core.GeneratorBasedBuilder):
    """Gigaword's features (`document`, `summary`), three pairs."""

    VERSION = tfds.core.Version("1.0.0")
    # Metadata directory (TFDS looks for a package by default; tests/data
    # is not one).
    pkg_dir_path = epath.Path(__file__).parent

    def _info(self):
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(
                {
                    "document": tfds.features.Text(),
                    "summary": tfds.features.Text(),
                }
            ),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # Nothing to download.
        return {
            split: self._generate_examples(rows) for split, rows in ROWS.items()
        }

    def _generate_examples(self, rows):
        for index, (document, summary) in enumerate(rows):
            yield index, {"document": document, "summary": summary}


def _task(data_dir, **kwargs):
    return Task(
        data_dir,
        tfds_name=NAME,
        source_key="document",
        target_key="summary",
        valid_split="validation",
        kind="summarization",
        **kwargs,
    )


def test_absent_dataset_names_the_gin_setting(tmp_path):
    with pytest.raises(MissingInputError) as error:
        _task(str(tmp_path)).read("train")
    message = str(error.value)
    assert "task.Task.download = True" in message
    assert "task.Task.data_dir" in message
    assert f"tools/get_data/fetch.py tfds:{NAME} DATA_DIR" in message
    assert str(tmp_path) in message
    assert "tfds.load" not in message and "download_and_prepare" not in message
    # Nothing was written: the run did not try to download.
    assert os.listdir(tmp_path) in ([], [NAME])


def test_unknown_dataset_names_tfds_name(tmp_path):
    task = Task(str(tmp_path), tfds_name="bertkd_no_such_dataset")
    with pytest.raises(ConfigError, match="task.Task.tfds_name"):
        task.read("train")


def test_fetched_dataset_is_read_by_the_task(tmp_path):
    data_dir = str(tmp_path / "data")
    log = []
    written = corpora.prepare(f"tfds:{NAME}", data_dir, log=log.append)
    assert written == {"tfds": f"{NAME}/1.0.0"}
    assert os.path.isfile(
        os.path.join(data_dir, NAME, "1.0.0", "dataset_info.json")
    )
    pairs = _task(data_dir).read("train")
    assert list(pairs.ids) == [0, 1, 2]
    assert pairs.sources == [document for document, _ in ROWS["train"]]
    assert pairs.targets == [summary for _, summary in ROWS["train"]]
    valid = _task(data_dir).read("valid")
    assert valid.sources == ["rain fell in paris ."]

    # Prepared: a second fetch does nothing.
    corpora.prepare(f"tfds:{NAME}", data_dir, log=log.append)
    assert log[-1] == f"get_data: TFDS {NAME} 1.0.0 is prepared in {data_dir}"

    # A mirror holding the prepared directory serves a machine offline.
    mirror = tmp_path / "mirror"
    shutil.copytree(os.path.join(data_dir, NAME), mirror / NAME)
    offline_dir = str(tmp_path / "offline")
    corpora.prepare(
        f"tfds:{NAME}", offline_dir, mirror=str(mirror), log=log.append
    )
    assert _task(offline_dir).read("train").targets == pairs.targets

    # A mirror without it: one paragraph saying where it looked.
    with pytest.raises(DownloadError, match="no prepared TFDS dataset"):
        corpora.prepare(
            f"tfds:{NAME}",
            str(tmp_path / "other"),
            mirror=str(tmp_path / "empty"),
            log=log.append,
        )


def test_download_true_lets_the_task_prepare_it(tmp_path):
    pairs = _task(str(tmp_path), download=True).read("train", max_pairs=2)
    assert pairs.targets == ["cat sat", "stocks rise"]
