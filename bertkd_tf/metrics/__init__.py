"""bertkd_tf.metrics."""
