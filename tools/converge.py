r"""Train a student until its valid BLEU stops improving; choose its final
weights on the valid split.

    # 1. Train in chunks; after each chunk, greedy-decode the valid split with
    #    every new checkpoint; stop once `--patience` scored checkpoints in a
    #    row bring no new best (and at least `--min_steps` were trained).
    python tools/converge.py train --work_dir=W --data_dir=D \
        --gin_file=gin/experiments/multi30k_gain/baseline.gin \
        --model_dir=baseline_seed0 --gin_bindings="distill.run.seed=0" \
        [--chunk_steps=1000] [--eval_every=500] [--patience=4] \
        [--min_steps=3000] [--max_steps=20000]

    # 2. Score the best checkpoint and averages of the N checkpoints that end
    #    at it (beam search, valid split), and write the winner as a model
    #    directory W/<model_dir>_final/ (student_config.json,
    #    final.weights.h5, selection.json) for `evaluate` / `translate`.
    python tools/converge.py select --work_dir=W --data_dir=D \
        --task_gin=gin/tasks/multi30k_de_en.gin --model_dir=baseline_seed0 \
        [--average=1,2,3,4,5] [--beam_size=5]

Every step can be killed and rerun: `distill` resumes from its checkpoints,
scores are kept in `<model_dir>/valid_bleu.json` (written atomically, drawn
into `<model_dir>/valid_bleu.png` after each scored checkpoint) and
only new checkpoints are scored; `select` keeps its scores in
`<model_dir>/selection_scores.json`. The valid split is the only data read
besides training: no setting is chosen on test data.
"""

import json
import os
import subprocess
import sys
import time

import gin
import numpy as np
import tensorflow as tf
from absl import app, flags, logging

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bertkd_tf import artifacts, plots  # noqa: E402
from bertkd_tf.atomic_files import write_text_atomic  # noqa: E402
from bertkd_tf.decoding.generator import Generator  # noqa: E402
from bertkd_tf.metrics.bleu import sacre_bleu, tokenized_bleu  # noqa: E402
from bertkd_tf.training import trainer  # noqa: E402
from bertkd_tf.training.convergence import plateau  # noqa: E402

WORK_DIR = flags.DEFINE_string("work_dir", None, "Pipeline work dir.")
DATA_DIR = flags.DEFINE_string("data_dir", None, "Corpus directory.")
GIN_FILE = flags.DEFINE_string("gin_file", None, "The student's recipe.")
TASK_GIN = flags.DEFINE_string(
    "task_gin", "gin/tasks/multi30k_de_en.gin", "gin/tasks/<task>.gin."
)
TASK_BINDINGS = flags.DEFINE_multi_string(
    "task_gin_bindings", [], "Extra bindings for --task_gin."
)
MODEL_DIR = flags.DEFINE_string("model_dir", None, "Name under work_dir.")
BINDINGS = flags.DEFINE_multi_string("gin_bindings", [], "For `distill`.")
CHUNK = flags.DEFINE_integer("chunk_steps", 1000, "Steps per distill call.")
EVERY = flags.DEFINE_integer("eval_every", 500, "Checkpoint/scoring period.")
PATIENCE = flags.DEFINE_integer(
    "patience", 4, "Scored checkpoints without a new best before stopping."
)
MIN_STEPS = flags.DEFINE_integer("min_steps", 3000, "Never stop before.")
MAX_STEPS = flags.DEFINE_integer("max_steps", 20000, "Always stop here.")
AVERAGE = flags.DEFINE_list("average", ["1", "2", "3", "4", "5"], "")
BEAM = flags.DEFINE_integer("beam_size", 5, "Beam of `select` (1: greedy).")
BERTKD = flags.DEFINE_string(
    "bertkd",
    os.path.join(os.path.dirname(sys.executable), "bertkd"),
    "The bertkd binary.",
)
CURVE_FILE = "valid_bleu.json"
CONVERGED_FILE = "converged.json"
SELECTION_SCORES = "selection_scores.json"
FINAL_SUFFIX = "_final"


def _task():
    gin.add_config_file_search_path(os.getcwd())
    gin.parse_config_files_and_bindings(
        [TASK_GIN.value], [f"DATA_DIR='{DATA_DIR.value}'", *TASK_BINDINGS.value]
    )
    return gin.query_parameter("%TASK").scoped_configurable_fn()


def _read_json(path, default):
    if not os.path.exists(path):
        return default
    with open(path) as f:
        return json.load(f)


def _write_json(path, value):
    write_text_atomic(path, json.dumps(value, indent=1, sort_keys=True))


def checkpoint_steps(model_dir):
    """`{step: checkpoint prefix}` of the kept checkpoints."""
    state = tf.train.get_checkpoint_state(
        os.path.join(model_dir, trainer.CHECKPOINT_DIR)
    )
    if state is None:
        return {}
    return {
        int(p.rsplit("-", 1)[1]): p for p in state.all_model_checkpoint_paths
    }


class Scorer:
    """Decodes the valid split with a student's weights and scores BLEU."""

    def __init__(self, work_dir, model_dir, task):
        self.vocab = artifacts.load_vocabulary(work_dir)
        self.student = artifacts.student_from_config(model_dir)
        self.holder = tf.train.Checkpoint(
            model=tf.train.Checkpoint(student=self.student)
        )
        self.generator = Generator(
            self.student,
            self.vocab,
            jit_compile=True,
            max_source_length=task.max_source_length + 1,
        )
        pairs = task.read("valid")
        self.sources = pairs.sources
        self.references = [
            self.vocab.normalize_reference(t) for t in pairs.targets
        ]

    def restore(self, path):
        self.holder.restore(path).expect_partial()

    def set_weights(self, weights):
        for variable, value in zip(self.student.weights, weights):
            variable.assign(value)

    def score(self, beam_size):
        start = time.time()
        hypotheses = self.generator.generate_all(
            self.sources, batch_size=64, beam_size=beam_size
        )
        return {
            "bleu": tokenized_bleu(hypotheses, self.references)["score"],
            "sacrebleu": sacre_bleu(hypotheses, self.references)["score"],
            "beam_size": beam_size,
            "seconds": round(time.time() - start, 1),
        }


def has_architecture(model_dir):
    """Whether the student's `student_config.json` exists. A `distill` call
    writes it when it ends, so a first call killed after a checkpoint leaves
    checkpoints without it: they cannot be scored (nor the run judged) until
    that call is run to its end."""
    return os.path.exists(os.path.join(model_dir, artifacts.STUDENT_CONFIG))


def steps_to_score(checkpoints, curve, every):
    """The checkpoints to score: one every `every` steps, not scored yet."""
    return sorted(
        s for s in checkpoints if s % every == 0 and str(s) not in curve
    )


def next_target(last, chunk, architecture):
    """The step the next `distill` call trains to: the chunk after `last`;
    without the architecture, the chunk the killed first call was in (it
    ends there, writing the architecture, also when `last` is its end)."""
    if architecture:
        return (last // chunk + 1) * chunk
    return max(chunk, -(-last // chunk) * chunk)


def train(task):
    work_dir, name = WORK_DIR.value, MODEL_DIR.value
    model_dir = os.path.join(work_dir, name)
    curve_path = os.path.join(model_dir, CURVE_FILE)
    scorer = None
    while True:
        curve = _read_json(curve_path, {})
        checkpoints = checkpoint_steps(model_dir)
        architecture = has_architecture(model_dir)
        new = (
            steps_to_score(checkpoints, curve, EVERY.value)
            if architecture
            else []
        )
        if new and scorer is None:
            scorer = Scorer(work_dir, model_dir, task)
        for step in new:
            scorer.restore(checkpoints[step])
            curve[str(step)] = scorer.score(beam_size=1)
            _write_json(curve_path, curve)
            plots.plot_bleu_curve(curve_path)  # valid_bleu.png
            logging.info("%s step %d: %s", name, step, curve[str(step)])
        best, stopped = plateau(curve, PATIENCE.value, MIN_STEPS.value)
        last = max(checkpoints, default=0)
        if architecture and (stopped or last >= MAX_STEPS.value):
            result = {
                "reason": "plateau" if stopped else "max_steps",
                "best_step": best,
                "best_greedy_bleu": curve[str(best)]["bleu"] if best else None,
                "last_step": last,
                "patience": PATIENCE.value,
                "eval_every": EVERY.value,
            }
            _write_json(os.path.join(model_dir, CONVERGED_FILE), result)
            print(json.dumps(result))
            return result
        target = next_target(last, CHUNK.value, architecture)
        command = [
            BERTKD.value,
            "--mode=distill",
            f"--gin_file={GIN_FILE.value}",
            f"--gin_bindings=DATA_DIR='{DATA_DIR.value}'",
            f"--gin_bindings=WORK_DIR='{work_dir}'",
            *[f"--gin_bindings={b}" for b in BINDINGS.value],
            f"--gin_bindings=TRAIN_STEPS={target}",
            f"--gin_bindings=distill.run.model_dir='{name}'",
            f"--gin_bindings=distill.run.checkpoint_every_steps={EVERY.value}",
            "--gin_bindings=distill.run.keep_checkpoints=1000",
            "--gin_bindings=distill.run.verbose=2",
        ]
        logging.info("training %s to step %d: %s", name, target, command)
        subprocess.run(command, check=True)


def _average(scorer, paths):
    total = None
    for path in paths:
        scorer.restore(path)
        values = [v.numpy().astype(np.float64) for v in scorer.student.weights]
        total = (
            values if total is None else [t + v for t, v in zip(total, values)]
        )
    return [
        (t / len(paths)).astype(v.dtype)
        for t, v in zip(total, scorer.student.weights)
    ]


def select(task):
    work_dir, name = WORK_DIR.value, MODEL_DIR.value
    model_dir = os.path.join(work_dir, name)
    converged = _read_json(os.path.join(model_dir, CONVERGED_FILE), None)
    if converged is None:
        raise app.UsageError(f"{model_dir}: run `converge.py train` first.")
    best = converged["best_step"]
    checkpoints = checkpoint_steps(model_dir)
    every = converged["eval_every"]  # The period the curve was scored at.
    scored = sorted(s for s in checkpoints if s % every == 0 and s <= best)
    scores_path = os.path.join(model_dir, SELECTION_SCORES)
    scores = _read_json(scores_path, {})
    scorer = Scorer(work_dir, model_dir, task)
    candidates = {}
    for n in sorted({int(n) for n in AVERAGE.value}):
        if n > len(scored):
            continue
        steps = scored[-n:]
        key = f"beam{BEAM.value}_last{n}_to_{best}"
        candidates[key] = steps
        if key not in scores:
            scorer.set_weights(
                _average(scorer, [checkpoints[s] for s in steps])
            )
            scores[key] = {"steps": steps, **scorer.score(BEAM.value)}
            _write_json(scores_path, scores)
            logging.info("%s %s: %s", name, key, scores[key])
    # The best valid BLEU; among equals, the fewest checkpoints.
    chosen = max(
        candidates, key=lambda k: (scores[k]["bleu"], -len(candidates[k]))
    )
    steps = candidates[chosen]
    scorer.set_weights(_average(scorer, [checkpoints[s] for s in steps]))
    final_dir = model_dir + FINAL_SUFFIX
    tf.io.gfile.makedirs(final_dir)
    trainer.save_final(
        scorer.student,
        final_dir,
        artifacts.STUDENT_CONFIG,
        artifacts.FINAL_WEIGHTS,
    )
    selection = {
        "chosen": chosen,
        "checkpoint_steps": steps,
        "valid": scores[chosen],
        "candidates": {k: scores[k] for k in candidates},
        "converged": converged,
        "rule": (
            f"beam-{BEAM.value} tokenized BLEU on the valid split, over the "
            "average of the last N scored checkpoints up to the best greedy "
            f"checkpoint, N in {sorted(int(n) for n in AVERAGE.value)}"
        ),
    }
    _write_json(os.path.join(final_dir, "selection.json"), selection)
    print(json.dumps(selection, indent=1))
    return selection


def main(argv):
    if len(argv) != 2 or argv[1] not in ("train", "select"):
        raise app.UsageError("usage: converge.py train|select --flags")
    if not (WORK_DIR.value and DATA_DIR.value and MODEL_DIR.value):
        raise app.UsageError(
            "--work_dir, --data_dir, --model_dir are required."
        )
    task = _task()
    if argv[1] == "train":
        if not GIN_FILE.value:
            raise app.UsageError("train needs --gin_file (the recipe).")
        train(task)
    else:
        select(task)


if __name__ == "__main__":
    app.run(main)
