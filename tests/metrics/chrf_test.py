import pytest
from sacrebleu.metrics import CHRF

from bertkd_tf.metrics.chrf import corpus_chrf


def test_chrf_matches_sacrebleu_and_has_signature():
    hypotheses = ["the cat sat on the mat .", "a dog barks"]
    references = ["the cat sat on a mat .", "the dog barks"]
    expected = CHRF().corpus_score(hypotheses, [references]).score
    result = corpus_chrf(hypotheses, references)
    assert result["score"] == pytest.approx(expected)
    assert result["signature"].startswith("nrefs:1")
    assert "nc:6" in result["signature"]
    assert corpus_chrf(["same text"], ["same text"])["score"] == 100.0


def test_chrf_length_mismatch():
    with pytest.raises(ValueError, match="1 hypotheses but 2 references"):
        corpus_chrf(["a"], ["a", "b"])
