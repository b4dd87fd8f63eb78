"""SHA-256 fingerprints of final artifacts, recorded when written, checked
when read.

A final weights file (the teacher's and the student's `final.weights.h5`,
the averaged weights of `tools/average_checkpoints.py`) gets a sidecar
`<file>.sha256` in `sha256sum` format (`<hex digest>  <file name>`; check by
hand with `sha256sum -c final.weights.h5.sha256` in its directory), written
atomically once the file is complete. Readers call `verify_file`: a file
whose digest differs from the recorded one raises `ArtifactError`; a file
without a sidecar (work directories written before checksums existed) is
accepted with a logged warning.
"""

import hashlib
import os

from absl import logging

from bertkd_tf.atomic_files import write_text_atomic
from bertkd_tf.errors import ArtifactError, MissingArtifactError

CHECKSUM_SUFFIX = ".sha256"
_CHUNK = 1 << 20


def _open(path, mode="rb"):
    if "://" in path:  # gs://, ... through TensorFlow's file systems.
        import tensorflow as tf

        return tf.io.gfile.GFile(path, mode)
    return open(path, mode)


def _exists(path):
    if "://" in path:
        import tensorflow as tf

        return tf.io.gfile.exists(path)
    return os.path.exists(path)


def sha256_of_file(path):
    """The SHA-256 of the bytes of `path`, as 64 lowercase hex digits."""
    digest = hashlib.sha256()
    with _open(path) as f:
        while True:
            chunk = f.read(_CHUNK)
            if not chunk:
                break
            digest.update(chunk)
    return digest.hexdigest()


def checksum_path(path):
    """The sidecar that records the digest of `path`."""
    return path + CHECKSUM_SUFFIX


def write_checksum(path, digest=None):
    """Records the digest of `path` (computed unless given) in its sidecar,
    atomically; returns the digest."""
    digest = digest or sha256_of_file(path)
    write_text_atomic(
        checksum_path(path), f"{digest}  {os.path.basename(path)}\n"
    )
    return digest


def read_checksum(path):
    """The digest recorded for `path`, or None when it has no sidecar."""
    sidecar = checksum_path(path)
    if not _exists(sidecar):
        return None
    with _open(sidecar, "r") as f:
        text = f.read()
    fields = text.split()
    digest = fields[0].lower() if fields else ""
    if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest):
        raise ArtifactError(
            f"The checksum file {sidecar} is damaged: it should start with "
            f"the 64 hex digits of the SHA-256 of {os.path.basename(path)}, "
            f"but reads {text[:80]!r}. Delete it to load the file unchecked, "
            "or re-run the stage that wrote the file to write both again."
        )
    return digest


def verify_file(path, remedy=None):
    """Checks `path` against its recorded digest; returns the digest (None
    when no digest is recorded, which is logged as a warning).

    Args:
        path: the artifact.
        remedy: what to do when it is damaged, e.g. "re-run `bertkd
            --mode=train_teacher`"; a general hint by default.

    Raises:
        MissingArtifactError: `path` does not exist.
        ArtifactError: its bytes differ from the recorded digest.
    """
    remedy = remedy or (
        "re-run the stage that wrote it with the same settings (it writes "
        "the file and its checksum again)"
    )
    if not _exists(path):
        raise MissingArtifactError(
            f"{path} does not exist. To write it, {remedy}."
        )
    recorded = read_checksum(path)
    if recorded is None:
        logging.warning(
            "%s has no recorded checksum (%s missing; written before "
            "checksums existed?): loading it unchecked.",
            path,
            os.path.basename(checksum_path(path)),
        )
        return None
    actual = sha256_of_file(path)
    if actual != recorded:
        raise ArtifactError(
            f"{path} is damaged: its SHA-256 is {actual}, but "
            f"{os.path.basename(checksum_path(path))} recorded {recorded} "
            f"when it was written. Do not use it: {remedy}, or restore the "
            "file from a backup."
        )
    return actual
