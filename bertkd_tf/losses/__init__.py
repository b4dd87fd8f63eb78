"""bertkd_tf.losses."""
