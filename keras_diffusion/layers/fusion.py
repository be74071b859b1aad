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

    `fn` takes tensors (or None) and Python scalars; the Python values are
    part of the compiled function's signature, as with `tf.function`. Each
    call of `fused` makes a new compiled function: a layer keeps its own, so
    that it is traced only for that layer's shapes.
    """
    if keras.backend.backend() != "tensorflow":
        return fn
    import tensorflow as tf

    # A callable object of its own: TensorFlow counts retracings per code
    # object, and the layers that share `fn` each trace it for their shapes.
    compiled = tf.function(_Island(fn), jit_compile=True, autograph=False)

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if not enabled():
            return fn(*args, **kwargs)
        return compiled(*args, **kwargs)

    return wrapper


class _Island:
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)
