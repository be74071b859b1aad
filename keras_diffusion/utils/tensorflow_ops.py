"""TensorFlow-only helpers: strings, devices, replicas.

Imported lazily (inside functions) by the modules that need them on the
TensorFlow backend, so that `import keras_diffusion` on JAX never imports
TensorFlow.
"""

import keras
import numpy as np


def string_tensor(strings):
    """A batch of strings as the backend takes it (a tf.string tensor on TF)."""
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.constant(strings)
    return np.asarray(strings, dtype=object)


def has_accelerator():
    """Whether TensorFlow sees a GPU or TPU (False on other backends)."""
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))


def num_replicas():
    """The replicas of the current tf.distribute strategy (1 elsewhere)."""
    if keras.backend.backend() != "tensorflow":
        return 1
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


class ReplicaSeed(keras.random.SeedGenerator):
    """A seed generator offset by the replica id under tf.distribute.

    Replicas share the generator's state (a mirrored variable); without the
    offset every replica would draw the same times and noise for its part of
    the global batch. On other backends it is the generator itself.
    """

    def __init__(self, generator):  # No state of its own.
        self._generator = generator

    def next(self, ordered=True):
        seed = self._generator.next(ordered=ordered)
        if keras.backend.backend() != "tensorflow":
            return seed
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is None:
            return seed
        replica = tf.cast(context.replica_id_in_sync_group, seed.dtype)
        return seed + tf.stack([tf.zeros_like(replica), replica])
