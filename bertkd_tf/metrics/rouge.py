"""ROUGE-1/2/L and ROUGE-Lsum on the host (Google's rouge-score)."""

import re
from importlib import metadata

from rouge_score import rouge_scorer

from bertkd_tf.metrics.bleu import _check

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")

# A whitespace token that ends a sentence: only `.`, `!`, `?` (one or
# more), then optional closing quotes or brackets: "." "?!" ".''" but not
# "u.s." or "ran." (tokenized corpora, Gigaword and CNN/DM in TFDS, write
# sentence-final punctuation as its own token).
_SENTENCE_END = re.compile(r"[.!?]+['\"\u2019\u201d)\]]*")


def summary_sentences(text):
    """The sentences of a summary, for ROUGE-Lsum.

    A text with newlines (CNN/DM highlights, one a line) is split at them;
    a text on one line (a model's output) is split after every token that
    is sentence-final punctuation (`.`, `!`, `?`, see `_SENTENCE_END`).
    Whitespace is collapsed and empty sentences are dropped.

    Example:
    >>> summary_sentences("police kill a man . he ran !")
    ['police kill a man .', 'he ran !']
    >>> summary_sentences("first line\\n\\n second  line")
    ['first line', 'second line']
    """
    if "\n" in text:
        lines = text.split("\n")
    else:
        lines, current = [], []
        for token in text.split():
            current.append(token)
            if _SENTENCE_END.fullmatch(token):
                lines.append(" ".join(current))
                current = []
        lines.append(" ".join(current))
    lines = [" ".join(line.split()) for line in lines]
    return [line for line in lines if line]


def corpus_rouge(
    hypotheses, references, use_stemmer=True, sentences=None, types=None
):
    """Mean sentence F1 of ROUGE-1, ROUGE-2, ROUGE-L and ROUGE-Lsum, x 100.

    rouge-score lower-cases and keeps only letters and digits before
    matching; with `use_stemmer` words are Porter-stemmed (as ROUGE-1.5.5's
    `-m`). ROUGE-L is the LCS of the two texts as one sequence each;
    ROUGE-Lsum (rouge-score's `rougeLsum`, ROUGE-1.5.5's summary-level
    LCS) takes, for each reference sentence, the union of its LCS with
    every hypothesis sentence, counting each token at most as often as it
    occurs on both sides.

    Args:
        hypotheses: list of strings.
        references: list of strings, one per hypothesis.
        use_stemmer: bool.
        sentences: optional `(hypotheses, references)` for ROUGE-Lsum with
            one sentence a line; default `summary_sentences` of the texts.
        types: which of `ROUGE_TYPES` to compute (default all).

    Returns:
        dict `{"rouge1": {"score", "signature"}, "rouge2": ..., "rougeL":
        ..., "rougeLsum": ...}`.

    Example:
    >>> corpus_rouge(["a dog runs"], ["a dog runs"])["rouge2"]["score"]
    100.0
    """
    hypotheses, references = _check(hypotheses, references)
    types = tuple(types or ROUGE_TYPES)
    unknown = [t for t in types if t not in ROUGE_TYPES]
    if unknown:
        raise ValueError(f"Unknown ROUGE types {unknown}; see {ROUGE_TYPES}.")
    if sentences is None:
        sentences = tuple(
            ["\n".join(summary_sentences(text)) for text in texts]
            for texts in (hypotheses, references)
        )
    sentence_hypotheses, sentence_references = _check(*sentences)
    if len(sentence_hypotheses) != len(hypotheses):
        raise ValueError(
            "`sentences` must hold one hypothesis and one reference per "
            f"pair: got {len(sentence_hypotheses)} for {len(hypotheses)}."
        )
    totals = dict.fromkeys(types, 0.0)
    plain = [t for t in types if t != "rougeLsum"]
    if plain:
        scorer = rouge_scorer.RougeScorer(plain, use_stemmer=use_stemmer)
        for hypothesis, reference in zip(hypotheses, references):
            scores = scorer.score(reference, hypothesis)
            for name in plain:
                totals[name] += scores[name].fmeasure
    if "rougeLsum" in types:
        scorer = rouge_scorer.RougeScorer(
            ["rougeLsum"], use_stemmer=use_stemmer
        )
        for hypothesis, reference in zip(
            sentence_hypotheses, sentence_references
        ):
            score = scorer.score(reference, hypothesis)["rougeLsum"]
            totals["rougeLsum"] += score.fmeasure
    version = metadata.version("rouge-score")
    stemmer = "yes" if use_stemmer else "no"
    return {
        name: {
            "score": 100.0 * totals[name] / len(hypotheses),
            "signature": (
                f"{name}|f1|mean|stemmer:{stemmer}"
                + ("|sentences:lines" if name == "rougeLsum" else "")
                + f"|rouge-score:{version}"
            ),
        }
        for name in types
    }
