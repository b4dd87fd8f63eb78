"""tools/blind_outputs.py: one output line per input line, in order, and a
system.json that says what produced them; nothing half-written."""

import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
TOOL = os.path.join(REPO, "tools", "blind_outputs.py")

# A `bertkd` stand-in: reads translate.run.input_file, writes each line
# reversed word by word to translate.run.output_file (the line count of
# the input, or one line short when $BROKEN is set), and counts its calls.
FAKE_BERTKD = """#!{python}
import os, re, sys
args = " ".join(sys.argv[1:])
source = re.search(r"translate.run.input_file='([^']*)'", args).group(1)
target = re.search(r"translate.run.output_file='([^']*)'", args).group(1)
with open(source) as f:
    lines = [" ".join(reversed(l.split())) for l in f.read().splitlines()]
if os.environ.get("BROKEN"):
    lines = lines[:-1]
with open(target, "w") as f:
    f.writelines(l + "\\n" for l in lines)
with open(os.environ["CALLS"], "a") as f:
    f.write(os.path.basename(source) + "\\n")
"""


@pytest.fixture
def setup(tmp_path):
    work = tmp_path / "work"
    (work / "teacher").mkdir(parents=True)
    (work / "teacher" / "history.jsonl").write_text(
        "\n".join(
            json.dumps(r)
            for r in [
                {"step": 250, "elapsed_s": 10, "val_accuracy": 0.45},
                {"step": 100, "loss": 3.0},
                {"step": 500, "elapsed_s": 20, "val_accuracy": 0.61},
                {"step": 750, "elapsed_s": 30, "val_accuracy": 0.60},
            ]
        )
        + "\n"
    )
    (work / "chosen_kd.json").write_text('{"temperature": 2.0, "top_k": 8}')
    (work / "base").mkdir()
    (work / "base" / "valid_bleu.json").write_text('{"500": {"bleu": 30.0}}')
    (work / "base" / "operative_config.gin").write_text(
        "DISTILLATION_WEIGHT = 0.3\n"
        "distill.run.distillation_weight = %DISTILLATION_WEIGHT\n"
    )
    final = work / "base_final"
    final.mkdir()
    selection = {
        "chosen": "beam5_last2_to_500",
        "checkpoint_steps": [500],
        "valid": {"bleu": 31.5},
        "converged": {"best_step": 500, "last_step": 2500},
        "rule": "valid only",
    }
    (final / "selection.json").write_text(json.dumps(selection))
    (work / "nosel_final").mkdir()
    (work / ".stages").mkdir()
    (work / ".stages" / "teacher.done").write_text("100 s, commit abc, d\n")
    blind = tmp_path / "blind"
    blind.mkdir()
    (blind / "a.de").write_text("ein hund\n\nzwei katzen laufen\n")
    (blind / "b.de").write_text("x y\n")
    (blind / "README.md").write_text("not a source\n")
    bertkd = tmp_path / "bertkd"
    bertkd.write_text(FAKE_BERTKD.format(python=sys.executable))
    bertkd.chmod(0o755)
    return {
        "work": work,
        "blind": blind,
        "out": tmp_path / "out",
        "bertkd": bertkd,
        "calls": tmp_path / "calls",
    }


def _run(s, *systems, broken=False, extra=(), cwd=None, out=None):
    env = dict(os.environ, CALLS=str(s["calls"]))
    if broken:
        env["BROKEN"] = "1"
    return subprocess.run(
        [
            sys.executable,
            TOOL,
            f"--work_dir={s['work']}",
            f"--blind_dir={s['blind']}",
            f"--output_dir={out or s['out']}",
            f"--bertkd={s['bertkd']}",
            f"--code_dir={REPO}",
            *[f"--system={x}" for x in systems],
            *extra,
        ],
        env=env,
        capture_output=True,
        text=True,
        cwd=cwd,
    )


def _calls(s):
    return s["calls"].read_text().split() if s["calls"].exists() else []


def test_outputs_line_for_line_and_system_json(setup):
    result = _run(setup, "baseline_seed0=base_final")
    assert result.returncode == 0, result.stderr
    system_dir = setup["out"] / "baseline_seed0"
    assert (system_dir / "a.de.hyp").read_text() == (
        "hund ein\n\nlaufen katzen zwei\n"
    )
    assert (system_dir / "b.de.hyp").read_text() == "y x\n"
    assert not (system_dir / "README.md.hyp").exists()
    assert sorted(os.listdir(system_dir)) == [
        "a.de.hyp",
        "b.de.hyp",
        "system.json",
    ]
    system = json.loads((system_dir / "system.json").read_text())
    assert system["teacher"] == {
        "final_step": 750,
        "final_valid_masked_token_accuracy": 0.60,
        "best_step": 500,
        "best_valid_masked_token_accuracy": 0.61,
    }
    assert system["valid"] == {"bleu": 31.5}
    assert system["checkpoints_used"] == [500]
    assert system["student_steps"]["last_step"] == 2500
    assert system["soft_targets_valid_nll_rule"] == {
        "temperature": 2.0,
        "top_k": 8,
    }
    # The student's own settings (T and K not in its config here); no
    # settings chosen across students yet.
    assert system["distillation"] == {
        "distillation_weight": 0.3,
        "temperature": None,
        "top_k": None,
    }
    assert system["distillation_choice"] is None
    assert system["valid_greedy_bleu_curve"] == {"500": {"bleu": 30.0}}
    assert system["stage_wall_times"] == {"teacher": "100 s, commit abc, d"}
    assert len(system["commit"]) == 40
    assert len(system["translate_commands"]) == 2
    assert "BEAM_SIZE=5" in system["translate_commands"][0]
    assert "LENGTH_PENALTY=0.6" in system["translate_commands"][0]
    assert set(system["translate_seconds"]) == {"a.de", "b.de"}


def test_settings_choice_recorded_once_made(setup):
    choice = {"tag": "05t10k8", "valid_bleu": {"05": 39.9, "05t10k8": 40.1}}
    (setup["work"] / "chosen_distillation.json").write_text(json.dumps(choice))
    (setup["work"] / "base" / "operative_config.gin").write_text(
        "distill.run.distillation_weight = 0.5\n"
        "TEMPERATURE = 10.0\ndistill.run.temperature = %TEMPERATURE\n"
        "distill.run.top_k = 8\n"
    )
    assert _run(setup, "distilled_seed0=base_final").returncode == 0
    system = json.loads(
        (setup["out"] / "distilled_seed0" / "system.json").read_text()
    )
    assert system["distillation_choice"] == choice
    assert system["distillation"] == {
        "distillation_weight": 0.5,
        "temperature": 10.0,
        "top_k": 8,
    }


def test_rerun_redoes_only_what_is_missing(setup):
    assert _run(setup, "baseline_seed0=base_final").returncode == 0
    assert _calls(setup) == ["a.de", "b.de"]
    (setup["out"] / "baseline_seed0" / "b.de.hyp").unlink()
    assert _run(setup, "baseline_seed0=base_final").returncode == 0
    assert _calls(setup) == ["a.de", "b.de", "b.de"]
    assert (
        _run(
            setup, "baseline_seed0=base_final", extra=["--overwrite"]
        ).returncode
        == 0
    )
    assert _calls(setup) == ["a.de", "b.de", "b.de", "a.de", "b.de"]


def test_new_weights_redo_everything_and_old_outputs_keep_their_commit(setup):
    sha = setup["work"] / "base_final" / "final.weights.h5.sha256"
    sha.write_text("a" * 64 + "  final.weights.h5\n")
    assert _run(setup, "baseline_seed0=base_final").returncode == 0
    record = setup["out"] / "baseline_seed0" / "system.json"
    system = json.loads(record.read_text())
    assert system["weights_sha256"] == "a" * 64
    assert set(system["translate_commits"]) == {"a.de", "b.de"}
    # Outputs translated by another checkout, then a rerun that redoes
    # nothing: the record keeps the checkout that made them.
    system["translate_commits"] = {"a.de": "f" * 40, "b.de": "f" * 40}
    record.write_text(json.dumps(system))
    assert _run(setup, "baseline_seed0=base_final").returncode == 0
    assert _calls(setup) == ["a.de", "b.de"]
    assert json.loads(record.read_text())["commit"] == "f" * 40
    # The student selected again (other weights): every file again.
    sha.write_text("b" * 64 + "  final.weights.h5\n")
    assert _run(setup, "baseline_seed0=base_final").returncode == 0
    assert _calls(setup) == ["a.de", "b.de", "a.de", "b.de"]
    system = json.loads(record.read_text())
    assert system["weights_sha256"] == "b" * 64
    assert system["commit"] != "f" * 40
    assert set(system["translate_commits"].values()) == {system["commit"]}


def test_damaged_weights_checksum_is_refused_naming_its_file(setup):
    sha = setup["work"] / "base_final" / "final.weights.h5.sha256"
    sha.write_text("not a digest\n")
    result = _run(setup, "baseline_seed0=base_final")
    assert result.returncode != 0
    assert str(sha) in result.stderr
    assert "is damaged" in result.stderr
    assert not (setup["out"] / "baseline_seed0").exists()


def test_short_output_is_refused_and_not_renamed(setup):
    result = _run(setup, "baseline_seed0=base_final", broken=True)
    assert result.returncode != 0
    assert "has 2 lines for the 3 of" in result.stderr
    assert not (setup["out"] / "baseline_seed0" / "a.de.hyp").exists()
    assert not (setup["out"] / "baseline_seed0" / "system.json").exists()


def test_unselected_student_is_refused_naming_the_stage(setup):
    result = _run(setup, "distilled_seed0=nosel_final")
    assert result.returncode != 0
    assert "nosel_final has no selection.json" in result.stderr
    assert "converge.py select" in result.stderr
    assert _calls(setup) == []


def test_malformed_system_flag(setup):
    result = _run(setup, "baseline_seed0")
    assert result.returncode != 0
    assert "give NAME=MODEL_DIR" in result.stderr


def test_relative_output_dir_is_where_the_outputs_land(setup, tmp_path):
    # `translate` runs in --code_dir (here the repository), not in the
    # caller's directory: a relative --output_dir (the documented
    # docs/blind/<task>) must still name the caller's folder.
    result = _run(
        setup, "baseline_seed0=base_final", cwd=tmp_path, out="rel/blind"
    )
    assert result.returncode == 0, result.stderr
    system_dir = tmp_path / "rel" / "blind" / "baseline_seed0"
    assert (system_dir / "b.de.hyp").read_text() == "y x\n"
    assert (system_dir / "system.json").exists()
    assert not os.path.exists(os.path.join(REPO, "rel"))
