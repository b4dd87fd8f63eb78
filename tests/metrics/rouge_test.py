import pytest

from bertkd_tf.metrics.rouge import corpus_rouge, summary_sentences
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


def test_rouge_lsum_is_the_union_lcs_over_sentences():
    # Sentences swapped: ROUGE-L (one sequence each) finds "police killed"
    # or "the gunman", 2 of 4 tokens -> 50; ROUGE-Lsum matches each
    # reference sentence with its own hypothesis sentence -> 100.
    result = corpus_rouge(
        ["the gunman\npolice killed"],
        ["police killed\nthe gunman"],
        use_stemmer=False,
    )
    assert result["rougeL"]["score"] == pytest.approx(50.0)
    assert result["rougeLsum"]["score"] == pytest.approx(100.0)
    assert "sentences:lines" in result["rougeLsum"]["signature"]


def test_rouge_lsum_counts_a_token_at_most_as_often_as_both_sides_have_it():
    # Both reference sentences match the one hypothesis sentence, but its
    # two tokens count once: hits 2, recall 2/4, precision 2/2 -> F 2/3.
    result = corpus_rouge(
        ["police killed"], ["police killed\npolice killed"], use_stemmer=False
    )
    assert result["rougeLsum"]["score"] == pytest.approx(200 / 3)


def test_rouge_lsum_hand_computed_with_a_partial_match():
    # Reference: [police killed the gunman] [on friday]; hypothesis:
    # [police killed a man] [the gunman on]. Union LCS of sentence 1:
    # police killed (with h1) + the gunman (with h2) = 4; sentence 2: on
    # (with h2) = 1. Hits 5; recall 5/6, precision 5/7 -> F = 10/13.
    result = corpus_rouge(
        ["police killed a man . the gunman on ."],
        ["police killed the gunman\non friday"],
        use_stemmer=False,
    )
    assert result["rougeLsum"]["score"] == pytest.approx(100 * 10 / 13)
    # ROUGE-L: LCS "police killed the gunman on" = 5 as well here.
    assert result["rougeL"]["score"] == pytest.approx(100 * 10 / 13)


def test_summary_sentences():
    assert summary_sentences("a b . c d ! e ?! f") == [
        "a b .",
        "c d !",
        "e ?!",
        "f",
    ]
    # Abbreviations and untokenized full stops do not split.
    assert summary_sentences("the u.s. army left. it rained .") == [
        "the u.s. army left. it rained ."
    ]
    assert summary_sentences(" x .\n\n y  z \n") == ["x .", "y z"]
    assert summary_sentences('she said : " go . " then left .') == [
        'she said : " go .',
        '" then left .',
    ]
    assert summary_sentences("") == []


def test_explicit_sentences_are_used_for_rouge_lsum_only():
    result = corpus_rouge(
        ["the gunman police killed"],
        ["police killed the gunman"],
        use_stemmer=False,
        sentences=(
            ["the gunman\npolice killed"],
            ["police killed\nthe gunman"],
        ),
    )
    assert result["rougeLsum"]["score"] == pytest.approx(100.0)
    assert result["rougeL"]["score"] == pytest.approx(50.0)
    with pytest.raises(ValueError, match="Unknown ROUGE types"):
        corpus_rouge(["a"], ["a"], types=["rougeX"])


def test_score_hypotheses_reports_rouge_lsum():
    results = score_hypotheses(
        ["rougeL", "rougeLsum"],
        ["the gunman . police killed ."],
        ["police killed . the gunman ."],
    )
    assert results["rougeL"]["score"] == pytest.approx(50.0)
    assert results["rougeLsum"]["score"] == pytest.approx(100.0)
