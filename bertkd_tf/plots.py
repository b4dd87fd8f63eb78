"""Curves as PNG files, written atomically, for users without TensorBoard.

The runs write them into their own directories while they train
(`train_teacher`: `teacher/valid_accuracy.png` at each validation, through
`trainer.fit_resumable(plot_metrics=...)`); `tools/converge.py` writes
`<model_dir>/valid_bleu.png` next to the `valid_bleu.json` it keeps, and
`tools/bleu_curve.py` and `tools/plot_experiment.py` draw with the same
function. A plot goes to `<path>.tmp-<pid>` first and is renamed over
`path` when complete (a reader never sees half a PNG; a dead writer's
temporary is removed by `trainer.remove_leftovers`).

matplotlib (pinned in setup.cfg) draws with its `Agg` backend: no display
is needed.
"""

import json
import os


def write_curves_png(path, series, xlabel, ylabel, title=None):
    """Draws `series` (`{label: (xs, ys)}`, one line each) into `path`.

    Atomic: the PNG is written to a temporary name in the same directory,
    then renamed. Returns `path`.

    Example:
    >>> write_curves_png("/tmp/w/teacher/valid_accuracy.png",
    ...                  {"teacher": ([1000, 2000], [0.41, 0.52])},
    ...                  "training step", "valid masked-token accuracy")
    '/tmp/w/teacher/valid_accuracy.png'
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    # A `Figure` without pyplot: no global state, safe in any thread.
    figure = Figure(figsize=(6.5, 4))
    axis = figure.add_subplot()
    for label, (xs, ys) in series.items():
        style = "--" if str(label).startswith("baseline") else "-"
        axis.plot(xs, ys, style, marker="o", markersize=3, label=label)
    axis.set_xlabel(xlabel)
    axis.set_ylabel(ylabel)
    if title:
        axis.set_title(title)
    axis.grid(alpha=0.3)
    if len(series) > 1:
        axis.legend(fontsize=8)
    figure.tight_layout()
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    temporary = f"{path}.tmp-{os.getpid()}"
    try:
        figure.savefig(temporary, dpi=110, format="png")
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)
    return path


def history_curve(history_path, key):
    """`(steps, values)` of `key` in a `history.jsonl` (the records that
    have it; a record written again after a resume replaces the older)."""
    points = {}
    if os.path.exists(history_path):
        with open(history_path) as f:
            for line in f:
                line = line.strip()
                if not line:
                    continue
                record = json.loads(line)
                if key in record and "step" in record:
                    points[int(record["step"])] = float(record[key])
    steps = sorted(points)
    return steps, [points[s] for s in steps]


def plot_bleu_curve(curve_path):
    """`valid_bleu.png` next to a `valid_bleu.json` (`tools/converge.py`):
    the greedy valid BLEU over steps of that model directory. Returns the
    PNG's path."""
    steps, bleu = bleu_curve_from_json(curve_path)
    directory = os.path.dirname(curve_path)
    return write_curves_png(
        os.path.join(directory, "valid_bleu.png"),
        {os.path.basename(os.path.normpath(directory)): (steps, bleu)},
        "training step",
        "valid BLEU (tokenized, greedy)",
    )


def bleu_curve_from_json(path):
    """`(steps, bleu)` of a `valid_bleu.json` (`{step: {"bleu": ...}}`,
    written by `tools/converge.py train`)."""
    with open(path) as f:
        curve = json.load(f)
    steps = sorted(int(s) for s in curve)
    return steps, [float(curve[str(s)]["bleu"]) for s in steps]
