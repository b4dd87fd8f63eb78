"""tools/converge.py train resumes after a kill at any point: here the
worst one, a first `distill` call killed after its first checkpoint and
before it wrote the student's architecture (`student_config.json`). The
runs are real (the demo's tiny baseline on the bundled corpus); the killed
call SIGKILLs itself at a fixed step (tools/fault_sweep.py's KILLING_BERTKD).
"""

import json
import os
import subprocess
import sys

import pytest

from tests.tools.tool_loader import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
KILLING_BERTKD = load_tool("fault_sweep").KILLING_BERTKD

pytestmark = pytest.mark.slow

# `bertkd` whose first call kills itself at step $KILL_AT_STEP, or with
# KILL_AT_STEP=end after its last checkpoint and before its final weights
# and architecture (the call runs, then they are removed); every later call
# is the real one.
BERTKD = """#!/bin/sh
if [ ! -e "$FIRST_CALL_DONE" ]; then
  touch "$FIRST_CALL_DONE"
  if [ "$KILL_AT_STEP" = end ]; then
    {python} -m bertkd_tf.main "$@" || exit 1
    rm "$MODEL_DIR/student_config.json" "$MODEL_DIR"/final.weights.h5*
    kill -9 $$
  fi
  exec {python} -c "$KILLING_BERTKD" "$@"
fi
exec {python} -m bertkd_tf.main "$@"
"""


def _converge(tmp_path, corpus, bertkd, env):
    return subprocess.run(
        [
            sys.executable,
            "tools/converge.py",
            "train",
            f"--work_dir={tmp_path / 'work'}",
            f"--data_dir={corpus}",
            "--task_gin=gin/tasks/multi30k_de_en.gin",
            "--task_gin_bindings=task.Task.valid_split='valid'",  # the demo's
            f"--gin_file={tmp_path / 'baseline.gin'}",
            "--model_dir=base",
            f"--bertkd={bertkd}",
            "--chunk_steps=10",
            "--eval_every=5",
            "--min_steps=10",
            "--max_steps=10",
            "--gin_bindings=distill.run.seed=0",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.mark.parametrize(
    "kill_at, checkpoints",
    [
        (7, ["ckpt-5"]),  # inside the chunk, after its first checkpoint
        ("end", ["ckpt-10", "ckpt-5"]),  # after its last one, before it ended
    ],
)
def test_first_call_killed_after_a_checkpoint_resumes(
    tmp_path, tiny_corpus, kill_at, checkpoints
):
    env = {
        **os.environ,
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "KILLING_BERTKD": KILLING_BERTKD,
        "FIRST_CALL_DONE": str(tmp_path / "first_call_done"),
        "KILL_AT_STEP": str(kill_at),
        "MODEL_DIR": str(tmp_path / "work" / "base"),
        "PYTHONPATH": ROOT,
    }
    prepare = subprocess.run(
        [
            sys.executable,
            "-m",
            "bertkd_tf.main",
            "--mode=prepare",
            "--gin_file=gin/runs/prepare.gin",
            "--gin_file=gin/demo/demo.gin",
            f"--gin_bindings=DATA_DIR='{tiny_corpus}'",
            f"--gin_bindings=WORK_DIR='{tmp_path / 'work'}'",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert prepare.returncode == 0, prepare.stderr[-3000:]
    (tmp_path / "baseline.gin").write_text(
        "include 'gin/runs/distill.gin'\n"
        "include 'gin/demo/demo.gin'\n"
        "DISTILLATION_WEIGHT = 0.0\n"
    )
    bertkd = tmp_path / "bertkd"
    bertkd.write_text(BERTKD.format(python=sys.executable))
    bertkd.chmod(0o755)
    model_dir = tmp_path / "work" / "base"

    killed = _converge(tmp_path, tiny_corpus, bertkd, env)
    assert killed.returncode != 0
    # The state a kill can leave: a checkpoint, but no architecture yet.
    kept = sorted(
        p.name[: -len(".index")]
        for p in (model_dir / "checkpoints").glob("*.index")
    )
    assert kept == checkpoints
    assert not (model_dir / "student_config.json").exists()
    assert not (model_dir / "valid_bleu.json").exists()

    resumed = _converge(tmp_path, tiny_corpus, bertkd, env)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    curve = json.loads((model_dir / "valid_bleu.json").read_text())
    assert sorted(curve, key=int) == ["5", "10"]
    assert all(score["beam_size"] == 1 for score in curve.values())
    converged = json.loads((model_dir / "converged.json").read_text())
    assert converged["last_step"] == 10
    assert converged["reason"] == "max_steps"
    assert converged["best_step"] in (5, 10)
