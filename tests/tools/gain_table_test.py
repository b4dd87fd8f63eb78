"""tools/gain_table.py: per-seed scores of both arms from `evaluate`, their
difference, mean and spread over seeds; each student scored once; the
beam-5 BLEU checked against the one its selection recorded."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
TOOL = os.path.join(REPO, "tools", "gain_table.py")

# `bertkd --mode=evaluate` stand-in: writes scores.json into
# evaluate.run.output_dir from $SCORES[model_dir][beam] and counts calls.
FAKE_BERTKD = """#!{python}
import json, os, re, sys
args = " ".join(sys.argv[1:])
model = re.search(r"evaluate.run.model_dir='([^']*)'", args).group(1)
output = re.search(r"evaluate.run.output_dir='([^']*)'", args).group(1)
beam = re.search(r"BEAM_SIZE=(\\d+)", args).group(1)
bleu, sacre = json.load(open(os.environ["SCORES"]))[model][beam]
os.makedirs(output, exist_ok=True)
metrics = {{"bleu": {{"score": bleu}}, "sacrebleu": {{"score": sacre}}}}
json.dump({{"metrics": metrics}},
          open(os.path.join(output, "scores.json"), "w"))
with open(os.environ["CALLS"], "a") as f:
    f.write(model + " " + beam + "\\n")
"""

SCORES = {
    "baseline_seed0_final": {"5": [40.0, 43.0], "1": [39.0, 42.0]},
    "distilled_a01_seed0_final": {"5": [41.0, 43.5], "1": [39.5, 42.0]},
    "baseline_seed1_final": {"5": [40.5, 43.0], "1": [39.0, 42.0]},
    "distilled_a01_seed1_final": {"5": [42.5, 44.0], "1": [40.0, 43.0]},
    # Seed 2 has no distilled student yet: not counted.
    "baseline_seed2_final": {"5": [40.0, 43.0], "1": [39.0, 42.0]},
}


@pytest.fixture
def setup(tmp_path):
    work = tmp_path / "work"
    for name, by_beam in SCORES.items():
        (work / name).mkdir(parents=True)
        recorded = by_beam["5"][0] + (
            0.3 if name == "baseline_seed1_final" else 0
        )
        (work / name / "selection.json").write_text(
            json.dumps({"valid": {"bleu": recorded}})
        )
    (work / "chosen_distillation.json").write_text('{"tag": "01"}')
    bertkd = tmp_path / "bertkd"
    bertkd.write_text(FAKE_BERTKD.format(python=sys.executable))
    bertkd.chmod(0o755)
    (tmp_path / "scores.json").write_text(json.dumps(SCORES))
    return tmp_path


def _run(tmp_path, *extra):
    env = dict(
        os.environ,
        SCORES=str(tmp_path / "scores.json"),
        CALLS=str(tmp_path / "calls"),
    )
    return subprocess.run(
        [
            sys.executable,
            TOOL,
            f"--work_dir={tmp_path / 'work'}",
            f"--data_dir={tmp_path}",
            f"--bertkd={tmp_path / 'bertkd'}",
            f"--code_dir={REPO}",
            *extra,
        ],
        capture_output=True,
        text=True,
        env=env,
    )


def test_mean_and_spread_of_the_gain_over_seeds(setup):
    output = setup / "table.json"
    result = _run(setup, f"--output={output}")
    assert result.returncode == 0, result.stderr
    table = json.loads(output.read_text())
    assert table["tag"] == "01" and table["seeds"] == [0, 1]
    assert [r["gain_bleu_beam5"] for r in table["rows"]] == [1.0, 2.0]
    gain = table["summary"]["gain_bleu_beam5"]
    assert gain["mean"] == pytest.approx(1.5)
    assert gain["sd"] == pytest.approx(0.5**0.5)  # Sample sd of 1 and 2.
    assert (gain["min"], gain["max"]) == (1.0, 2.0)
    assert table["summary"]["gain_sacrebleu_beam1"]["mean"] == pytest.approx(
        0.5
    )
    assert table["summary"]["baseline_bleu_beam5"]["mean"] == pytest.approx(
        40.25
    )
    assert (
        "distilled_a01 - baseline, tokenized BLEU beam 5 over seeds [0, 1]: "
        "mean +1.50, sd 0.71, min +1.00, max +2.00" in result.stdout
    )
    assert "| 1 | 40.50 | 42.50 | +2.00 |" in result.stdout
    # The one student whose evaluate score is not its selection's.
    assert table["checks"] == [
        "baseline_seed1_final: evaluate's beam-5 BLEU 40.50 differs from "
        "the 40.80 recorded by converge.py select"
    ]
    assert "check: baseline_seed1_final" in result.stdout
    calls = (setup / "calls").read_text().split("\n")
    assert len([c for c in calls if c]) == 8  # 2 seeds x 2 arms x 2 beams.
    # A rerun scores nothing again.
    assert _run(setup).returncode == 0
    assert len([c for c in (setup / "calls").read_text().split("\n") if c]) == 8


def test_one_seed_has_no_spread_and_no_seed_is_an_error(setup):
    result = _run(setup, "--tag=none")
    assert result.returncode != 0
    assert (
        "distilled_anone_seed<N>_final/ with a selection.json" in result.stderr
    )
    os.remove(setup / "work" / "distilled_a01_seed1_final" / "selection.json")
    result = _run(setup)
    assert result.returncode == 0, result.stderr
    assert "over seeds [0]: mean +1.00, sd —" in result.stdout


def test_failed_evaluate_is_one_paragraph(setup):
    scores = json.loads((setup / "scores.json").read_text())
    del scores["distilled_a01_seed1_final"]  # The stand-in fails on it.
    (setup / "scores.json").write_text(json.dumps(scores))
    result = _run(setup)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr.split("the end of its output")[0]
    assert result.stderr.startswith(
        "gain_table: `evaluate` of distilled_a01_seed1_final at beam 5 failed"
    )
    assert "KeyError" in result.stderr
