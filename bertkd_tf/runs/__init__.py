"""bertkd_tf.runs."""
