"""A saved teacher loads in any process (`artifacts.load_teacher`)."""

import os
import subprocess
import sys

import numpy as np

from bertkd_tf.runs import train_teacher
from tests.models.cmlm_teacher_test import _inputs, _tiny_teacher

ROOT = os.path.dirname(os.path.dirname(__file__))

# A fresh process that imports nothing but `bertkd_tf.artifacts`, as a
# `dump_teacher` run whose gin files import no `train_teacher`.
LOAD = """
import sys
import numpy as np
from bertkd_tf import artifacts
teacher = artifacts.load_teacher(sys.argv[1])
print(type(teacher.optimizer).__name__)
print(teacher.optimizer.get_config()["learning_rate"]["class_name"])
print(type(teacher.loss).__name__)
print(repr(float(sum(np.abs(w.numpy()).sum() for w in teacher.weights))))
"""


def test_teacher_compiled_for_training_loads_in_a_fresh_process(tmp_path):
    teacher = _tiny_teacher()
    teacher(_inputs())  # Build.
    train_teacher.compile_teacher(
        teacher, peak_learning_rate=1e-3, warmup_steps=2, total_steps=10
    )
    train_teacher.save_teacher(teacher, str(tmp_path))
    result = subprocess.run(
        [sys.executable, "-c", LOAD, str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    optimizer, schedule, loss, total = result.stdout.split()[-4:]
    # Its compile config came back whole: optimizer, schedule and loss.
    assert (optimizer, schedule, loss) == (
        "FusedAdam",
        "LinearWarmupDecay",
        "TokenCrossEntropy",
    )
    expected = sum(np.abs(w.numpy()).sum() for w in teacher.weights)
    assert float(total) == float(expected)
