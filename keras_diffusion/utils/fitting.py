"""What every model's `fit` shares."""

import numpy as np


def without_shuffle_warning(x, args, kwargs):
    """`fit`'s keyword arguments with `shuffle=False` for data that comes
    shuffled (a tf.data.Dataset, a generator, a PyDataset).

    Keras' default `shuffle=True` applies only to arrays; for the other
    inputs it warns "`shuffle=True` was passed, but will be ignored", a
    warning the user did not cause. An explicit `shuffle` (keyword or the
    8th positional argument) is kept.

    Example:
    >>> kwargs = without_shuffle_warning(dataset, (), {"epochs": 2})
    """
    array_like = isinstance(x, (np.ndarray, dict, list, tuple)) or hasattr(x, "shape")
    if len(args) < 7 and not array_like:
        kwargs = {**kwargs}
        kwargs.setdefault("shuffle", False)
    return kwargs
