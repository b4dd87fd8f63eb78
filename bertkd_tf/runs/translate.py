"""`translate`: text in (a file or stdin), the student's output out.

Lines are batched by length (sorted, so padding stays small) and written
in input order, one output a line, to `output_file` or stdout. Empty input
lines give empty output lines.

N-best lists (`translate.run.nbest = N`, or the macro `NBEST` of
gin/runs/translate.gin, with N <= the beam size): each input line gives N
lines, tab-separated,

    line_index<TAB>rank<TAB>score<TAB>hypothesis

- `line_index`: the input line, counted from 0 (as Moses and fairseq
  n-best lists count); the N lines of an input are consecutive, in input
  order;
- `rank`: 1 for the best hypothesis, up to N;
- `score`: the search's score, `%.6f`: the log probability divided by the
  GNMT length penalty `((5 + length) / 6) ** length_penalty` for beam
  search, the summed log probability for greedy search (`BEAM_SIZE=1`,
  then N = 1); higher is better;
- `hypothesis`: the output text, as the 1-best output writes it.

An empty input line gives N lines with score 0.000000 and an empty
hypothesis. Read it with `csv.reader(f, delimiter="\\t",
quoting=csv.QUOTE_NONE)` or `cut -f4` (the text never holds a tab).

Weights: `translate.run.weights_file` (default `final.weights.h5`) picks
the weights file in the model directory, e.g. `averaged.weights.h5` from
`tools/average_checkpoints.py` (checked against its `.sha256` sidecar).

Example:
  echo "ein hund läuft ." | bertkd translate \\
    --gin_file=gin/runs/translate.gin --gin_bindings="WORK_DIR='/tmp/w'"
  bertkd translate --gin_file=gin/runs/translate.gin \\
    --gin_bindings="WORK_DIR='/tmp/w'" --gin_bindings="NBEST=5" \\
    --gin_bindings="translate.run.weights_file='averaged.weights.h5'" \\
    --gin_bindings="translate.run.input_file='test.de'" \\
    --gin_bindings="translate.run.output_file='test.nbest.tsv'"
"""

import os
import sys
import time

from absl import logging

from bertkd_tf.artifacts import (
    FINAL_WEIGHTS,
    STUDENT_DIR,
    load_student,
    load_vocabulary,
)
from bertkd_tf.decoding.generator import Generator
from bertkd_tf.decoding.search_settings import SearchSettings
from bertkd_tf.errors import ConfigError, MissingInputError

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


def check_nbest(nbest, beam_size):
    """Returns `nbest` if it is None or an int in `[1, beam_size]`."""
    if nbest is None:
        return None
    if (
        isinstance(nbest, bool)
        or not isinstance(nbest, int)
        or not 1 <= nbest <= beam_size
    ):
        raise ConfigError(
            f"`nbest` must be None or an int in [1, beam_size={beam_size}] "
            f"(the hypotheses written per input line; the beam keeps "
            f"beam_size). Received: nbest={nbest!r}. Set translate.run.nbest "
            "(macro NBEST) to at most BEAM_SIZE, or raise BEAM_SIZE."
        )
    return nbest


def nbest_lines(hypotheses, scores):
    """Tab-separated n-best lines (see the module docstring).

    Args:
        hypotheses: one list of N strings per input line, best first.
        scores: one list of N floats per input line.

    Returns:
        The lines, without newlines.

    Example:
    >>> nbest_lines([["a dog", "the dog"]], [[-0.25, -1.5]])
    ['0\\t1\\t-0.250000\\ta dog', '0\\t2\\t-1.500000\\tthe dog']
    """
    lines = []
    for index, (texts, values) in enumerate(zip(hypotheses, scores)):
        for rank, (text, score) in enumerate(zip(texts, values), start=1):
            text = " ".join(text.split())  # no tab, no newline
            lines.append(f"{index}\t{rank}\t{score:.6f}\t{text}")
    return lines


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
    weights_file=FINAL_WEIGHTS,
    nbest=None,
):
    """Translates every line; returns `{"output_file", "lines", "seconds"}`.

    Args:
        work_dir: the pipeline's work directory (`vocab/`, the model).
        model_dir: the model's directory under `work_dir` or a path.
        input_file: a text file, or None / "-" for stdin.
        output_file: where to write, or None / "-" for stdout.
        search: the `SearchSettings` (beam size, 1: greedy; length
            penalty; max length and margin in WordPieces; min length and
            no-repeat n-gram size; XLA; prefix phases), bound once in gin
            (gin/runs/translate.gin).
        max_source_length: longer inputs are truncated (WordPieces).
        batch_size: lines per batch.
        dtype: optional dtype policy for the model.
        weights_file: the weights file in the model directory (or a
            path), e.g. `averaged.weights.h5`.
        nbest: None for one output a line, or N in `[1, beam size]` for
            N-best lists in the tab-separated format of the module
            docstring.
    """
    nbest = check_nbest(nbest, search.beam_size)
    if nbest is not None:
        search = search.replace(num_return_sequences=nbest)
    else:
        search = search.replace(num_return_sequences=None)
    vocabulary = load_vocabulary(work_dir)
    model = load_student(
        os.path.join(work_dir, model_dir),
        dtype=dtype,
        weights_file=weights_file,
        setting="translate.run.weights_file",
    )
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
    width = nbest or 1
    outputs = [[""] * width for _ in lines]
    scores = [[0.0] * width for _ in lines]
    if nonempty:
        translated, values = generator.generate_all(
            [texts[i] for i in nonempty],
            batch_size=batch_size,
            return_scores=True,
        )
        for i, text, value in zip(nonempty, translated, values):
            # Greedy search returns one hypothesis, not a list of one.
            outputs[i] = text if isinstance(text, list) else [text]
            scores[i] = value if isinstance(value, list) else [value]
    seconds = time.perf_counter() - start
    if nbest is None:
        written = [texts[0] for texts in outputs]
    else:
        written = nbest_lines(outputs, scores)
    if output_file in (None, "", "-"):
        for text in written:
            sys.stdout.write(text + "\n")
        sys.stdout.flush()
    else:
        directory = os.path.dirname(os.path.abspath(output_file))
        os.makedirs(directory, exist_ok=True)
        with open(output_file, "w", encoding="utf-8") as f:
            for text in written:
                f.write(text + "\n")
    logging.info(
        "Translated %d lines in %.1f s (%.1f lines/s).",
        len(lines),
        seconds,
        len(lines) / max(seconds, 1e-9),
    )
    return {"output_file": output_file, "lines": len(lines), "seconds": seconds}
