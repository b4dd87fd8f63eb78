r"""Curves of an experiment's work directory, as PNGs and one JSON.

    python tools/plot_experiment.py --work_dir=/work/runs/multi30k_gain \
        --output=docs/multi30k_gain

Writes `<output>_teacher.png` (the teacher's valid masked-token accuracy
over steps, from `teacher/history.jsonl`), `<output>_bleu.png` (greedy valid
BLEU over steps of every student directory with a `valid_bleu.json`, from
`tools/converge.py train`) and `<output>.json` with the numbers of both, and
prints them as Markdown tables. Reads only the work directory: nothing is
recomputed, so it runs while the experiment trains.
"""

import glob
import json
import os

from absl import app, flags

from bertkd_tf import plots
from bertkd_tf.atomic_files import write_text_atomic

WORK_DIR = flags.DEFINE_string("work_dir", None, "The experiment's work dir.")
OUTPUT = flags.DEFINE_string("output", None, "Path stem of the outputs.")


def teacher_curve(work_dir):
    """`[(step, elapsed_s, val_accuracy)]` of the validated steps."""
    path = os.path.join(work_dir, "teacher", "history.jsonl")
    steps, accuracies = plots.history_curve(path, "val_accuracy")
    elapsed = dict(zip(*plots.history_curve(path, "elapsed_s")))
    return [(s, elapsed[s], a) for s, a in zip(steps, accuracies)]


def student_curves(work_dir):
    """`{model_dir: [(step, bleu, sacrebleu)]}` from `valid_bleu.json`."""
    curves = {}
    for path in sorted(
        glob.glob(os.path.join(work_dir, "*", "valid_bleu.json"))
    ):
        with open(path) as f:
            curve = json.load(f)
        name = os.path.basename(os.path.dirname(path))
        curves[name] = [
            (int(s), v["bleu"], v["sacrebleu"])
            for s, v in sorted(curve.items(), key=lambda kv: int(kv[0]))
        ]
    return curves


def main(_):
    work_dir, output = WORK_DIR.value, OUTPUT.value
    teacher = teacher_curve(work_dir)
    students = student_curves(work_dir)
    print("| teacher step | wall time (s) | valid masked-token accuracy |")
    print("|---:|---:|---:|")
    for step, elapsed, accuracy in teacher:
        print(f"| {step} | {elapsed:,.0f} | {100 * accuracy:.1f}% |")
    for name, points in students.items():
        print(f"\n{name}: " + ", ".join(f"{s} {b:.2f}" for s, b, _ in points))
    if not output:
        return
    write_text_atomic(
        output + ".json",
        json.dumps({"teacher": teacher, "students": students}, indent=1),
    )
    if teacher:
        plots.write_curves_png(
            output + "_teacher.png",
            {
                "C-MLM teacher": (
                    [p[0] for p in teacher],
                    [100 * p[2] for p in teacher],
                )
            },
            "teacher training step",
            "valid masked-token accuracy (%)",
        )
    if students:
        plots.write_curves_png(
            output + "_bleu.png",
            {
                name: ([p[0] for p in points], [p[1] for p in points])
                for name, points in students.items()
            },
            "student training step",
            "valid BLEU (tokenized, greedy)",
        )


if __name__ == "__main__":
    flags.mark_flags_as_required(["work_dir"])
    app.run(main)
