r"""The one binary: `bertkd --mode=MODE --gin_file=F [--gin_bindings=B ...]`.

Each mode is `bertkd_tf/runs/<mode>.py` with one `run()`; gin files bind its
arguments (`from __gin__ import dynamic_registration`). Gin and flags live
only here. `bertkd translate ...` is short for `bertkd --mode=translate ...`.

Before running, the configuration is checked: a macro that nothing uses (a
misspelling such as `TRAIN_STEP=5`) is refused naming the closest existing
one, and every value bound to the mode's `run()` is checked against its type
and range (`settings.RULES`). Expected failures (`errors.BertkdError`, such
as a bad setting, malformed data, a missing artifact or a locked output
directory, and `OSError`) print one paragraph, saying what was wrong, where
and what to do, and exit with status 2; `--verbosity=1` adds the traceback.
So does a `ValueError` / `KeyError` raised by one of this package's own
checks (its message names the bad value; the paragraph adds where it was
raised); one raised inside TensorFlow or Keras is a bug and keeps its
traceback.

Example:
  bertkd --mode=prepare \
    --gin_file=gin/experiments/multi30k_de_en_prepare.gin \
    --gin_bindings="DATA_DIR='data/multi30k_de_en'" \
    --gin_bindings="WORK_DIR='/tmp/w'"
"""

import contextlib
import difflib
import errno
import glob
import importlib
import inspect
import os
import re
import sys
import textwrap
import time
import traceback

from absl import app, flags, logging

from bertkd_tf import settings
from bertkd_tf.atomic_files import write_text_atomic
from bertkd_tf.decoding.search_settings import SearchSettings
from bertkd_tf.errors import BertkdError, ConfigError, TrainingInterrupted
from bertkd_tf.operative_config import OPERATIVE_CONFIG

MODES = (
    "prepare",
    "train_teacher",
    "dump_teacher",
    "distill",
    "evaluate",
    "translate",
    "export",
)

FLAGS = flags.DEFINE_enum("mode", None, MODES, "The pipeline stage to run.")
GIN_FILES = flags.DEFINE_multi_string(
    "gin_file",
    [],
    "Gin files (searched in the working directory, then in "
    "the package's gin/ directory).",
)
GIN_BINDINGS = flags.DEFINE_multi_string(
    "gin_bindings", [], "Extra gin bindings, e.g. \"WORK_DIR='/tmp/w'\"."
)
DRY_RUN = flags.DEFINE_bool(
    "dry_run", False, "Parse the configuration, print it, and stop."
)

CONFIG_FILE = OPERATIVE_CONFIG


class UsageError(ConfigError):
    """A configuration problem, reported as one paragraph (no traceback).

    Kept for callers that catch it; new code raises `errors.ConfigError`.
    """


def _fail(message, status=2):
    # Paths are never split (copy-paste): no breaks at hyphens or inside.
    text = textwrap.fill(
        " ".join(str(message).split()),
        width=78,
        break_on_hyphens=False,
        break_long_words=False,
    )
    print(f"bertkd: {text}", file=sys.stderr)
    sys.exit(status)


def _describe_os_error(error):
    """One paragraph for an `OSError`: what, which path, what to do."""
    if error.errno is None or error.strerror is None:
        return str(error)  # Our own message (it names the path).
    code = errno.errorcode.get(error.errno, str(error.errno))
    paths = " and ".join(
        repr(os.fspath(p))
        for p in (error.filename, error.filename2)
        if p is not None
    )
    where = f" on {paths}" if paths else ""
    return (
        f"I/O error{where}: {error.strerror} ({code}). Check that the path "
        "(a gin setting such as WORK_DIR / DATA_DIR, or the output of an "
        "earlier stage) exists and is readable and writable, and that the "
        "disk has space; then run the same command again."
    )


def _unwrap_gin_proxy(error):
    """The exception gin re-raised as a proxy, else `error`.

    gin re-raises an exception from a configurable (`run()`) as an instance
    of a subclass whose message adds "In call to configurable 'run' (...)"
    and whose own attributes (an OSError's `errno`, `filename`) are empty;
    the original is its `__context__`.
    """
    for _ in range(10):
        proxy_str = type(error).__dict__.get("__str__")
        context = error.__context__
        if (
            context is None
            or "augment_exception_message_and_reraise"
            not in getattr(proxy_str, "__qualname__", "")
        ):
            return error
        error = context
    return error


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))


def _raised_by_our_checks(error):
    """`(file, line)` where a `ValueError` / `KeyError` was raised if that is
    inside this package (an argument or data check of ours, whose message
    says what was wrong), else None (raised inside TensorFlow, Keras or
    another library: a bug, which keeps its traceback)."""
    error = _unwrap_gin_proxy(error)
    if not isinstance(error, (ValueError, KeyError)):
        return None
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return None
    innermost = frames[-1]
    if not os.path.abspath(innermost.filename).startswith(
        _PACKAGE_DIR + os.sep
    ):
        return None
    return os.path.relpath(innermost.filename, os.path.dirname(_PACKAGE_DIR)), (
        innermost.lineno
    )


def _report(error):
    """Prints an expected failure as one paragraph; exits with status 2
    (128 + the signal number for a run stopped by a signal, as a shell
    reports a process the signal killed).

    The traceback comes first only under `--verbosity=1` or higher.
    """
    verbosity = (
        flags.FLAGS["verbosity"].value if "verbosity" in flags.FLAGS else -1
    )
    if verbosity is not None and verbosity >= 1:
        traceback.print_exception(error)
    error = _unwrap_gin_proxy(error)
    if isinstance(error, TrainingInterrupted):
        _fail(str(error), status=128 + int(error.signum))
    if isinstance(error, OSError) and not isinstance(error, BertkdError):
        message = _describe_os_error(error)
    elif isinstance(error, BertkdError):
        message = str(error)
    else:  # A ValueError / KeyError of one of our checks.
        where, line = _raised_by_our_checks(error)
        text = str(error.args[0]) if error.args else type(error).__name__
        message = (
            f"{text} (a {type(error).__name__} raised at {where}:{line}: "
            "change the setting or input it names; --verbosity=1 shows the "
            "traceback)"
        )
    _fail(message)


def _gin_search_paths():
    here = os.path.dirname(os.path.abspath(__file__))
    return [os.getcwd(), os.path.dirname(here)]


def _required_macros(gin):
    """Names of macros still bound to `%gin.REQUIRED`."""
    from gin import config as gin_config

    missing = []
    for (name, selector), params in gin_config._CONFIG.items():  # noqa: SLF001
        if selector.endswith("gin.macro"):
            value = params.get("value")
            selector_of_value = getattr(value, "_scoped_selector", "")
            if value is gin_config.REQUIRED or selector_of_value.startswith(
                "gin.REQUIRED"
            ):
                missing.append(name)
    return sorted(set(missing))


@contextlib.contextmanager
def _recording_locations():
    """Records where each binding was made while gin parses.

    Yields a dict `(scope, selector, argument) -> gin Location` (macros:
    `(name, "gin.macro", "value")`); a location's `filename` is None for a
    `--gin_bindings` binding. Messages use it to name the file and line of a
    bad value. Best effort: if gin's internals differ, the dict stays empty.
    """
    from gin import config as gin_config
    from gin import utils as gin_utils

    locations = {}
    current = []
    original_try = getattr(gin_utils, "try_with_location", None)
    original_bind = getattr(gin_config, "bind_parameter", None)
    if original_try is None or original_bind is None:
        yield locations
        return

    @contextlib.contextmanager
    def try_with_location(location):
        current.append(location)
        try:
            with original_try(location):
                yield
        finally:
            current.pop()

    def bind_parameter(binding_key, value):
        original_bind(binding_key, value)
        try:
            scope, selector, argument = binding_key
            if selector != _MACRO:
                configurable = gin_config._parse_context().get_configurable(  # noqa: SLF001
                    selector
                )
                selector = configurable.selector if configurable else selector
            locations[(scope, selector, argument)] = (
                current[-1] if current else None
            )
        except Exception:  # noqa: BLE001  (locations are only for messages)
            pass

    gin_utils.try_with_location = try_with_location
    gin_config.bind_parameter = bind_parameter
    try:
        yield locations
    finally:
        gin_utils.try_with_location = original_try
        gin_config.bind_parameter = original_bind


_MACRO = "gin.macro"
_MACRO_REFERENCE = re.compile(r"%\s*([A-Za-z_][\w.]*(?:/[A-Za-z_][\w.]*)*)")


def _where(location):
    """`set by --gin_bindings` or `set at FILE:LINE` (or '')."""
    if location is None:
        return ""
    filename = getattr(location, "filename", None)
    if filename is None:
        return "set by --gin_bindings"
    return f"set at {os.path.relpath(filename)}:{location.line_num}"


def _references(value):
    """The gin references inside a bound value (also in lists and dicts)."""
    from gin import config as gin_config

    if isinstance(value, gin_config.ConfigurableReference):
        yield value
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            yield from _references(item)
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from _references(key)
            yield from _references(item)


def _macros_in_gin_files(directories):
    """Names referenced as `%NAME` by the gin files in `directories`.

    A directory given as `(path, True)` is searched recursively.
    """
    names = set()
    paths = set()
    for directory, recursive in directories:
        pattern = os.path.join(directory, "**" if recursive else "", "*.gin")
        paths.update(glob.glob(pattern, recursive=recursive))
    for path in sorted(paths):
        try:
            with open(path, encoding="utf-8") as f:
                names.update(_MACRO_REFERENCE.findall(f.read()))
        except (OSError, UnicodeDecodeError):
            continue
    return names


def _check_macros(mode, gin_files, locations):
    """Refuses macros that nothing uses (a misspelt macro does nothing).

    A macro is used if a binding of this configuration refers to it
    (directly or through another macro), or if a gin file shipped in gin/
    or next to the given files does (`%NAME`): macros that only other modes
    read (`TRAIN_STEPS` in a shared demo file, `DATA_DIR` bound for every
    stage by a driver script) stay legal. A macro that the mode's `run()`
    needs (directly or through other bindings) but nothing sets is refused
    too.
    """
    from gin import config as gin_config

    config = gin_config._CONFIG  # noqa: SLF001
    defined = set()
    referenced = set()
    for (scope, selector), params in config.items():
        if selector == _MACRO:
            defined.add(scope)
        for value in params.values():
            for reference in _references(value):
                name, kind = reference.config_key
                if kind == _MACRO:
                    referenced.add(name)
    unused = defined - referenced
    undefined = _needed_macros(mode) - defined
    if unused:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        directories = [(os.path.join(root, "gin"), True)]
        for path in list(gin_files) + [
            getattr(location, "filename", None)
            for location in locations.values()
        ]:
            if path:
                directory = os.path.dirname(os.path.abspath(path))
                directories.append((directory, False))
        elsewhere = _macros_in_gin_files(directories)
        unused -= elsewhere
        referenced |= elsewhere
    if not unused and not undefined:
        return
    known = (referenced | defined) - unused - undefined - {"gin.REQUIRED"}
    problems = []
    for name in sorted(unused):
        where = _where(locations.get((name, _MACRO, "value")))
        problems.append(
            f"macro {name}{f' ({where})' if where else ''} is used by no "
            "setting: no binding refers to it, directly or through another "
            "macro, and no gin file does, so its value would be silently "
            f"ignored{_suggestion(name, known)}"
        )
    for name in sorted(undefined):
        problems.append(
            f"macro {name} is needed by mode {mode!r} (a binding refers to "
            f"%{name}) but never set{_suggestion(name, known)}"
        )
    raise UsageError(
        "Unknown macro: "
        + "; ".join(problems)
        + ". Correct the spelling (the header of each gin/runs/*.gin lists "
        "the mode's macros), or set or remove the binding."
    )


def _needed_macros(mode):
    """Macros reachable from the bindings of the mode's `run()`."""
    from gin import config as gin_config

    config = gin_config._CONFIG  # noqa: SLF001
    pending = [
        key
        for key in config
        if not key[0] and key[1].split(".")[-2:] == [mode, "run"]
    ]
    seen = set(pending)
    needed = set()
    while pending:
        for value in config.get(pending.pop(), {}).values():
            for reference in _references(value):
                key = reference.config_key
                if key[1] == _MACRO:
                    needed.add(key[0])
                if key not in seen:
                    seen.add(key)
                    pending.append(key)
    return needed


def _suggestion(name, known):
    close = difflib.get_close_matches(name, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean {close[0]}?)" if close else ""


# Configurables whose bound values are checked like run() arguments
# (`settings.RULES`, by argument name): the decoding settings, bound once
# in gin/runs/search.gin for every mode that searches.
_CHECKED_CONFIGURABLES = {"SearchSettings": SearchSettings}


def _check_run_settings(mode, function, locations):
    """Checks the values bound to `run()`'s arguments and to the checked
    configurables (`SearchSettings`) against `settings.RULES`."""
    from gin import config as gin_config

    config = gin_config._CONFIG  # noqa: SLF001
    targets = {f"{mode}.run": inspect.signature(function).parameters}
    targets.update(
        (name, inspect.signature(cls).parameters)
        for name, cls in _CHECKED_CONFIGURABLES.items()
    )
    problems = []
    for (scope, selector), params in config.items():
        parts = selector.split(".")
        if scope:
            continue
        if parts[-2:] == [mode, "run"]:
            label = f"{mode}.run"
        elif parts[-1] in _CHECKED_CONFIGURABLES:
            label = parts[-1]
        else:
            continue
        parameters = targets[label]
        for argument, value in sorted(params.items()):
            chain = []
            while (
                isinstance(value, gin_config.ConfigurableReference)
                and value.config_key[1] == _MACRO
                and len(chain) < 50
            ):
                chain.append(value.config_key[0])
                value = config.get(value.config_key, {}).get("value", None)
            if any(True for _ in _references(value)):
                continue  # An object (`@task.Task()`) or a placeholder.
            parameter = parameters.get(argument)
            default = (
                None
                if parameter is None or parameter.default is parameter.empty
                else parameter.default
            )
            problem = settings.problem(argument, value, default)
            if problem is None:
                continue
            if chain:
                where = _where(locations.get((chain[-1], _MACRO, "value")))
                origin = f"macro {' -> '.join(chain)}" + (
                    f", {where}" if where else ""
                )
            else:
                origin = _where(locations.get(("", selector, argument)))
            origin = f" ({origin})" if origin else ""
            problems.append(f"{label}.{argument}{origin} {problem}")
    if problems:
        raise UsageError(
            "Bad setting: "
            + "; ".join(problems)
            + ". Change the value where it is set (gin/runs/"
            f"{mode}.gin lists the mode's settings, gin/runs/search.gin the "
            f"decoding settings; bertkd_tf/runs/{mode}.py run() documents "
            "them)."
        )


def parse_config(mode, gin_files, gin_bindings):
    """Parses gin files and bindings; returns the mode's configured `run`.

    Raises `UsageError` (a `ConfigError`) naming the file, setting or macro
    for: no gin file, unparsable files or bindings, a macro that nothing
    uses (a typo), a required macro left unset, and a `run()` argument of
    the wrong type or out of range (`settings.RULES`).
    """
    import gin

    if not gin_files:
        raise UsageError(
            f"Mode {mode!r} needs a configuration: pass --gin_file, e.g. "
            f"--gin_file=gin/experiments/multi30k_de_en_{mode}.gin (see "
            "gin/experiments/ for one file per reported result)."
        )
    for path in _gin_search_paths():
        gin.add_config_file_search_path(path)
    module = importlib.import_module(f"bertkd_tf.runs.{mode}")
    try:
        with _recording_locations() as locations:
            gin.parse_config_files_and_bindings(
                gin_files, gin_bindings, finalize_config=False
            )
    except (ValueError, KeyError, ImportError, OSError, SyntaxError) as error:
        raise UsageError(
            f"Bad configuration for mode {mode!r}: {error} Check the spelling "
            "against the run's arguments (gin/runs/*.gin lists them)."
        ) from None
    _check_macros(mode, gin_files, locations)
    missing = _required_macros(gin)
    if missing:
        example = " ".join(f"--gin_bindings=\"{m}='...'\"" for m in missing)
        raise UsageError(
            f"Mode {mode!r} needs {', '.join(missing)}, which no gin file or "
            f"binding sets. Set them on the command line, e.g. {example} "
            f"(see the 'Required' header of gin/runs/{mode}.gin)."
        )
    try:
        configured = gin.get_configurable(module.run)
    except ValueError:
        raise UsageError(
            f"The gin files bind nothing for mode {mode!r}: include "
            f"gin/runs/{mode}.gin (or an experiment that does) in "
            "--gin_file."
        ) from None
    _check_run_settings(mode, module.run, locations)
    return gin, configured


def run_mode(mode, gin_files, gin_bindings, dry_run=False):
    """Configures and runs one mode; returns what its `run()` returns."""
    gin, run = parse_config(mode, gin_files, gin_bindings)
    if dry_run:
        print(gin.config_str())
        return None
    start = time.time()
    try:
        result = run()
    except TypeError as error:
        if "run() missing" in str(error):
            raise UsageError(
                f"Mode {mode!r}: {error}. Bind it in a gin file or with "
                f"--gin_bindings (see gin/runs/{mode}.gin)."
            ) from None
        raise
    logging.info("mode %s finished in %.1f s", mode, time.time() - start)
    output_dir = result.get("output_dir") if isinstance(result, dict) else None
    if output_dir:
        write_text_atomic(
            os.path.join(output_dir, CONFIG_FILE), gin.operative_config_str()
        )
    return result


# TensorFlow's CUDA plugin logs this error at device initialisation on
# every machine without an NVIDIA driver; TF_CPP_MIN_LOG_LEVEL does not
# hide it.
_CUDA_INIT_NOISE = re.compile(rb"cuda_platform\.cc:\d+\] failed call to cuInit")


def _without_nvidia_device():
    """No NVIDIA driver here and no GPU asked for: the cuInit error says
    nothing."""
    return (
        not os.path.exists("/dev/nvidiactl")
        and not os.path.exists("/proc/driver/nvidia")
        and "CUDA_VISIBLE_DEVICES" not in os.environ
    )


@contextlib.contextmanager
def _filtered_stderr(pattern):
    """Drops the lines of file descriptor 2 that match `pattern` (bytes
    regex) while the block runs; every other line goes through, in order,
    when the block ends. Works for C++ writers (TensorFlow's logging)
    too: fd 2 is a pipe for the duration. Falls back to no filtering if
    fd 2 cannot be redirected."""
    import threading

    try:
        read_end, write_end = os.pipe()
        saved = os.dup(2)
    except OSError:
        yield
        return
    chunks = []

    def drain():
        while True:
            data = os.read(read_end, 65536)
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # Closes the last write end: the reader ends.
        os.close(saved)
        reader.join()
        os.close(read_end)
        kept = [
            line
            for line in b"".join(chunks).splitlines(keepends=True)
            if not pattern.search(line)
        ]
        if kept:
            os.write(2, b"".join(kept))


def _initialize_devices_quietly():
    """Makes TensorFlow find its devices now, without the cuInit error line
    on a machine without an NVIDIA device (it is the CUDA plugin's, logged
    once per process while it looks for GPUs; it alarms users of CPU-only
    machines for nothing). Only the physical devices are listed: logical
    ones (`LOGICAL_DEVICES`) can still be configured by the run. Where a
    GPU may exist, nothing is filtered."""
    if not _without_nvidia_device():
        return
    with _filtered_stderr(_CUDA_INIT_NOISE):
        # The import itself may look for GPUs (tensorflow.python.distribute
        # .combinations, imported by `tensorflow`): inside the filter too.
        import tensorflow as tf

        tf.config.list_physical_devices()


def _main(argv):
    _initialize_devices_quietly()
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; settings go in gin bindings.")
    if FLAGS.value is None:
        _fail(f"--mode is required: one of {', '.join(MODES)}.")
    try:
        run_mode(
            FLAGS.value, GIN_FILES.value, GIN_BINDINGS.value, DRY_RUN.value
        )
    except (BertkdError, OSError) as error:
        # Expected failures (bad file, bad value, missing artifact, I/O
        # error): one paragraph, exit 2; the traceback only with -v 1.
        _report(error)
    except (ValueError, KeyError) as error:
        # Raised by one of this package's own checks: an expected failure
        # too; raised inside TensorFlow / Keras: a bug, with its traceback.
        if _raised_by_our_checks(error) is None:
            raise
        _report(error)


def console_main():
    """Entry point of the `bertkd` script (`bertkd MODE ...` allowed)."""
    argv = list(sys.argv)
    if len(argv) > 1 and argv[1] in MODES:
        argv = [argv[0], f"--mode={argv[1]}", *argv[2:]]
    elif len(argv) > 1 and not argv[1].startswith("-"):
        _fail(f"unknown mode {argv[1]!r}; expected one of {', '.join(MODES)}.")
    app.run(_main, argv=argv)


if __name__ == "__main__":
    console_main()
