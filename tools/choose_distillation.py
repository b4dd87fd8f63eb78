r"""Choose the distillation settings (alpha, T, K) on the valid split.

    python tools/choose_distillation.py --work_dir=/work/runs/multi30k_gain \
        --candidate=05:distilled_a05_seed0 \
        --candidate=05t10k8:distilled_a05t10k8_seed0 \
        --candidate=01t5k8:distilled_a01t5k8_seed0 \
        --output=/work/runs/multi30k_gain/chosen_distillation.json

Each `--candidate=TAG:MODEL_DIR` is a distilled student of the work
directory trained with one setting and selected on the valid split by
`tools/converge.py select` (so `<MODEL_DIR>_final/selection.json` exists).
The candidate with the highest beam-5 tokenized valid BLEU of its selected
weights wins (the first given wins a tie). The output records the winner's
tag, its model directory, the settings it was trained with (read from its
`operative_config.gin`, not from its name) and every candidate's valid
scores and settings; it is written atomically. Only the valid split is read.
"""

import json
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bertkd_tf.atomic_files import write_text_atomic  # noqa: E402
from bertkd_tf.errors import BertkdError, MissingArtifactError  # noqa: E402
from bertkd_tf.operative_config import distillation_settings  # noqa: E402

WORK_DIR = flags.DEFINE_string("work_dir", None, "The experiment's work dir.")
CANDIDATES = flags.DEFINE_multi_string(
    "candidate", [], "TAG:MODEL_DIR: a distilled student and its tag."
)
OUTPUT = flags.DEFINE_string("output", None, "The JSON file to write.")

RULE = (
    "the highest beam-5 tokenized BLEU on the valid split of each "
    "candidate's weights as selected by tools/converge.py select (the "
    "first candidate given wins a tie)"
)


def parse_candidate(text):
    """`"TAG:MODEL_DIR"` -> `(TAG, MODEL_DIR)`, with a clear error."""
    tag, sep, model_dir = text.partition(":")
    if not sep or not tag or not model_dir or "/" in tag:
        raise app.UsageError(
            f"--candidate={text!r}: give TAG:MODEL_DIR, e.g. "
            "--candidate=05:distilled_a05_seed0 (TAG names the setting in "
            "the later students' directories, distilled_a<TAG>_seed<N>; "
            "MODEL_DIR is the student's directory under --work_dir, "
            "selected by `tools/converge.py select`)."
        )
    return tag, model_dir


def choose(work_dir, candidates):
    """The winning candidate and every candidate's scores and settings.

    Args:
        work_dir: the experiment's work directory.
        candidates: `[(tag, model_dir), ...]`, in order of preference.
    """
    tags = [tag for tag, _ in candidates]
    if not candidates or len(set(tags)) != len(tags):
        raise app.UsageError(
            f"Give one or more --candidate, each with its own tag; got {tags}."
        )
    scores = {}
    for tag, model_dir in candidates:
        path = os.path.join(work_dir, f"{model_dir}_final", "selection.json")
        if not os.path.exists(path):
            raise MissingArtifactError(
                f"{path} does not exist: candidate {tag!r} (--candidate="
                f"{tag}:{model_dir}) has not been selected on the valid "
                "split yet. Train it to its plateau and run `python "
                f"tools/converge.py select --model_dir={model_dir}` first."
            )
        with open(path) as f:
            valid = json.load(f)["valid"]
        scores[tag] = {
            "model_dir": model_dir,
            "valid": valid,
            "settings": distillation_settings(
                os.path.join(work_dir, model_dir)
            ),
        }
    best = max(tags, key=lambda t: (scores[t]["valid"]["bleu"], -tags.index(t)))
    return {
        "tag": best,
        "model_dir": scores[best]["model_dir"],
        **scores[best]["settings"],
        "valid_bleu": {tag: scores[tag]["valid"]["bleu"] for tag in tags},
        "candidates": scores,
        "rule": RULE,
    }


def main(argv):
    del argv
    if not (WORK_DIR.value and OUTPUT.value):
        raise app.UsageError("--work_dir and --output are required.")
    candidates = [parse_candidate(c) for c in CANDIDATES.value]
    try:
        result = choose(WORK_DIR.value, candidates)
    except BertkdError as error:  # One paragraph, no traceback; exit 2.
        print(f"choose_distillation: {error}", file=sys.stderr)
        sys.exit(2)
    write_text_atomic(
        OUTPUT.value, json.dumps(result, indent=1, sort_keys=True) + "\n"
    )
    print(
        f"valid BLEU {result['valid_bleu']} -> {result['tag']} "
        f"({result['model_dir']}: alpha {result['distillation_weight']}, "
        f"T {result['temperature']}, K {result['top_k']})"
    )


if __name__ == "__main__":
    app.run(main)
