"""export mode: versions under export_dir, nothing overwritten, gin + tool."""

import json
import os
import subprocess
import sys

import keras
import pytest

from bertkd_tf import main
from bertkd_tf.data.bert_word_piece_tokenizer import (
    BertWordPieceTokenizer,
    load_bert_vocabulary,
)
from bertkd_tf.data.task_vocabulary import TaskVocabulary
from bertkd_tf.data.text_pairs import read_text_pairs
from bertkd_tf.decoding.search_settings import SearchSettings
from bertkd_tf.models.transformer_backbone import TransformerSeq2SeqBackbone
from bertkd_tf.models.transformer_seq2seq import TransformerSeq2Seq
from bertkd_tf.runs import distill, export

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
INSPECT = os.path.join(REPO, "tools", "inspect_export.py")
SETTINGS = dict(
    search=SearchSettings(beam_size=2, max_length=5, jit_compile=False)
)


def _tree(directory):
    """{relative path: bytes} of every file under `directory`."""
    files = {}
    for root, _, names in os.walk(directory):
        for name in names:
            path = os.path.join(root, name)
            with open(path, "rb") as f:
                files[os.path.relpath(path, directory)] = f.read()
    return files


@pytest.fixture()
def work_dir(tmp_path, tiny_bert_vocab, tiny_corpus):
    tokenizer = BertWordPieceTokenizer(load_bert_vocabulary(tiny_bert_vocab))
    pairs = read_text_pairs(tiny_corpus, "train", "de", "en")
    vocabulary = TaskVocabulary.build(tokenizer, pairs.sources + pairs.targets)
    work = tmp_path / "work"
    vocabulary.save(str(work / "vocab"))
    keras.utils.set_random_seed(0)
    for name in ("student", "baseline"):
        backbone = TransformerSeq2SeqBackbone(
            vocabulary_size=vocabulary.size,
            num_layers=1,
            num_heads=2,
            hidden_dim=8,
            intermediate_dim=16,
            dropout=0.0,
            max_sequence_length=12,
        )
        distill.save_student(TransformerSeq2Seq(backbone), str(work / name))
    return str(work)


def test_two_exports_give_two_versions_nothing_overwritten(work_dir):
    first = export.run(work_dir=work_dir, **SETTINGS)
    export_dir = os.path.join(work_dir, "export")
    assert first["output_dir"] == os.path.join(
        export_dir, str(first["version"])
    )
    before = _tree(first["output_dir"])
    assert "saved_model.pb" in before
    second = export.run(work_dir=work_dir, model_dir="baseline", **SETTINGS)
    assert second["version"] > first["version"]
    assert sorted(os.listdir(export_dir)) == sorted(
        [str(first["version"]), str(second["version"])]
    )  # no temporary directory left behind
    assert _tree(first["output_dir"]) == before
    config = json.loads(
        _tree(second["output_dir"])["assets.extra/bertkd_export.json"]
    )
    assert config["model_dir"] == os.path.join(work_dir, "baseline")
    assert config["beam_size"] == 2 and config["max_length"] == 5
    # The run's max_source_length excludes EOS: 11 WordPieces + EOS.
    assert config["max_source_length"] == 12
    # An explicit existing version is refused; nothing changes.
    with pytest.raises(FileExistsError, match=f"Version {first['version']}"):
        export.run(work_dir=work_dir, version=first["version"], **SETTINGS)
    assert _tree(first["output_dir"]) == before


def test_next_version_is_timestamp_or_after_the_latest(tmp_path):
    assert export.next_version(str(tmp_path / "missing"), now=1000) == 1000
    for name in ("5", "99999999999", "notes", ".tmp-export-x"):
        (tmp_path / name).mkdir()
    (tmp_path / "7").write_text("a file, not a version")
    assert export.existing_versions(str(tmp_path)) == [5, 99999999999]
    assert export.next_version(str(tmp_path), now=1000) == 100000000000


def test_bad_arguments_fail_before_writing(work_dir, tmp_path):
    export_dir = str(tmp_path / "served")
    with pytest.raises(ValueError, match="Received: 0"):
        export.run(work_dir=work_dir, version=0)
    with pytest.raises(ValueError, match="Received: '1'"):
        export.run(work_dir=work_dir, version="1")
    with pytest.raises(FileNotFoundError, match="missing student_config"):
        export.run(
            work_dir=work_dir, export_dir=export_dir, model_dir="nothing_here"
        )
    assert not os.path.exists(export_dir)


@pytest.mark.slow
def test_gin_mode_and_inspect_tool(work_dir, tmp_path):
    export_dir = str(tmp_path / "served")
    result = main.run_mode(
        "export",
        [os.path.join(REPO, "gin", "runs", "export.gin")],
        [
            f"WORK_DIR='{work_dir}'",
            f"EXPORT_DIR='{export_dir}'",
            "BEAM_SIZE=2",
            "MAX_LENGTH=5",
            "export.run.version = 7",
        ],
    )
    version_dir = result["output_dir"]
    assert version_dir == os.path.join(export_dir, "7")
    with open(os.path.join(version_dir, "operative_config.gin")) as f:
        assert "BEAM_SIZE = 2" in f.read()
    # The tool picks the latest version and imports nothing from bertkd_tf.
    code = (
        "import runpy, sys; sys.argv = sys.argv[1:]; "
        "runpy.run_path(sys.argv[0], run_name='__main__'); "
        "assert not any(m.startswith('bertkd_tf') for m in sys.modules)"
    )
    completed = subprocess.run(
        [
            sys.executable,
            "-c",
            code,
            INSPECT,
            export_dir,
            "--sentence",
            "ein hund läuft .",
            "--sentence",
            "",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=str(tmp_path),
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    out = completed.stdout
    assert f"SavedModel: {version_dir}" in out
    assert "signature 'serving_default':" in out
    assert "signature 'serve_token_ids':" in out
    assert "input  inputs: string [?]" in out
    assert "> ein hund läuft ." in out
    assert "<" in out and "(score 0.0000)" in out
