"""tools/multi30k_gain.sh, the "prove the gain" driver, with a fake
`bertkd` and a fake `python` for its tools: the stage order, both arms of a
seed made equally long (repeated until they stop at the same step), the
seed-0 candidates with their own settings, the chosen one trained for seeds
1 and 2, a rerun that redoes nothing, and the second lane beside the main
lane (the seed-1/2 baselines, then seed 2 once the settings are chosen; a
stage runs in one lane at a time)."""

import json
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
SCRIPT = os.path.join(REPO, "tools", "multi30k_gain.sh")

pytestmark = pytest.mark.slow

# `python` as the driver calls it ($(dirname $BERTKD)/python): inline code and
# tools/choose_distillation.py run for real; target_stats, `converge.py
# train` and `converge.py select` are played from the scenario in $SCENARIO:
# a student trained with --min_steps=N stops at the first of its stopping
# steps >= N (its plateau after N; at N if none is), and its selection scores
# its BLEU. A call named in "held_until" ("model", or "model@N" for the call
# with --min_steps=N) waits until the file named there exists.
FAKE_PYTHON = """#!{python}
import json, os, sys, time
args = sys.argv[1:]
if args[0] == "-c" or args[0].endswith("choose_distillation.py"):
    os.execv({python!r}, [{python!r}] + args)
flags = dict(a[2:].split("=", 1) for a in args
             if a.startswith("--") and "=" in a)
bindings = [a.split("=", 1)[1] for a in args
            if a.startswith("--gin_bindings=")]
scenario = json.load(open(os.environ["SCENARIO"]))
work = flags.get("work_dir")
call = {{"tool": os.path.basename(args[0]), "args": args[1:2]}}
if args[0].endswith("target_stats.py"):
    if "choose_output" in flags:
        json.dump({{"temperature": 1.0, "top_k": 16}},
                  open(flags["choose_output"], "w"))
elif args[:2] == ["tools/converge.py", "train"]:
    model = flags["model_dir"]
    minimum = int(flags.get("min_steps", 3000))
    stops = [s for s in scenario["stops"][model] if s >= minimum]
    stop = min(stops or [minimum])
    held = scenario.get("held_until", {{}})
    release = held.get(f"{{model}}@{{flags.get('min_steps')}}", held.get(model))
    while release and not os.path.exists(release):
        time.sleep(0.05)
    os.makedirs(os.path.join(work, model), exist_ok=True)
    json.dump({{"last_step": stop}},
              open(os.path.join(work, model, "converged.json"), "w"))
    with open(os.path.join(work, model, "operative_config.gin"), "w") as f:
        for b in bindings:
            name, value = b.split("=", 1)
            if name in ("DISTILLATION_WEIGHT", "TEMPERATURE", "TOP_K"):
                f.write(f"distill.run.{{name.lower()}} = {{value}}\\n")
    call.update(model=model, min_steps=flags.get("min_steps"),
                bindings=bindings, gin_file=flags["gin_file"], stop=stop)
elif args[:2] == ["tools/converge.py", "select"]:
    model = flags["model_dir"]
    os.makedirs(os.path.join(work, model + "_final"), exist_ok=True)
    json.dump({{"valid": {{"bleu": scenario["bleu"][model]}}}},
              open(os.path.join(work, model + "_final", "selection.json"), "w"))
    call.update(model=model)
with open(os.environ["CALLS"], "a") as f:
    f.write(json.dumps(call) + "\\n")
"""

FAKE_BERTKD = """#!{python}
import json, os, sys
mode = [a for a in sys.argv[1:] if a.startswith("--mode=")][0][7:]
with open(os.environ["CALLS"], "a") as f:
    f.write(json.dumps({{"tool": "bertkd", "mode": mode}}) + "\\n")
"""

SCENARIO = {
    "stops": {
        # Seed 0: the baseline stops first, then finds a new best while
        # catching up (11,000), so the distilled student catches up again.
        "baseline_seed0": [5000, 11000],
        "distilled_a05_seed0": [9000, 11000],
        "distilled_a05t10k8_seed0": [8000],
        "distilled_a01t5k8_seed0": [7000, 12000],
        "baseline_seed1": [6000, 8000],
        "distilled_a01t5k8_seed1": [8000],
        "baseline_seed2": [7000],
        "distilled_a01t5k8_seed2": [7000],
    },
    "bleu": {
        "baseline_seed0": 40.6,
        "distilled_a05_seed0": 40.0,
        "distilled_a05t10k8_seed0": 40.5,
        "distilled_a01t5k8_seed0": 40.9,
        "baseline_seed1": 40.1,
        "distilled_a01t5k8_seed1": 40.3,
        "baseline_seed2": 40.2,
        "distilled_a01t5k8_seed2": 40.4,
    },
}


# Every training call of the scenario, in the order one lane makes them.
TRAINS = [
    ("baseline_seed0", None, 5000),
    ("distilled_a05_seed0", None, 9000),
    # Equal length: to the longer arm's 9,000; the baseline found a new
    # best on the way (11,000), so the distilled arm goes to 11,000 too.
    ("baseline_seed0", 9000, 11000),
    ("distilled_a05_seed0", 9000, 9000),
    ("baseline_seed0", 11000, 11000),
    ("distilled_a05_seed0", 11000, 11000),
    # The paper's two settings, each on its own plateau.
    ("distilled_a05t10k8_seed0", None, 8000),
    ("distilled_a01t5k8_seed0", None, 7000),
    # The winner (valid BLEU 40.9) made as long as the baseline (whose
    # stage to 11,000 is done already): it goes on to 12,000, and so
    # does the baseline.
    ("distilled_a01t5k8_seed0", 11000, 12000),
    ("baseline_seed0", 12000, 12000),
    ("distilled_a01t5k8_seed0", 12000, 12000),
    ("baseline_seed1", None, 6000),
    ("distilled_a01t5k8_seed1", None, 8000),
    ("baseline_seed1", 8000, 8000),
    ("distilled_a01t5k8_seed1", 8000, 8000),
    ("baseline_seed2", None, 7000),
    ("distilled_a01t5k8_seed2", None, 7000),
    ("baseline_seed2", 7000, 7000),
    ("distilled_a01t5k8_seed2", 7000, 7000),
]


def _driver(tmp_path, *lane, scenario=SCENARIO, calls="calls.jsonl"):
    """The driver's command and environment with the fakes; each call of a
    fake is logged to tmp_path/<calls>."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    for name, text in (("python", FAKE_PYTHON), ("bertkd", FAKE_BERTKD)):
        (bin_dir / name).write_text(text.format(python=sys.executable))
        (bin_dir / name).chmod(0o755)
    (tmp_path / "scenario.json").write_text(json.dumps(scenario))
    (tmp_path / "data").mkdir(exist_ok=True)
    if (tmp_path / calls).exists():
        (tmp_path / calls).unlink()
    env = dict(
        os.environ,
        BERTKD=str(bin_dir / "bertkd"),
        SCENARIO=str(tmp_path / "scenario.json"),
        CALLS=str(tmp_path / calls),
        PYTHONPATH=REPO,
        MULTI30K_GAIN_POLL_S="0.05",
    )
    command = ["bash", SCRIPT, str(tmp_path / "data"), str(tmp_path / "work")]
    return command + list(lane), env


def _calls(tmp_path, calls="calls.jsonl"):
    path = tmp_path / calls
    if not path.exists():
        return []
    return [json.loads(x) for x in path.read_text().splitlines()]


def _run(tmp_path):
    command, env = _driver(tmp_path)
    result = subprocess.run(
        command, capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result, _calls(tmp_path)


def _trains(calls):
    return [
        (c["model"], c["min_steps"] and int(c["min_steps"]), c["stop"])
        for c in calls
        if c.get("args") == ["train"]
    ]


def test_stage_order_equal_length_and_chosen_settings(tmp_path):
    result, calls = _run(tmp_path)
    assert [c["mode"] for c in calls if c["tool"] == "bertkd"] == [
        "prepare",
        "train_teacher",
        "dump_teacher",
        "dump_teacher",
    ]
    assert _trains(calls) == TRAINS
    selects = [c["model"] for c in calls if c.get("args") == ["select"]]
    assert selects == [
        "baseline_seed0",
        "distilled_a05_seed0",
        "distilled_a05t10k8_seed0",
        "distilled_a01t5k8_seed0",
        "baseline_seed0",
        "distilled_a01t5k8_seed0",
        "baseline_seed1",
        "distilled_a01t5k8_seed1",
        "baseline_seed2",
        "distilled_a01t5k8_seed2",
    ]
    stages = set(os.listdir(tmp_path / "work" / ".stages"))
    assert {
        "baseline_seed0_select_at_11000.done",
        "distilled_a05_seed0_select_at_11000.done",
        "baseline_seed0_select_at_12000.done",
        "distilled_a01t5k8_seed0_select_at_12000.done",
        "choose_distillation.done",
    } <= stages
    # Each student trains with its own settings; the baseline with none.
    bindings = {c["model"]: c["bindings"] for c in calls if "bindings" in c}
    assert bindings["distilled_a05_seed0"][1:] == [
        "DISTILLATION_WEIGHT=0.5",
        "TEMPERATURE=1.0",
        "TOP_K=16",
    ]
    assert bindings["distilled_a05t10k8_seed0"][1:] == [
        "DISTILLATION_WEIGHT=0.5",
        "TEMPERATURE=10.0",
        "TOP_K=8",
    ]
    assert bindings["distilled_a01t5k8_seed2"] == [
        "distill.run.seed=2",
        "DISTILLATION_WEIGHT=0.1",
        "TEMPERATURE=5.0",
        "TOP_K=8",
    ]
    assert bindings["baseline_seed1"] == ["distill.run.seed=1"]
    chosen = json.loads(
        (tmp_path / "work" / "chosen_distillation.json").read_text()
    )
    assert chosen["tag"] == "01t5k8"
    assert (chosen["distillation_weight"], chosen["temperature"]) == (0.1, 5.0)
    assert chosen["valid_bleu"] == {"05": 40.0, "05t10k8": 40.5, "01t5k8": 40.9}
    assert "all stages of this commit done" in result.stdout

    assert (
        (tmp_path / "work" / ".stages" / "same_length_seed0_a05.done")
        .read_text()
        .startswith("both arms at step 11000, commit ")
    )

    # Every stage is done: a rerun trains and selects nothing (the α-0.5
    # pair stays at 11,000 though the baseline has gone on to 12,000).
    result, calls = _run(tmp_path)
    assert calls == []
    assert "multi30k_gain: choose_distillation already done" in result.stdout
    assert "same_length_seed0_a05 already done" in result.stdout


def _wait_for(predicate, processes):
    deadline = time.time() + 120
    while not predicate():
        assert time.time() < deadline, "timed out"
        assert all(p.poll() is None for p in processes), "a lane stopped"
        time.sleep(0.05)


def _both_lanes(tmp_path, started):
    # The second lane trains the seed-1/2 baselines alone, then waits for
    # the main lane's choice; its seed-2 distilled student is held until the
    # main lane has reached that stage and waits for it.
    release, release_equal = tmp_path / "release", tmp_path / "release_equal"
    scenario = dict(
        SCENARIO,
        held_until={
            "distilled_a01t5k8_seed2": str(release),
            "baseline_seed2@7000": str(release_equal),
        },
    )
    command, env = _driver(tmp_path, "second", scenario=scenario)
    lane_log = tmp_path / "lane.log"
    lane = subprocess.Popen(
        command, stdout=lane_log.open("w"), stderr=subprocess.STDOUT, env=env
    )
    started.append(lane)
    waiting = "waiting for the main lane to choose the distillation settings"
    _wait_for(lambda: waiting in lane_log.read_text(), [lane])
    time.sleep(0.3)  # polling: nothing more happens until the choice
    assert _trains(_calls(tmp_path)) == [
        ("baseline_seed1", None, 6000),
        ("baseline_seed2", None, 7000),
    ]
    command, env = _driver(tmp_path, scenario=scenario, calls="main.jsonl")
    main_log = tmp_path / "main.log"
    main = subprocess.Popen(
        command, stdout=main_log.open("w"), stderr=subprocess.STDOUT, env=env
    )
    started.append(main)
    waiting = "distilled_a01t5k8_seed2 is running in another lane; waiting"
    _wait_for(lambda: waiting in main_log.read_text(), [lane, main])
    assert not (tmp_path / "work/.stages/distilled_a01t5k8_seed2.done").exists()
    release.touch()
    # Seed 2's equal-length step runs in one lane while the other waits for
    # it as a whole (not only for its stages: two lanes in its loop could
    # train one student towards two different steps at once).
    waiting = "same_length_seed2_a01t5k8 is running in another lane; waiting"
    _wait_for(
        lambda: waiting in lane_log.read_text() + main_log.read_text(),
        [lane, main],
    )
    release_equal.touch()
    assert lane.wait(timeout=120) == 0, lane_log.read_text()
    assert main.wait(timeout=120) == 0, main_log.read_text()
    assert "the second lane is done" in lane_log.read_text()
    # The lane runs none of the main lane's stages before the choice.
    assert [c["mode"] for c in _calls(tmp_path) if c["tool"] == "bertkd"] == [
        "prepare"
    ]
    lane_trains = _trains(_calls(tmp_path))
    assert lane_trains[:3] == [
        ("baseline_seed1", None, 6000),
        ("baseline_seed2", None, 7000),
        ("distilled_a01t5k8_seed2", None, 7000),
    ]
    main_trains = _trains(_calls(tmp_path, "main.jsonl"))
    # Together the lanes make every training call of one lane, none twice
    # (seed 2's equal-length step runs in whichever lane takes it first).
    assert sorted(lane_trains + main_trains, key=str) == sorted(TRAINS, key=str)
    main_out = main_log.read_text()
    assert "multi30k_gain: baseline_seed1 already done" in main_out
    assert "multi30k_gain: baseline_seed2 already done" in main_out
    assert "multi30k_gain: distilled_a01t5k8_seed2 already done" in main_out
    assert "all stages of this commit done" in main_out
    done = tmp_path / "work/.stages/same_length_seed2_a01t5k8.done"
    assert done.read_text().startswith("both arms at step 7000, commit ")


def test_second_lane_runs_beside_the_main_lane(tmp_path):
    started = []
    try:
        _both_lanes(tmp_path, started)
    finally:
        for name in ("release", "release_equal"):  # none left waiting
            (tmp_path / name).touch()
        for process in started:
            if process.poll() is None:
                process.kill()


def test_an_unknown_lane_is_refused_with_the_usage(tmp_path):
    command, env = _driver(tmp_path, "teachers")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert "tools/multi30k_gain.sh DATA_DIR WORK_DIR" in result.stdout
    assert not (tmp_path / "work").exists()
