r"""The gain over seeds: valid BLEU of each seed's baseline and distilled
student (beam 5 and greedy, tokenized BLEU and sacreBLEU), distilled minus
baseline per seed, and the mean and spread over seeds.

    python tools/gain_table.py --work_dir=/work/runs/multi30k_gain \
        --data_dir=../shared/data/multi30k_de_en \
        --bertkd=/work/runs/venv/bin/bertkd --code_dir=/work/runs/code \
        [--tag=05t10k8] [--output=docs/multi30k_gain_table.json]

A seed counts once both `baseline_seed<N>_final/` and
`distilled_a<TAG>_seed<N>_final/` exist (students chosen on the valid split
by `tools/converge.py select`); TAG is `--tag`, else the one in
`chosen_distillation.json`. Each student is scored by the project's own
`evaluate` mode (the `--bertkd` binary run in `--code_dir`, the checkout of
the experiment) at beam 5 and greedy, with length penalty 0.6; the scores
are kept in `<student>/evaluate/valid_beam<B>/scores.json`, so a rerun only
scores new students. The beam-5 BLEU is checked against the one
`converge.py select` recorded when it chose the weights (`selection.json`);
a difference is reported under the table. Spread: the sample standard
deviation over seeds, and the smallest and largest value. Only the valid
split is read.
"""

import json
import os
import re
import statistics
import subprocess
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bertkd_tf.atomic_files import write_text_atomic  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORK_DIR = flags.DEFINE_string("work_dir", None, "The experiment's work dir.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "The corpus (valid split).")
TASK_GIN = flags.DEFINE_string(
    "task_gin", "gin/tasks/multi30k_de_en.gin", "The task's gin file."
)
TAG = flags.DEFINE_string(
    "tag", None, "The distilled students' tag (default: chosen_distillation)."
)
BERTKD = flags.DEFINE_string(
    "bertkd", os.path.join(ROOT, ".venv", "bin", "bertkd"), "The binary."
)
CODE_DIR = flags.DEFINE_string(
    "code_dir", ROOT, "The checkout the binary runs from (gin files)."
)
OUTPUT = flags.DEFINE_string("output", None, "Also write the table as JSON.")

BEAMS = (5, 1)
METRICS = ("bleu", "sacrebleu")
LENGTH_PENALTY = 0.6
FINAL = re.compile(r"^baseline_seed(\d+)_final$")


def seeds(work_dir, tag):
    """The seeds with both a selected baseline and a selected distilled
    student of `tag`, in order."""
    found = []
    for name in os.listdir(work_dir):
        match = FINAL.match(name)
        if not match:
            continue
        seed = int(match.group(1))
        pair = (name, f"distilled_a{tag}_seed{seed}_final")
        if all(
            os.path.exists(os.path.join(work_dir, p, "selection.json"))
            for p in pair
        ):
            found.append(seed)
    return sorted(found)


def scores(work_dir, model_dir, beam):
    """`evaluate`'s scores of `model_dir` on valid at `beam` (run once)."""
    output_dir = os.path.join(
        work_dir, model_dir, "evaluate", f"valid_beam{beam}"
    )
    path = os.path.join(output_dir, "scores.json")
    if not os.path.exists(path):
        command = [
            BERTKD.value,
            "--mode=evaluate",
            "--gin_file=gin/runs/evaluate.gin",
            f"--gin_file={TASK_GIN.value}",
            f"--gin_bindings=DATA_DIR='{os.path.abspath(DATA_DIR.value)}'",
            f"--gin_bindings=WORK_DIR='{work_dir}'",
            f"--gin_bindings=evaluate.run.model_dir='{model_dir}'",
            "--gin_bindings=evaluate.run.split='valid'",
            f"--gin_bindings=evaluate.run.output_dir='{output_dir}'",
            f"--gin_bindings=BEAM_SIZE={beam}",
            f"--gin_bindings=LENGTH_PENALTY={LENGTH_PENALTY}",
        ]
        done = subprocess.run(
            command, cwd=CODE_DIR.value, capture_output=True, text=True
        )
        if done.returncode != 0:
            tail = " ".join((done.stderr or done.stdout).split()[-60:])
            sys.exit(
                f"gain_table: `evaluate` of {model_dir} at beam {beam} failed "
                f"(exit {done.returncode}; command: {' '.join(command)}); the "
                f"end of its output: {tail}"
            )
    with open(path) as f:
        return json.load(f)


def spread(values):
    """Mean, sample standard deviation (None for one value), min and max."""
    return {
        "mean": statistics.fmean(values),
        "sd": statistics.stdev(values) if len(values) > 1 else None,
        "min": min(values),
        "max": max(values),
    }


def table(work_dir, tag):
    """Per seed and over seeds: both arms' scores and their difference."""
    found = seeds(work_dir, tag)
    if not found:
        raise app.UsageError(
            f"No seed in {work_dir} has both baseline_seed<N>_final/ and "
            f"distilled_a{tag}_seed<N>_final/ with a selection.json: select "
            "both students of a seed on the valid split (`tools/converge.py "
            "select`) first, or give the distilled students' --tag."
        )
    rows, checks = [], []
    for seed in found:
        row = {"seed": seed}
        for arm, name in (
            ("baseline", f"baseline_seed{seed}_final"),
            ("distilled", f"distilled_a{tag}_seed{seed}_final"),
        ):
            with open(os.path.join(work_dir, name, "selection.json")) as f:
                selected = json.load(f)["valid"]["bleu"]
            for beam in BEAMS:
                result = scores(work_dir, name, beam)
                for metric in METRICS:
                    row[f"{arm}_{metric}_beam{beam}"] = result["metrics"][
                        metric
                    ]["score"]
            if abs(row[f"{arm}_bleu_beam5"] - selected) > 0.01:
                checks.append(
                    f"{name}: evaluate's beam-5 BLEU "
                    f"{row[f'{arm}_bleu_beam5']:.2f} differs from the "
                    f"{selected:.2f} recorded by converge.py select"
                )
        for beam in BEAMS:
            for metric in METRICS:
                key = f"{metric}_beam{beam}"
                row[f"gain_{key}"] = (
                    row[f"distilled_{key}"] - row[f"baseline_{key}"]
                )
        rows.append(row)
    summary = {
        key: spread([row[key] for row in rows])
        for key in rows[0]
        if key != "seed"
    }
    return {
        "tag": tag,
        "seeds": found,
        "rows": rows,
        "summary": summary,
        "checks": checks,
    }


def markdown(result):
    """The table as markdown: a row per seed, then mean, sd, min..max."""
    columns = [
        (f"{arm}_{metric}_beam{beam}", f"{label} {name} b{beam}")
        for beam in BEAMS
        for metric, name in (("bleu", "BLEU"), ("sacrebleu", "sacreBLEU"))
        for arm, label in (
            ("baseline", "base"),
            ("distilled", "dist"),
            ("gain", "Δ"),
        )
    ]
    lines = [
        "| seed | " + " | ".join(label for _, label in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for row in result["rows"]:
        lines.append(
            f"| {row['seed']} | "
            + " | ".join(
                f"{row[key]:+.2f}"
                if key.startswith("gain")
                else f"{row[key]:.2f}"
                for key, _ in columns
            )
            + " |"
        )
    summary = result["summary"]

    def cell(key, part):
        value = summary[key][part]
        if value is None:
            return "—"
        return (
            f"{value:+.2f}"
            if key.startswith("gain") and part == "mean"
            else f"{value:.2f}"
        )

    lines.append(
        "| mean | " + " | ".join(cell(k, "mean") for k, _ in columns) + " |"
    )
    lines.append(
        "| sd | " + " | ".join(cell(k, "sd") for k, _ in columns) + " |"
    )

    def bounds(key):
        form = "{:+.2f}" if key.startswith("gain") else "{:.2f}"
        return (
            form.format(summary[key]["min"])
            + ".."
            + form.format(summary[key]["max"])
        )

    lines.append(
        "| min..max | " + " | ".join(bounds(k) for k, _ in columns) + " |"
    )
    return "\n".join(lines)


def main(argv):
    del argv
    if not (WORK_DIR.value and DATA_DIR.value):
        raise app.UsageError("--work_dir and --data_dir are required.")
    work_dir = os.path.abspath(WORK_DIR.value)
    tag = TAG.value
    if tag is None:
        path = os.path.join(work_dir, "chosen_distillation.json")
        if not os.path.exists(path):
            raise app.UsageError(
                f"No --tag and no {path}: give the distilled students' tag "
                "(e.g. --tag=05 for distilled_a05_seed<N>_final)."
            )
        with open(path) as f:
            tag = json.load(f)["tag"]
    result = table(work_dir, tag)
    print(markdown(result))
    gain = result["summary"]["gain_bleu_beam5"]
    print(
        f"\ndistilled_a{tag} - baseline, tokenized BLEU beam 5 over seeds "
        f"{result['seeds']}: mean {gain['mean']:+.2f}, sd "
        + ("—" if gain["sd"] is None else f"{gain['sd']:.2f}")
        + f", min {gain['min']:+.2f}, max {gain['max']:+.2f}"
    )
    for line in result["checks"]:
        print("check:", line)
    if OUTPUT.value:
        write_text_atomic(
            OUTPUT.value, json.dumps(result, indent=1, sort_keys=True) + "\n"
        )


if __name__ == "__main__":
    app.run(main)
