"""Leftovers of interrupted writes are removed at the next start."""

import os

import pytest

from bertkd_tf.atomic_files import remove_stale_temporaries
from bertkd_tf.runs import export

DEAD_PID = 2**31 - 1  # Above any pid_max: never a live process.


def test_remove_stale_temporaries_spares_live_writers(tmp_path):
    (tmp_path / f"a.txt.tmp-{DEAD_PID}").write_text("half")
    (tmp_path / f"b.txt.tmp-{os.getpid()}").write_text("being written")
    (tmp_path / "ckpt-3_temp").mkdir()
    (tmp_path / "ckpt-3_temp" / "part").write_text("x")
    (tmp_path / "ckpt-3.index").write_text("kept")
    removed = remove_stale_temporaries(
        str(tmp_path), r".+_temp|.+\.tmp-(?P<pid>\d+)"
    )
    assert sorted(os.path.basename(p) for p in removed) == [
        f"a.txt.tmp-{DEAD_PID}",
        "ckpt-3_temp",
    ]
    assert sorted(os.listdir(tmp_path)) == [
        f"b.txt.tmp-{os.getpid()}",
        "ckpt-3.index",
    ]
    assert remove_stale_temporaries(str(tmp_path / "missing"), ".*") == []


def test_export_removes_temporaries_of_interrupted_exports(tmp_path, caplog):
    export_dir = tmp_path / "served"
    stale = [
        export_dir / ".tmp-export-k2j4_x9a",  # Named before pids were.
        export_dir / f".tmp-export-{DEAD_PID}-abcd1234",
    ]
    for directory in stale:
        (directory / "saved_model").mkdir(parents=True)
    running = export_dir / f".tmp-export-{os.getpid()}-zz"
    running.mkdir()
    (export_dir / "5").mkdir()  # A version: never touched.
    with pytest.raises(FileNotFoundError):  # No vocab/, no student.
        export.run(
            work_dir=str(tmp_path),
            export_dir=str(export_dir),
            model_dir="nothing_here",
        )
    assert sorted(os.listdir(export_dir)) == [
        f".tmp-export-{os.getpid()}-zz",
        "5",
    ]
    for directory in stale:
        assert str(directory) in caplog.text
