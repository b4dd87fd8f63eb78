"""Dropout from half the random bits (a TensorFlow speed fix).

keras' `Dropout` on TensorFlow draws one uniform float per element
(`tf.nn.experimental.stateless_dropout`), and TensorFlow's CPU Philox
generator costs ~5 ns per 32-bit word on this project's 2-core machines: the
dropout masks were 12-19% of the student's mixed_bfloat16 training step
(`tools/bench_train.py --profile_dir`, docs/PERFORMANCE.md). `FastDropout`
compares 16-bit halves of the generator's raw 32-bit words with a threshold
instead: half the generator work, and one multiply by a `{0, 1 / keep}`
tensor in the forward and backward passes.

The dropout rate is rounded to a multiple of 2^-16 (0.1 -> 0.100006, an
error below 7.7e-6) and the kept values are scaled by the inverse of that
rounded keep probability, so the expectation is preserved exactly. The
random stream differs from keras' `Dropout`; the seed state (a keras
`SeedGenerator`) advances the same way, so runs are reproducible and
resumable as before.
"""

import keras
import tensorflow as tf

_LEVELS = 1 << 16


def dropout_multiplier(shape, rate, seed, dtype):
    """A `{0, 1 / keep}` tensor of `shape`: each entry is 0 with
    probability `round(rate * 2^16) / 2^16`, independently.

    Args:
        shape: 1-D int tensor or list, the output shape.
        rate: Python float in [0, 1].
        seed: int32 `[2]` seed of TensorFlow's stateless generators.
        dtype: the output dtype.
    """
    threshold = min(int(round(rate * _LEVELS)), _LEVELS)
    if threshold == _LEVELS:
        return tf.zeros(shape, dtype)
    size = tf.reduce_prod(shape)
    words = tf.random.stateless_uniform(
        [(size + 1) // 2], seed=seed, minval=None, maxval=None, dtype=tf.uint32
    )
    halves = tf.reshape(tf.bitcast(words, tf.uint16), [-1])[:size]
    keep = tf.reshape(halves >= tf.constant(threshold, tf.uint16), shape)
    scale = _LEVELS / (_LEVELS - threshold)
    return tf.where(keep, tf.constant(scale, dtype), tf.constant(0.0, dtype))


@keras.saving.register_keras_serializable(package="bertkd_tf")
class FastDropout(keras.layers.Dropout):
    """`keras.layers.Dropout` with cheaper masks (see the module doc).

    Same arguments, config and weights as `keras.layers.Dropout`; a
    `noise_shape` falls back to keras' implementation. `use_fast_layers`
    switches the `Dropout` layers of a built model to this class.

    Example:
    ```python
    layer = FastDropout(0.1, seed=1)
    y = layer(np.ones((4, 8), "float32"), training=True)  # 0 or 1.11
    ```
    """

    def call(self, inputs, training=False):
        if not training or self.rate == 0 or self.noise_shape is not None:
            return super().call(inputs, training=training)
        seed = self.seed_generator.next()
        if seed.dtype != tf.int32:
            # TensorFlow's stateless generators take int32 seeds under XLA
            # (keras' `_cast_seed`).
            seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
        inputs = tf.convert_to_tensor(inputs)
        return inputs * dropout_multiplier(
            tf.shape(inputs), self.rate, seed, inputs.dtype
        )
