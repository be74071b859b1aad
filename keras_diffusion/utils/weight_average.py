"""An exponential moving average of a model's weights, with a warm-up."""

import contextlib
import numbers

import keras
from keras import ops

from keras_diffusion.utils.untracked import Untracked

# decay_n = min(decay, n / (n + WARMUP)) at the n-th update (n from 0): the
# first update copies the weights, and the average covers about the last
# n / WARMUP + 1 steps until `decay` takes over (diffusers' EMAModel warm-up).
WARMUP = 9.0


def check_decay(decay, name="decay", allow_none=False):
    """`decay` as a float in [0, 1) (or None where `allow_none`), else a
    ValueError naming the argument `name` and the value."""
    if decay is None and allow_none:
        return None
    if isinstance(decay, bool) or not isinstance(decay, numbers.Real) or not (
        0.0 <= float(decay) < 1.0
    ):
        raise ValueError(
            f"`{name}` must be in [0, 1){' or None' if allow_none else ''}, received "
            f"{name}={decay!r}"
        )
    return float(decay)


class WeightAverage(keras.layers.Layer):
    """The EMA of `variables`, kept as non-trainable weights of this layer.

    `update()` (one call per training step, after the optimizer's) moves
    each average towards its variable by `1 - decay_n`, with the warm-up
    decay_n = min(decay, n / (n + 9)) at the n-th update: the first update
    copies the weights, and in a short run the average covers roughly the
    last tenth of the steps instead of keeping the initial weights (Keras'
    optimizer EMA has no warm-up: after n steps `ema_momentum ** n` of its
    average is still the initial weights). Variables that are not trainable
    when `update()` runs keep their average.

    The averages are saved with the model (`.keras` files, checkpoints), and
    read as values: nothing is assigned to the averaged variables.

    Args:
        variables: the variables to average (read when `update` runs).
        decay: the decay after the warm-up, in [0, 1).
        **kwargs: `keras.layers.Layer` arguments.

    Example:
    >>> average = WeightAverage(model.denoiser.trainable_variables, decay=0.999)
    >>> average.update()                      # after each optimizer step
    >>> values = average.by_variable()        # {id(variable): its average}

    References:
        Song & Ermon, Improved Techniques for Training Score-Based
        Generative Models, 2020 (EMA of the weights for sampling).
        Karras et al., Analyzing and Improving the Training Dynamics of
        Diffusion Models, 2024 (how much averaging helps).
    """

    def __init__(self, variables, decay, **kwargs):
        super().__init__(**kwargs)
        self.decay = check_decay(decay)
        self._sources = Untracked(list(variables))
        # "only_first_replica": updated in a tf.distribute replica context,
        # where every replica holds the same weights after the optimizer step.
        self.count = self.add_weight(
            shape=(), initializer="zeros", dtype="float32", trainable=False,
            aggregation="only_first_replica", name="count",
        )
        averages = []
        for i, variable in enumerate(self._sources.value):
            average = self.add_weight(
                shape=variable.shape, initializer="zeros", dtype=variable.dtype,
                trainable=False, aggregation="only_first_replica", name=f"average_{i}",
            )
            # A copy: on JAX an assigned array is shared, and the train
            # step donates each buffer once.
            average.assign(ops.copy(variable.value))
            # An attribute each: tf.train.Checkpoint tracks variables held
            # in attributes, not in Keras' tracked lists.
            setattr(self, f"average_{i}", average)
            averages.append(average)
        self.averages = averages
        self.built = True

    def update(self, applied=None):
        """One EMA step of every trainable averaged variable.

        Args:
            applied: optional boolean scalar, whether the optimizer changed
                the weights at this step (False on the accumulating steps of
                `gradient_accumulation_steps`): when False the averages and
                the warm-up count stay as they are.
        """
        n = self.count.value
        decay = ops.minimum(self.decay, n / (n + WARMUP))
        step = 1.0
        if applied is not None:
            step = ops.cast(applied, "float32")
            decay = 1.0 - step * (1.0 - decay)
        for average, variable in zip(self.averages, self._sources.value):
            if variable.trainable:
                value = ops.cast(variable.value, average.dtype)
                average.assign(average.value + (1.0 - decay) * (value - average.value))
        self.count.assign(n + step)

    def has_updates(self):
        """Whether `update` has run (before that the averages are stale)."""
        return float(ops.convert_to_numpy(self.count)) > 0

    def by_variable(self):
        """{id(variable): its average variable}."""
        return {id(v): a for v, a in zip(self._sources.value, self.averages)}


@contextlib.contextmanager
def averages_assigned(variables, by_variable, lock=None):
    """Assigns each of `variables` its average (`by_variable[id(variable)]`)
    inside a `with`, for code that reads the variables themselves (saving
    them, `evaluate`); their values are restored afterwards, also on an
    error. `lock` (a `threading.RLock`, optional) is held throughout, so
    that a concurrent reader of the same lock never sees the swap. Yields
    whether anything was assigned."""
    with lock if lock is not None else contextlib.nullcontext():
        variables = [v for v in variables if id(v) in by_variable]
        backup = [ops.convert_to_numpy(v) for v in variables]
        for variable in variables:
            variable.assign(by_variable[id(variable)])
        try:
            yield bool(variables)
        finally:
            for variable, value in zip(variables, backup):
                variable.assign(value)
