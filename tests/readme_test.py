"""The README's commands work as written: every fenced block marked
`runnable` (```` ```bash runnable ```` or ```` ```python runnable ````) is
run, in order, in one shell from the repository root, as a new user
pasting them would (bash blocks as they are, python blocks through the
venv's python, sharing the shell's exported variables).

`W` (the work directory the README's commands use) is set to a temporary
directory. Command blocks that cannot run here (they need the network,
hours, or are `make` itself) are marked ```` ```bash no-run ```` and are
only checked to be marked.
"""

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(ROOT, "README.md")
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```\s*$", re.M | re.S)


def blocks():
    """`[(language, tags, text)]` of the README's fenced blocks."""
    with open(README, encoding="utf-8") as f:
        text = f.read()
    found = []
    for match in FENCE.finditer(text):
        words = match.group(1).split()
        language = words[0] if words else ""
        found.append((language, set(words[1:]), match.group(2)))
    return found


def runnable_script():
    """The bash script of the runnable blocks, in README order."""
    parts = []
    for language, tags, text in blocks():
        if "runnable" not in tags:
            continue
        if language == "bash":
            parts.append(text)
        elif language == "python":
            parts.append(f"python - <<'README_PYTHON'\n{text}README_PYTHON\n")
        else:
            raise AssertionError(f"runnable block of language {language!r}")
    return "\n".join(parts)


def test_every_shell_block_is_marked():
    unmarked = [
        text.splitlines()[0] if text.strip() else "(empty)"
        for language, tags, text in blocks()
        if language in ("bash", "sh", "shell", "")
        and not tags & {"runnable", "no-run"}
        and _looks_like_commands(text)
    ]
    assert not unmarked, (
        "README command blocks must be marked ```bash runnable (run by this "
        "test) or ```bash no-run; unmarked blocks start with: "
        + "; ".join(unmarked)
    )


def _looks_like_commands(text):
    first = text.strip().splitlines()[0] if text.strip() else ""
    command = r"^(\.?/|\.venv|make|bertkd|python|source|export|[A-Z_]+=)"
    return bool(re.match(command, first))


def test_the_quickstart_is_there():
    script = runnable_script()
    # What the README promises a new user (issue 18): both students on their
    # own corpus, a file translated with n-best output, the export loaded.
    for mode in ("prepare", "train_teacher", "dump_teacher", "distill"):
        assert re.search(rf"bertkd (--mode=)?{mode}\b", script), mode
    for mode in ("evaluate", "translate", "export"):
        assert re.search(rf"bertkd (--mode=)?{mode}\b", script), mode
    for needed in ("DISTILLATION_WEIGHT=0", "nbest", "tf.saved_model.load"):
        assert needed in script, f"no runnable README command has {needed!r}"


@pytest.mark.slow
def test_runnable_blocks_run(tmp_path):
    script = runnable_script().replace("source .venv/bin/activate", "true")
    bin_dir = os.path.dirname(sys.executable)
    env = dict(
        os.environ,
        W=str(tmp_path / "work"),
        PATH=bin_dir + os.pathsep + os.environ["PATH"],
        TF_CPP_MIN_LOG_LEVEL="2",
    )
    result = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, (
        f"README commands failed ({result.returncode}):\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-5000:]}"
    )
