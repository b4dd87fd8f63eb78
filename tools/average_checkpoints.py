r"""Averages the student weights of the last N checkpoints of a model dir.

    python tools/average_checkpoints.py --model_dir=WORK_DIR/student \
        --num_checkpoints=5 [--output=WORK_DIR/student/averaged.weights.h5]

Reads `student_config.json` (written by `distill` at the end of a run) and
the `checkpoints/` that `distill` keeps (the last `keep_checkpoints`), and
writes the element-wise mean of the student's weights as a Keras weights
file (default `<model_dir>/averaged.weights.h5`), atomically, with its
SHA-256 in `averaged.weights.h5.sha256` (checked when loaded). Load it with
`bertkd_tf.artifacts.load_student(model_dir,
weights_file="averaged.weights.h5")`. Optimizer state is not averaged.
"""

import os
import sys

import numpy as np
import tensorflow as tf
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bertkd_tf import artifacts  # noqa: E402
from bertkd_tf.training import trainer  # noqa: E402

MODEL_DIR = flags.DEFINE_string("model_dir", None, "e.g. WORK_DIR/student.")
NUM_CHECKPOINTS = flags.DEFINE_integer(
    "num_checkpoints", 5, "How many of the newest checkpoints to average."
)
OUTPUT = flags.DEFINE_string(
    "output", None, "Weights file (default <model_dir>/averaged.weights.h5)."
)
AVERAGED_WEIGHTS = "averaged.weights.h5"


class _Holder(tf.Module):
    """Mirrors the checkpoint layout: `model.student` (a DistillationModel)."""

    def __init__(self, student):
        super().__init__()
        self.student = student


def checkpoint_paths(model_dir, num_checkpoints):
    """The newest `num_checkpoints` checkpoint prefixes, oldest first."""
    directory = os.path.join(model_dir, trainer.CHECKPOINT_DIR)
    state = tf.train.get_checkpoint_state(directory)
    if state is None or not state.all_model_checkpoint_paths:
        raise FileNotFoundError(f"No checkpoints in {directory!r}.")
    paths = list(state.all_model_checkpoint_paths)
    if num_checkpoints < 1:
        raise ValueError(
            f"num_checkpoints must be >= 1; got {num_checkpoints}."
        )
    return paths[-num_checkpoints:]


def average_checkpoints(model_dir, num_checkpoints, output=None):
    """Writes the averaged student weights; returns `(output, paths)`."""
    paths = checkpoint_paths(model_dir, num_checkpoints)
    student = artifacts.student_from_config(model_dir)
    holder = _Holder(student)
    total = None
    for path in paths:
        tf.train.Checkpoint(model=holder).restore(path).expect_partial()
        values = [v.numpy().astype(np.float64) for v in student.weights]
        total = (
            values if total is None else [t + v for t, v in zip(total, values)]
        )
    for variable, value in zip(student.weights, total):
        variable.assign((value / len(paths)).astype(variable.dtype))
    output = output or os.path.join(model_dir, AVERAGED_WEIGHTS)
    trainer.write_weights(student, output)  # Atomically, with a checksum.
    return output, paths


def main(argv):
    del argv
    if not MODEL_DIR.value:
        raise app.UsageError("--model_dir is required.")
    output, paths = average_checkpoints(
        MODEL_DIR.value, NUM_CHECKPOINTS.value, OUTPUT.value
    )
    logging.info(
        "averaged %d checkpoints into %s: %s", len(paths), output, paths
    )
    print(output)


if __name__ == "__main__":
    app.run(main)
