"""bertkd_tf.data."""
