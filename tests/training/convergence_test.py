"""convergence.plateau: the early-stopping rule of tools/converge.py."""

from bertkd_tf.training.convergence import plateau


def _curve(points):
    return {str(step): {"bleu": bleu} for step, bleu in points}


def test_no_curve_is_not_converged():
    assert plateau({}, patience=2, min_steps=0) == (None, False)


def test_stops_after_patience_checkpoints_without_a_new_best():
    points = [(500, 10.0), (1000, 20.0), (1500, 19.0)]
    assert plateau(_curve(points), patience=2, min_steps=0) == (1000, False)
    points.append((2000, 19.5))
    assert plateau(_curve(points), patience=2, min_steps=0) == (1000, True)
    points.append((2500, 20.5))  # A new best restarts the count.
    assert plateau(_curve(points), patience=2, min_steps=0) == (2500, False)


def test_min_steps_and_ties():
    points = [(500, 20.0), (1000, 20.0), (1500, 20.0)]
    # A tie is no improvement: the earliest best counts.
    assert plateau(_curve(points), patience=2, min_steps=0) == (500, True)
    assert plateau(_curve(points), patience=2, min_steps=2000) == (500, False)
