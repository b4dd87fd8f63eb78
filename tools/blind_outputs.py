r"""Blind test outputs of finished students, with what produced them.

    python tools/blind_outputs.py --work_dir=/work/runs/multi30k_gain \
        --blind_dir=../shared/blind/multi30k_de_en \
        --output_dir=docs/blind/multi30k_de_en \
        --bertkd=/work/runs/venv/bin/bertkd --code_dir=/work/runs/code \
        --system=baseline_seed0=baseline_seed0_final \
        --system=distilled_seed0=distilled_a05t10k8_seed0_final

For each `--system=NAME=MODEL_DIR` (a student directory of the work
directory, chosen on the valid split by `tools/converge.py select`, so it
holds `selection.json`), translates every file of `--blind_dir` with the
project's own `translate` mode (the `--bertkd` binary, run in `--code_dir`,
the checkout the experiment runs from) at the recipe's decoding settings,
and writes `<output_dir>/NAME/<file>.hyp`: one line per input line, in input
order. Next to them, `system.json` records what produced them: the commit,
the exact commands, the teacher (last validated step and its valid
masked-token accuracy), the student's own distillation settings (alpha, T,
K, from its operative config; alpha 0 for a baseline), the T and K of the
valid-NLL rule, the choice of settings across the seed-0 candidates if one
was made (`chosen_distillation.json`), the student's steps, the
checkpoints used and how they were chosen (valid split only), valid BLEU,
and wall times. Every file is written under a temporary name, then renamed:
an interrupted run leaves no half output, and a rerun redoes only what is
missing (`--overwrite` redoes everything), or everything when the student's
weights are not the ones recorded (`weights_sha256`: it was selected again).
`commit` is the checkout that translated the outputs (per file in
`translate_commits`), not the one of a later rerun that redid nothing.

The references of the blind sets are never read: there are none here.
"""

import json
import os
import shlex
import subprocess
import sys
import time

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bertkd_tf import plots  # noqa: E402
from bertkd_tf.atomic_files import write_text_atomic  # noqa: E402
from bertkd_tf.checksums import read_checksum  # noqa: E402
from bertkd_tf.errors import MissingArtifactError, MissingInputError  # noqa: E402
from bertkd_tf.operative_config import distillation_settings  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WORK_DIR = flags.DEFINE_string("work_dir", None, "The experiment's work dir.")
BLIND_DIR = flags.DEFINE_string("blind_dir", None, "Folder of blind sources.")
OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", None, "e.g. docs/blind/multi30k_de_en."
)
SYSTEMS = flags.DEFINE_multi_string(
    "system", [], "NAME=MODEL_DIR: the system's name and its student dir."
)
BERTKD = flags.DEFINE_string(
    "bertkd", os.path.join(ROOT, ".venv", "bin", "bertkd"), "The binary."
)
CODE_DIR = flags.DEFINE_string(
    "code_dir", ROOT, "The checkout the binary runs from (gin files, commit)."
)
BEAM_SIZE = flags.DEFINE_integer("beam_size", 5, "Beam size.")
LENGTH_PENALTY = flags.DEFINE_float("length_penalty", 0.6, "GNMT exponent.")
OVERWRITE = flags.DEFINE_bool("overwrite", False, "Redo existing outputs.")

SYSTEM_FILE = "system.json"


def parse_system(text):
    """`"NAME=MODEL_DIR"` -> `(NAME, MODEL_DIR)`, with a clear error."""
    name, sep, model_dir = text.partition("=")
    if not sep or not name or not model_dir or "/" in name:
        raise ValueError(
            f"--system={text!r}: give NAME=MODEL_DIR, e.g. "
            "--system=baseline_seed0=baseline_seed0_final (NAME is the "
            "folder under --output_dir, baseline_<tag> or distilled_<tag>; "
            "MODEL_DIR is the student's directory under --work_dir)."
        )
    return name, model_dir


def _read_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def teacher_summary(work_dir):
    """The teacher's last validated step and the best, from its history."""
    steps, accuracies = plots.history_curve(
        os.path.join(work_dir, "teacher", "history.jsonl"), "val_accuracy"
    )
    if not steps:
        return None
    points = dict(zip(steps, accuracies))
    last = max(points)
    best = max(points, key=points.get)
    return {
        "final_step": last,
        "final_valid_masked_token_accuracy": points[last],
        "best_step": best,
        "best_valid_masked_token_accuracy": points[best],
    }


def stage_times(work_dir):
    """`{stage: "<seconds> s, commit <c>, <date>"}` of the finished stages."""
    stages = os.path.join(work_dir, ".stages")
    if not os.path.isdir(stages):
        return {}
    times = {}
    for name in sorted(os.listdir(stages)):
        if name.endswith(".done"):
            with open(os.path.join(stages, name)) as f:
                times[name[: -len(".done")]] = f.read().strip()
    return times


def weights_sha256(student_dir):
    """The recorded SHA-256 of the student's final weights (None if none
    was recorded; a damaged record is refused, naming its file)."""
    return read_checksum(os.path.join(student_dir, "final.weights.h5"))


def commit_of(code_dir):
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=code_dir,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def translate_command(bertkd, work_dir, model_dir, input_file, output_file):
    return [
        bertkd,
        "--mode=translate",
        "--gin_file=gin/runs/translate.gin",
        f"--gin_bindings=WORK_DIR='{work_dir}'",
        f"--gin_bindings=translate.run.model_dir='{model_dir}'",
        f"--gin_bindings=translate.run.input_file='{input_file}'",
        f"--gin_bindings=translate.run.output_file='{output_file}'",
        f"--gin_bindings=BEAM_SIZE={BEAM_SIZE.value}",
        f"--gin_bindings=LENGTH_PENALTY={LENGTH_PENALTY.value}",
    ]


def blind_files(blind_dir):
    if not os.path.isdir(blind_dir):
        raise MissingInputError(
            f"No blind test folder {blind_dir!r} (--blind_dir): give the "
            "folder of the task's blind sources, e.g. "
            "../shared/blind/multi30k_de_en."
        )
    files = sorted(
        name
        for name in os.listdir(blind_dir)
        if os.path.isfile(os.path.join(blind_dir, name))
        and not name.lower().startswith("readme")
    )
    if not files:
        raise MissingInputError(f"{blind_dir!r} (--blind_dir) holds no files.")
    return files


def write_system(name, model_dir, work_dir, blind_dir, output_dir):
    """Translates the blind files with one student; returns system.json."""
    student_dir = os.path.join(work_dir, model_dir)
    selection = _read_json(os.path.join(student_dir, "selection.json"))
    if selection is None:
        raise MissingArtifactError(
            f"{student_dir} has no selection.json: the system {name!r} "
            "(--system) must be a student chosen on the valid split by "
            "`tools/converge.py select` (its <model>_final directory); run "
            "that stage first."
        )
    # Absolute: `translate` runs in --code_dir, not in this directory.
    system_dir = os.path.abspath(os.path.join(output_dir, name))
    weights = weights_sha256(student_dir)
    os.makedirs(system_dir, exist_ok=True)
    previous = _read_json(os.path.join(system_dir, SYSTEM_FILE)) or {}
    # Outputs of other weights (the student was selected again, or the
    # record predates the checksum) are all translated again.
    redo = OVERWRITE.value or previous.get("weights_sha256") != weights
    if redo:
        previous = {}
    commit = commit_of(CODE_DIR.value)
    commands, seconds, commits = [], {}, {}
    for file_name in blind_files(blind_dir):
        source = os.path.abspath(os.path.join(blind_dir, file_name))
        hypothesis = os.path.join(system_dir, file_name + ".hyp")
        command = translate_command(
            BERTKD.value,
            os.path.abspath(work_dir),
            model_dir,
            source,
            hypothesis + ".tmp",
        )
        commands.append(shlex.join(command))
        if os.path.exists(hypothesis) and not redo:
            continue
        start = time.perf_counter()
        subprocess.run(command, cwd=CODE_DIR.value, check=True)
        with open(source, encoding="utf-8") as f:
            expected = sum(1 for _ in f)
        with open(hypothesis + ".tmp", encoding="utf-8") as f:
            produced = sum(1 for _ in f)
        if produced != expected:
            raise RuntimeError(
                f"{hypothesis}.tmp has {produced} lines for the {expected} of "
                f"{source}: the translate run is broken; not renamed."
            )
        os.replace(hypothesis + ".tmp", hypothesis)
        seconds[file_name] = round(time.perf_counter() - start, 1)
        commits[file_name] = commit
    model_name = (
        model_dir[: -len("_final")]
        if model_dir.endswith("_final")
        else model_dir
    )
    commits = {**previous.get("translate_commits", {}), **commits}
    system = {
        "system": name,
        # The checkout the outputs were translated from (one per file in
        # translate_commits when reruns of several commits made them).
        "commit": (
            next(iter(set(commits.values())))
            if len(set(commits.values())) == 1
            else commit
        ),
        "translate_commits": commits,
        "weights_sha256": weights,
        "work_dir": work_dir,
        "model_dir": model_dir,
        "translate_commands": commands,
        "decoding": {
            "beam_size": BEAM_SIZE.value,
            "length_penalty": LENGTH_PENALTY.value,
        },
        "teacher": teacher_summary(work_dir),
        # What this student trained with (alpha 0: a baseline), from its
        # own operative config; the valid-NLL rule's T and K; the choice of
        # settings across the seed-0 candidates once made.
        "distillation": distillation_settings(
            os.path.join(work_dir, model_name)
        ),
        "soft_targets_valid_nll_rule": _read_json(
            os.path.join(work_dir, "chosen_kd.json")
        ),
        "distillation_choice": _read_json(
            os.path.join(work_dir, "chosen_distillation.json")
        ),
        "student_steps": selection.get("converged"),
        "checkpoints_used": selection.get("checkpoint_steps"),
        "chosen": selection.get("chosen"),
        "selection_rule": selection.get("rule"),
        "valid": selection.get("valid"),
        "valid_greedy_bleu_curve": _read_json(
            os.path.join(work_dir, model_name, "valid_bleu.json")
        ),
        "stage_wall_times": stage_times(work_dir),
        "translate_seconds": {
            **previous.get("translate_seconds", {}),
            **seconds,
        },
    }
    write_text_atomic(
        os.path.join(system_dir, SYSTEM_FILE),
        json.dumps(system, indent=1, sort_keys=True) + "\n",
    )
    return system


def main(argv):
    del argv
    if not (WORK_DIR.value and BLIND_DIR.value and OUTPUT_DIR.value):
        raise app.UsageError(
            "--work_dir, --blind_dir and --output_dir are required."
        )
    if not SYSTEMS.value:
        raise app.UsageError("Give at least one --system=NAME=MODEL_DIR.")
    systems = [parse_system(s) for s in SYSTEMS.value]
    work_dir = os.path.abspath(WORK_DIR.value)
    for name, model_dir in systems:
        system = write_system(
            name, model_dir, work_dir, BLIND_DIR.value, OUTPUT_DIR.value
        )
        print(f"{name}: {model_dir}, valid {system['valid']}")


if __name__ == "__main__":
    app.run(main)
