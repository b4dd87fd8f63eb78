r"""What a run costs, per stage: FLOPs, time, memory and disk, by corpus and
machine. Prints the Markdown tables of docs/SCALING.md.

    python tools/cost_model.py [--vocab_dir=VOCABS \
        --lengths_from=multi30k=DATA/multi30k_de_en:de:en:bert-base-uncased]

Every input is a named constant below with where it comes from: the
models' shapes (the gin recipes), the corpora's sizes and mean WordPiece
lengths (measured on the corpus files with `--lengths_from`, else the
defaults below, themselves measured that way on 2026-12-06), the stages'
token counts (the recipes' steps x batch), this machine's measured
throughput (docs/PERFORMANCE.md) and published GPU peaks at a stated
utilisation. FLOPs come from `tools/flops.py`, whose parameter formulas the
tests check against built models. The output is an estimate to plan with,
not a measurement: each row says which inputs it rests on.
"""

import dataclasses
import os
import sys

from absl import app, flags

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import flops  # noqa: E402

LENGTHS_FROM = flags.DEFINE_multi_string(
    "lengths_from",
    [],
    "NAME=DATA_DIR:SRC:TGT:VOCAB: measure the mean WordPiece lengths of "
    "corpus NAME from DATA_DIR/train.{SRC,TGT} with VOCAB (a file name "
    "under --vocab_dir without .txt).",
)
VOCAB_DIR = flags.DEFINE_string(
    "vocab_dir", None, "Folder of BERT vocabularies."
)
MAX_LINES = flags.DEFINE_integer("max_lines", 20000, "Lines read per corpus.")


@dataclasses.dataclass(frozen=True)
class Model:
    name: str
    d: int
    f: int
    layers: int
    vocab: int  # output rows (student: joint task vocabulary; teacher: task)


@dataclasses.dataclass(frozen=True)
class Corpus:
    name: str
    pairs: int
    source: float  # mean WordPieces a source sentence
    target: float  # mean WordPieces a target sentence
    padding: float  # fraction of padded positions in batches
    teacher: Model
    student: Model
    teacher_tokens: float  # packed tokens the teacher trains on (steps x batch)
    student_tokens: float  # target tokens the student trains on
    passes: int  # circular-mask copies per pair in the dump (P)
    top_k_stored: int
    epochs_note: str


# Teachers: our MiniLM (all-MiniLM-L6-v2) and the paper's BERT base
# (multilingual for De-En, cased for En-De), gin/models/cmlm_*.gin; the head
# projects to the task vocabulary (10,428 WordPieces on Multi30k; ~30k is
# assumed for the larger corpora).
MINILM = Model("MiniLM-L6 C-MLM", 384, 1536, 6, 10428)
BERT_BASE_30K = Model("BERT base C-MLM", 768, 3072, 12, 30000)
# Students: the Multi30k experiment's 3+3-layer d-256 student and the
# paper's Transformer base (gin/models/transformer_base.gin).
SMALL = Model("Transformer 3+3 d256", 256, 1024, 3, 10428)
BASE = Model("Transformer base 6+6", 512, 2048, 6, 30000)

# Mean WordPiece lengths: measured with `--lengths_from` on 2026-12-06 (see
# docs/SCALING.md for the command); the sizes are the full corpora's.
CORPORA = {
    "multi30k": Corpus(
        "Multi30k De-En",
        29_000,
        23.0,
        13.3,
        0.15,
        MINILM,
        SMALL,
        6000 * 2048,  # gin/experiments/multi30k_gain/teacher.gin (run 2)
        20000 * 4096,  # converge.py's cap: 20k steps of 4k target tokens
        16,
        16,
        "teacher 6k steps x 2k tokens; students up to 20k steps x 4k tokens",
    ),
    "iwslt14": Corpus(
        "IWSLT14 De-En",
        160_000,
        34.1,
        32.7,
        0.15,
        BERT_BASE_30K,
        BASE,
        100_000 * 16384,  # gin/experiments/paper/iwslt14_de_en_teacher.gin
        100_000 * 6144,  # gin/experiments/paper/iwslt14_de_en_distill.gin
        7,
        64,
        "paper recipe: teacher 100k x 16k tokens, student 100k x 6k",
    ),
    "wmt14": Corpus(
        "WMT14 En-De",
        4_500_000,
        27.2,
        32.7,
        0.15,
        BERT_BASE_30K,
        BASE,
        100_000 * 524288,  # gin/experiments/paper/wmt14_en_de_teacher.gin
        80_000 * 65536,  # gin/experiments/paper/wmt14_en_de_distill.gin
        7,
        64,
        "paper recipe: teacher 100k x 512k tokens, student 80k x 64k",
    ),
}


@dataclasses.dataclass(frozen=True)
class Machine:
    name: str
    flops_per_s: float  # sustained model FLOP/s at the stated utilisation
    note: str


# This machine (AMD EPYC, 2 cores, no AMX): TensorFlow's bf16 matmul ceiling
# 0.42 TFLOP/s (docs/PERFORMANCE.md, session 3); the student trains at ~55%
# of it (issue 19's same-run figure), the teacher at ~53% and the dump at
# ~62% of the ceiling measured beside them, counting real tokens
# (tools/bench_teacher.py and tools/bench_dump.py, session 8, idle: a bucket
# every 2 tokens for the teacher, length-sorted batches for the dump,
# FastDense for both; 44-48% and 41% at the session's start). GPUs:
# published dense bf16 peaks at 40% utilisation, 8 GPUs at 90% scaling
# efficiency (assumptions, not measurements).
CPU_CEILING = 0.42e12
CPU_UTILISATION = {
    "teacher": 0.53,
    "dump": 0.62,
    "student": 0.55,
    "decode": 0.2,
}
MACHINES = {
    "cpu2": Machine("2 CPU cores (AMD, bf16)", CPU_CEILING, "measured"),
    "a100": Machine("1 A100", 312e12 * 0.40, "312 TFLOP/s peak x 40%"),
    "a100x8": Machine("8 A100", 8 * 312e12 * 0.40 * 0.9, "x8 at 90%"),
    "h100x8": Machine(
        "8 H100", 8 * 989e12 * 0.40 * 0.9, "989 peak x 40% x8 at 90%"
    ),
}

# Bytes a target position on disk: K x (int32 id + float16 logit) plus the
# record's framing (55.1 bytes a position measured at K 8 on Multi30k:
# 48 + 7.1).
FRAMING_BYTES = 7.1
# The in-memory reader (`TeacherTargets.load`) peaks at 4.4x the stored bytes
# above TensorFlow's own 0.7 GB (tools/bench_targets.py, 2026-12-06: 1.80 GB
# for a 0.40 GiB dump, 7.11 GB for 1.60 GiB); the streaming reader stays at
# 0.1-0.4 GB above it whatever the dump's size (STREAMING_BYTES).
IN_MEMORY_FACTOR = 4.4
STREAMING_BYTES = 0.4e9
HOST_MEMORY = 24 * 2**30  # this machine's


def measure_lengths(spec):
    """`(name, source mean, target mean)` measured on the corpus files."""
    from bertkd_tf.data.bert_word_piece_tokenizer import (
        BertWordPieceTokenizer,
        load_bert_vocabulary,
    )

    name, _, rest = spec.partition("=")
    data_dir, source, target, vocab = rest.split(":")
    vocabulary = load_bert_vocabulary(
        os.path.join(VOCAB_DIR.value, vocab + ".txt")
    )
    tokenizer = BertWordPieceTokenizer(vocabulary)
    means = []
    for side in (source, target):
        with open(
            os.path.join(data_dir, f"train.{side}"), encoding="utf-8"
        ) as f:
            lines = [line.strip() for _, line in zip(range(MAX_LINES.value), f)]
        pieces = tokenizer.tokenize(lines)
        lengths = pieces.row_lengths().numpy()
        means.append(float(lengths.mean()))
    return name, means[0], means[1]


def stage_costs(corpus):
    """`{stage: (FLOPs, what it rests on)}` for one corpus."""
    t, s = corpus.teacher, corpus.student
    length = corpus.source + corpus.target + 3
    masked = 0.15 * corpus.target  # mask_probability of the target tokens
    per_packed_token = (
        flops.teacher_training_flops(
            t.d, t.f, t.layers, t.vocab, length, masked
        )
        / length
    )
    teacher = per_packed_token * corpus.teacher_tokens
    dump = corpus.pairs * flops.dump_flops(
        t.d,
        t.f,
        t.layers,
        t.vocab,
        round(corpus.source),
        round(corpus.target),
        corpus.passes,
    )
    pairs_per_step = 1.0 / corpus.target  # per target token
    per_target_token = flops.training_flops(
        s.d,
        s.f,
        s.layers,
        0,
        s.vocab,
        pairs_per_step,
        corpus.source,
        corpus.target,
    )
    student = per_target_token * corpus.student_tokens
    return {
        "teacher": (teacher, per_packed_token),
        "dump": (dump, dump / corpus.pairs / (corpus.target + 1)),
        "student": (student, per_target_token),
    }


def disk_bytes(corpus, top_k):
    positions = corpus.pairs * (corpus.target + 1)
    return positions * (top_k * 6 + FRAMING_BYTES)


def _human_time(seconds):
    for unit, size in (
        ("y", 365 * 86400),
        ("d", 86400),
        ("h", 3600),
        ("min", 60),
    ):
        if seconds >= size:
            return f"{seconds / size:.1f} {unit}"
    return "< 1 min"


def _human_bytes(n):
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n / 1e3:.0f} kB"


def tables(corpora):
    lines = [
        "| corpus | stage | FLOPs / token | total FLOPs | "
        + " | ".join(m.name for m in MACHINES.values())
        + " |",
        "|---|---|---:|---:|" + "---:|" * len(MACHINES),
    ]
    for corpus in corpora.values():
        for stage, (total, per_token) in stage_costs(corpus).items():
            times = []
            for key, machine in MACHINES.items():
                rate = machine.flops_per_s
                if key == "cpu2":
                    rate *= CPU_UTILISATION[stage]
                # Padding is computed too.
                times.append(_human_time(total / (1 - corpus.padding) / rate))
            lines.append(
                f"| {corpus.name} | {stage} | {per_token / 1e6:,.0f} M | "
                f"{total:.2e} | " + " | ".join(times) + " |"
            )
    lines += [
        "",
        "| corpus | pairs | positions | dump at K 8 | dump at stored K | "
        "in-memory reader peak | fits 24 GiB? | streaming reader |",
        "|---|---:|---:|---:|---:|---:|---|---:|",
    ]
    for corpus in corpora.values():
        stored = disk_bytes(corpus, corpus.top_k_stored)
        peak = IN_MEMORY_FACTOR * stored
        lines.append(
            f"| {corpus.name} | {corpus.pairs:,} | "
            f"{corpus.pairs * (corpus.target + 1):,.0f} | "
            f"{_human_bytes(disk_bytes(corpus, 8))} | "
            f"{_human_bytes(stored)} (K {corpus.top_k_stored}) | "
            f"{_human_bytes(peak)} | "
            f"{'yes' if peak < HOST_MEMORY else 'no'} | "
            f"{_human_bytes(STREAMING_BYTES)} |"
        )
    return "\n".join(lines)


def main(argv):
    del argv
    corpora = dict(CORPORA)
    for spec in LENGTHS_FROM.value:
        name, source, target = measure_lengths(spec)
        corpora[name] = dataclasses.replace(
            corpora[name], source=source, target=target
        )
        print(
            f"{name}: mean WordPieces source {source:.1f}, target {target:.1f}"
        )
    for name, corpus in corpora.items():
        print(f"{name}: {corpus.epochs_note}")
    print()
    print(tables(corpora))


if __name__ == "__main__":
    app.run(main)
