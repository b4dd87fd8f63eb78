"""`translate`: text in (a file or stdin), the student's output out.

Lines are batched by length (sorted, so padding stays small) and written
in input order, one output a line, to `output_file` or stdout. Empty input
lines give empty output lines.

Example:
  echo "ein hund läuft ." | bertkd translate \
    --gin_file=gin/runs/translate.gin --gin_bindings="WORK_DIR='/tmp/w'"
"""

import os
import sys
import time

from absl import logging

from bertkd_tf.artifacts import STUDENT_DIR, load_student, load_vocabulary
from bertkd_tf.decoding.generator import Generator
from bertkd_tf.decoding.search_settings import SearchSettings
from bertkd_tf.errors import MissingInputError

# The decoding settings without gin (gin binds them in gin/runs/search.gin).
DEFAULT_SEARCH = SearchSettings(beam_size=5)


def _read_lines(input_file):
    if input_file in (None, "", "-"):
        return [line.rstrip("\n") for line in sys.stdin]
    if not os.path.exists(input_file):
        raise MissingInputError(
            f"No input file {input_file!r} (translate.run.input_file): give "
            "the path of an existing text file, one sentence a line, or - to "
            "read standard input."
        )
    with open(input_file, encoding="utf-8") as f:
        return [line.rstrip("\n") for line in f]


def run(
    *,
    work_dir,
    model_dir=STUDENT_DIR,
    input_file=None,
    output_file=None,
    search=DEFAULT_SEARCH,
    max_source_length=256,
    batch_size=32,
    dtype=None,
):
    """Translates every line; returns `{"output_file", "lines", "seconds"}`.

    Args:
        work_dir: the pipeline's work directory (`vocab/`, the model).
        model_dir: the model's directory under `work_dir` or a path.
        input_file: a text file, or None / "-" for stdin.
        output_file: where to write, or None / "-" for stdout.
        search: the `SearchSettings` (beam size, 1: greedy; length
            penalty; max length and margin in WordPieces; XLA; prefix
            phases), bound once in gin (gin/runs/translate.gin).
        max_source_length: longer inputs are truncated (WordPieces).
        batch_size: lines per batch.
        dtype: optional dtype policy for the model.
    """
    vocabulary = load_vocabulary(work_dir)
    model = load_student(os.path.join(work_dir, model_dir), dtype=dtype)
    lines = _read_lines(input_file)
    generator = Generator(
        model,
        vocabulary,
        settings=search,
        max_source_length=max_source_length + 1,
    )
    start = time.perf_counter()
    texts = [" ".join(line.split()) for line in lines]
    nonempty = [i for i, text in enumerate(texts) if text]
    outputs = [""] * len(lines)
    if nonempty:
        translated = generator.generate_all(
            [texts[i] for i in nonempty],
            batch_size=batch_size,
        )
        for i, text in zip(nonempty, translated):
            outputs[i] = text
    seconds = time.perf_counter() - start
    if output_file in (None, "", "-"):
        for text in outputs:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()
    else:
        directory = os.path.dirname(os.path.abspath(output_file))
        os.makedirs(directory, exist_ok=True)
        with open(output_file, "w", encoding="utf-8") as f:
            for text in outputs:
                f.write(text + "\n")
    logging.info(
        "Translated %d lines in %.1f s (%.1f lines/s).",
        len(lines),
        seconds,
        len(lines) / max(seconds, 1e-9),
    )
    return {"output_file": output_file, "lines": len(lines), "seconds": seconds}
