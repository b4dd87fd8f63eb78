"""`export`: the student as a SavedModel for TF Serving (text in, text out).

Reads `WORK_DIR/vocab/` and the student saved by `distill` in
`WORK_DIR/<model_dir>/` (`student` or `baseline`) and writes
`<export_dir>/<version>/` (default `WORK_DIR/export/<version>/`), the layout
TF Serving watches: it serves the highest integer version.

Versions never overwrite anything:
- `version=None` (default): the current Unix time in seconds, or one more
  than the highest existing integer version if that is larger (two exports
  in the same second, or a clock behind an earlier export), so the new
  export is always the one TF Serving picks up;
- an explicit `version` that already exists is an error.

The SavedModel is written to a hidden temporary directory inside
`export_dir` (`.tmp-...`, which TF Serving ignores: not an integer) and
renamed to `<version>/` once complete, so a watcher never sees half an
export. See `ServingModule` for the signatures and docs/SERVING.md for
serving it.

Weights: `export.run.weights_file` (default `final.weights.h5`) picks the
weights file in the model directory, e.g. `averaged.weights.h5` from
`tools/average_checkpoints.py` (checked against its `.sha256` sidecar); it
is recorded in `assets.extra/bertkd_export.json`. N-best:
`export.run.nbest = N` (macro `NBEST`, N <= the beam size) adds the
`serve_nbest` signature (the N best hypotheses and their scores).

Example:
  bertkd export --gin_file=gin/runs/export.gin \
    --gin_bindings="WORK_DIR='/tmp/w'" --gin_bindings="BEAM_SIZE=4" \
    --gin_bindings="NBEST=4" \
    --gin_bindings="export.run.weights_file='averaged.weights.h5'"
"""

import json
import os
import shutil
import tempfile
import time

from absl import logging

from bertkd_tf import locking
from bertkd_tf.artifacts import (
    FINAL_WEIGHTS,
    STUDENT_DIR,
    load_student,
    load_vocabulary,
)
from bertkd_tf.atomic_files import remove_stale_temporaries
from bertkd_tf.decoding.search_settings import SearchSettings
from bertkd_tf.errors import ConfigError
from bertkd_tf.export.serving_module import EXPORT_CONFIG_FILE, ServingModule

EXPORT_DIR = "export"

# The decoding settings without gin (gin binds them in gin/runs/search.gin).
DEFAULT_SEARCH = SearchSettings(jit_compile=False)


def existing_versions(export_dir):
    """The integer version directories in `export_dir`, sorted."""
    if not os.path.isdir(export_dir):
        return []
    return sorted(
        int(name)
        for name in os.listdir(export_dir)
        if name.isdigit() and os.path.isdir(os.path.join(export_dir, name))
    )


def next_version(export_dir, now=None):
    """`max(now, highest existing version + 1)`, `now` in Unix seconds."""
    now = int(time.time() if now is None else now)
    versions = existing_versions(export_dir)
    return max([now] + [v + 1 for v in versions])


def run(
    *,
    work_dir,
    model_dir=STUDENT_DIR,
    export_dir=None,
    version=None,
    search=DEFAULT_SEARCH,
    max_source_length=None,
    search_shards="auto",
    dtype=None,
    weights_file=FINAL_WEIGHTS,
    nbest=None,
):
    """Exports the student; returns `{"output_dir", "version", "seconds"}`.

    Args:
        work_dir: the pipeline's work directory (`vocab/`, the model).
        model_dir: the model's directory under `work_dir` (`student` or
            `baseline`) or a path.
        export_dir: where versions go; default `work_dir/export`.
        version: positive int, or None for the next timestamp version (see
            the module docstring). An existing version is an error.
        search: the `SearchSettings`, bound once in gin
            (gin/runs/export.gin): beam size (1: greedy search), length
            penalty, max length (WordPieces, EOS included) and margin
            (per-example cap `source_length + margin`, or None), XLA
            (`jit_compile`: TF Serving then needs
            `--xla_cpu_compilation_enabled` on CPU).
        max_source_length: longer inputs are truncated to this many
            WordPieces (EOS excluded, as in `translate`); None: the
            backbone's `max_sequence_length - 1`.
        search_shards: `"auto"` or a power of two, the most concurrent
            searches a request is split into (`ServingModule`).
        dtype: optional dtype policy for the exported model.
        weights_file: the weights file in the model directory (or a
            path), e.g. `averaged.weights.h5`.
        nbest: None, or N in `[1, beam size]`: also export `serve_nbest`,
            the N best hypotheses with their scores (docs/SERVING.md).
    """
    if version is not None and (
        isinstance(version, bool) or not isinstance(version, int) or version < 1
    ):
        raise ValueError(
            f"`version` must be a positive int or None. Received: {version!r}"
        )
    if max_source_length is not None and (
        not isinstance(max_source_length, int) or max_source_length < 1
    ):
        raise ValueError(
            "`max_source_length` must be a positive int or None. Received: "
            f"{max_source_length!r}"
        )
    if nbest is not None and (
        isinstance(nbest, bool)
        or not isinstance(nbest, int)
        or not 1 <= nbest <= search.beam_size
    ):
        raise ConfigError(
            f"`nbest` must be None or an int in [1, beam_size="
            f"{search.beam_size}] (the hypotheses serve_nbest returns per "
            f"input). Received: nbest={nbest!r}. Set export.run.nbest (macro "
            "NBEST) to at most BEAM_SIZE, or raise BEAM_SIZE."
        )
    search = search.replace(num_return_sequences=nbest)
    start = time.time()
    export_dir = export_dir or os.path.join(work_dir, EXPORT_DIR)
    # Temporaries of interrupted exports (not those of running ones).
    remove_stale_temporaries(
        export_dir, r"\.tmp-export-(?:(?P<pid>\d+)-)?.*", "unfinished export"
    )
    if version is not None and os.path.exists(
        os.path.join(export_dir, str(version))
    ):
        raise FileExistsError(
            f"Version {version} already exists in {export_dir!r}; exports "
            "never overwrite. Pass another `version`, or None for the next "
            "free one."
        )
    vocabulary = load_vocabulary(work_dir)
    model_path = os.path.join(work_dir, model_dir)
    model = load_student(
        model_path,
        dtype=dtype,
        weights_file=weights_file,
        setting="export.run.weights_file",
    )
    module = ServingModule(
        model,
        vocabulary,
        search,
        max_source_length=(
            None if max_source_length is None else max_source_length + 1
        ),
        search_shards=search_shards,
    )
    os.makedirs(export_dir, exist_ok=True)
    _lock = locking.hold(export_dir)  # One writer (LockedError otherwise).
    temp_dir = tempfile.mkdtemp(
        dir=export_dir, prefix=f".tmp-export-{os.getpid()}-"
    )
    try:
        saved = os.path.join(temp_dir, "saved_model")
        module.save(saved)
        config_path = os.path.join(saved, "assets.extra", EXPORT_CONFIG_FILE)
        with open(config_path) as f:
            config = json.load(f)
        config["model_dir"] = os.path.abspath(model_path)
        config["weights_file"] = weights_file
        with open(config_path, "w") as f:
            json.dump(config, f, indent=2, sort_keys=True)
            f.write("\n")
        if version is None:
            version = next_version(export_dir)
        output_dir = os.path.join(export_dir, str(version))
        if os.path.exists(output_dir):
            raise FileExistsError(
                f"Version {version} appeared in {export_dir!r} during the "
                "export; nothing was overwritten."
            )
        os.rename(saved, output_dir)
    finally:
        shutil.rmtree(temp_dir, ignore_errors=True)
    seconds = time.time() - start
    logging.info(
        "Exported %s as version %d to %s in %.1f s.",
        model_path,
        version,
        output_dir,
        seconds,
    )
    return {"output_dir": output_dir, "version": version, "seconds": seconds}
