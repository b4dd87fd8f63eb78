"""Chooses a `tf.distribute` strategy by name (bound in gin)."""

import json
import os

import tensorflow as tf

STRATEGY_NAMES = ("default", "mirrored", "multi_worker", "tpu")


def get_strategy(name="default", tpu_address=None, devices=None):
    """Returns the `tf.distribute.Strategy` called `name`.

    Args:
        name: `"default"` (one device, no distribution), `"mirrored"` (all
            local GPUs, or the given `devices`), `"multi_worker"` (one worker
            per process, configured by the `TF_CONFIG` environment variable)
            or `"tpu"`.
        tpu_address: the TPU name or `grpc://` address for `"tpu"` (empty for
            a TPU VM).
        devices: optional device list for `"mirrored"`, e.g.
            `["/cpu:0", "/cpu:1"]` on a CPU split into logical devices.

    Example:
    >>> strategy = get_strategy("default")
    >>> strategy.num_replicas_in_sync
    1
    """
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        return tf.distribute.MirroredStrategy(devices=devices)
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "strategy 'multi_worker' needs the TF_CONFIG environment "
                "variable (cluster and task of this worker); it is not set."
            )
        json.loads(os.environ["TF_CONFIG"])  # Fails early on bad JSON.
        return tf.distribute.MultiWorkerMirroredStrategy()
    if name == "tpu":
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=tpu_address or ""
        )
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    raise ValueError(
        f"Unknown strategy name {name!r}; expected one of {STRATEGY_NAMES}."
    )
