"""FusedAdam: Keras' Adam with TensorFlow's one-kernel update per variable."""

import keras
import tensorflow as tf


@keras.saving.register_keras_serializable(package="bertkd_tf")
class FusedAdam(keras.optimizers.Adam):
    """`keras.optimizers.Adam` whose update is `tf.raw_ops.ResourceApplyAdam`.

    Same arguments, state variables (`_momentums`, `_velocities`, so
    checkpoints are interchangeable) and arithmetic as Keras' Adam:

        alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
        m += (g - m) * (1 - beta_1);  v += (g^2 - v) * (1 - beta_2)
        variable -= m * alpha / (sqrt(v) + epsilon)

    but as one kernel per variable instead of ~12 element-wise ops, each a
    pass over the variable: the student's (8.2M parameters, 131 variables)
    update takes ~14 ms instead of ~40 ms on 2 CPU cores. Weight decay
    (`weight_decay=`, i.e. AdamW), gradient clipping, gradient accumulation
    and EMA are the base optimizer's and behave as in Keras, except that
    with gradient accumulation a learning-rate schedule sees the update
    count (`iterations`), not the batch count. `amsgrad=True`,
    other backends and `tf.IndexedSlices` gradients (for which Keras only
    moves the moments of the rows the gradient has) use Keras' update.
    """

    def _get_current_learning_rate(self):
        # Keras (3.15) calls a schedule with `_iterations`, the batches
        # seen, which gradient accumulation makes `n` times the updates
        # (`iterations`): warm-up and decay would run `n` times too fast,
        # and an accumulated update would not equal one update on the
        # batches together. The schedule is given the update count.
        # (Private member, checked by tests/private_api_test.py.)
        schedule = self._learning_rate
        if self.gradient_accumulation_steps and isinstance(
            schedule, keras.optimizers.schedules.LearningRateSchedule
        ):
            return schedule(self.iterations)
        return super()._get_current_learning_rate()

    def update_step(self, gradient, variable, learning_rate):
        if (
            self.amsgrad
            or keras.backend.backend() != "tensorflow"
            or isinstance(gradient, tf.IndexedSlices)
        ):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1 = tf.cast(self.beta_1, dtype)
        beta_2 = tf.cast(self.beta_2, dtype)
        index = self._get_variable_index(variable)
        # `.handle`: under a tf.distribute update, the local copy's.
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=self._momentums[index].handle,
            v=self._velocities[index].handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
        )
