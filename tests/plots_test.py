"""Curves as PNG files: atomic writes, the history and BLEU readers, the
BLEU plot next to `tools/converge.py`'s `valid_bleu.json`."""

import json
import os

import pytest

from bertkd_tf import plots

PNG = b"\x89PNG\r\n\x1a\n"


def test_png_replaces_the_old_one_atomically(tmp_path, monkeypatch):
    path = str(tmp_path / "run" / "valid_accuracy.png")
    plots.write_curves_png(path, {"t": ([1, 2], [0.1, 0.2])}, "step", "acc")
    first = open(path, "rb").read()
    assert first[:8] == PNG
    # A failing draw leaves the old file whole and no temporary behind.
    from matplotlib.figure import Figure

    def broken(self, *args, **kwargs):
        with open(args[0], "wb") as f:
            f.write(b"half a png")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken)
    with pytest.raises(OSError, match="disk full"):
        plots.write_curves_png(path, {"t": ([1], [0.5])}, "step", "acc")
    assert open(path, "rb").read() == first
    assert os.listdir(tmp_path / "run") == ["valid_accuracy.png"]


def test_history_curve_keeps_the_last_record_of_a_step(tmp_path):
    path = tmp_path / "history.jsonl"
    records = [
        {"step": 2, "loss": 3.0},
        {"step": 4, "val_accuracy": 0.25},
        {"step": 4, "val_accuracy": 0.5},  # Rewritten after a resume.
        {"step": 6, "val_accuracy": 0.75},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + "\n")
    assert plots.history_curve(str(path), "val_accuracy") == (
        [4, 6],
        [0.5, 0.75],
    )
    assert plots.history_curve(str(tmp_path / "none"), "loss") == ([], [])


def test_bleu_curve_drawn_next_to_its_json(tmp_path):
    """What `tools/converge.py train` calls after each scored checkpoint."""
    model_dir = tmp_path / "student"
    model_dir.mkdir()
    curve = model_dir / "valid_bleu.json"
    curve.write_text(json.dumps({"1000": {"bleu": 20.5}, "500": {"bleu": 9}}))
    assert plots.bleu_curve_from_json(str(curve)) == ([500, 1000], [9.0, 20.5])
    path = plots.plot_bleu_curve(str(curve))
    assert path == str(model_dir / "valid_bleu.png")
    assert (model_dir / "valid_bleu.png").read_bytes()[:8] == PNG
    assert sorted(os.listdir(model_dir)) == [
        "valid_bleu.json",
        "valid_bleu.png",
    ]
