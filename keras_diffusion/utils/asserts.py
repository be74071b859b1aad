"""Checks on tensor values that also work inside compiled graphs.

`runtime_check(x, ok, message)` returns `x` once `ok` (a boolean scalar
tensor) has been checked: eagerly it raises a ValueError at once; inside a
TensorFlow graph it adds an Assert op that `x` depends on (an
`InvalidArgumentError` at run time); under `jax.jit` a host callback raises
(an `XlaRuntimeError` carrying the message).
"""

import keras
import numpy as np
from keras import ops


def _concrete(value):
    try:
        return bool(np.asarray(ops.convert_to_numpy(value)))
    except Exception:  # Symbolic (traced) value.
        return None


def runtime_check(x, ok, message):
    """Returns `x`, gated by the check `ok`; raises with `message` if it fails.

    Args:
        x: a tensor (or a structure of tensors) to return.
        ok: a boolean scalar tensor or Python bool.
        message: the error message.
    """
    if isinstance(ok, (bool, np.bool_)):
        if not ok:
            raise ValueError(message)
        return x
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        if tf.executing_eagerly():
            if not bool(ok):
                raise ValueError(message)
            return x
        check = tf.raw_ops.Assert(condition=ok, data=[message], summarize=1)
        with tf.control_dependencies([check]):
            return tf.nest.map_structure(tf.identity, x)
    concrete = _concrete(ok)
    if concrete is not None:
        if not concrete:
            raise ValueError(message)
        return x
    if backend == "jax":
        import jax

        def fail_unless(value):
            if not bool(value):
                raise ValueError(message)

        jax.debug.callback(fail_unless, ok)
    return x
