r"""Student training throughput: target tokens/s and model FLOP utilisation.

    python tools/bench_train.py [--vocabulary_size=16000] [--steps=20]

Trains the CPU-sized student (d 256, 3+3 layers, 4 heads, FFN 1024 by
default) with `fit` on a fixed synthetic batch of `batch_size x
target_length` target tokens (and as many source tokens) and prints, for
baseline (distillation weight 0) vs distillation (top-K targets, K 8),
float32 vs mixed_bfloat16 and XLA off vs on: the step time, target tokens/s,
the model's training FLOP/s and its utilisation of the matmul ceiling
measured here in TensorFlow (a large float32 and a large bfloat16 matmul).

Model FLOPs are counted analytically (2 FLOPs a multiply-add, training =
3x forward): attention and feedforward projections, attention scores, the
tied output layer.

This VM's speed drifts by +-15% within minutes, so `--rounds=N` runs the
whole list of settings N times, round-robin, and prints each setting's
median step (and the range) after the last round: settings are compared
on the same stretch of time. `--compare_unfused` adds rows with
`DistillationModel(fuse_output_layer=False)` (the output layer and the
losses as separate ops, as before the fused output layer);
`--compare_keras_adam` adds rows with `keras.optimizers.Adam` in place of
`FusedAdam` (one `ResourceApplyAdam` kernel per variable); `--control`
times every setting twice a round (`/again`), and with `--rounds` the
per-round ratios distill/baseline and again/first are printed: the A/A
ratios show how much of a pair's spread is the machine's. The allocator
matters for the large `[tokens, vocabulary]` tensors: the header says
whether a tcmalloc is preloaded (`LD_PRELOAD=.../libtcmalloc_minimal.so.4`,
Debian's `libtcmalloc-minimal4`, as the reference PyTorch figures used).

With `--profile_dir=DIR`, each setting is also traced for a few steps with
the TensorFlow profiler (the trace stays in DIR for TensorBoard) and a table
of where the busy time goes, by op type, is printed under its row:

    python tools/bench_train.py --only=distill/bf16/xla-off --profile_dir=/tmp/p
"""

import collections
import glob
import json
import os
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from flops import matmul_ceiling, training_flops  # noqa: E402

from bertkd_tf.models.transformer_backbone import (  # noqa: E402
    TransformerSeq2SeqBackbone,
)
from bertkd_tf.models.transformer_seq2seq import (  # noqa: E402
    TransformerSeq2Seq,
)
from bertkd_tf.training.distillation_model import (  # noqa: E402
    DistillationModel,
)
from bertkd_tf.training.fused_adam import FusedAdam  # noqa: E402

VOCABULARY_SIZE = flags.DEFINE_integer(
    "vocabulary_size", 16000, "Task vocabulary size (IWSLT14's, if known)."
)
HIDDEN_DIM = flags.DEFINE_integer("hidden_dim", 256, "Model width.")
NUM_LAYERS = flags.DEFINE_integer("num_layers", 3, "Encoder/decoder layers.")
NUM_HEADS = flags.DEFINE_integer("num_heads", 4, "Attention heads.")
INTERMEDIATE_DIM = flags.DEFINE_integer("intermediate_dim", 1024, "FFN width.")
BATCH_SIZE = flags.DEFINE_integer("batch_size", 64, "Sentences a batch.")
LENGTH = flags.DEFINE_integer(
    "length", 32, "Source and target length (tokens a sentence)."
)
TOP_K = flags.DEFINE_integer("top_k", 8, "Teacher logits per position.")
STEPS = flags.DEFINE_integer("steps", 20, "Timed steps per setting.")
WARMUP = flags.DEFINE_integer("warmup", 3, "Untimed steps (tracing, XLA).")
ONLY = flags.DEFINE_list(
    "only", [], "Run only these settings, e.g. baseline/bf16/xla-off."
)
PROFILE_DIR = flags.DEFINE_string(
    "profile_dir", None, "Trace each setting here and print op-type shares."
)
PROFILE_STEPS = flags.DEFINE_integer("profile_steps", 4, "Steps traced.")
PROFILE_ROWS = flags.DEFINE_integer("profile_rows", 12, "Op types shown.")
ROUNDS = flags.DEFINE_integer(
    "rounds", 1, "Round-robin repeats of all settings (median reported)."
)
COMPARE_UNFUSED = flags.DEFINE_bool(
    "compare_unfused",
    False,
    "Also time DistillationModel(fuse_output_layer=False).",
)
COMPARE_KERAS_ADAM = flags.DEFINE_bool(
    "compare_keras_adam",
    False,
    "Also time keras.optimizers.Adam in place of FusedAdam.",
)
CONTROL = flags.DEFINE_bool(
    "control",
    False,
    "Also time every setting a second time in the same round ('/again'): "
    "the spread of those A/A ratios is the machine's, the yardstick for "
    "the distill/baseline ratios printed per round.",
)


def make_batch(vocab, batch, length, top_k, seed=0):
    rng = np.random.default_rng(seed)
    x = {
        "encoder_token_ids": rng.integers(5, vocab, (batch, length)),
        "encoder_padding_mask": np.ones((batch, length)),
        "decoder_token_ids": rng.integers(5, vocab, (batch, length)),
        "decoder_padding_mask": np.ones((batch, length)),
    }
    x = {k: v.astype("int32") for k, v in x.items()}
    y = {
        "labels": rng.integers(5, vocab, (batch, length)).astype("int32"),
        "teacher_ids": rng.integers(0, vocab, (batch, length, top_k)).astype(
            "int32"
        ),
        "teacher_logits": rng.normal(size=(batch, length, top_k)).astype(
            "float32"
        ),
    }
    weights = np.ones((batch, length), "float32")
    return x, y, weights


class _Timer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_end(self, batch, logs=None):
        float(logs["loss"])  # Wait for the step.
        self.times.append(time.perf_counter())


def make_student(**backbone_kwargs):
    """The benchmarked student (seed 0), from the size flags."""
    keras.utils.set_random_seed(0)
    return TransformerSeq2Seq(
        TransformerSeq2SeqBackbone(
            vocabulary_size=VOCABULARY_SIZE.value,
            num_layers=NUM_LAYERS.value,
            num_heads=NUM_HEADS.value,
            hidden_dim=HIDDEN_DIM.value,
            intermediate_dim=INTERMEDIATE_DIM.value,
            **backbone_kwargs,
        )
    )


def measure(
    distill, dtype, jit_compile, data, fused=True, fused_adam=True, profile=True
):
    model = DistillationModel(
        make_student(dropout=0.1, dtype=dtype),
        distillation_weight=0.5 if distill else 0.0,
        temperature=10.0,
        fuse_output_layer=fused,
    )
    model.compile(
        optimizer=(FusedAdam if fused_adam else keras.optimizers.Adam)(
            1e-4, beta_2=0.98
        ),
        jit_compile=jit_compile,
    )
    x, y, weights = data
    if not distill:
        y = y["labels"]
    dataset = tf.data.Dataset.from_tensors((x, y, weights)).repeat()
    timer = _Timer()
    model.fit(
        dataset,
        steps_per_epoch=WARMUP.value + STEPS.value,
        callbacks=[timer],
        verbose=0,
    )
    times = timer.times[WARMUP.value - 1 :]
    step = (times[-1] - times[0]) / (len(times) - 1)
    shares = None
    if profile and PROFILE_DIR.value:
        logdir = os.path.join(
            PROFILE_DIR.value,
            f"{'distill' if distill else 'baseline'}-{dtype}-"
            f"xla{int(bool(jit_compile))}{'' if fused else '-unfused'}"
            f"{'' if fused_adam else '-keras-adam'}",
        )
        tf.profiler.experimental.start(logdir)
        model.fit(dataset, steps_per_epoch=PROFILE_STEPS.value, verbose=0)
        tf.profiler.experimental.stop()
        shares = op_type_shares(logdir)
    return step, shares


def optimizer_update_ms(optimizer_class, repeats=20, rounds=3):
    """Milliseconds of one `optimizer.apply` over the student's variables
    (random gradients, in a tf.function): the update alone."""
    student = make_student()
    ones = np.ones((2, 8), "int32")
    student(
        {
            "encoder_token_ids": ones,
            "encoder_padding_mask": ones,
            "decoder_token_ids": ones,
            "decoder_padding_mask": ones,
        }
    )
    variables = student.trainable_variables
    grads = [tf.random.normal(v.shape) for v in variables]
    optimizer = optimizer_class(1e-4, beta_2=0.98)
    optimizer.build(variables)
    apply = tf.function(lambda: optimizer.apply(grads, variables))
    apply()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            apply()
        times.append((time.perf_counter() - start) / repeats * 1e3)
    size = sum(int(np.prod(v.shape)) for v in variables)
    return float(np.median(times)), len(variables), size


def op_type_shares(logdir):
    """Self time by op type, as shares of the traced busy time (no IDLE)."""
    from tensorflow.python.profiler.internal import (
        _pywrap_profiler_plugin as profiler_plugin,
    )

    files = glob.glob(os.path.join(logdir, "**", "*.xplane.pb"), recursive=True)
    data, ok = profiler_plugin.xspace_to_tools_data(
        files, "framework_op_stats", {}
    )
    if not ok:
        raise RuntimeError(f"Could not read the profile in {logdir}: {data!r}")
    table = json.loads(data)[0]
    columns = {c["id"]: i for i, c in enumerate(table["cols"])}
    by_type = collections.Counter()
    for row in table["rows"]:
        values = [cell["v"] if cell else None for cell in row["c"]]
        op_type = values[columns["type"]]
        if op_type != "IDLE":
            by_type[op_type] += values[columns["total_self_time"]]
    busy = sum(by_type.values())
    return [(name, t / busy) for name, t in by_type.most_common()]


def print_profile(shares, rows):
    shown = shares[:rows]
    rest = 1.0 - sum(share for _, share in shown)
    cells = [f"{name} {100 * share:.1f}%" for name, share in shown]
    cells.append(f"other {100 * rest:.1f}%")
    print("|   busy time by op type: " + ", ".join(cells) + " |", flush=True)


def print_round_ratios(steps):
    """Per round, each distill setting's step over its baseline's and each
    `/again` step over its first timing (the A/A control): the spread of
    single pairs, and how much of it the machine makes."""
    pairs = []
    for label in steps:
        # `distill/<precision>/<xla>` without a variant suffix.
        if label.startswith("distill/") and label.count("/") == 2:
            pairs.append((label, "baseline/" + label[len("distill/") :]))
        if label.endswith("/again"):
            pairs.append((label, label[: -len("/again")]))
    for a, b in pairs:
        if b not in steps:
            continue
        ratios = [x / y for x, y in zip(steps[a], steps[b])]
        print(
            f"{a} / {b} step, per round: "
            + ", ".join(f"{r:.2f}" for r in ratios)
            + f" (median {np.median(ratios):.2f}, range "
            f"{min(ratios):.2f}-{max(ratios):.2f})"
        )


def main(argv):
    del argv
    tf.config.optimizer.set_jit(False)
    ceilings = {
        "float32": matmul_ceiling("float32"),
        "bf16": matmul_ceiling("bfloat16"),
    }
    d, f = HIDDEN_DIM.value, INTERMEDIATE_DIM.value
    batch, length = BATCH_SIZE.value, LENGTH.value
    flops = training_flops(
        d,
        f,
        NUM_LAYERS.value,
        NUM_HEADS.value,
        VOCABULARY_SIZE.value,
        batch,
        length,
        length,
    )
    tokens = batch * length
    print(
        f"student d {d}, {NUM_LAYERS.value}+{NUM_LAYERS.value} layers, "
        f"{NUM_HEADS.value} heads, FFN {f}, vocabulary "
        f"{VOCABULARY_SIZE.value}; batch {batch} x {length} = {tokens} "
        f"target tokens; {flops / 1e12:.3f} TFLOP a step; "
        f"{os.cpu_count()} CPUs; LD_PRELOAD="
        f"{os.environ.get('LD_PRELOAD', '')!r}"
    )
    print(
        "matmul ceiling (TF, 2048^3): float32 "
        f"{ceilings['float32'] / 1e12:.2f} TFLOP/s, bfloat16 "
        f"{ceilings['bf16'] / 1e12:.2f} TFLOP/s"
    )
    data = make_batch(VOCABULARY_SIZE.value, batch, length, TOP_K.value)
    settings = []
    for mode in ("baseline", "distill"):
        for precision in ("float32", "bf16"):
            for xla in (False, True):
                name = f"{mode}/{precision}/xla-{'on' if xla else 'off'}"
                if ONLY.value and name not in ONLY.value:
                    continue
                variants = [("", True, True)]
                if COMPARE_UNFUSED.value:
                    variants.append(("/unfused", False, True))
                if COMPARE_KERAS_ADAM.value:
                    variants.append(("/keras-adam", True, False))
                if CONTROL.value:
                    variants.append(("/again", True, True))
                for suffix, fused, fused_adam in variants:
                    settings.append(
                        (name + suffix, mode, precision, xla, fused, fused_adam)
                    )
    header = (
        f"| {'setting':<34} | step s | tokens/s | TFLOP/s | MFU (own ceiling) |"
    )
    separator = (
        "|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|"
    )

    def row(label, step, precision, spread=""):
        rate = flops / step
        return (
            f"| {label:<34} | {step:6.3f} | {tokens / step:8.0f} | "
            f"{rate / 1e12:7.3f} | "
            f"{100 * rate / ceilings[precision]:16.1f}% |{spread}"
        )

    if COMPARE_KERAS_ADAM.value:
        keras_ms, count, size = optimizer_update_ms(keras.optimizers.Adam)
        fused_ms, _, _ = optimizer_update_ms(FusedAdam)
        print(
            f"optimizer update alone ({count} variables, {size:,} parameters,"
            f" median of 3 x 20): keras Adam {keras_ms:.1f} ms, FusedAdam "
            f"{fused_ms:.1f} ms",
            flush=True,
        )
    steps = collections.defaultdict(list)
    for round_index in range(ROUNDS.value):
        if ROUNDS.value > 1:
            print(f"round {round_index + 1} of {ROUNDS.value}", flush=True)
        print(header)
        print(separator)
        for label, mode, precision, xla, fused, fused_adam in settings:
            dtype = "mixed_bfloat16" if precision == "bf16" else "float32"
            step, profile = measure(
                mode == "distill",
                dtype,
                xla,
                data,
                fused=fused,
                fused_adam=fused_adam,
                profile=round_index == 0,
            )
            steps[label].append(step)
            print(row(label, step, precision), flush=True)
            if profile:
                print_profile(profile, PROFILE_ROWS.value)
    if ROUNDS.value > 1:
        print_round_ratios(steps)
        print(f"median of {ROUNDS.value} rounds (range of tokens/s):")
        print(header)
        print(separator)
        for label, _, precision, *_ in settings:
            values = steps[label]
            spread = f" {tokens / max(values):,.0f}-{tokens / min(values):,.0f}"
            print(row(label, float(np.median(values)), precision, spread))


if __name__ == "__main__":
    app.run(main)
