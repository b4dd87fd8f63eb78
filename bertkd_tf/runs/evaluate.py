"""`evaluate`: decode a split with the student and score it.

Reads `WORK_DIR/vocab/` and the student saved by `distill` in
`WORK_DIR/<model_dir>/` (`student` or `baseline`), decodes the split with
beam search (`Generator`, sources sorted by length into batches), and writes
into `WORK_DIR/<model_dir>/evaluate/<split>/` (or `output_dir`):

- `hypotheses.txt`: one hypothesis a line, in input order;
- `references.txt`: the references as scored (lower-cased for uncased
  vocabularies, Moses escapes normalised), one a line;
- `scores.json`: each metric's score and signature, the decoding settings,
  the number of sentences and the decoding speed.

Metrics: translation tasks report `bleu` (the paper's: tokenized,
multi-bleu.perl-equal, on the WordPiece-merged text), `sacrebleu` (13a) and
`chrf`; summarization tasks report `rouge1`, `rouge2`, `rougeL` and
`rougeLsum` (summary-level union LCS over sentences: a reference's
sentences are its lines in the corpus, CNN/DM's highlights; a
hypothesis, one line, is split after each `.`, `!` or `?` token, see
`metrics.rouge.summary_sentences`). With Moses escapes, `sacrebleu` and
`chrf` see the text with the escapes undone.

Weights: `evaluate.run.weights_file` (default `final.weights.h5`) picks the
weights file in the model directory, e.g. `averaged.weights.h5` written by
`tools/average_checkpoints.py` (checked against its `.sha256` sidecar); it
is recorded in `scores.json`.
"""

import json
import os
import time

import keras
from absl import logging
from sacremoses import MosesDetokenizer

# F401: VOCAB_DIR is re-exported from its former home here.
from bertkd_tf.artifacts import (  # noqa: F401
    FINAL_WEIGHTS,
    STUDENT_DIR,
    VOCAB_DIR,
    load_student,
    load_vocabulary,
)
from bertkd_tf.atomic_files import write_text_atomic
from bertkd_tf.decoding.generator import Generator
from bertkd_tf.decoding.search_settings import SearchSettings
from bertkd_tf.durations import format_duration
from bertkd_tf.metrics.rouge import summary_sentences
from bertkd_tf.metrics.scoring import score_hypotheses

EVALUATE_DIR = "evaluate"
HYPOTHESES_FILE = "hypotheses.txt"
REFERENCES_FILE = "references.txt"
SCORES_FILE = "scores.json"
DEFAULT_METRICS = {
    "translation": ("bleu", "sacrebleu", "chrf"),
    "summarization": ("rouge1", "rouge2", "rougeL", "rougeLsum"),
}

# The decoding settings without gin (gin binds them in gin/runs/search.gin).
DEFAULT_SEARCH = SearchSettings(beam_size=5)


def _write_lines(path, lines):
    write_text_atomic(
        path, "".join(line.replace("\n", " ") + "\n" for line in lines)
    )


class _Progress:
    """A Keras progress bar with sentences/s (and its ETA), plus a log line
    with sentences/s and the time left every `every_seconds` (`clock`, for
    tests, times the log period; the rate is from the decoder's seconds)."""

    def __init__(
        self, total, verbose, every_seconds=30.0, clock=time.monotonic
    ):
        self.total = total
        self.bar = (
            keras.utils.Progbar(total, stateful_metrics=["sentences/s"])
            if verbose
            else None
        )
        self.every_seconds = every_seconds
        self.clock = clock
        self.last = None

    def __call__(self, done, total, seconds):
        rate = done / max(seconds, 1e-9)
        if self.bar is not None:
            self.bar.update(done, values=[("sentences/s", rate)])
        now = self.clock()
        if self.last is not None and now - self.last < self.every_seconds:
            return
        self.last = now
        left = (
            f", ETA {format_duration((total - done) / rate)} left"
            if done < total and rate > 0
            else ""
        )
        logging.info(
            "decoded %d/%d sentences, %.1f sentences/s%s",
            done,
            total,
            rate,
            left,
        )


def run(
    *,
    task,
    work_dir,
    model_dir=STUDENT_DIR,
    split="valid",
    search=DEFAULT_SEARCH,
    batch_size=32,
    metrics=None,
    max_pairs=None,
    dtype=None,
    output_dir=None,
    verbose=True,
    weights_file=FINAL_WEIGHTS,
):
    """Decodes `split` and scores it; returns `{"output_dir", "scores"}`.

    Args:
        task: the `Task` (pairs, source length limit, kind).
        work_dir: the pipeline's work directory.
        model_dir: the model's directory under `work_dir` ("student",
            "baseline") or an absolute path.
        split: "valid", "test" or a corpus split name.
        search: the `SearchSettings` (beam size, 1: greedy; length
            penalty; max length and margin in WordPieces; min length and
            no-repeat n-gram size; XLA; prefix phases), bound once in gin
            (gin/runs/evaluate.gin). The best hypothesis is scored
            (`num_return_sequences` is ignored).
        batch_size: sentences per batch.
        metrics: names (see `metrics.scoring.METRICS`); None picks by
            `task.kind`.
        max_pairs: decode only the first N pairs.
        dtype: optional dtype policy for the model (e.g. "mixed_bfloat16").
        output_dir: where to write; default
            `<model dir>/evaluate/<split>`.
        verbose: show a progress bar.
        weights_file: the weights file in the model directory (or a
            path), e.g. `averaged.weights.h5`.
    """
    metrics = tuple(metrics or DEFAULT_METRICS[task.kind])
    vocabulary = load_vocabulary(work_dir)
    model_path = os.path.join(work_dir, model_dir)
    model = load_student(
        model_path,
        dtype=dtype,
        weights_file=weights_file,
        setting="evaluate.run.weights_file",
    )
    search = search.replace(num_return_sequences=None)
    output_dir = output_dir or os.path.join(model_path, EVALUATE_DIR, split)
    os.makedirs(output_dir, exist_ok=True)

    pairs = task.read(split, max_pairs=max_pairs)
    if len(pairs) == 0:
        raise ValueError(f"Split {split!r} of the task has no pairs.")
    generator = Generator(
        model,
        vocabulary,
        settings=search,
        max_source_length=task.max_source_length + 1,
    )
    logging.info(
        "Decoding %d pairs of %r (beam %d, length penalty %s).",
        len(pairs),
        split,
        search.beam_size,
        search.length_penalty,
    )
    start = time.perf_counter()
    hypotheses = generator.generate_all(
        pairs.sources,
        batch_size=batch_size,
        progress=_Progress(len(pairs), verbose),
    )
    seconds = time.perf_counter() - start
    references = [vocabulary.normalize_reference(t) for t in pairs.targets]
    hypotheses = [" ".join(h.split()) for h in hypotheses]
    _write_lines(os.path.join(output_dir, HYPOTHESES_FILE), hypotheses)
    _write_lines(os.path.join(output_dir, REFERENCES_FILE), references)

    plain = None
    if vocabulary.tokenizer.moses_escapes:
        # Moses-tokenized corpora: sacreBLEU and chrF score detokenized
        # text, as their standard signatures assume.
        detokenizer = MosesDetokenizer(lang=task.target_language)
        plain = (
            [detokenizer.detokenize(h.split()) for h in hypotheses],
            [detokenizer.detokenize(r.split()) for r in references],
        )
    sentences = None
    if "rougeLsum" in metrics:
        # Sentences on lines: the reference's own lines, the hypothesis
        # split after sentence-final tokens.
        sentences = (
            ["\n".join(summary_sentences(h)) for h in hypotheses],
            [
                "\n".join(
                    vocabulary.normalize_reference(line)
                    for line in summary_sentences(target)
                )
                for target in pairs.targets
            ],
        )
    scores = score_hypotheses(
        metrics, hypotheses, references, plain, rouge_sentences=sentences
    )
    target_tokens = sum(len(h.split()) for h in hypotheses)
    summary = {
        "split": split,
        "model_dir": model_path,
        "weights_file": weights_file,
        "sentences": len(hypotheses),
        "metrics": scores,
        "decoding": {
            "beam_size": search.beam_size,
            "length_penalty": search.length_penalty,
            "max_length": search.max_length,
            "max_length_margin": search.max_length_margin,
            "batch_size": batch_size,
            "jit_compile": search.jit_compile,
            "prefix_phases": search.prefix_phases,
            "min_length": search.min_length,
            "no_repeat_ngram_size": search.no_repeat_ngram_size,
            "compilations": generator.compile_count,
        },
        "seconds": seconds,
        "sentences_per_second": len(hypotheses) / max(seconds, 1e-9),
        "words_per_second": target_tokens / max(seconds, 1e-9),
        "references": (
            "lower-cased" if vocabulary.tokenizer.lowercase else "as given"
        ),
        "vocabulary_fingerprint": vocabulary.fingerprint,
    }
    write_text_atomic(
        os.path.join(output_dir, SCORES_FILE),
        json.dumps(summary, indent=2, sort_keys=True) + "\n",
    )
    for name, result in scores.items():
        logging.info(
            "%s = %.2f (%s)", name, result["score"], result["signature"]
        )
    return {"output_dir": output_dir, "scores": summary}
