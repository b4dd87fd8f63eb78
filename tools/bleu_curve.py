"""Validation BLEU over training steps, from a run's kept checkpoints.

Usage:
  .venv/bin/python tools/bleu_curve.py --work_dir=/work/runs/multi30k \
      --data_dir=../shared/data/multi30k_de_en \
      --task_gin=gin/tasks/multi30k_de_en.gin \
      --model_dirs=baseline,student --every=200 --output=docs/bleu_curve

Restores every kept checkpoint (`<model_dir>/checkpoints/ckpt-N`, written by
`distill`) into the student, decodes the valid split (greedy by default) and
scores tokenized BLEU (the paper's) and sacreBLEU. Writes `<output>.json` and
a plot `<output>.png` (BLEU over steps, one line per model directory;
`bertkd_tf.plots`, atomically), and prints a table. `tools/converge.py train`
keeps such a curve in each model directory as it trains (`valid_bleu.json`
and `valid_bleu.png`).
"""

import json
import os

import gin
import tensorflow as tf
from absl import app, flags

from bertkd_tf import plots
from bertkd_tf.artifacts import load_vocabulary, student_from_config
from bertkd_tf.decoding.generator import Generator
from bertkd_tf.metrics.bleu import sacre_bleu, tokenized_bleu

WORK_DIR = flags.DEFINE_string("work_dir", None, "Pipeline work dir.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "Corpus directory.")
TASK_GIN = flags.DEFINE_string("task_gin", None, "gin/tasks/<task>.gin.")
MODEL_DIRS = flags.DEFINE_list("model_dirs", ["baseline", "student"], "")
SPLIT = flags.DEFINE_string("split", "valid", "Split to decode.")
EVERY = flags.DEFINE_integer("every", 0, "Only steps divisible by this.")
BEAM = flags.DEFINE_integer("beam_size", 1, "1: greedy.")
MAX_PAIRS = flags.DEFINE_integer("max_pairs", None, "Decode the first N.")
OUTPUT = flags.DEFINE_string("output", None, "Path stem for .json/.png.")
BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "Extra bindings.")
PREVIOUS = flags.DEFINE_multi_string(
    "previous", [], "JSON outputs of earlier runs to include, not recompute."
)


def _task():
    gin.add_config_file_search_path(os.getcwd())
    gin.parse_config_files_and_bindings(
        [TASK_GIN.value], [f"DATA_DIR='{DATA_DIR.value}'", *BINDINGS.value]
    )
    return gin.query_parameter("%TASK").scoped_configurable_fn()


def _checkpoints(model_dir):
    state = tf.train.get_checkpoint_state(
        os.path.join(model_dir, "checkpoints")
    )
    if state is None:
        raise FileNotFoundError(f"No checkpoints in {model_dir}/checkpoints.")
    paths = list(state.all_model_checkpoint_paths)
    steps = [int(p.rsplit("-", 1)[1]) for p in paths]
    keep = [
        (s, p)
        for s, p in zip(steps, paths)
        if not EVERY.value or s % EVERY.value == 0 or s == max(steps)
    ]
    return sorted(keep)


def curve(task, vocab, model_dir):
    """[(step, bleu, sacrebleu)] over the checkpoints of `model_dir`."""
    student = student_from_config(model_dir)
    # Checkpoints hold the DistillationModel; its student is `model.student`.
    checkpoint = tf.train.Checkpoint(model=tf.train.Checkpoint(student=student))
    generator = Generator(
        student,
        vocab,
        jit_compile=True,
        max_source_length=task.max_source_length + 1,
    )
    pairs = task.read(SPLIT.value, max_pairs=MAX_PAIRS.value)
    references = [vocab.normalize_reference(t) for t in pairs.targets]
    points = []
    for step, path in _checkpoints(model_dir):
        before = [w.copy() for w in student.get_weights()[:1]]
        checkpoint.restore(path).expect_partial()
        moved = any(
            (a != b).any() for a, b in zip(before, student.get_weights()[:1])
        )
        if not moved and points:
            raise RuntimeError(f"Restoring {path} changed no weight.")
        hypotheses = generator.generate_all(
            pairs.sources, batch_size=64, beam_size=BEAM.value
        )
        bleu = tokenized_bleu(hypotheses, references)["score"]
        sacre = sacre_bleu(hypotheses, references)["score"]
        print(f"{os.path.basename(model_dir)} step {step}: BLEU {bleu:.2f}")
        points.append((step, bleu, sacre))
    return points


def main(_):
    task = _task()
    vocab = load_vocabulary(WORK_DIR.value)
    curves = {}
    for path in PREVIOUS.value:
        with open(path) as f:
            curves.update(json.load(f))
    for name in MODEL_DIRS.value:
        curves[name] = curve(task, vocab, os.path.join(WORK_DIR.value, name))
    print(
        "\n| model | step | BLEU (tokenized) | sacreBLEU |"
        "\n|---|---:|---:|---:|"
    )
    for name, points in curves.items():
        for step, bleu, sacre in points:
            print(f"| {name} | {step} | {bleu:.2f} | {sacre:.2f} |")
    if OUTPUT.value:
        with open(OUTPUT.value + ".json", "w") as f:
            json.dump(curves, f, indent=1)
        plots.write_curves_png(
            OUTPUT.value + ".png",
            {
                name: ([p[0] for p in points], [p[1] for p in points])
                for name, points in curves.items()
            },
            "training step",
            f"{SPLIT.value} BLEU (tokenized, beam {BEAM.value})",
        )


if __name__ == "__main__":
    flags.mark_flags_as_required(["work_dir", "data_dir", "task_gin"])
    app.run(main)
