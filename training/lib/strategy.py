"""tf.distribute strategies for --strategy, and XLA per strategy and device."""

import json
import os

import tensorflow as tf

STRATEGIES = ("default", "mirrored", "multi_worker", "tpu")


def setup_cpu_replicas(num):
    """Splits the CPU into `num` logical devices (before TensorFlow starts).

    Used by `--strategy=mirrored` on a machine without GPUs, so that
    MirroredStrategy has replicas to mirror over.
    """
    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration() for _ in range(num)]
        )
    except RuntimeError as e:
        if len(tf.config.list_logical_devices("CPU")) < num:
            raise RuntimeError(
                f"Cannot create {num} logical CPU devices: TensorFlow is already "
                f"initialized ({e})"
            ) from e


def make_strategy(name, config):
    """Returns the `tf.distribute.Strategy` for `--strategy=name`."""
    if name not in STRATEGIES:
        raise ValueError(f"Unknown --strategy={name!r}. Valid names: {list(STRATEGIES)}")
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            return tf.distribute.MirroredStrategy()
        setup_cpu_replicas(config.distribution.num_cpu_replicas)
        devices = [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(
            devices[: config.distribution.num_cpu_replicas],
            cross_device_ops=tf.distribute.ReductionToOneDevice(),
        )
    if name == "multi_worker":
        if "TF_CONFIG" not in os.environ:
            raise ValueError(
                "--strategy=multi_worker needs the TF_CONFIG environment variable "
                '(e.g. {"cluster": {"worker": ["host1:port", "host2:port"]}, '
                '"task": {"type": "worker", "index": 0}})'
            )
        return tf.distribute.MultiWorkerMirroredStrategy()
    # TPU: resolve, connect and initialize, with a clear error off TPU hosts.
    try:
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=config.distribution.tpu or None
        )
        tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
    except (ValueError, RuntimeError, tf.errors.OpError) as e:
        raise RuntimeError(
            f"--strategy=tpu found no TPU (config.distribution.tpu="
            f"{config.distribution.tpu!r}): {e}. Run on a TPU VM or pass "
            "--config.distribution.tpu=NAME."
        ) from e
    return tf.distribute.TPUStrategy(resolver)


def is_chief(strategy):
    """Whether this process writes checkpoints, summaries and files."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        return True
    task_type, task_id = resolver.task_type, resolver.task_id
    if task_type is None:
        return True
    has_chief = "chief" in json.loads(os.environ.get("TF_CONFIG", "{}")).get("cluster", {})
    return task_type == "chief" or (task_type == "worker" and task_id == 0 and not has_chief)


def worker_id(strategy):
    resolver = getattr(strategy, "cluster_resolver", None)
    return getattr(resolver, "task_id", 0) or 0


def choose_jit_compile(value, strategy_name):
    """XLA per strategy and device.

    `value` "true" / "false" (or a bool), or "auto": XLA on GPU (not with MirroredStrategy over logical CPU
    devices, where XLA fails in TF 2.21: a variable is placed on another
    device) and on TPU; not on CPU, where oneDNN is faster for convolutions.
    """
    if isinstance(value, str) and value.lower() != "auto":
        if value.lower() not in ("true", "false"):
            raise ValueError(
                f"train.jit_compile must be 'auto', 'true' or 'false', received {value!r}"
            )
        return value.lower() == "true"
    if value != "auto":
        return bool(value)
    if strategy_name == "tpu":
        return True
    has_gpu = bool(tf.config.list_physical_devices("GPU"))
    if strategy_name in ("mirrored", "multi_worker") and not has_gpu:
        return False
    return has_gpu
