"""Learning-rate schedules: BERT fine-tuning (linear) and Transformer (noam)."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="bertkd_tf")
class LinearWarmupDecay(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warm-up to `peak_learning_rate`, then linear decay to 0.

    The schedule of BERT fine-tuning (docs/METHOD.md §1: 5% warm-up, then linear
    decay to zero at `total_steps`).

    Args:
        peak_learning_rate: the rate reached at the end of warm-up.
        warmup_steps: number of warm-up steps (0 for none).
        total_steps: the step at which the rate reaches 0.

    Example:
    >>> schedule = LinearWarmupDecay(1e-4, warmup_steps=10, total_steps=110)
    >>> float(schedule(5)), float(schedule(60))
    (5e-05, 5e-05)
    """

    def __init__(self, peak_learning_rate, warmup_steps, total_steps):
        if total_steps <= 0 or warmup_steps < 0 or warmup_steps > total_steps:
            raise ValueError(
                "LinearWarmupDecay needs 0 <= warmup_steps <= total_steps and "
                f"total_steps > 0; got warmup_steps={warmup_steps}, "
                f"total_steps={total_steps}."
            )
        self.peak_learning_rate = peak_learning_rate
        self.warmup_steps = warmup_steps
        self.total_steps = total_steps

    def __call__(self, step):
        step = ops.cast(step, "float32")
        warmup = ops.maximum(float(self.warmup_steps), 1.0)
        up = step / warmup
        down = (self.total_steps - step) / ops.maximum(
            float(self.total_steps - self.warmup_steps), 1.0
        )
        factor = ops.where(step < self.warmup_steps, up, down)
        return self.peak_learning_rate * ops.clip(factor, 0.0, 1.0)

    def get_config(self):
        return {
            "peak_learning_rate": self.peak_learning_rate,
            "warmup_steps": self.warmup_steps,
            "total_steps": self.total_steps,
        }


@keras.saving.register_keras_serializable(package="bertkd_tf")
class NoamSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """The Transformer schedule: `lr * d^-0.5 * min(s^-0.5, s * w^-1.5)`.

    Steps count from 1 (Keras' optimizer counts from 0, so `step + 1`).

    Args:
        learning_rate: the scale factor (the paper's "lr 1" / "lr 2").
        hidden_dim: the model width `d`.
        warmup_steps: `w`, the step of the peak.

    Example:
    >>> schedule = NoamSchedule(2.0, hidden_dim=512, warmup_steps=8000)
    >>> round(float(schedule(7999)), 6)
    0.000988
    """

    def __init__(self, learning_rate, hidden_dim, warmup_steps):
        if warmup_steps <= 0 or hidden_dim <= 0:
            raise ValueError(
                "NoamSchedule needs warmup_steps > 0 and hidden_dim > 0; got "
                f"warmup_steps={warmup_steps}, hidden_dim={hidden_dim}."
            )
        self.learning_rate = learning_rate
        self.hidden_dim = hidden_dim
        self.warmup_steps = warmup_steps

    def __call__(self, step):
        step = ops.cast(step, "float32") + 1.0
        scale = self.learning_rate * float(self.hidden_dim) ** -0.5
        return scale * ops.minimum(
            ops.rsqrt(step), step * float(self.warmup_steps) ** -1.5
        )

    def get_config(self):
        return {
            "learning_rate": self.learning_rate,
            "hidden_dim": self.hidden_dim,
            "warmup_steps": self.warmup_steps,
        }
