"""The binary: gin files parse; bad configuration reads as a paragraph."""

import glob
import json
import os
import subprocess
import sys

import gin
import pytest

from bertkd_tf import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_FILES = sorted(
    glob.glob(os.path.join(ROOT, "gin", "**", "*.gin"), recursive=True)
)


@pytest.mark.parametrize(
    "path", GIN_FILES, ids=lambda p: os.path.relpath(p, ROOT)
)
def test_every_gin_file_parses(path):
    gin.clear_config()
    gin.add_config_file_search_path(ROOT)
    gin.parse_config_files_and_bindings([path], [], finalize_config=False)
    gin.clear_config()


def test_there_are_gin_files_for_every_layer():
    folders = {os.path.basename(os.path.dirname(p)) for p in GIN_FILES}
    assert {"tasks", "runs", "experiments"} <= folders


def _bertkd(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "bertkd_tf.main", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=300,
    )


def test_missing_required_macros_named_without_traceback():
    result = _bertkd(
        "--mode=prepare",
        "--gin_file=gin/experiments/multi30k_de_en_prepare.gin",
    )
    assert result.returncode == 2
    assert "needs DATA_DIR, WORK_DIR" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


def test_typo_in_binding_is_one_paragraph():
    result = _bertkd(
        "--mode=prepare",
        "--gin_file=gin/experiments/multi30k_de_en_prepare.gin",
        "--gin_bindings=prepare.run.min_cont=2",
    )
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "doesn't have a parameter named 'min_cont'" in message
    assert "Traceback" not in result.stderr


def test_unknown_mode_rejected():
    result = _bertkd("--mode=prepre")
    assert result.returncode != 0
    assert "value should be one of" in result.stderr


def test_prepare_end_to_end_writes_vocab_stats_and_config(
    tmp_path, tiny_corpus, tiny_bert_vocab
):
    work_dir = tmp_path / "work"
    result = main.run_mode(
        "prepare",
        ["gin/experiments/multi30k_de_en_prepare.gin"],
        [
            f"DATA_DIR='{tiny_corpus}'",
            f"WORK_DIR='{work_dir}'",
            f"BERT='{tiny_bert_vocab}'",
            "task.Task.valid_split='valid'",
        ],
    )
    gin.clear_config()
    vocab_dir = work_dir / "vocab"
    assert result["output_dir"] == str(vocab_dir)
    stats = json.loads((vocab_dir / "stats.json").read_text())
    assert stats["splits"]["train"]["pairs"]["kept"] == 40
    assert stats["splits"]["valid"]["pairs"]["kept"] == 8
    assert stats["vocabulary_size"] == result["vocabulary_size"] > 5
    assert (
        "prepare.run.min_count = 1"
        in (vocab_dir / "operative_config.gin").read_text()
    )
