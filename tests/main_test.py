"""The binary: gin files parse; bad configuration reads as a paragraph."""

import glob
import json
import os
import subprocess
import sys

import gin
import pytest
from absl import flags
from absl.testing import flagsaver

from bertkd_tf import main
from bertkd_tf.errors import BertkdError, ConfigError
from bertkd_tf.locking import DirectoryLock

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GIN_FILES = sorted(
    glob.glob(os.path.join(ROOT, "gin", "**", "*.gin"), recursive=True)
)


@pytest.mark.parametrize(
    "path", GIN_FILES, ids=lambda p: os.path.relpath(p, ROOT)
)
def test_every_gin_file_parses(path):
    gin.clear_config()
    gin.add_config_file_search_path(ROOT)
    gin.parse_config_files_and_bindings([path], [], finalize_config=False)
    gin.clear_config()


def test_there_are_gin_files_for_every_layer():
    folders = {os.path.basename(os.path.dirname(p)) for p in GIN_FILES}
    assert {"tasks", "runs", "experiments"} <= folders


def _bertkd(*args, cwd=ROOT):
    return subprocess.run(
        [sys.executable, "-m", "bertkd_tf.main", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
        timeout=300,
    )


@pytest.mark.slow
def test_missing_required_macros_named_without_traceback():
    result = _bertkd(
        "--mode=prepare",
        "--gin_file=gin/experiments/multi30k_de_en_prepare.gin",
    )
    assert result.returncode == 2
    assert "needs DATA_DIR, WORK_DIR" in " ".join(result.stderr.split())
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_typo_in_binding_is_one_paragraph():
    result = _bertkd(
        "--mode=prepare",
        "--gin_file=gin/experiments/multi30k_de_en_prepare.gin",
        "--gin_bindings=prepare.run.min_cont=2",
    )
    assert result.returncode == 2
    message = " ".join(result.stderr.split())
    assert "doesn't have a parameter named 'min_cont'" in message
    assert "Traceback" not in result.stderr


@pytest.mark.slow
def test_unknown_mode_rejected():
    result = _bertkd("--mode=prepre")
    assert result.returncode != 0
    assert "value should be one of" in result.stderr


def test_prepare_end_to_end_writes_vocab_stats_and_config(
    tmp_path, tiny_corpus, tiny_bert_vocab
):
    work_dir = tmp_path / "work"
    result = main.run_mode(
        "prepare",
        ["gin/experiments/multi30k_de_en_prepare.gin"],
        [
            f"DATA_DIR='{tiny_corpus}'",
            f"WORK_DIR='{work_dir}'",
            f"BERT='{tiny_bert_vocab}'",
            "task.Task.valid_split='valid'",
        ],
    )
    gin.clear_config()
    vocab_dir = work_dir / "vocab"
    assert result["output_dir"] == str(vocab_dir)
    stats = json.loads((vocab_dir / "stats.json").read_text())
    assert stats["splits"]["train"]["pairs"]["kept"] == 40
    assert stats["splits"]["valid"]["pairs"]["kept"] == 8
    assert stats["vocabulary_size"] == result["vocabulary_size"] > 5
    assert (
        "prepare.run.min_count = 1"
        in (vocab_dir / "operative_config.gin").read_text()
    )


# --- Macros nothing uses (a misspelt macro would silently do nothing) ---

DISTILL = "gin/experiments/multi30k_de_en_distill.gin"
PATHS = ["DATA_DIR='/tmp/bertkd-data'", "WORK_DIR='/tmp/bertkd-work'"]


def _config_error(mode, gin_files, bindings):
    gin.clear_config()
    try:
        with pytest.raises(ConfigError) as error:
            main.parse_config(mode, gin_files, PATHS + bindings)
    finally:
        gin.clear_config()
    return " ".join(str(error.value).split())


@pytest.mark.parametrize(
    "binding, name, closest",
    [
        ("TRAIN_STEP=5", "TRAIN_STEP", "TRAIN_STEPS"),
        ("DISTILATION_WEIGHT=0.0", "DISTILATION_WEIGHT", "DISTILLATION_WEIGHT"),
    ],
)
def test_misspelt_macro_binding_is_refused_naming_the_closest(
    binding, name, closest
):
    message = _config_error("distill", [DISTILL], [binding])
    assert f"macro {name} (set by --gin_bindings) is used by no" in message
    assert f"did you mean {closest}?" in message


def test_misspelt_macro_in_a_gin_file_names_file_and_line(tmp_path):
    path = tmp_path / "mine.gin"
    path.write_text(f"include '{DISTILL}'\n\nDISTILATION_WEIGHT = 0.0\n")
    message = _config_error("distill", [str(path)], [])
    where = f"set at {os.path.relpath(path)}:3"
    assert f"macro DISTILATION_WEIGHT ({where}) is used by no" in message
    assert "did you mean DISTILLATION_WEIGHT?" in message


def test_reference_to_a_macro_never_set_is_refused():
    message = _config_error(
        "distill", [DISTILL], ["distill.run.total_steps = %TRAIN_STEP"]
    )
    assert "macro TRAIN_STEP is needed by mode 'distill'" in message
    assert "did you mean TRAIN_STEPS?" in message


def test_macros_that_only_other_modes_use_are_accepted(capsys):
    # A driver binding the same macros for every stage (tools/demo.py,
    # tools/run_experiment.sh): TRAIN_STEPS means nothing to prepare, and
    # DATA_DIR nothing to export with gin/runs/export.gin alone.
    for mode, gin_file, bindings in (
        (
            "prepare",
            "gin/experiments/multi30k_de_en_prepare.gin",
            ["TRAIN_STEPS=5"],
        ),
        ("export", "gin/runs/export.gin", ["TOP_K=4"]),
    ):
        gin.clear_config()
        main.run_mode(mode, [gin_file], PATHS + bindings, dry_run=True)
    gin.clear_config()
    capsys.readouterr()


def _mode_of(path):
    name = os.path.basename(path)
    for key, mode in (
        ("prepare", "prepare"),
        ("dump", "dump_teacher"),
        ("evaluate", "evaluate"),
        ("baseline", "distill"),
        ("distill", "distill"),
        ("student", "distill"),
        ("teacher", "train_teacher"),
    ):
        if key in name:
            return mode
    return None


def _dry_run_cases():
    """(mode, gin files) for every experiment, demo and test gin file."""
    cases = []
    for path in GIN_FILES:
        relative = os.path.relpath(path, ROOT)
        if relative.startswith("gin/experiments/") and _mode_of(path):
            cases.append((_mode_of(path), [relative]))
    for mode in main.MODES:
        cases.append((mode, [f"gin/runs/{mode}.gin", "gin/demo/demo.gin"]))
    task = "gin/tasks/multi30k_de_en.gin"
    for mode in ("prepare", "train_teacher"):
        cases.append(
            (mode, [task, f"gin/runs/{mode}.gin", "gin/tests/cmlm_tiny.gin"])
        )
    for mode in ("distill", "evaluate", "translate", "export"):
        cases.append(
            (
                mode,
                [
                    task,
                    f"gin/runs/{mode}.gin",
                    "gin/tests/transformer_tiny.gin",
                ],
            )
        )
    return cases


@pytest.mark.parametrize(
    "mode, gin_files", _dry_run_cases(), ids=lambda x: str(x).replace("/", ".")
)
def test_every_experiment_demo_and_test_gin_dry_runs(mode, gin_files, capsys):
    """No shipped gin file trips the macro and setting checks."""
    gin.clear_config()
    try:
        main.run_mode(mode, gin_files, PATHS, dry_run=True)
    finally:
        gin.clear_config()
    assert "'/tmp/bertkd-work'" in capsys.readouterr().out


# --- Bad values: named setting, macro, value; one paragraph, exit 2 ---


@pytest.mark.parametrize(
    "mode, gin_file, binding, expected",
    [
        (
            "distill",
            DISTILL,
            "TRAIN_STEPS='abc'",
            "distill.run.total_steps (macro TRAIN_STEPS, set by "
            "--gin_bindings) must be an int >= 1; got 'abc' (a str)",
        ),
        (
            "distill",
            DISTILL,
            "TOP_K='eight'",
            "distill.run.top_k (macro TOP_K, set by --gin_bindings) must be "
            "an int >= 1; got 'eight' (a str)",
        ),
        (
            "distill",
            DISTILL,
            "STRATEGY='mirored'",
            "distill.run.strategy (macro STRATEGY, set by --gin_bindings) "
            "must be one of 'default', 'mirrored', 'multi_worker', 'tpu'; "
            "got 'mirored'",
        ),
        (
            "distill",
            DISTILL,
            "DISTILLATION_WEIGHT=1.5",
            "distill.run.distillation_weight (macro DISTILLATION_WEIGHT, set "
            "by --gin_bindings) must be a number in [0, 1]; got 1.5",
        ),
        (
            "evaluate",
            "gin/experiments/multi30k_de_en_evaluate.gin",
            "search_settings.SearchSettings.beam_size=0",
            "SearchSettings.beam_size (set by --gin_bindings) must be an int "
            ">= 1; got 0 (an int)",
        ),
        (
            "evaluate",
            "gin/experiments/multi30k_de_en_evaluate.gin",
            "BEAM_SIZE=0",
            "SearchSettings.beam_size (macro BEAM_SIZE, set by --gin_bindings)"
            " must be an int >= 1; got 0 (an int)",
        ),
        (
            "export",
            "gin/runs/export.gin",
            "search_settings.SearchSettings.jit_compile='yes'",
            "SearchSettings.jit_compile (set by --gin_bindings) must be True "
            "or False; got 'yes'",
        ),
        (
            "translate",
            "gin/runs/translate.gin",
            "search_settings.SearchSettings.max_length_margin=-1",
            "SearchSettings.max_length_margin (set by --gin_bindings) must be "
            "an int >= 0 or None; got -1",
        ),
        (
            "train_teacher",
            "gin/experiments/multi30k_de_en_teacher.gin",
            "PEAK_LEARNING_RATE=-1e-4",
            "train_teacher.run.peak_learning_rate (macro PEAK_LEARNING_RATE, "
            "set by --gin_bindings) must be a number > 0; got -0.0001",
        ),
    ],
)
def test_bad_setting_names_setting_macro_and_value(
    mode, gin_file, binding, expected
):
    message = _config_error(mode, [gin_file], [binding])
    assert expected in message
    assert f"gin/runs/{mode}.gin lists the mode's settings" in message


def test_bad_setting_in_a_gin_file_names_file_and_line(tmp_path):
    path = tmp_path / "mine.gin"
    path.write_text(f"include '{DISTILL}'\nTRAIN_STEPS = '10k'\n")
    message = _config_error("distill", [str(path)], [])
    assert (
        f"distill.run.total_steps (macro TRAIN_STEPS, set at "
        f"{os.path.relpath(path)}:2) must be an int >= 1; got '10k'"
    ) in message


def test_usage_error_is_a_config_error():
    assert issubclass(main.UsageError, ConfigError)
    assert issubclass(main.UsageError, BertkdError)


def _main_in_process(capsys, mode, gin_files, bindings, verbosity=-1):
    """Runs the binary's `_main` here; returns (exit status, stderr)."""
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    gin.clear_config()
    capsys.readouterr()
    try:
        with flagsaver.flagsaver(
            mode=mode,
            gin_file=gin_files,
            gin_bindings=bindings,
            verbosity=verbosity,
        ):
            with pytest.raises(SystemExit) as exit_:
                main._main(["bertkd"])
    finally:
        gin.clear_config()
    return exit_.value.code, capsys.readouterr().err


def _paragraph(stderr):
    """The `bertkd: ...` paragraph at the end of stderr (asserts one)."""
    assert "bertkd: " in stderr, stderr
    paragraph = stderr[stderr.rindex("bertkd: ") :].strip()
    assert "\n\n" not in paragraph
    return " ".join(paragraph.split())


@pytest.mark.parametrize(
    "case", ["bad_int", "bad_string", "missing_file", "not_a_directory"]
)
def test_expected_failures_are_one_paragraph_exit_2(
    case, capsys, tmp_path, tiny_bert_vocab
):
    prepare = "gin/experiments/multi30k_de_en_prepare.gin"
    (tmp_path / "a_file").write_text("x")
    work = [f"WORK_DIR='{tmp_path}/work'", f"BERT='{tiny_bert_vocab}'"]
    mode, gin_file, bindings, expected = {
        "bad_int": (
            "distill",
            DISTILL,
            [*PATHS, "TRAIN_STEPS='abc'"],
            "distill.run.total_steps (macro TRAIN_STEPS",
        ),
        "bad_string": (
            "distill",
            DISTILL,
            [*PATHS, "distill.run.distillation_form='hintn'"],
            "distill.run.distillation_form (set by --gin_bindings) must be "
            "one of 'paper', 'hinton'; got 'hintn'",
        ),
        "missing_file": (
            "prepare",
            prepare,
            [f"DATA_DIR='{tmp_path}/no_corpus'", *work],
            f"No file for split 'train', language 'de': expected "
            f"{tmp_path}/no_corpus/train.de",
        ),
        "not_a_directory": (
            "prepare",
            prepare,
            [
                f"DATA_DIR='{tmp_path}'",
                f"WORK_DIR='{tmp_path}/a_file/work'",
                f"BERT='{tiny_bert_vocab}'",
            ],
            f"I/O error on '{tmp_path}/a_file",
        ),
    }[case]
    status, stderr = _main_in_process(capsys, mode, [gin_file], bindings)
    assert status == 2
    assert "Traceback" not in stderr
    assert expected in _paragraph(stderr)
    # With --verbosity=1 the traceback comes first, then the same paragraph.
    status, stderr = _main_in_process(
        capsys, mode, [gin_file], bindings, verbosity=1
    )
    assert status == 2
    assert "Traceback (most recent call last)" in stderr
    assert expected in _paragraph(stderr)


def test_locked_output_directory_is_one_paragraph(
    capsys, tmp_path, tiny_corpus, tiny_bert_vocab
):
    vocab_dir = tmp_path / "work" / "vocab"
    bindings = [
        f"DATA_DIR='{tiny_corpus}'",
        f"WORK_DIR='{tmp_path}/work'",
        f"BERT='{tiny_bert_vocab}'",
    ]
    with DirectoryLock(str(vocab_dir)):
        status, stderr = _main_in_process(
            capsys,
            "prepare",
            ["gin/experiments/multi30k_de_en_prepare.gin"],
            bindings,
        )
    assert status == 2
    message = _paragraph(stderr)
    assert f"{vocab_dir} is being written by this process (pid" in message


@pytest.mark.slow
def test_binary_bad_value_exit_2_traceback_only_with_verbosity():
    args = ["--mode=distill", f"--gin_file={DISTILL}"] + [
        f"--gin_bindings={b}" for b in [*PATHS, "TRAIN_STEPS='abc'"]
    ]
    quiet = _bertkd(*args)
    assert quiet.returncode == 2
    assert "Traceback" not in quiet.stderr
    assert "must be an int >= 1; got 'abc'" in _paragraph(quiet.stderr)
    verbose = _bertkd(*args, "--verbosity=1")
    assert verbose.returncode == 2
    assert "Traceback (most recent call last)" in verbose.stderr
    assert "must be an int >= 1; got 'abc'" in _paragraph(verbose.stderr)


def test_value_error_of_our_own_checks_is_one_paragraph(capsys, monkeypatch):
    from bertkd_tf.data.batching import TokenBudgetBatcher

    def run_mode(*args, **kwargs):
        TokenBudgetBatcher(1, [8])  # Raises inside bertkd_tf/data/.

    monkeypatch.setattr(main, "run_mode", run_mode)
    status, stderr = _main_in_process(capsys, "distill", [DISTILL], [])
    assert status == 2 and "Traceback" not in stderr
    message = _paragraph(stderr)
    assert "tokens_per_batch=1 cannot hold one example" in message
    assert "bertkd_tf/data/batching.py:" in message


def test_value_error_from_outside_the_package_keeps_its_traceback(
    capsys, monkeypatch
):
    def run_mode(*args, **kwargs):
        raise ValueError("a bug elsewhere")

    monkeypatch.setattr(main, "run_mode", run_mode)
    with pytest.raises(ValueError, match="a bug elsewhere"):
        _main_in_process(capsys, "distill", [DISTILL], [])


# The cuInit error line (issue 18 point 6) -----------------------------------

_DEVICES = "import tensorflow as tf; tf.config.list_physical_devices()"


@pytest.mark.slow
def test_binary_prints_no_cuinit_error_on_a_machine_without_nvidia(tmp_path):
    """TensorFlow alone prints the CUDA plugin's `failed call to cuInit`
    error here; the binary does not, and its other stderr lines (the
    paragraph of an expected failure) still come out."""
    if not main._without_nvidia_device():
        pytest.skip("an NVIDIA device or CUDA_VISIBLE_DEVICES: not filtered")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    plain = subprocess.run(
        [sys.executable, "-c", _DEVICES],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if "failed call to cuInit" not in plain.stderr:
        pytest.skip("this TensorFlow prints no cuInit error: nothing to hide")
    work_dir = tmp_path / "work"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "bertkd_tf.main",
            "--mode=dump_teacher",
            "--gin_file=gin/experiments/multi30k_de_en_dump.gin",
            f"--gin_bindings=DATA_DIR='{tmp_path}'",
            f"--gin_bindings=WORK_DIR='{work_dir}'",
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2, result.stderr[-3000:]
    assert "cuInit" not in result.stderr, result.stderr
    assert "vocab" in _paragraph(result.stderr)


def test_stderr_filter_drops_matching_lines_only(tmp_path):
    """Lines written to file descriptor 2 (as TensorFlow's C++ logging
    writes) inside the filter: the cuInit one is dropped, the others come
    out in order."""
    script = (
        "import os, sys\n"
        f"sys.path.insert(0, {ROOT!r})\n"
        "from bertkd_tf import main\n"
        "with main._filtered_stderr(main._CUDA_INIT_NOISE):\n"
        "    os.write(2, b'first line\\n')\n"
        "    os.write(2, b'E0000 00:00:1.2  7 cuda_platform.cc:52] failed "
        "call to cuInit: INTERNAL: CUDA error\\n')\n"
        "    sys.stderr.write('python line\\n')\n"
        "    os.write(2, b'x' * 200000 + b'\\n')\n"
        "os.write(2, b'after\\n')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stderr.splitlines()
    assert lines[:2] == [b"first line", b"python line"], lines[:3]
    assert lines[2] == b"x" * 200000 and lines[3:] == [b"after"]
