"""One writer per output directory: an `flock` on `<directory>/.lock`.

Two runs writing the same model, targets, vocabulary or export directory
would interleave their checkpoints, shards and `history.jsonl` records, and
the last writer would silently win. A writing run therefore takes the
directory's lock first; a second writer fails at once with `LockedError`
naming the holder's pid and the directory.

The lock is `fcntl.flock` on `<directory>/.lock` (which holds the owner's
pid and command line, for messages only). The kernel drops an flock when its
process ends, however it ends (`kill -9`, out of memory, a lost machine), so
a killed run never blocks the next one and there is nothing to clean up (a
killed run leaves its `.lock` file, harmless; a finished one removes it).
Within one process a second `acquire` of a held directory is refused too
(flock locks belong to open files, not processes).

Example, at the top of a run, once the output directory is known:

    _lock = locking.hold(output_dir)  # released when run() returns

Only local directories are locked (`gs://...` and other URLs are not:
`flock` needs a local or NFS file system); `hold` returns None for them.
"""

import fcntl
import os
import sys
import time
import weakref

from absl import logging

from bertkd_tf.errors import LockedError

LOCK_FILE = ".lock"

# Directory (real path) -> the `DirectoryLock` holding it in this process
# (weak: a lock nobody references is released by garbage collection).
_HELD = weakref.WeakValueDictionary()


def _is_url(path):
    return "://" in str(path)


def _describe_holder(path):
    """`pid 123 (python -m bertkd_tf.main --mode=distill ...)` or a guess."""
    text = ""
    for _ in range(20):  # The holder writes its pid right after locking.
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                text = f.read()
        except OSError:
            text = ""
        if text.strip():
            break
        time.sleep(0.05)
    lines = text.strip().splitlines()
    if not lines:
        return "another process (pid unknown)"
    pid = lines[0].strip()
    command = lines[1].strip() if len(lines) > 1 else ""
    who = (
        f"this process (pid {pid})" if pid == str(os.getpid()) else f"pid {pid}"
    )
    return who + (f" ({command})" if command else "")


def _running_frame_holds(lock):
    """Whether a running function (any thread) still has `lock` as a local.

    `hold()` ties a lock to the function that took it; the function's
    locals normally release it when the function returns, but a traceback
    kept after an exception (a test's `pytest.raises`, a notebook) keeps the
    finished frame, and with it the lock, alive.
    """
    code = lock._owner_code  # noqa: SLF001
    for top in sys._current_frames().values():  # noqa: SLF001
        frame = top
        while frame is not None:
            if frame.f_code is code and any(
                value is lock for value in frame.f_locals.values()
            ):
                return True
            frame = frame.f_back
    return False


def _same_file(fd, path):
    """Whether the open file `fd` is still the file at `path`."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


class DirectoryLock:
    """The exclusive right to write `directory` (created if missing).

    Args:
        directory: the output directory; the lock is `directory/.lock`.

    Use as a context manager (`with DirectoryLock(d):`), with
    `acquire()`/`release()`, or through `hold()` in a run. Released by
    `release()`, by garbage collection of the object and, in every case,
    when the process ends.

    Raises:
        LockedError: another process, or another holder in this process,
            has the lock.
    """

    def __init__(self, directory):
        self.directory = os.fspath(directory)
        self.path = os.path.join(self.directory, LOCK_FILE)
        self._fd = None
        self._owner_code = None  # Set by hold(): the function it belongs to.

    @property
    def held(self):
        return self._fd is not None

    def acquire(self):
        if self.held:
            raise LockedError(
                f"This process already holds the lock on {self.directory}."
            )
        os.makedirs(self.directory, exist_ok=True)
        key = os.path.realpath(self.directory)
        for _ in range(20):
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                if self._take_over_finished(key):
                    continue
                raise LockedError(
                    f"{self.directory} is being written by "
                    f"{_describe_holder(self.path)}, which holds "
                    f"{self.path}. Two writers would mix their checkpoints, "
                    "shards or records: wait for that run to finish (or "
                    "stop it), or write elsewhere (another WORK_DIR or "
                    "output directory). The lock goes away by itself when "
                    "its process ends."
                ) from None
            except BaseException:
                os.close(fd)
                raise
            if not _same_file(fd, self.path):
                # Released (and removed) by its holder between our open and
                # flock: lock the file now at the path instead.
                os.close(fd)
                continue
            try:
                os.ftruncate(fd, 0)
                command = " ".join(sys.argv)[:300].replace("\n", " ")
                os.write(fd, f"{os.getpid()}\n{command}\n".encode())
            except BaseException:
                os.close(fd)
                raise
            self._fd = fd
            _HELD[key] = self
            return self
        raise LockedError(
            f"Could not lock {self.path}: other processes keep taking and "
            "releasing it. Run again when they are done."
        )

    @staticmethod
    def _take_over_finished(key):
        """Releases this process' lock on `key` if its run has finished.

        A lock taken by `hold()` belongs to the function that took it; if
        that function is no longer running (it raised, and a kept traceback
        holds its frame), it no longer writes.
        """
        other = _HELD.get(key)
        if (
            other is None
            or not other.held
            or other._owner_code is None  # noqa: SLF001
            or _running_frame_holds(other)
        ):
            return False
        logging.info("Taking over the lock on %s from a finished run.", key)
        other.release()
        return True

    def release(self):
        """Releases the lock and removes the `.lock` file (if still ours)."""
        fd, self._fd = self._fd, None
        if fd is None:
            return
        key = os.path.realpath(self.directory)
        if _HELD.get(key) is self:
            del _HELD[key]
        try:
            # Removed while still locked: a process that opened it meanwhile
            # sees, once it gets the flock, that the path is gone and retries.
            if _same_file(fd, self.path):
                os.remove(self.path)
        except OSError:
            pass
        finally:
            os.close(fd)  # Drops the flock.

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc_info):
        self.release()

    def __del__(self):
        try:
            self.release()
        except Exception:  # noqa: BLE001  (interpreter shutdown)
            pass

    def __repr__(self):
        state = "held" if self.held else "not held"
        return f"DirectoryLock({self.directory!r}, {state})"


def hold(directory):
    """Locks `directory` for the calling function; returns the lock.

    Keep the result in a local of the writing function (`_lock =
    locking.hold(output_dir)`): the lock is released when that function
    returns (its locals go), when it raised and is no longer running (the
    next writer in this process takes over), and when the process ends.
    URLs (`gs://...`) are not locked (returns None).

    Raises:
        LockedError: another run writes `directory`.
    """
    if _is_url(directory):
        logging.info("Not locking %s (not a local directory).", directory)
        return None
    lock = DirectoryLock(directory)
    lock._owner_code = sys._getframe(1).f_code  # noqa: SLF001
    return lock.acquire()
