"""An empty dataset is an error, never a silent end or an endless repeat.

A source that drops its bad examples (`ignore_errors`) yields nothing when
every example is bad, e.g. when a TFRecord key is wrong. Repeating such a
dataset spins forever without a message. `assert_nonempty` makes a dataset
fail, with a message, at the end of any pass over it that yielded no element.
The check runs inside the tf.data graph: it holds under tf.distribute, when a
resumed run skips its first batches, and on every pass of a repeated dataset.

This module is TensorFlow-only.
"""

import tensorflow as tf

_END = "end"
_VALUE = "value"


def _empty_like(spec):
    """A value of `spec`'s type whose unknown dimensions are 0."""
    if not isinstance(spec, tf.TensorSpec):
        raise TypeError(
            "`assert_nonempty` takes datasets of dense tensors. Received an "
            f"element spec of type {type(spec).__name__}: {spec}"
        )
    if spec.shape.rank is None:
        return tf.zeros([], spec.dtype)
    return tf.zeros([0 if d is None else d for d in spec.shape], spec.dtype)


def assert_nonempty(dataset, message):
    """Makes each pass over `dataset` fail if it yields no element.

    The elements and their order are unchanged. At the end of a pass that
    yielded nothing, iteration raises `tf.errors.InvalidArgumentError` whose
    message contains `message`.

    Args:
        dataset: a `tf.data.Dataset` of (nested structures of) dense tensors.
        message: the error message: say which data is empty and why it may be.
            TensorFlow would print its quotes backslash-escaped: they are
            turned into backticks.

    Returns:
        A `tf.data.Dataset` with the same elements and element spec.

    Example:
    >>> ds = tf.data.Dataset.range(0)
    >>> ds = assert_nonempty(ds, "No examples in my_source")
    >>> list(ds)  # raises InvalidArgumentError: ... No examples in my_source
    """
    if not isinstance(message, str) or not message:
        raise ValueError(f"`message` must be a non-empty string. Received: message={message!r}")
    message = message.replace("'", "`").replace('"', "`")
    sentinel = tf.nest.map_structure(_empty_like, dataset.element_spec)
    # Real elements get their index (>= 0); the sentinel appended at the end
    # gets -1. The second index is the position in the stream: the sentinel
    # is at position 0 exactly when no element came before it.
    indexed = dataset.enumerate()
    end = tf.data.Dataset.from_tensors((tf.constant(-1, tf.int64), sentinel))
    stream = indexed.concatenate(end).enumerate()

    def keep(position, item):
        index = item[0]
        ok = tf.logical_or(index >= 0, position > 0)
        check = tf.debugging.Assert(ok, [message])
        with tf.control_dependencies([check]):
            return tf.identity(index >= 0)

    def unpack(position, item):
        return item[1]

    return stream.filter(keep).map(unpack)
