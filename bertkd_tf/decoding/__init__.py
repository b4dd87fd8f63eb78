"""bertkd_tf.decoding."""
