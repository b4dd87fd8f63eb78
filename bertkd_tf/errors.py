"""The expected failures of the pipeline.

An expected failure (a bad file, a bad setting, a missing or damaged
artifact, an I/O error on a named path) raises a `BertkdError` whose message
is one paragraph: what was wrong, which file / line / setting, and what to do.
The `bertkd` binary prints that paragraph and exits with status 2, with the
traceback only under `--verbosity=1` (or higher); anything else is a bug and
keeps its traceback.

The subclasses also derive from the built-in type that callers caught before
they existed (`ValueError`, `FileNotFoundError`, `RuntimeError`), so library
users' `except` clauses keep working.
"""


class BertkdError(Exception):
    """An expected failure, reported as one paragraph (no traceback)."""


class ConfigError(BertkdError, ValueError):
    """A setting (gin binding, argument) has a bad value or name."""


class DataError(BertkdError, ValueError):
    """Input data (text pairs, a split) is malformed."""


class ArtifactError(BertkdError, ValueError):
    """An artifact of an earlier stage is missing, damaged or mismatched."""


class MissingArtifactError(BertkdError, FileNotFoundError):
    """An artifact of an earlier stage does not exist yet."""


class MissingInputError(BertkdError, FileNotFoundError):
    """An input file named by a setting does not exist."""


class LockedError(BertkdError, RuntimeError):
    """Another process is writing the same output directory."""


class TrainingInterrupted(BertkdError, RuntimeError):
    """Training stopped on a signal (SIGTERM, SIGINT) after writing a
    checkpoint of the step it reached; the same command resumes there.
    `signum` is the signal (the `bertkd` binary exits with 128 + it)."""

    def __init__(self, message, signum):
        super().__init__(message)
        self.signum = signum
