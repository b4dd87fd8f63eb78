r"""Fault and bad-input sweep of the `bertkd` binary on the bundled corpus.

    .venv/bin/python tools/fault_sweep.py [--work_dir=/tmp/sweep] [--jobs=2]

Part 1, faults: runs the pipeline (prepare, train_teacher, dump_teacher,
distill) once uninterrupted as the reference, then injects faults into a
second work directory and checks that each is survived:

- `kill -9` of train_teacher, dump_teacher and distill mid-run, then the
  same command again: the teacher's and the student's final weights equal
  the reference bit for bit (dropout on), every shard of the dump is
  byte-identical to the reference's;
- SIGTERM of distill inside a chunk: exit 143 with an interim checkpoint of
  the step reached; the same command resumes there, bit-equal again;
- a truncated shard: the rerun of the dump rewrites it, byte-identical;
- a bit-flipped shard: distill refuses it, naming the shard;
- a damaged latest checkpoint and a leftover `ckpt-N_temp/`: the resume
  falls back to the newest intact checkpoint and removes the leftover;
- 16 flipped bytes in the teacher's final weights: the dump refuses them;
- targets of another teacher: distill refuses them;
- a second writer of a model directory: refused, naming the first's pid.

Part 2, bad inputs: each must end with exit status 2 and one paragraph on
stderr (no traceback) naming the setting, file or artifact involved.

Prints a table of every case (and a summary line `N passed, M failed`), and
exits 1 if any case failed. Takes 5-10 minutes on 2 cores.
"""

import argparse
import concurrent.futures
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import h5py
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bertkd_tf import locking  # noqa: E402
from bertkd_tf.artifacts import VOCAB_DIR  # noqa: E402

CORPUS = os.path.join(ROOT, "tests", "fixtures", "tiny_de_en")

# `bertkd` that SIGKILLs itself when the optimizer reaches $KILL_AT_STEP
# (a fixed point between two checkpoints, so the sweep does not race); with
# $KILL_SIGNAL set, it sends itself that signal instead, once (SIGTERM: the
# graceful stop of `training.interruption`).
KILLING_BERTKD = """
import os, signal, sys
import keras
from bertkd_tf.training import trainer
kill_at = int(os.environ["KILL_AT_STEP"])
signum = int(os.environ.get("KILL_SIGNAL", signal.SIGKILL))
real_fit = trainer.fit_resumable
class Kill(keras.callbacks.Callback):
    sent = False
    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations.numpy())
        if step >= kill_at and not self.sent:
            self.sent = True
            os.kill(os.getpid(), signum)
def fit_then_die(model, train_dataset_fn, callbacks=(), **kwargs):
    callbacks = [*callbacks, Kill()]
    return real_fit(model, train_dataset_fn, callbacks=callbacks, **kwargs)
trainer.fit_resumable = fit_then_die
from bertkd_tf import main
sys.argv = ["bertkd", *sys.argv[1:]]
main.console_main()
"""

# Short runs with checkpoints every 5 steps and no validation.
SETTINGS = {
    "prepare": [],
    "train_teacher": [
        "train_teacher.run.total_steps=20",
        "train_teacher.run.checkpoint_every_steps=5",
        "train_teacher.run.validate_every_steps=None",
    ],
    "dump_teacher": ["dump_teacher.run.pairs_per_shard=8"],
    "distill": [
        "TRAIN_STEPS=20",
        "distill.run.checkpoint_every_steps=5",
        "distill.run.validate_every_steps=None",
    ],
    "evaluate": [],
    "translate": [],
    "export": [],
}


def bertkd(
    mode,
    work_dir,
    bindings=(),
    kill_at_step=None,
    corpus=CORPUS,
    kill_signal=signal.SIGKILL,
):
    """Runs the binary with the demo's tiny models; `(status, output)`."""
    args = [
        f"--mode={mode}",
        f"--gin_file=gin/runs/{mode}.gin",
        "--gin_file=gin/demo/demo.gin",
        f"--gin_bindings=DATA_DIR='{corpus}'",
        f"--gin_bindings=WORK_DIR='{work_dir}'",
        "--gin_bindings=task.Task.valid_split=None",
        *[f"--gin_bindings={b}" for b in [*SETTINGS.get(mode, []), *bindings]],
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    if kill_at_step is None:
        command = [sys.executable, "-m", "bertkd_tf.main", *args]
    else:
        command = [sys.executable, "-c", KILLING_BERTKD, *args]
        env["KILL_AT_STEP"] = str(kill_at_step)
        env["KILL_SIGNAL"] = str(int(kill_signal))
    result = subprocess.run(
        command, cwd=ROOT, capture_output=True, text=True, env=env, timeout=600
    )
    return result.returncode, result.stdout + result.stderr


def weights_of(path):
    """`{dataset name: array}` of a `.weights.h5` file."""
    values = {}
    with h5py.File(path, "r") as f:
        f.visititems(
            lambda name, item: (
                values.__setitem__(name, item[()])
                if isinstance(item, h5py.Dataset)
                else None
            )
        )
    return values


def bit_equal(path_a, path_b):
    a, b = weights_of(path_a), weights_of(path_b)
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def digests(directory):
    """`{file: sha256}` of a dump's shards and manifest."""
    return {
        name: hashlib.sha256(
            open(os.path.join(directory, name), "rb").read()
        ).hexdigest()
        for name in sorted(os.listdir(directory))
        if name.endswith(".tfrecord") or name == "manifest.json"
    }


def flip_bytes(path, count=16, offset=None):
    with open(path, "r+b") as f:
        size = os.path.getsize(path)
        start = size // 2 if offset is None else offset
        f.seek(start)
        data = bytearray(f.read(count))
        f.seek(start)
        f.write(bytes(b ^ 0xFF for b in data))


def paragraph(output):
    """The `bertkd: ...` paragraph at the end, or None; and whether any
    traceback was printed."""
    if "bertkd: " not in output:
        return None, "Traceback" in output
    text = output[output.rindex("bertkd: ") :].strip()
    return " ".join(text.split()), "Traceback" in output


class Sweep:
    def __init__(self):
        self.rows = []

    def record(self, kind, case, ok, detail):
        self.rows.append((kind, case, bool(ok), detail))
        mark = "ok  " if ok else "FAIL"
        print(f"[{mark}] {kind}: {case}: {detail}", flush=True)

    def expect_refusal(self, case, result, *needles, kind="bad input"):
        status, output = result
        text, traceback = paragraph(output)
        missing = [n for n in needles if text is None or n not in text]
        ok = status == 2 and text is not None and not traceback and not missing
        detail = text or output.strip().splitlines()[-1:] or ["(no output)"]
        detail = detail if isinstance(detail, str) else detail[0]
        if missing:
            detail = f"missing {missing!r} in: {detail}"
        self.record(kind, case, ok, f"exit {status}; {detail[:220]}")


def faults(sweep, base):
    reference = os.path.join(base, "reference")
    work = os.path.join(base, "faulted")
    for mode in ("prepare", "train_teacher", "dump_teacher"):
        status, output = bertkd(mode, reference)
        if status:
            raise SystemExit(f"reference {mode} failed:\n{output[-3000:]}")
    status, output = bertkd("distill", reference)
    if status:
        raise SystemExit(f"reference distill failed:\n{output[-3000:]}")
    shutil.copytree(
        os.path.join(reference, VOCAB_DIR), os.path.join(work, VOCAB_DIR)
    )

    # kill -9 of the teacher, then the same command.
    status, _ = bertkd("train_teacher", work, kill_at_step=12)
    resumed, output = bertkd("train_teacher", work)
    final = "teacher/final.weights.h5"
    ok = (
        status == -signal.SIGKILL
        and resumed == 0
        and bit_equal(os.path.join(reference, final), os.path.join(work, final))
    )
    sweep.record(
        "fault",
        "kill -9 train_teacher at step 12, rerun",
        ok,
        "final weights bit-equal to the uninterrupted run"
        if ok
        else f"killed {status}, resumed {resumed}: {output[-300:]}",
    )

    # kill -9 of the dump once its first shard is in, then the same command.
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "bertkd_tf.main",
            "--mode=dump_teacher",
            "--gin_file=gin/runs/dump_teacher.gin",
            "--gin_file=gin/demo/demo.gin",
            f"--gin_bindings=DATA_DIR='{CORPUS}'",
            f"--gin_bindings=WORK_DIR='{work}'",
            "--gin_bindings=task.Task.valid_split=None",
            *[f"--gin_bindings={b}" for b in SETTINGS["dump_teacher"]],
        ],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    targets = os.path.join(work, "targets")
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if os.path.isdir(targets) and any(
            n.endswith(".tfrecord") for n in os.listdir(targets)
        ):
            process.send_signal(signal.SIGKILL)
            break
        time.sleep(0.05)
    killed = process.wait()
    resumed, output = bertkd("dump_teacher", work)
    expected = digests(os.path.join(reference, "targets"))
    ok = resumed == 0 and digests(targets) == expected
    sweep.record(
        "fault",
        f"kill -9 dump_teacher after its first shard (exit {killed}), rerun",
        ok,
        f"{len(expected)} files byte-identical to the uninterrupted dump"
        if ok
        else f"resumed {resumed}: {output[-300:]}",
    )

    # A truncated shard: the rerun rewrites it.
    shard = sorted(n for n in os.listdir(targets) if n.endswith(".tfrecord"))[0]
    path = os.path.join(targets, shard)
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2)
    status, output = bertkd("dump_teacher", work)
    ok = status == 0 and digests(targets) == expected and shard in output
    sweep.record(
        "fault",
        "truncated shard, rerun of dump_teacher",
        ok,
        "rewritten (named in the log), byte-identical"
        if ok
        else f"exit {status}: {output[-300:]}",
    )

    # A bit-flipped shard: distill refuses it, naming it.
    saved = open(path, "rb").read()
    flip_bytes(path, count=4)
    sweep.expect_refusal(
        "bit-flipped shard, then distill",
        bertkd("distill", work),
        shard,
        kind="fault",
    )
    open(path, "wb").write(saved)

    # kill -9 of the student, then the same command.
    status, _ = bertkd("distill", work, kill_at_step=12)
    resumed, output = bertkd("distill", work)
    final = "student/final.weights.h5"
    ok = (
        status == -signal.SIGKILL
        and resumed == 0
        and bit_equal(os.path.join(reference, final), os.path.join(work, final))
    )
    sweep.record(
        "fault",
        "kill -9 distill at step 12, rerun",
        ok,
        "final weights bit-equal to the uninterrupted run"
        if ok
        else f"killed {status}, resumed {resumed}: {output[-300:]}",
    )

    # SIGTERM of the student inside a chunk (steps 10-15), then the same
    # command: the interim checkpoint of step 13.
    shutil.rmtree(os.path.join(work, "student"))
    status, stopped = bertkd(
        "distill", work, kill_at_step=13, kill_signal=signal.SIGTERM
    )
    interim = os.path.join(work, "student", "checkpoints", "interim")
    written = os.listdir(interim) if os.path.isdir(interim) else []
    resumed, output = bertkd("distill", work)
    ok = (
        status == 128 + signal.SIGTERM
        and "stopped on SIGTERM at step 13" in stopped
        and written == ["step-13"]
        and resumed == 0
        and "Resuming at step 13" in output
        and bit_equal(os.path.join(reference, final), os.path.join(work, final))
    )
    sweep.record(
        "fault",
        "SIGTERM distill at step 13 (inside a chunk), rerun",
        ok,
        f"exit {status}, interim checkpoint step-13, resumed there; final "
        "weights bit-equal to the uninterrupted run"
        if ok
        else f"stopped {status} {written}, resumed {resumed}: "
        f"{stopped[-300:]} {output[-300:]}",
    )

    # A damaged latest checkpoint and a leftover temporary checkpoint.
    checkpoints = os.path.join(work, "teacher", "checkpoints")
    flip_bytes(os.path.join(checkpoints, "ckpt-20.data-00000-of-00001"))
    os.makedirs(os.path.join(checkpoints, "ckpt-25_temp"))
    status, output = bertkd(
        "train_teacher", work, ["train_teacher.run.total_steps=25"]
    )
    ok = (
        status == 0
        and "ckpt-20" in output
        and "ckpt-15" in output
        and not os.path.exists(os.path.join(checkpoints, "ckpt-25_temp"))
    )
    sweep.record(
        "fault",
        "bit-flipped latest checkpoint + leftover ckpt-25_temp/, resume",
        ok,
        "fell back to ckpt-15 (named with ckpt-20 in the log), leftover removed"
        if ok
        else f"exit {status}: {output[-400:]}",
    )

    # Targets of another teacher (the teacher now has 25 steps).
    shutil.rmtree(os.path.join(work, "student"))
    sweep.expect_refusal(
        "targets dumped from another teacher",
        bertkd("distill", work),
        "teacher",
        "fingerprint",
        kind="fault",
    )

    # 16 flipped bytes in the teacher's final weights.
    weights = os.path.join(work, "teacher", "final.weights.h5")
    flip_bytes(weights)
    sweep.expect_refusal(
        "16 flipped bytes in teacher/final.weights.h5, then dump",
        bertkd("dump_teacher", work, ["dump_teacher.run.output_dir='t2'"]),
        "final.weights.h5",
        kind="fault",
    )

    # A second writer of the same model directory.
    model_dir = os.path.join(reference, "baseline")
    os.makedirs(model_dir, exist_ok=True)
    with locking.DirectoryLock(model_dir):
        sweep.expect_refusal(
            "second writer of a model directory",
            bertkd("distill", reference, ["DISTILLATION_WEIGHT=0.0"]),
            str(os.getpid()),
            kind="fault",
        )
    return reference


def bad_inputs(sweep, base, reference, jobs):
    empty = os.path.join(base, "empty")
    vocab_only = os.path.join(base, "vocab_only")
    shutil.copytree(
        os.path.join(reference, VOCAB_DIR),
        os.path.join(vocab_only, VOCAB_DIR),
    )
    a_file = os.path.join(base, "a_file")
    open(a_file, "w").write("x")
    uneven = os.path.join(base, "uneven")
    shutil.copytree(CORPUS, uneven)
    lines = open(os.path.join(uneven, "valid.en")).readlines()
    open(os.path.join(uneven, "valid.en"), "w").writelines(lines[:-1])
    uneven_train = os.path.join(base, "uneven_train")
    shutil.copytree(CORPUS, uneven_train)
    lines = open(os.path.join(uneven_train, "train.de")).readlines()
    open(os.path.join(uneven_train, "train.de"), "w").writelines(lines[:-2])
    bad_gin = os.path.join(base, "bad.gin")
    open(bad_gin, "w").write("TRAIN_STEPS = = 3\n")
    other_vocab = os.path.join(base, "other_vocab")
    other_corpus = os.path.join(base, "other_corpus")
    os.makedirs(other_corpus)
    for name in ("train.de", "train.en"):
        half = open(os.path.join(CORPUS, name)).readlines()[:20]
        open(os.path.join(other_corpus, name), "w").writelines(half)
    if bertkd("prepare", other_vocab, corpus=other_corpus)[0]:
        raise SystemExit("prepare of the second vocabulary failed")
    shutil.copytree(
        os.path.join(reference, "targets"), os.path.join(other_vocab, "targets")
    )

    def valid(*bindings):
        return ["task.Task.valid_split='valid'", *bindings]

    cases = [
        (
            "misspelt macro TRAIN_STEP=5",
            ("distill", reference, ["TRAIN_STEP=5"]),
            ["TRAIN_STEPS"],
        ),
        (
            "misspelt macro DISTILATION_WEIGHT",
            ("distill", reference, ["DISTILATION_WEIGHT=0.0"]),
            ["DISTILLATION_WEIGHT"],
        ),
        (
            "TRAIN_STEPS='abc'",
            ("distill", reference, ["TRAIN_STEPS='abc'"]),
            ["TRAIN_STEPS", "abc"],
        ),
        (
            "TOP_K='eight'",
            ("distill", reference, ["TOP_K='eight'"]),
            ["TOP_K", "eight"],
        ),
        (
            "DISTILLATION_WEIGHT=1.5",
            ("distill", reference, ["DISTILLATION_WEIGHT=1.5"]),
            ["distillation_weight", "1.5"],
        ),
        (
            "TEMPERATURE=-1.0",
            ("distill", reference, ["TEMPERATURE=-1.0"]),
            ["temperature"],
        ),
        (
            "STRATEGY='bogus'",
            ("distill", reference, ["STRATEGY='bogus'"]),
            ["strategy", "bogus"],
        ),
        (
            "BEAM_SIZE=0",
            ("evaluate", reference, ["BEAM_SIZE=0"]),
            ["BEAM_SIZE"],
        ),
        (
            "TOKENS_PER_BATCH=0",
            ("train_teacher", empty, ["TOKENS_PER_BATCH=0"]),
            ["TOKENS_PER_BATCH"],
        ),
        (
            "TOKENS_PER_BATCH=10, below the longest example",
            (
                "distill",
                reference,
                ["TOKENS_PER_BATCH=10", "DISTILLATION_WEIGHT=0.0"],
            ),
            ["tokens_per_batch=10", "batching.py"],
        ),
        (
            "corpus directory that does not exist",
            ("prepare", empty, [], os.path.join(base, "nowhere")),
            ["nowhere"],
        ),
        (
            "valid split with mismatched line counts",
            ("prepare", empty, valid(), uneven),
            ["valid.en", "line"],
        ),
        (
            "train split with mismatched line counts",
            ("prepare", empty, [], uneven_train),
            ["train.de"],
        ),
        (
            "WORK_DIR under a file",
            ("prepare", os.path.join(a_file, "w"), []),
            ["a_file"],
        ),
        (
            "distill without teacher targets",
            ("distill", vocab_only, []),
            ["dump_teacher"],
        ),
        (
            "dump_teacher without a teacher",
            ("dump_teacher", vocab_only, []),
            ["train_teacher"],
        ),
        (
            "evaluate without a student",
            ("evaluate", vocab_only, ["evaluate.run.model_dir='student'"]),
            ["distill"],
        ),
        (
            "train_teacher before prepare",
            ("train_teacher", empty, []),
            ["prepare"],
        ),
        (
            "targets of another task vocabulary",
            ("distill", other_vocab, []),
            ["vocabulary"],
        ),
        (
            "translate a file that does not exist",
            (
                "translate",
                reference,
                [
                    "translate.run.input_file='/nonexistent.de'",
                    "translate.run.model_dir='student'",
                ],
            ),
            ["/nonexistent.de"],
        ),
        (
            "export without a student",
            ("export", vocab_only, ["export.run.model_dir='student'"]),
            ["distill"],
        ),
    ]

    def run_case(case):
        name, (mode, work_dir, bindings, *corpus), needles = case
        return (
            name,
            bertkd(
                mode, work_dir, bindings, corpus=corpus[0] if corpus else CORPUS
            ),
            needles,
        )

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        for name, result, needles in pool.map(run_case, cases):
            sweep.expect_refusal(name, result, *needles)
    # Files that are not gin, and no gin file at all: no subprocess needed
    # beyond these two.
    for case, args, needle in (
        ("gin file with a syntax error", [f"--gin_file={bad_gin}"], "bad.gin"),
        ("no --gin_file", [], "--gin_file"),
    ):
        result = subprocess.run(
            [sys.executable, "-m", "bertkd_tf.main", "--mode=distill", *args],
            cwd=ROOT,
            capture_output=True,
            text=True,
            env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        )
        sweep.expect_refusal(
            case, (result.returncode, result.stdout + result.stderr), needle
        )


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work_dir", default=None, help="Kept if given.")
    parser.add_argument(
        "--jobs", type=int, default=2, help="Bad inputs at once."
    )
    args = parser.parse_args()
    base = args.work_dir or tempfile.mkdtemp(prefix="fault_sweep_")
    if os.path.exists(base) and os.listdir(base):
        raise SystemExit(f"{base} is not empty: give a new --work_dir.")
    os.makedirs(base, exist_ok=True)
    start = time.time()
    sweep = Sweep()
    try:
        reference = faults(sweep, base)
        bad_inputs(sweep, base, reference, args.jobs)
    finally:
        if args.work_dir is None:
            shutil.rmtree(base, ignore_errors=True)
    print("\n| kind | case | result | what happened |\n|---|---|---|---|")
    for kind, case, ok, detail in sweep.rows:
        print(
            f"| {kind} | {case} | {'survived' if ok else 'FAILED'} | {detail} |"
        )
    passed = sum(ok for *_, ok, _ in sweep.rows)
    failed = len(sweep.rows) - passed
    faults_ok = sum(ok for kind, _, ok, _ in sweep.rows if kind == "fault")
    faults_all = sum(kind == "fault" for kind, *_ in sweep.rows)
    inputs_ok = passed - faults_ok
    print(
        f"\nfaults injected and survived: {faults_ok} of {faults_all}; "
        "bad inputs "
        f"answered with one paragraph and exit 2: {inputs_ok} of "
        f"{len(sweep.rows) - faults_all}; {time.time() - start:.0f} s"
    )
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
