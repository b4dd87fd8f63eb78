"""Strategies by name: the TPU error and the logical-device knob."""

import pytest
import tensorflow as tf

from bertkd_tf import main
from bertkd_tf.errors import ConfigError
from bertkd_tf.training.strategy import get_strategy, split_cpu


def test_tpu_without_a_tpu_is_one_paragraph_naming_tpu_address():
    with pytest.raises(ConfigError) as error:
        get_strategy("tpu")
    message = str(error.value)
    assert "found no TPU" in message and "tpu_address" in message
    assert "STRATEGY = 'default'" in message and "\n" not in message
    # The binary prints a BertkdError as one paragraph (exit 2).
    assert isinstance(error.value, main.BertkdError)


def test_split_after_the_devices_started_names_the_knob():
    tf.constant(1)  # The devices are set up in this process.
    have = len(tf.config.list_logical_devices("CPU"))
    split_cpu(have)  # The split it has: nothing to do.
    with pytest.raises(ConfigError, match="LOGICAL_DEVICES in a fresh"):
        split_cpu(have + 1)
    with pytest.raises(ConfigError, match=">= 1"):
        split_cpu(0)
