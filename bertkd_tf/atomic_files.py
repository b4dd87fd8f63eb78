"""Writing files so that a crash never leaves a half-written one."""

import os


def write_text_atomic(path, text):
    """Writes `text` (UTF-8) to `path` through a temporary file in the same
    directory, renamed over `path` once complete. Creates the directory.
    Works for any `tf.io.gfile` path (local, GCS, ...)."""
    import tensorflow as tf  # Lazily: the CLI imports this before TF.

    directory = os.path.dirname(path)
    if directory:
        tf.io.gfile.makedirs(directory)
    temporary = f"{path}.tmp-{os.getpid()}"
    with tf.io.gfile.GFile(temporary, "w") as f:
        f.write(text)
    tf.io.gfile.rename(temporary, path, overwrite=True)


def _process_alive(pid):
    """Whether process `pid` runs on this machine (ours counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, ValueError):
        return pid < (1 << 31)  # Another user's process (or a bad pid).
    return True


def remove_stale_temporaries(directory, pattern, what="leftover"):
    """Removes the leftovers of interrupted writes from `directory`.

    Deletes the files and directories directly in `directory` whose name
    fully matches the regular expression `pattern`. A named group `pid` in
    the pattern marks the writer's process id: a leftover whose writer still
    runs on this machine is kept (it is being written). Logs a warning per
    removal; returns the removed paths. A missing `directory` is no error.

    Example:
    >>> remove_stale_temporaries("ckpts", r"ckpt-\\d+_temp")
    ['ckpts/ckpt-4_temp']
    """
    import re
    import shutil

    from absl import logging

    if not os.path.isdir(directory):
        return []
    regex = re.compile(pattern)
    removed = []
    for name in sorted(os.listdir(directory)):
        match = regex.fullmatch(name)
        if match is None:
            continue
        pid = match.groupdict().get("pid")
        if pid is not None and _process_alive(int(pid)):
            continue
        path = os.path.join(directory, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                os.remove(path)
        except FileNotFoundError:
            continue  # Removed meanwhile.
        logging.warning(
            "Removed %s, the %s of an interrupted earlier run.", path, what
        )
        removed.append(path)
    return removed
