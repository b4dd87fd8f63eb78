"""Corpus BLEU on the host (sacrebleu)."""

from sacrebleu.metrics import BLEU


def _check(hypotheses, references):
    hypotheses, references = list(hypotheses), list(references)
    if len(hypotheses) != len(references):
        raise ValueError(
            f"Got {len(hypotheses)} hypotheses but {len(references)} "
            "references; they must pair up line by line."
        )
    if not hypotheses:
        raise ValueError("Nothing to score: no hypotheses.")
    return hypotheses, references


def tokenized_bleu(hypotheses, references):
    """BLEU as the paper reports it (multi-bleu.perl).

    Scores the text as given, split on whitespace (`tokenize='none'`), with
    no smoothing: identical to multi-bleu.perl on Moses-tokenized text. The
    caller lower-cases references for uncased models.

    Args:
        hypotheses: list of strings.
        references: list of strings, one per hypothesis.

    Returns:
        dict with `score` (0-100), `signature` and `details` (n-gram
        precisions, brevity penalty, lengths).

    Example:
    >>> tokenized_bleu(["a dog runs ."], ["a dog runs ."])["score"]
    100.0
    """
    return _corpus_bleu(
        hypotheses, references, tokenize="none", smooth_method="none"
    )


def sacre_bleu(hypotheses, references, tokenize="13a"):
    """sacreBLEU's standard BLEU (13a tokenization, exp smoothing).

    Meant for detokenized text; the signature says what was used.

    Example:
    >>> sacre_bleu(["A dog runs."], ["A dog runs."])["score"]
    100.0
    """
    return _corpus_bleu(hypotheses, references, tokenize=tokenize)


def _corpus_bleu(hypotheses, references, **options):
    hypotheses, references = _check(hypotheses, references)
    metric = BLEU(**options)
    result = metric.corpus_score(hypotheses, [references])
    return {
        "score": float(result.score),
        "signature": str(metric.get_signature()),
        "details": {
            "precisions": [float(p) for p in result.precisions],
            "brevity_penalty": float(result.bp),
            "hypothesis_length": int(result.sys_len),
            "reference_length": int(result.ref_len),
        },
    }
