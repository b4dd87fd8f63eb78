"""Scores hypotheses with a list of named metrics."""

from bertkd_tf.metrics.bleu import sacre_bleu, tokenized_bleu
from bertkd_tf.metrics.chrf import corpus_chrf
from bertkd_tf.metrics.rouge import ROUGE_TYPES, corpus_rouge

METRICS = ("bleu", "sacrebleu", "chrf") + ROUGE_TYPES


def score_hypotheses(
    metrics,
    hypotheses,
    references,
    sacrebleu_inputs=None,
    rouge_sentences=None,
):
    """Computes each requested metric.

    Args:
        metrics: names from `METRICS`: `bleu` (tokenized, multi-bleu.perl),
            `sacrebleu` (standard 13a BLEU), `chrf`, `rouge1`, `rouge2`,
            `rougeL`, `rougeLsum`.
        hypotheses: list of strings, as written.
        references: list of strings, one per hypothesis.
        sacrebleu_inputs: optional `(hypotheses, references)` for
            `sacrebleu` and `chrf`, e.g. with Moses escapes undone; default
            the same text as `bleu`.
        rouge_sentences: optional `(hypotheses, references)` for
            `rougeLsum`, one sentence a line; default
            `metrics.rouge.summary_sentences` of the texts.

    Returns:
        dict name -> `{"score", "signature", ...}`.

    Example:
    >>> score_hypotheses(["bleu"], ["a b c d"], ["a b c d"])["bleu"]["score"]
    100.0
    """
    metrics = list(metrics)
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise ValueError(
            f"Unknown metrics {unknown}; choose from {list(METRICS)}."
        )
    plain = sacrebleu_inputs or (hypotheses, references)
    results = {}
    for name in metrics:
        if name == "bleu":
            results[name] = tokenized_bleu(hypotheses, references)
        elif name == "sacrebleu":
            results[name] = sacre_bleu(*plain)
        elif name == "chrf":
            results[name] = corpus_chrf(*plain)
    rouge = [m for m in metrics if m in ROUGE_TYPES]
    if rouge:
        scores = corpus_rouge(
            hypotheses, references, sentences=rouge_sentences, types=rouge
        )
        results.update({name: scores[name] for name in rouge})
    return {name: results[name] for name in metrics}
