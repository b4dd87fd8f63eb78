"""tools/run_experiment.sh with a fake `bertkd` that records its argv: each
stage gets only the bindings it takes, the data is fetched when missing, and
the WMT14 student starts from the baseline's newest checkpoint."""

import gzip
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
SCRIPT = os.path.join(REPO, "tools", "run_experiment.sh")
sys.path.insert(0, os.path.join(REPO, "tools"))

import gin_stage  # noqa: E402

pytestmark = pytest.mark.slow

FAKE_BERTKD = """#!{python}
import json, os, sys
args = sys.argv[1:]
bindings = [a.split("=", 1)[1] for a in args if a.startswith("--gin_bindings=")]
work_dir = [b.split("=", 1)[1].strip("'") for b in bindings
            if b.startswith("WORK_DIR=")][0]
student = os.path.join(work_dir, "student", "checkpoints")
record = {{
    "mode": [a for a in args if a.startswith("--mode=")][0][7:],
    "gin_file": [a for a in args if a.startswith("--gin_file=")][0][11:],
    "bindings": bindings,
    "student_checkpoints": sorted(os.listdir(student))
    if os.path.isdir(student) else None,
}}
with open(os.environ["FAKE_BERTKD_LOG"], "a") as f:
    f.write(json.dumps(record) + "\\n")
"""


def _fake_bertkd(tmp_path):
    path = tmp_path / "bertkd"
    path.write_text(FAKE_BERTKD.format(python=sys.executable))
    path.chmod(0o755)
    return str(path)


def _run(tmp_path, task, data_dir, work_dir, *extra, env=None):
    log = tmp_path / "calls.jsonl"
    if log.exists():
        log.unlink()
    environment = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("BERTKD_")
    }
    environment.update(
        BERTKD=_fake_bertkd(tmp_path),
        PYTHON=sys.executable,
        FAKE_BERTKD_LOG=str(log),
        PYTHONPATH=REPO,
        **(env or {}),
    )
    result = subprocess.run(
        ["bash", SCRIPT, task, data_dir, work_dir, *extra],
        capture_output=True,
        text=True,
        env=environment,
        timeout=300,
    )
    calls = []
    if log.exists():
        calls = [json.loads(line) for line in log.read_text().splitlines()]
    return result, calls


def _own_corpus(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    for name in ("train.en", "train.de"):
        (data_dir / name).write_text("a\n")
    return str(data_dir)


def test_each_stage_gets_only_its_bindings_and_wmt14_starts_from_baseline(
    tmp_path,
):
    data_dir = _own_corpus(tmp_path)
    work_dir = str(tmp_path / "work")
    # The baseline's checkpoints (the fake bertkd trains nothing).
    checkpoints = tmp_path / "work" / "baseline" / "checkpoints"
    checkpoints.mkdir(parents=True)
    for step in (1000, 9000, 30000):
        for suffix in ("index", "data-00000-of-00001"):
            (checkpoints / f"ckpt-{step}.{suffix}").write_text(str(step))
    (checkpoints / "checkpoint").write_text("model_checkpoint_path: ...")
    env = {
        "BERTKD_BINDINGS": "task.Task.max_train_pairs=100 TOP_K=4 "
        "MIXED_PRECISION=False evaluate.run.beam_size=2",
        "BERTKD_TEACHER_BINDINGS": "train_teacher.run.log_every_steps=7",
        "BERTKD_EXPORT_BINDINGS": "export.run.version=3",
    }
    result, calls = _run(tmp_path, "wmt14_en_de", data_dir, work_dir, env=env)
    assert result.returncode == 0, result.stderr
    assert "using the corpus in" in result.stdout
    assert [c["mode"] for c in calls] == [
        "prepare",
        "train_teacher",
        "dump_teacher",
        "distill",
        "distill",
        "evaluate",
        "evaluate",
        "export",
    ]
    data = f"DATA_DIR='{data_dir}'"
    work = f"WORK_DIR='{work_dir}'"
    by_file = {os.path.basename(c["gin_file"]): c for c in calls}
    assert by_file["wmt14_en_de_prepare.gin"]["bindings"] == [
        data,
        work,
        "task.Task.max_train_pairs=100",
    ]
    assert by_file["wmt14_en_de_teacher.gin"]["bindings"] == [
        data,
        work,
        "task.Task.max_train_pairs=100",
        "MIXED_PRECISION=False",
        "train_teacher.run.log_every_steps=7",
    ]
    assert by_file["wmt14_en_de_dump.gin"]["bindings"] == [
        data,
        work,
        "task.Task.max_train_pairs=100",
        "TOP_K=4",
        "MIXED_PRECISION=False",
    ]
    evaluate = [c for c in calls if c["mode"] == "evaluate"]
    assert evaluate[0]["bindings"] == [
        data,
        work,
        "task.Task.max_train_pairs=100",
        "evaluate.run.beam_size=2",
        "evaluate.run.model_dir='baseline'",
    ]
    # export takes no task binding, no DATA_DIR (the bug this fixes).
    assert calls[-1]["bindings"] == [work, "export.run.version=3"]

    # The student started from the baseline's newest checkpoint only.
    baseline_call, student_call = [c for c in calls if c["mode"] == "distill"]
    assert baseline_call["student_checkpoints"] is None
    assert student_call["student_checkpoints"] == [
        "ckpt-30000.data-00000-of-00001",
        "ckpt-30000.index",
    ]

    # Finished: a second run does nothing.
    result, calls = _run(tmp_path, "wmt14_en_de", data_dir, work_dir, env=env)
    assert result.returncode == 0, result.stderr
    assert calls == []


def test_a_binding_no_stage_takes_is_refused_before_running(tmp_path):
    result, calls = _run(
        tmp_path,
        "iwslt14_de_en",
        _own_corpus(tmp_path),
        str(tmp_path / "work"),
        env={"BERTKD_BINDINGS": "TRAIN_STEP=5 tsk.Task.x=1 TOP_K=8"},
    )
    assert result.returncode == 2
    assert calls == []
    assert "no stage takes TRAIN_STEP=5 tsk.Task.x=1 (no" in result.stderr


def test_missing_corpus_is_fetched_first(tmp_path):
    from get_data import corpora

    mirror = tmp_path / "mirror"
    host_path = corpora.MULTI30K_BASE.split("://", 1)[1]
    for split in ("train", "val"):
        for language in ("de", "en"):
            path = mirror / host_path / f"{split}.{language}.gz"
            path.parent.mkdir(parents=True, exist_ok=True)
            with gzip.open(path, "wt", encoding="utf-8") as f:
                f.write(f"{split} {language}\n")
    data_dir = str(tmp_path / "data")
    result, calls = _run(
        tmp_path,
        "multi30k_de_en",
        data_dir,
        str(tmp_path / "work"),
        "gin/experiments",
        env={"BERTKD_DATA_MIRROR": str(mirror)},
    )
    assert result.returncode == 0, result.stderr
    assert "fetch (multi30k_de_en into" in result.stdout
    with gzip.open(os.path.join(data_dir, "val.en.gz"), "rt") as f:
        assert f.read() == "val en\n"
    assert calls[0]["mode"] == "prepare"


def test_gin_stage_reads_includes_imports_and_macros(monkeypatch):
    monkeypatch.chdir(REPO)
    export = [text for _, text in gin_stage.closure("gin/runs/export.gin")]
    assert gin_stage.takes(export, "export.run.version=3")
    assert gin_stage.takes(export, "BEAM_SIZE=2")
    assert not gin_stage.takes(export, "task.Task.download=True")
    assert not gin_stage.takes(export, "DATA_DIR='x'")
    distill = "gin/experiments/paper/wmt14_en_de_distill.gin"
    texts = [text for _, text in gin_stage.closure(distill)]
    assert gin_stage.takes(texts, "task.Task.download=True")  # included
    assert gin_stage.takes(
        texts, "transformer_backbone.TransformerSeq2SeqBackbone.dropout=0.2"
    )
    assert gin_stage.takes(texts, "my_scope/TOP_K=4")
    assert not gin_stage.takes(texts, "evaluate.run.beam_size=2")
    assert gin_stage.task_of(distill) == "wmt14_en_de"
    assert gin_stage.start_from(distill) == "baseline"
    assert (
        gin_stage.start_from(distill.replace("wmt14_en_de", "gigaword")) is None
    )
