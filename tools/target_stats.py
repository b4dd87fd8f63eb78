r"""How sharp the teacher's soft targets are, and how much of them is right.

    python tools/target_stats.py --work_dir=W --data_dir=D \
        --task_gin=gin/tasks/multi30k_de_en.gin --targets_dir=targets_valid \
        --split=valid --temperatures=1,2,3,5,10 --top_ks=4,8,16 \
        [--output=W/target_stats.json]

Reads the targets that `dump_teacher` wrote for `--split` and the same
split's reference targets (tokenized as the student sees them), and prints,
for every K (teacher logits kept) and temperature T, over all target
positions (the EOS slot included):

- `top-1 p`: the median probability of the teacher's first choice in the
  soft target `q = softmax(top-K logits / T)` (renormalised over the K ids,
  as the KD loss uses it);
- `ref mass`: the mean of `q` on the reference token (0 where the reference
  is not among the K ids): how much of the KD term points at the label;
- `ref NLL`: the mean of `-log max(q[ref], 1e-6)`, the teacher's
  cross-entropy on the references: the lower, the better the soft targets
  are calibrated at this T (the valid-split criterion for choosing T and K);
- once per K: top-1 = reference, reference within top-K, and the median
  logit gap between the first and the K-th choice.

On the valid split this chooses T and K without a student run; on the train
split it describes the targets the student is actually trained on.

With `--students=DIR[,DIR...]` (trained students: a `distill` model dir or
a `converge.py select` output, relative to work_dir), each student is run
teacher-forced on the same positions and compared with the teacher's first
choice: how often each is right, how often only the teacher is (what the
KD term can teach that student), and the student's reference NLL.
"""

import json
import os

import gin
from absl import app, flags

from bertkd_tf import artifacts
from bertkd_tf.atomic_files import write_text_atomic
from bertkd_tf.data.target_statistics import (
    agreement,
    aligned_rows,
    choose,
    statistics,
    student_rows,
)
from bertkd_tf.data.teacher_targets import TeacherTargets
from bertkd_tf.data.tokenized_pairs import TokenizedPairs

WORK_DIR = flags.DEFINE_string("work_dir", None, "Pipeline work dir.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "Corpus directory.")
TASK_GIN = flags.DEFINE_string("task_gin", None, "gin/tasks/<task>.gin.")
TARGETS_DIR = flags.DEFINE_string(
    "targets_dir",
    artifacts.TARGETS_DIR,
    "Targets directory (relative: under work_dir).",
)
SPLIT = flags.DEFINE_string("split", "train", "The split the dump holds.")
TEMPERATURES = flags.DEFINE_list("temperatures", ["1", "2", "5", "10"], "")
TOP_KS = flags.DEFINE_list("top_ks", ["8"], "K values (<= the stored K).")
MAX_PAIRS = flags.DEFINE_integer("max_pairs", None, "Only the first N pairs.")
OUTPUT = flags.DEFINE_string("output", None, "Optional JSON output path.")
CHOOSE = flags.DEFINE_string(
    "choose_output",
    None,
    "Optional JSON path: the (K, T) of the lowest reference NLL is written "
    'there as {"top_k": K, "temperature": T, "reference_nll": ...}.',
)
STUDENTS = flags.DEFINE_list(
    "students",
    [],
    "Trained student dirs (relative: under work_dir) to compare, "
    "teacher-forced, with the teacher's first choice.",
)


def _task():
    gin.add_config_file_search_path(os.getcwd())
    gin.parse_config_files_and_bindings(
        [TASK_GIN.value], [f"DATA_DIR='{DATA_DIR.value}'"]
    )
    return gin.query_parameter("%TASK").scoped_configurable_fn()


def main(_):
    task = _task()
    work_dir = WORK_DIR.value
    vocab = artifacts.load_vocabulary(work_dir)
    pairs = TokenizedPairs.from_pairs(
        task.read(SPLIT.value),
        vocab,
        task.max_source_length,
        task.max_target_length,
    )
    temperatures = [float(t) for t in TEMPERATURES.value]
    results = []
    for k in [int(k) for k in TOP_KS.value]:
        targets = TeacherTargets.load(
            os.path.join(work_dir, TARGETS_DIR.value), top_k=k, vocabulary=vocab
        )
        reference, top_ids, top_logits = aligned_rows(
            targets, pairs, vocab.eos_id, MAX_PAIRS.value
        )
        results.append(statistics(reference, top_ids, top_logits, temperatures))
    print(
        f"{SPLIT.value}: {results[0]['positions']} target positions "
        "(EOS slot included)\n"
    )
    print("| K | top-1 = ref | ref in top-K | median gap 1st-Kth |")
    print("|---:|---:|---:|---:|")
    for r in results:
        print(
            f"| {r['k']} | {100 * r['top1_is_reference']:.1f}% | "
            f"{100 * r['reference_in_top_k']:.1f}% | "
            f"{r['median_logit_gap_1_to_k']:.2f} |"
        )
    print("\n| K | T | top-1 p (median) | ref mass (mean) | ref NLL |")
    print("|---:|---:|---:|---:|---:|")
    for r in results:
        for t, s in r["by_temperature"].items():
            print(
                f"| {r['k']} | {float(t):g} | "
                f"{s['median_top1_probability']:.3f} | "
                f"{s['mean_reference_mass']:.3f} | {s['reference_nll']:.3f} |"
            )
    students = {}
    if STUDENTS.value:
        # The first choice is the same at every K: the last K's rows serve.
        print(
            "\n| student | student right | teacher right | only teacher "
            "| only student | same choice | student ref NLL |"
        )
        print("|---|---:|---:|---:|---:|---:|---:|")
        for name in STUDENTS.value:
            student = artifacts.load_student(os.path.join(work_dir, name))
            first, reference_logp = student_rows(
                student, pairs, vocab, MAX_PAIRS.value
            )
            a = agreement(reference, top_ids[:, 0], first, reference_logp)
            students[name] = a
            print(
                f"| {name} | {100 * a['student_top1_is_reference']:.1f}% | "
                f"{100 * a['teacher_top1_is_reference']:.1f}% | "
                f"{100 * a['only_teacher_right']:.1f}% | "
                f"{100 * a['only_student_right']:.1f}% | "
                f"{100 * a['same_first_choice']:.1f}% | "
                f"{a['student_reference_nll']:.3f} |"
            )
    if OUTPUT.value:
        output = {"split": SPLIT.value, "by_k": results}
        if students:
            output["students"] = students
        write_text_atomic(OUTPUT.value, json.dumps(output, indent=1))
    if CHOOSE.value:
        chosen = choose(results)
        print(
            "\nlowest reference NLL: "
            f"K {chosen['top_k']}, T {chosen['temperature']:g}"
        )
        write_text_atomic(CHOOSE.value, json.dumps(chosen, indent=1))


if __name__ == "__main__":
    flags.mark_flags_as_required(["work_dir", "data_dir", "task_gin"])
    app.run(main)
