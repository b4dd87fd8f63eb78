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
