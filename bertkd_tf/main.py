r"""The one binary: `bertkd --mode=MODE --gin_file=F [--gin_bindings=B ...]`.

Each mode is `bertkd_tf/runs/<mode>.py` with one `run()`; gin files bind its
arguments (`from __gin__ import dynamic_registration`). Gin and flags live
only here. `bertkd translate ...` is short for `bertkd --mode=translate ...`.

Example:
  bertkd --mode=prepare \
    --gin_file=gin/experiments/multi30k_de_en_prepare.gin \
    --gin_bindings="DATA_DIR='data/multi30k_de_en'" \
    --gin_bindings="WORK_DIR='/tmp/w'"
"""

import importlib
import os
import sys
import textwrap
import time

from absl import app, flags, logging

from bertkd_tf.atomic_files import write_text_atomic

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

CONFIG_FILE = "operative_config.gin"


class UsageError(Exception):
    """A configuration problem, reported as one paragraph (no traceback)."""


def _fail(message):
    text = textwrap.fill(" ".join(message.split()), width=78)
    print(f"bertkd: {text}", file=sys.stderr)
    sys.exit(2)


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


def parse_config(mode, gin_files, gin_bindings):
    """Parses gin files and bindings; returns the mode's configured `run`."""
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
        gin.parse_config_files_and_bindings(
            gin_files, gin_bindings, finalize_config=False
        )
    except (ValueError, KeyError, ImportError, OSError, SyntaxError) as error:
        raise UsageError(
            f"Bad configuration for mode {mode!r}: {error} Check the spelling "
            "against the run's arguments (gin/runs/*.gin lists them)."
        ) from None
    missing = _required_macros(gin)
    if missing:
        example = " ".join(f"--gin_bindings=\"{m}='...'\"" for m in missing)
        raise UsageError(
            f"Mode {mode!r} needs {', '.join(missing)}, which no gin file or "
            f"binding sets. Set them on the command line, e.g. {example} "
            f"(see the 'Required' header of gin/runs/{mode}.gin)."
        )
    try:
        return gin, gin.get_configurable(module.run)
    except ValueError:
        raise UsageError(
            f"The gin files bind nothing for mode {mode!r}: include "
            f"gin/runs/{mode}.gin (or an experiment that does) in "
            "--gin_file."
        ) from None


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


def _main(argv):
    if len(argv) > 1:
        _fail(f"unexpected arguments {argv[1:]}; settings go in gin bindings.")
    if FLAGS.value is None:
        _fail(f"--mode is required: one of {', '.join(MODES)}.")
    try:
        run_mode(
            FLAGS.value, GIN_FILES.value, GIN_BINDINGS.value, DRY_RUN.value
        )
    except UsageError as error:
        _fail(str(error))


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
