"""tools/choose_distillation.py: the candidate with the best valid BLEU
wins, its settings are the ones it trained with, bad input is one
paragraph."""

import json
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
TOOL = os.path.join(REPO, "tools", "choose_distillation.py")


def _student(work, name, bleu, alpha, temperature, top_k):
    (work / name).mkdir(parents=True)
    (work / name / "operative_config.gin").write_text(
        f"DISTILLATION_WEIGHT = {alpha}\n"
        f"distill.run.distillation_weight = %DISTILLATION_WEIGHT\n"
        f"distill.run.temperature = {temperature}\n"
        f"distill.run.top_k = {top_k}\n"
    )
    (work / f"{name}_final").mkdir()
    (work / f"{name}_final" / "selection.json").write_text(
        json.dumps({"valid": {"bleu": bleu, "sacrebleu": bleu + 2}})
    )


def _run(work, output, *candidates):
    return subprocess.run(
        [sys.executable, TOOL, f"--work_dir={work}", f"--output={output}"]
        + [f"--candidate={c}" for c in candidates],
        capture_output=True,
        text=True,
    )


def test_best_valid_bleu_wins_with_its_own_settings(tmp_path):
    work = tmp_path / "work"
    _student(work, "distilled_a05_seed0", 39.97, 0.5, 1.0, 16)
    _student(work, "distilled_a05t10k8_seed0", 40.8, 0.5, 10.0, 8)
    _student(work, "distilled_a01t5k8_seed0", 40.8, 0.1, 5.0, 8)
    output = tmp_path / "chosen.json"
    result = _run(
        work,
        output,
        "05:distilled_a05_seed0",
        "05t10k8:distilled_a05t10k8_seed0",
        "01t5k8:distilled_a01t5k8_seed0",
    )
    assert result.returncode == 0, result.stderr
    chosen = json.loads(output.read_text())
    # A tie goes to the candidate given first.
    assert chosen["tag"] == "05t10k8"
    assert chosen["model_dir"] == "distilled_a05t10k8_seed0"
    assert (chosen["distillation_weight"], chosen["temperature"]) == (0.5, 10.0)
    assert chosen["top_k"] == 8
    assert chosen["valid_bleu"] == {
        "05": 39.97,
        "05t10k8": 40.8,
        "01t5k8": 40.8,
    }
    assert chosen["candidates"]["05"]["settings"] == {
        "distillation_weight": 0.5,
        "temperature": 1.0,
        "top_k": 16,
    }
    assert chosen["candidates"]["01t5k8"]["valid"]["sacrebleu"] == 42.8
    assert "-> 05t10k8" in result.stdout
    assert sorted(os.listdir(tmp_path)) == ["chosen.json", "work"]  # No temp.


def test_unselected_candidate_is_one_paragraph_and_writes_nothing(tmp_path):
    work = tmp_path / "work"
    _student(work, "distilled_a05_seed0", 39.97, 0.5, 1.0, 16)
    output = tmp_path / "chosen.json"
    result = _run(
        work, output, "05:distilled_a05_seed0", "x:distilled_ax_seed0"
    )
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    message = result.stderr.strip().splitlines()[-1]
    assert "distilled_ax_seed0_final/selection.json does not exist" in message
    assert "tools/converge.py select --model_dir=distilled_ax_seed0" in message
    assert not output.exists()


def test_malformed_or_repeated_candidates_are_refused(tmp_path):
    work = tmp_path / "work"
    _student(work, "distilled_a05_seed0", 39.97, 0.5, 1.0, 16)
    output = tmp_path / "chosen.json"
    bad = _run(work, output, "distilled_a05_seed0")
    assert bad.returncode != 0
    assert "give TAG:MODEL_DIR" in bad.stderr
    twice = _run(
        work, output, "05:distilled_a05_seed0", "05:distilled_a05_seed0"
    )
    assert twice.returncode != 0
    assert "each with its own tag" in twice.stderr
    assert not output.exists()
