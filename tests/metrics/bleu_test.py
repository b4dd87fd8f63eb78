import os
import subprocess
import sys

import pytest

from bertkd_tf.metrics.bleu import sacre_bleu, tokenized_bleu

HYPOTHESES = [
    "the cat sat on the mat .",
    "there is a dog in the garden",
    "we &apos;re going home now",
    "he said : &quot; no &quot;",
    "this one matches exactly",
]
REFERENCES = [
    "the cat sat on a mat .",
    "a dog is in the garden",
    "we &apos;re going home",
    "he said : &quot; no , thanks &quot;",
    "this one matches exactly",
]
SACREBLEU = os.path.join(os.path.dirname(sys.executable), "sacrebleu")


def command_line_bleu(tmp_path, *options):
    hypothesis_file = tmp_path / "hyp.txt"
    reference_file = tmp_path / "ref.txt"
    hypothesis_file.write_text("\n".join(HYPOTHESES) + "\n")
    reference_file.write_text("\n".join(REFERENCES) + "\n")
    output = subprocess.run(
        [
            SACREBLEU,
            str(reference_file),
            "-i",
            str(hypothesis_file),
            "-b",
            "-w",
            "6",
            *options,
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return float(output.strip())


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(SACREBLEU), reason="no sacrebleu CLI")
def test_tokenized_bleu_equals_command_line(tmp_path):
    expected = command_line_bleu(
        tmp_path, "--tokenize", "none", "--smooth-method", "none"
    )
    result = tokenized_bleu(HYPOTHESES, REFERENCES)
    assert result["score"] == pytest.approx(expected, abs=1e-6)
    assert "tok:none" in result["signature"]
    assert "smooth:none" in result["signature"]
    assert 0.0 < result["score"] < 100.0


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(SACREBLEU), reason="no sacrebleu CLI")
def test_sacre_bleu_equals_command_line(tmp_path):
    expected = command_line_bleu(tmp_path)
    result = sacre_bleu(HYPOTHESES, REFERENCES)
    assert result["score"] == pytest.approx(expected, abs=1e-6)
    assert "tok:13a" in result["signature"]


def test_bleu_known_values():
    assert tokenized_bleu(["a b c d"], ["a b c d"])["score"] == pytest.approx(
        100
    )
    # No 4-gram match and no smoothing: 0, as multi-bleu.perl.
    assert tokenized_bleu(["a b c x"], ["a b c d"])["score"] == 0.0
    details = tokenized_bleu(["a b c d e"], ["a b c d f"])["details"]
    assert details["precisions"] == pytest.approx([80.0, 75.0, 200 / 3, 50.0])
    assert details["brevity_penalty"] == 1.0


def test_tokenized_bleu_is_case_sensitive():
    # The caller lower-cases references for uncased models.
    assert tokenized_bleu(["The dog runs ."], ["the dog runs ."])["score"] < 100


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="2 hypotheses but 1 references"):
        tokenized_bleu(["a", "b"], ["a"])
    with pytest.raises(ValueError, match="Nothing to score"):
        sacre_bleu([], [])
