"""Corpus chrF on the host (sacrebleu)."""

from sacrebleu.metrics import CHRF

from bertkd_tf.metrics.bleu import _check


def corpus_chrf(hypotheses, references):
    """sacreBLEU's chrF (character 6-grams, beta 2).

    Args:
        hypotheses: list of strings.
        references: list of strings, one per hypothesis.

    Returns:
        dict with `score` (0-100) and `signature`.

    Example:
    >>> corpus_chrf(["a dog runs ."], ["a dog runs ."])["score"]
    100.0
    """
    hypotheses, references = _check(hypotheses, references)
    metric = CHRF()
    result = metric.corpus_score(hypotheses, [references])
    return {
        "score": float(result.score),
        "signature": str(metric.get_signature()),
    }
