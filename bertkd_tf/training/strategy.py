"""Chooses a `tf.distribute` strategy by name (bound in gin)."""

import json
import os

import tensorflow as tf

from bertkd_tf.errors import ConfigError

STRATEGY_NAMES = ("default", "mirrored", "multi_worker", "tpu")


def split_cpu(logical_devices):
    """Splits the first CPU into `logical_devices` logical devices (`None`:
    leave it). Must run before TensorFlow initialises its devices (the
    first op); `get_strategy(..., logical_devices=N)` calls it first.

    Raises:
        ConfigError: the devices were initialised already with another
            split.
    """
    if logical_devices is None:
        return
    count = int(logical_devices)
    if count < 1:
        raise ConfigError(f"logical_devices must be >= 1; got {count}.")
    cpu = tf.config.list_physical_devices("CPU")[0]
    try:
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * count
        )
    except RuntimeError as error:
        have = len(tf.config.list_logical_devices("CPU"))
        if have == count:
            return  # Already split so (an earlier run in this process).
        raise ConfigError(
            f"Cannot split the CPU into {count} logical devices: TensorFlow "
            f"initialised its devices already ({have} logical CPU "
            f"device(s); {error}). Set LOGICAL_DEVICES in a fresh process "
            "(the `bertkd` binary does so before anything runs)."
        ) from None


def _tpu_strategy(tpu_address):
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=tpu_address or ""
        )
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    except (ValueError, RuntimeError, ImportError, tf.errors.OpError) as error:
        first = (str(error).strip().splitlines() or [""])[0][:200]
        raise ConfigError(
            "strategy 'tpu' found no TPU "
            f"(tpu_address={tpu_address!r}; TensorFlow said: "
            f"{type(error).__name__}: {first}). On a Cloud TPU VM leave "
            "tpu_address empty and run on the VM itself; for a TPU node set "
            'its name or grpc:// address with --gin_bindings="<mode>.run.'
            "tpu_address='my-tpu'\" (gin/runs/train_teacher.gin, "
            "distill.gin and dump_teacher.gin list it). Without a TPU, set "
            "STRATEGY = 'default' (one device) or 'mirrored' (all GPUs, or "
            "LOGICAL_DEVICES CPU devices)."
        ) from None


def get_strategy(
    name="default", tpu_address=None, devices=None, logical_devices=None
):
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
        logical_devices: split the CPU into this many logical devices
            first (`split_cpu`; gin macro `LOGICAL_DEVICES`); `"mirrored"`
            on a machine without GPUs then has one replica per logical
            CPU device, as a machine with that many GPUs would.

    Raises:
        ConfigError: `"tpu"` without a reachable TPU (one paragraph naming
            `tpu_address`), or a CPU split after the devices were set up.

    Example:
    >>> strategy = get_strategy("default")
    >>> strategy.num_replicas_in_sync
    1
    """
    split_cpu(logical_devices)
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        if devices is None and logical_devices and logical_devices > 1:
            if not tf.config.list_logical_devices("GPU"):
                devices = [
                    d.name for d in tf.config.list_logical_devices("CPU")
                ]
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
        return _tpu_strategy(tpu_address)
    raise ValueError(
        f"Unknown strategy name {name!r}; expected one of {STRATEGY_NAMES}."
    )
