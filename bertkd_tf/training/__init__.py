"""bertkd_tf.training."""
