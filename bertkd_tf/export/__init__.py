"""bertkd_tf.export."""
