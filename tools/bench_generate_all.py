"""Decoding speed of a trained student on a real split, compiled and not.

`bench_decode.py` measures a random model on fixed-length outputs; this
decodes a real source file with a trained student the way `evaluate` does
(`Generator.generate_all`, length-sorted batches, early stop) twice in one
process: the first pass includes the XLA compilations, the second shows the
compiled speed. Prints a table per setting.

Example:
  .venv/bin/python tools/bench_generate_all.py \
      --work_dir=/work/runs/multi30k --model_dir=baseline \
      --source_file=../shared/data/multi30k_de_en/val.de \
      --max_source_length=64 --prefix_phases=false,true
"""

import os
import time

from absl import app, flags

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from bertkd_tf.artifacts import load_student, load_vocabulary  # noqa: E402
from bertkd_tf.decoding.generator import Generator  # noqa: E402

WORK_DIR = flags.DEFINE_string("work_dir", None, "Pipeline work directory.")
MODEL_DIR = flags.DEFINE_string("model_dir", "student", "Under work_dir.")
SOURCE_FILE = flags.DEFINE_string("source_file", None, "One source a line.")
MAX_SOURCE_LENGTH = flags.DEFINE_integer(
    "max_source_length", 128, "The task's source limit (WordPieces)."
)
MAX_SENTENCES = flags.DEFINE_integer("max_sentences", None, "First N only.")
BEAM_SIZE = flags.DEFINE_integer("beam_size", 5, "1: greedy.")
PREFIX_PHASES = flags.DEFINE_list(
    "prefix_phases", ["false"], "Settings to measure: false and/or true."
)
flags.mark_flags_as_required(["work_dir", "source_file"])


def main(argv):
    del argv
    vocabulary = load_vocabulary(WORK_DIR.value)
    model = load_student(os.path.join(WORK_DIR.value, MODEL_DIR.value))
    with open(SOURCE_FILE.value, encoding="utf-8") as f:
        sources = [line.strip() for line in f][: MAX_SENTENCES.value]
    print(
        f"{MODEL_DIR.value}: {len(sources)} sentences of "
        f"{SOURCE_FILE.value}, beam {BEAM_SIZE.value}, batch 32, XLA, "
        "max length 100, margin 50"
    )
    print()
    print("| prefix phases | pass | seconds | sentences/s | compilations |")
    print("|---|---|---:|---:|---:|")
    for setting in PREFIX_PHASES.value:
        phases = setting.lower() in ("true", "1", "yes")
        generator = Generator(
            model,
            vocabulary,
            jit_compile=True,
            max_source_length=MAX_SOURCE_LENGTH.value + 1,
            prefix_phases=phases,
        )
        for name in ("first (compiles)", "second"):
            start = time.perf_counter()
            generator.generate_all(
                sources,
                batch_size=32,
                beam_size=BEAM_SIZE.value,
                length_penalty=0.6,
                max_length=100,
                max_length_margin=50,
            )
            seconds = time.perf_counter() - start
            print(
                f"| {phases} | {name} | {seconds:.1f} | "
                f"{len(sources) / seconds:.1f} | {generator.compile_count} |",
                flush=True,
            )


if __name__ == "__main__":
    app.run(main)
