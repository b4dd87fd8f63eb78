"""The work directory's layout and the artifacts the runs pass on.

The one owner of where things lie under `WORK_DIR` and how the teacher, the
student and the task vocabulary are saved and loaded:

- `vocab/` (`VOCAB_DIR`, from `prepare`): the task vocabulary
  (`load_vocabulary`);
- `teacher/` (`TEACHER_DIR`, from `train_teacher`): `teacher_config.json`
  plus `final.weights.h5` (`save_teacher`, `load_teacher`,
  `teacher_fingerprint`);
- `targets/` (`TARGETS_DIR`, from `dump_teacher`; `targets_<split>/` for
  other splits): the teacher targets, whose format `data/teacher_targets.py`
  owns;
- `student/` / `baseline/` (`STUDENT_DIR`, `BASELINE_DIR`, from `distill`):
  `student_config.json` plus `final.weights.h5` (`save_student`,
  `load_student`, `student_from_config`).

The run modes (`bertkd_tf/runs/`) import these names from here; none of
them imports another run.
"""

import hashlib
import json
import os

import keras
import tensorflow as tf

from bertkd_tf.data.task_vocabulary import TaskVocabulary
from bertkd_tf.errors import ArtifactError, MissingArtifactError

# Registered here for any process that loads a trained teacher (not only one
# that imported `train_teacher`): the loss, optimizer and schedule its
# `compile_config` names (`train_teacher.compile_teacher`). Without them a
# `dump_teacher` run from a gin file that imports no `train_teacher` failed
# with "Could not locate class 'FusedAdam'".
from bertkd_tf.losses.token_cross_entropy import TokenCrossEntropy  # noqa: F401
from bertkd_tf.models.cmlm_teacher import CMLMTeacher

# Registers the student's classes for `student_from_config`.
from bertkd_tf.models.transformer_seq2seq import TransformerSeq2Seq  # noqa: F401
from bertkd_tf.training import trainer
from bertkd_tf.training.fused_adam import FusedAdam  # noqa: F401
from bertkd_tf.training.schedules import LinearWarmupDecay  # noqa: F401

VOCAB_DIR = "vocab"
TEACHER_DIR = "teacher"
TARGETS_DIR = "targets"
STUDENT_DIR = "student"
BASELINE_DIR = "baseline"
FINAL_WEIGHTS = "final.weights.h5"
TEACHER_CONFIG = "teacher_config.json"
STUDENT_CONFIG = "student_config.json"


# Vocabulary --------------------------------------------------------------


def load_vocabulary(work_dir):
    """The task vocabulary `prepare` wrote into `work_dir/vocab/`."""
    return TaskVocabulary.load(os.path.join(work_dir, VOCAB_DIR))


# Teacher -----------------------------------------------------------------


def save_teacher(teacher, directory):
    """Writes `final.weights.h5` (no optimizer state) and
    `teacher_config.json` to `directory`, atomically."""
    trainer.save_final(teacher, directory, TEACHER_CONFIG, FINAL_WEIGHTS)


def load_teacher(directory, dtype=None):
    """The teacher saved by `save_teacher` (e.g. `WORK_DIR/teacher`).

    Args:
        directory: the directory with `teacher_config.json` and
            `final.weights.h5`.
        dtype: optional dtype policy to run it in (e.g. "mixed_bfloat16").
    """
    config_path = os.path.join(directory, TEACHER_CONFIG)
    if not os.path.exists(config_path):
        raise FileNotFoundError(
            f"No trained teacher in {directory!r} (missing {TEACHER_CONFIG}): "
            "run `--mode=train_teacher` first."
        )
    with open(config_path) as f:
        config = json.load(f)
    if dtype is not None:
        config["config"]["dtype"] = dtype
        config["config"]["backbone"]["config"]["dtype"] = dtype
    teacher = keras.saving.deserialize_keras_object(config)
    if not isinstance(teacher, CMLMTeacher):
        raise ValueError(
            f"{config_path} does not describe a CMLMTeacher: "
            f"{type(teacher).__name__}"
        )
    trainer.load_final_weights(
        teacher,
        os.path.join(directory, FINAL_WEIGHTS),
        remedy="re-run `bertkd --mode=train_teacher` with the same settings "
        "(it restores its last checkpoint and writes the file again)",
    )
    return teacher


def teacher_fingerprint(teacher_dir):
    """sha256 of the saved teacher's config and weight files.

    A C-MLM teacher (`teacher_config.json`, from `train_teacher`) or a
    seq2seq model used as teacher (`student_config.json`, a `distill`
    output directory: `dump_teacher.run.teacher_kind = 'seq2seq'`).
    """
    digest = hashlib.sha256()
    config = TEACHER_CONFIG
    if not tf.io.gfile.exists(
        os.path.join(teacher_dir, TEACHER_CONFIG)
    ) and tf.io.gfile.exists(os.path.join(teacher_dir, STUDENT_CONFIG)):
        config = STUDENT_CONFIG
    for name in (config, FINAL_WEIGHTS):
        path = os.path.join(teacher_dir, name)
        if not tf.io.gfile.exists(path):
            raise MissingArtifactError(
                f"No trained teacher in {teacher_dir!r} (missing {name}): run "
                "`--mode=train_teacher` first."
            )
        digest.update(name.encode())
        with tf.io.gfile.GFile(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_teacher_vocabulary(teacher, vocabulary, teacher_dir, work_dir):
    """Refuses (`ArtifactError`) a C-MLM teacher trained over another task
    vocabulary than `vocabulary` (its output rows would mean other
    tokens)."""
    if list(teacher.bert_ids) != vocabulary.bert_ids.tolist():
        raise ArtifactError(
            f"The teacher in {teacher_dir!r} predicts over another task "
            f"vocabulary ({len(teacher.bert_ids)} entries) than "
            f"{work_dir}/vocab ({vocabulary.size} entries, fingerprint "
            f"{vocabulary.fingerprint[:12]}): train the teacher again after "
            "`prepare`, or use the work_dir it was trained in."
        )


# Student -----------------------------------------------------------------


def save_student(student, directory):
    """Writes `student_config.json` and `final.weights.h5` to `directory`,
    atomically."""
    trainer.save_final(student, directory, STUDENT_CONFIG, FINAL_WEIGHTS)


def student_from_config(directory, dtype=None):
    """The untrained student described by `directory/student_config.json`."""
    config_path = os.path.join(directory, STUDENT_CONFIG)
    if not os.path.exists(config_path):
        raise FileNotFoundError(
            f"No trained student in {directory!r} (missing {STUDENT_CONFIG}):"
            " run `--mode=distill` first."
        )
    with open(config_path) as f:
        config = json.load(f)
    if dtype is not None:
        config["config"]["backbone"]["config"]["dtype"] = dtype
    return keras.saving.deserialize_keras_object(config)


def load_student(
    directory, dtype=None, weights_file=FINAL_WEIGHTS, setting=None
):
    """The student saved by `distill` in `directory` (e.g. WORK_DIR/student).

    The weights file is checked against its recorded SHA-256
    (`bertkd_tf.checksums`); a damaged one raises `ArtifactError`.

    Args:
        directory: the directory with `student_config.json` and the weights.
        dtype: optional dtype policy to run it in (e.g. "mixed_bfloat16").
        weights_file: weights file in `directory` (or an absolute path),
            e.g. `averaged.weights.h5`, the output of
            `tools/average_checkpoints.py`.
        setting: the gin setting that chose `weights_file` (e.g.
            "evaluate.run.weights_file"), named when the file is missing.
    """
    student = student_from_config(directory, dtype=dtype)
    if weights_file == FINAL_WEIGHTS:
        remedy = (
            "re-run `bertkd --mode=distill` with the same settings (it "
            "restores its last checkpoint and writes the file again)"
        )
    else:
        remedy = (
            "write it again (`python tools/average_checkpoints.py "
            f"--model_dir={directory}` for averaged weights)"
        )
        if setting:
            remedy += f", or set {setting} to another file ({FINAL_WEIGHTS!r})"
    trainer.load_final_weights(
        student, os.path.join(directory, weights_file), remedy=remedy
    )
    return student
