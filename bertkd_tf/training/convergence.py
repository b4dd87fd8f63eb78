"""When a run has converged: the early-stopping rule of `tools/converge.py`.

A curve is `{str(step): {"bleu": float, ...}}` of the scored checkpoints
(valid BLEU). The run has stopped improving once `patience` scored
checkpoints after the best one brought no new best, and at least
`min_steps` were trained.
"""

import numpy as np


def plateau(curve, patience, min_steps):
    """`(best_step, stopped)`: stopped once the last `patience` scored
    steps after the best brought no improvement and `min_steps` are done."""
    if not curve:
        return None, False
    steps = sorted(int(s) for s in curve)
    scores = [curve[str(s)]["bleu"] for s in steps]
    best = steps[int(np.argmax(scores))]  # The earliest of equal bests.
    after = [s for s in steps if s > best]
    return best, len(after) >= patience and steps[-1] >= min_steps
