"""The suite's own scheduling: the files `conftest.LONGEST_FILES` sends first
exist, and collection puts them first, in that order."""

import os
import subprocess
import sys

from tests.conftest import LONGEST_FILES

TESTS = os.path.dirname(os.path.abspath(__file__))


def test_longest_files_exist():
    missing = [
        f for f in LONGEST_FILES if not os.path.isfile(os.path.join(TESTS, f))
    ]
    assert not missing, f"conftest.LONGEST_FILES names missing files: {missing}"


def test_collection_starts_with_the_longest_files():
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-p",
            "no:cacheprovider",
            TESTS,
        ],
        cwd=os.path.dirname(TESTS),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    files = []
    for line in result.stdout.splitlines():
        if "::" in line:
            name = os.path.relpath(line.split("::")[0], "tests").replace(
                os.sep, "/"
            )
            if not files or files[-1] != name:
                files.append(name)
    assert files[: len(LONGEST_FILES)] == list(LONGEST_FILES)
    assert len(files) == len(set(files)), "a file's tests were split apart"
