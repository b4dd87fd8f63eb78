"""tools/multi30k_gain.sh, the "prove the gain" driver, with a fake
`bertkd` and a fake `python` for its tools: the stage order, both arms of a
seed made equally long (repeated until they stop at the same step), the
distilled arm with its fixed settings and the baseline with none, a rerun
that redoes nothing, and the second lane beside the main lane (seed 1's
baseline while the main lane trains the teacher, then seed 1, then seed 2's
two arms at once in the two lanes; a stage runs in one lane at a time)."""

import json
import os
import subprocess
import sys
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
SCRIPT = os.path.join(REPO, "tools", "multi30k_gain.sh")

pytestmark = pytest.mark.slow

# `python` as the driver calls it ($(dirname $BERTKD)/python): inline code
# runs for real; target_stats, `converge.py train` and `converge.py select`
# are played from the scenario in $SCENARIO: a student trained with
# --min_steps=N stops at the first of its stopping steps >= N (its plateau
# after N; at N if none is), and its selection scores its BLEU. A call named
# in "held_until" ("model" for its first call, "model@N" for the one with
# --min_steps=N) logs {"held": "model[@N]"} and then waits until the file
# named there exists.
FAKE_PYTHON = """#!{python}
import json, os, sys, time
args = sys.argv[1:]
if args[0] == "-c":
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
    key = model + (f"@{{flags['min_steps']}}" if "min_steps" in flags else "")
    release = held.get(key)
    if release:
        with open(os.environ["CALLS"], "a") as f:
            f.write(json.dumps({{"held": key}}) + "\\n")
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
        # Seed 0: the baseline stops first, the distilled student goes on
        # to 7,000, and the baseline, catching up, finds a new best (its
        # plateau at 11,000), so the distilled student catches up again and
        # does the same (12,000).
        "baseline_seed0": [5000, 11000],
        "distilled_a01t5k8_seed0": [7000, 12000],
        "baseline_seed1": [6000, 8000],
        "distilled_a01t5k8_seed1": [8000],
        "baseline_seed2": [7000],
        "distilled_a01t5k8_seed2": [7000],
    },
    "bleu": {
        "baseline_seed0": 40.6,
        "distilled_a01t5k8_seed0": 40.9,
        "baseline_seed1": 40.1,
        "distilled_a01t5k8_seed1": 40.3,
        "baseline_seed2": 40.2,
        "distilled_a01t5k8_seed2": 40.4,
    },
}

KD = ["DISTILLATION_WEIGHT=0.1", "TEMPERATURE=5.0", "TOP_K=8"]

# Every training call of the scenario (both lanes together), by seed.
TRAINS = {
    0: [
        # The main lane trains seed 0's distilled arm first.
        ("distilled_a01t5k8_seed0", None, 7000),
        ("baseline_seed0", None, 5000),
        # Equal length, to the longer arm's step, until both stop at one.
        ("baseline_seed0", 7000, 11000),
        ("distilled_a01t5k8_seed0", 7000, 7000),
        ("baseline_seed0", 11000, 11000),
        ("distilled_a01t5k8_seed0", 11000, 12000),
        ("baseline_seed0", 12000, 12000),
        ("distilled_a01t5k8_seed0", 12000, 12000),
    ],
    1: [
        ("baseline_seed1", None, 6000),
        ("distilled_a01t5k8_seed1", None, 8000),
        ("baseline_seed1", 8000, 8000),
        ("distilled_a01t5k8_seed1", 8000, 8000),
    ],
    2: [
        ("baseline_seed2", None, 7000),
        ("distilled_a01t5k8_seed2", None, 7000),
        ("baseline_seed2", 7000, 7000),
        ("distilled_a01t5k8_seed2", 7000, 7000),
    ],
}


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


def _held(calls):
    return [c["held"] for c in calls if "held" in c]


def test_stage_order_equal_length_and_settings(tmp_path):
    # The main lane alone: the teacher's stages, then seeds 0 and 2.
    result, calls = _run(tmp_path)
    assert [c["mode"] for c in calls if c.get("tool") == "bertkd"] == [
        "prepare",
        "train_teacher",
        "dump_teacher",
        "dump_teacher",
    ]
    assert _trains(calls) == TRAINS[0] + TRAINS[2]
    selects = [c["model"] for c in calls if c.get("args") == ["select"]]
    assert selects == [
        "baseline_seed0",
        "distilled_a01t5k8_seed0",
        "baseline_seed2",
        "distilled_a01t5k8_seed2",
    ]
    stages = set(os.listdir(tmp_path / "work" / ".stages"))
    assert {
        "stats_valid.done",
        "stats_train.done",
        "baseline_seed0_to_12000.done",
        "baseline_seed0_select_at_12000.done",
        "distilled_a01t5k8_seed0_select_at_12000.done",
        "same_length_seed0_a01t5k8.done",
        "same_length_seed2_a01t5k8.done",
    } <= stages
    assert not any("seed1" in stage for stage in stages)
    # The distilled arm trains with the fixed settings, the baseline with
    # none; both with the seed's own seed.
    for call in calls:
        if call.get("args") == ["train"]:
            seed = call["model"][-1]
            extra = KD if call["model"].startswith("distilled") else []
            assert call["bindings"] == [f"distill.run.seed={seed}"] + extra
    assert "all stages of the all lane done" in result.stdout
    assert (
        (tmp_path / "work" / ".stages" / "same_length_seed0_a01t5k8.done")
        .read_text()
        .startswith("both arms at step 12000, commit ")
    )

    # Every stage is done: a rerun trains and selects nothing.
    result, calls = _run(tmp_path)
    assert calls == []
    assert "multi30k_gain: teacher already done" in result.stdout
    assert "same_length_seed0_a01t5k8 already done" in result.stdout


def test_a_relative_work_dir_is_made_absolute(tmp_path):
    # The driver works from the checkout's root; a relative WORK_DIR names
    # a directory under the caller's working directory all the same.
    command, env = _driver(tmp_path)
    command[-1] = "work"
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        tmp_path / "work" / ".stages" / "same_length_seed2_a01t5k8.done"
    ).exists()
    assert f"done in {tmp_path / 'work'}" in result.stdout
    assert not os.path.exists(os.path.join(REPO, "work"))


def _wait_for(predicate, processes):
    deadline = time.time() + 120
    while not predicate():
        assert time.time() < deadline, "timed out"
        assert all(p.poll() is None for p in processes), "a lane stopped"
        time.sleep(0.05)


def _both_lanes(tmp_path, started):
    release = {
        name: tmp_path / f"release_{name}"
        for name in ("seed1", "seed2", "equal")
    }
    scenario = dict(
        SCENARIO,
        held_until={
            "baseline_seed1": str(release["seed1"]),
            "baseline_seed2": str(release["seed2"]),
            "distilled_a01t5k8_seed2": str(release["seed2"]),
            "baseline_seed2@7000": str(release["equal"]),
        },
    )
    command, env = _driver(tmp_path, "second", scenario=scenario)
    lane_log = tmp_path / "lane.log"
    lane = subprocess.Popen(
        command, stdout=lane_log.open("w"), stderr=subprocess.STDOUT, env=env
    )
    started.append(lane)
    # The lane starts with seed 1's baseline: it needs no teacher.
    _wait_for(lambda: _held(_calls(tmp_path)) == ["baseline_seed1"], [lane])
    command, env = _driver(tmp_path, scenario=scenario, calls="main.jsonl")
    main_log = tmp_path / "main.log"
    main = subprocess.Popen(
        command, stdout=main_log.open("w"), stderr=subprocess.STDOUT, env=env
    )
    started.append(main)
    # Meanwhile the main lane trains the teacher and seed 0, up to seed 2's
    # baseline.
    _wait_for(
        lambda: _held(_calls(tmp_path, "main.jsonl")) == ["baseline_seed2"],
        [lane, main],
    )
    main_calls = _calls(tmp_path, "main.jsonl")
    assert [c["mode"] for c in main_calls if c.get("tool") == "bertkd"] == [
        "train_teacher",
        "dump_teacher",
        "dump_teacher",
    ]
    assert _trains(main_calls) == TRAINS[0]
    assert _trains(_calls(tmp_path)) == []
    release["seed1"].touch()
    # The lane finds the teacher's stages done, trains seed 1, then seed
    # 2's distilled arm while the main lane trains its baseline.
    _wait_for(
        lambda: (
            _held(_calls(tmp_path))
            == ["baseline_seed1", "distilled_a01t5k8_seed2"]
        ),
        [lane, main],
    )
    assert _trains(_calls(tmp_path)) == TRAINS[1]
    release["seed2"].touch()
    # Seed 2's equal-length step runs in one lane while the other waits for
    # it as a whole (not only for its stages: two lanes in its loop could
    # train one student towards two different steps at once).
    waiting = "same_length_seed2_a01t5k8 is running in another lane; waiting"
    _wait_for(
        lambda: waiting in lane_log.read_text() + main_log.read_text(),
        [lane, main],
    )
    release["equal"].touch()
    assert lane.wait(timeout=120) == 0, lane_log.read_text()
    assert main.wait(timeout=120) == 0, main_log.read_text()
    lane_out, main_out = lane_log.read_text(), main_log.read_text()
    assert "all stages of the second lane done" in lane_out
    assert "all stages of the all lane done" in main_out
    for stage in (
        "teacher",
        "dump",
        "dump_valid",
        "stats_valid",
        "stats_train",
    ):
        assert f"multi30k_gain: {stage} already done" in lane_out
    # Together the lanes make every training call, none twice.
    lane_trains = _trains(_calls(tmp_path))
    main_trains = _trains(_calls(tmp_path, "main.jsonl"))
    every = TRAINS[0] + TRAINS[1] + TRAINS[2]
    assert sorted(lane_trains + main_trains, key=str) == sorted(every, key=str)
    assert lane_trains[len(TRAINS[1])] == (
        "distilled_a01t5k8_seed2",
        None,
        7000,
    )
    assert main_trains[len(TRAINS[0])] == ("baseline_seed2", None, 7000)
    done = tmp_path / "work/.stages/same_length_seed2_a01t5k8.done"
    assert done.read_text().startswith("both arms at step 7000, commit ")


def test_second_lane_runs_beside_the_main_lane(tmp_path):
    started = []
    try:
        _both_lanes(tmp_path, started)
    finally:
        for name in ("seed1", "seed2", "equal"):  # none left waiting
            (tmp_path / f"release_{name}").touch()
        for process in started:
            if process.poll() is None:
                process.kill()


def test_an_unknown_lane_is_refused_with_the_usage(tmp_path):
    command, env = _driver(tmp_path, "teachers")
    result = subprocess.run(command, capture_output=True, text=True, env=env)
    assert result.returncode == 2
    assert "tools/multi30k_gain.sh DATA_DIR WORK_DIR" in result.stdout
    assert not (tmp_path / "work").exists()
