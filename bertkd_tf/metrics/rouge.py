"""ROUGE-1/2/L on the host (Google's rouge-score)."""

from importlib import metadata

from rouge_score import rouge_scorer

from bertkd_tf.metrics.bleu import _check

ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


def corpus_rouge(hypotheses, references, use_stemmer=True):
    """Mean sentence F1 of ROUGE-1, ROUGE-2 and ROUGE-L, times 100.

    rouge-score lower-cases and keeps only letters and digits before
    matching; with `use_stemmer` words are Porter-stemmed (as ROUGE-1.5.5's
    `-m`).

    Args:
        hypotheses: list of strings.
        references: list of strings, one per hypothesis.
        use_stemmer: bool.

    Returns:
        dict `{"rouge1": {"score", "signature"}, "rouge2": ..., "rougeL":
        ...}`.

    Example:
    >>> corpus_rouge(["a dog runs"], ["a dog runs"])["rouge2"]["score"]
    100.0
    """
    hypotheses, references = _check(hypotheses, references)
    scorer = rouge_scorer.RougeScorer(
        list(ROUGE_TYPES), use_stemmer=use_stemmer
    )
    totals = dict.fromkeys(ROUGE_TYPES, 0.0)
    for hypothesis, reference in zip(hypotheses, references):
        scores = scorer.score(reference, hypothesis)
        for name in ROUGE_TYPES:
            totals[name] += scores[name].fmeasure
    version = metadata.version("rouge-score")
    return {
        name: {
            "score": 100.0 * totals[name] / len(hypotheses),
            "signature": (
                f"{name}|f1|mean|stemmer:{'yes' if use_stemmer else 'no'}"
                f"|rouge-score:{version}"
            ),
        }
        for name in ROUGE_TYPES
    }
