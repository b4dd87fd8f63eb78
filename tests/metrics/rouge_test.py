import pytest

from bertkd_tf.metrics.rouge import corpus_rouge
from bertkd_tf.metrics.scoring import score_hypotheses


def test_rouge_values():
    # Unigrams: 3 of 4 match both ways -> F1 0.75; bigrams: 1 of 3 -> 1/3.
    result = corpus_rouge(
        ["police kill the gunman"], ["police killed the gunman"]
    )
    # With stemming "killed" == "kill": everything matches.
    assert result["rouge1"]["score"] == pytest.approx(100.0)
    plain = corpus_rouge(
        ["police kill the gunman"],
        ["police killed the gunman"],
        use_stemmer=False,
    )
    assert plain["rouge1"]["score"] == pytest.approx(75.0)
    assert plain["rouge2"]["score"] == pytest.approx(100 / 3)
    assert plain["rougeL"]["score"] == pytest.approx(75.0)
    assert "stemmer:no" in plain["rougeL"]["signature"]


def test_rouge_is_a_mean_over_sentences():
    result = corpus_rouge(["a b", "c d"], ["a b", "x y"], use_stemmer=False)
    assert result["rouge1"]["score"] == pytest.approx(50.0)


def test_score_hypotheses_selects_metrics():
    results = score_hypotheses(
        ["bleu", "chrf", "rougeL"], ["a b c d"], ["a b c d"]
    )
    assert list(results) == ["bleu", "chrf", "rougeL"]
    assert all(r["score"] == pytest.approx(100.0) for r in results.values())
    assert all(r["signature"] for r in results.values())
    with pytest.raises(ValueError, match="Unknown metrics \\['blue'\\]"):
        score_hypotheses(["blue"], ["a"], ["a"])
