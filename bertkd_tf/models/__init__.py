"""bertkd_tf.models."""
