"""XLA islands: elementwise-heavy pieces compiled alone on TensorFlow.

On CPU, TensorFlow's oneDNN convolutions are faster than XLA's, so models
train with `jit_compile=False`; but then every elementwise op of a group
normalization, SiLU or softmax is its own pass over memory, and their
gradients make more. `fused(fn)` compiles such a piece (and, through
TensorFlow's function gradients, its backward pass) as one XLA cluster inside
the otherwise uncompiled graph: the convolutions stay on oneDNN, the
normalization becomes a few fused loops.

On the JAX backend, and inside a graph that is already XLA-compiled, the
function runs as written (XLA fuses it anyway). `disabled()` turns the
islands off for what is traced under it: `keras_diffusion.export` uses it
so that a SavedModel exported without `jit_compile` has no XLA op in it
(TF Serving does not run XLA on CPU by default).
"""

import contextlib
import functools
import threading

import keras

_state = threading.local()


def enabled():
    """Whether `fused` functions compile to XLA islands here."""
    return keras.backend.backend() == "tensorflow" and getattr(_state, "enabled", True)


@contextlib.contextmanager
def disabled():
    """Within this context (and this thread), fused functions run unfused."""
    previous = getattr(_state, "enabled", True)
    _state.enabled = False
    try:
        yield
    finally:
        _state.enabled = previous


def fused(fn):
    """Returns `fn`, compiled as an XLA island when called on TensorFlow.

    `fn` takes tensors (or None) and Python scalars. One compiled function
    is kept per signature (shapes, dtypes and Python values): layers with
    the same shapes share it (and its XLA compilation), and none is traced
    twice, so TensorFlow's frequent-retracing warning stays quiet however
    many differently shaped layers call `fn`.
    """
    if keras.backend.backend() != "tensorflow":
        return fn
    import tensorflow as tf

    compiled = {}

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not enabled():
            return fn(*args, **kwargs)
        # Tensors, never variables: the compiled functions are shared by the
        # whole process, and one traced with a variable argument keeps a
        # reference to it (a later model of the same shapes would then call
        # a function holding a deleted model's variables).
        args = tuple(_as_tensor(tf, a) for a in args)
        kwargs = {k: _as_tensor(tf, v) for k, v in kwargs.items()}
        key = (
            tuple(_key(a) for a in args),
            tuple((k, _key(v)) for k, v in sorted(kwargs.items())),
        )
        if key not in compiled:
            compiled[key] = tf.function(_Island(fn), jit_compile=True, autograph=False)
        return compiled[key](*args, **kwargs)

    return wrapper


def _as_tensor(tf, value):
    if isinstance(value, (tf.Variable, keras.Variable)):
        return tf.convert_to_tensor(value)
    return value


def _key(value):
    shape = getattr(value, "shape", None)
    if shape is not None and hasattr(value, "dtype"):
        return (tuple(shape), str(value.dtype))
    return value


class _Island:
    """A callable of its own for each compiled function (TensorFlow counts
    retracings per code object)."""

    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)
