"""One writer per output directory: a second one is refused, a dead one not.

The other process is a small Python child that imports only
`bertkd_tf.locking` (no TensorFlow), so these tests take about a second.
"""

import os
import signal
import subprocess
import sys
import textwrap

import pytest

from bertkd_tf import locking
from bertkd_tf.errors import LockedError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HOLDER = textwrap.dedent(
    """
    import sys
    from bertkd_tf import locking
    lock = locking.DirectoryLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    sys.stdin.read()  # Hold the lock until stdin closes (or a kill).
    """
)


@pytest.fixture
def holder(tmp_path):
    """A child process holding the lock on `tmp_path / "model"`."""
    directory = tmp_path / "model"
    child = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(directory)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert child.stdout.readline().strip() == "locked"
    yield child, str(directory)
    if child.poll() is None:
        child.kill()
    child.wait(timeout=30)


@pytest.mark.slow
def test_second_process_is_refused_naming_pid_and_directory(holder):
    child, directory = holder
    with pytest.raises(LockedError) as error:
        locking.DirectoryLock(directory).acquire()
    message = str(error.value)
    assert f"pid {child.pid}" in message
    assert directory in message
    # Once the holder ends normally, the directory is free again.
    child.stdin.close()
    child.wait(timeout=30)
    with locking.DirectoryLock(directory):
        pass
    assert not os.path.exists(os.path.join(directory, locking.LOCK_FILE))


@pytest.mark.slow
def test_lock_of_a_killed_process_is_taken_over(holder):
    child, directory = holder
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    # The killed holder left its .lock file; the kernel dropped its flock.
    assert os.path.exists(os.path.join(directory, locking.LOCK_FILE))
    with locking.DirectoryLock(directory) as lock:
        assert lock.held
        with open(lock.path) as f:
            assert f.readline().strip() == str(os.getpid())


def test_in_process_second_acquire_is_refused(tmp_path):
    directory = str(tmp_path / "targets")
    with locking.DirectoryLock(directory):
        with pytest.raises(
            LockedError, match=f"this process \\(pid {os.getpid()}"
        ):
            locking.DirectoryLock(directory).acquire()
    # Released: the next writer gets it.
    lock = locking.DirectoryLock(directory).acquire()
    lock.release()


def _writing_run(directory, fail=False, inner=None):
    _lock = locking.hold(directory)
    if inner is not None:
        inner()
    if fail:
        raise RuntimeError("the run failed")
    return "done"


def test_hold_is_released_when_the_run_returns_or_fails(tmp_path):
    directory = str(tmp_path / "student")
    assert _writing_run(directory) == "done"
    assert _writing_run(directory) == "done"  # Released on return.
    # A failed run whose traceback is kept (its frame, and the lock in it,
    # stay alive) does not block the next run of this process...
    with pytest.raises(RuntimeError) as failed:
        _writing_run(directory, fail=True)
    assert failed.traceback  # (kept alive until here)
    assert _writing_run(directory) == "done"
    # ...but a run that is still running does.
    with pytest.raises(LockedError):
        _writing_run(directory, inner=lambda: _writing_run(directory))


def test_urls_are_not_locked():
    assert locking.hold("gs://bucket/work/student") is None
