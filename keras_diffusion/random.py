"""Counter-based random draws for sampling: one seed contract everywhere.

Every random draw at sampling time (`generate`, img2img, inpainting, the
stochastic samplers' steps and the exported SavedModel) is
`step_noise(shape, seed, stream)`: the same (seed, stream) gives the same
normals in eager TensorFlow, inside `tf.function`, under XLA, on JAX and in a
SavedModel. A draw is named by its stream:

- `0 .. num_steps - 1`: a stochastic sampler's steps (with the sampler seed);
- `INITIAL_NOISE`: the starting noise of `generate` (with the user's seed);
- `IMG2IMG_NOISE`: the noise that img2img / inpainting add to the images;
- `RENOISE_OFFSET + round(t * 1e6)`: inpainting's fresh noise for the known
  region at time t;
- `EVAL_SEED`: the fixed seed of `evaluate`'s noise (one stream per time).

`sampler_seed(seed, chunk)` derives the seed of the sampler of `generate`'s
batch `chunk` from the user's seed. This module is a leaf: it imports only
Keras and NumPy.
"""

import math

import numpy as np
from keras import ops

INITIAL_NOISE = 2**31 - 1
IMG2IMG_NOISE = 1_000_003
RENOISE_OFFSET = 2_000_003
EVAL_SEED = 20240531

_SEED_MULTIPLIER = 1000003
_SEED_MODULUS = 2**31 - 1
SEED_RANGE = 2**31


def _mix(x):
    """A 32-bit integer hash (Wellons' "lowbias32"), in keras.ops on uint32."""
    x = ops.bitwise_xor(x, ops.right_shift(x, 16))
    x = ops.multiply(x, ops.cast(0x7FEB352D, "uint32"))
    x = ops.bitwise_xor(x, ops.right_shift(x, 15))
    x = ops.multiply(x, ops.cast(0x846CA68B, "uint32"))
    return ops.bitwise_xor(x, ops.right_shift(x, 16))


def step_noise(shape, seed, step, dtype="float32"):
    """Standard normal noise for stream `step`, reproducible from `seed`.

    Counter-based: each element hashes (seed, step, index) to two uniforms
    and a Box-Muller transform makes the normal. Element k uses counters 2k
    and 2k + 1, so a batch's noise is a prefix of a larger batch's:
    generating 1 image or 16 gives the same first one.

    Args:
        shape: the output shape (ints, or scalar tensors inside a graph).
        seed: an int or scalar int tensor (taken modulo 2^32).
        step: an int or scalar int tensor: the stream (see the module doc).
        dtype: the output dtype.

    Example:
    >>> eps = step_noise((2, 8, 8, 3), seed=0, step=INITIAL_NOISE)
    """
    if isinstance(shape, (tuple, list)):
        size = 1
        for dim in shape:
            size = size * dim
    else:  # A shape tensor.
        size = ops.prod(shape)
    key = _mix(ops.cast(step, "uint32") + ops.cast(0x9E3779B9, "uint32"))
    key = _mix(ops.cast(seed, "uint32") + key)
    index = 2 * ops.cast(ops.arange(size), "uint32")

    def uniform(counter):
        bits = _mix(ops.bitwise_xor(counter, key) + key)
        # 24 random bits -> a uniform in (0, 1), exact in float32.
        return (ops.cast(ops.right_shift(bits, 8), "float32") + 0.5) / 16777216.0

    radius = ops.sqrt(-2.0 * ops.log(uniform(index)))
    z = radius * ops.cos(2.0 * math.pi * uniform(index + ops.cast(1, "uint32")))
    return ops.cast(ops.reshape(z, shape), dtype)


def initial_noise(shape, seed):
    """The starting noise of `generate` for a seed: `N(0, I)` of `shape`."""
    return step_noise(shape, seed, INITIAL_NOISE)


def sampler_seed(seed, chunk=0):
    """The seed of the sampler of `generate`'s batch `chunk` for a seed.

    `(seed * 1000003 + chunk) % (2**31 - 1)`: exact Python integers for an
    int seed, int64 ops for a tensor (the exported graph).
    """
    if isinstance(seed, (int, np.integer)):
        return np.int64((int(seed) * _SEED_MULTIPLIER + chunk) % _SEED_MODULUS)
    seed = ops.cast(seed, "int64")
    return ops.mod(seed * _SEED_MULTIPLIER + chunk, _SEED_MODULUS)


def check_seed(seed, name="seed"):
    """A user's seed as a Python int in [0, 2**31), or a random one for None.

    A scalar integer tensor (inside a compiled graph) is returned as is.

    Raises a ValueError naming `name` for anything else (strings, floats,
    bools, negative or too large ints): the SavedModel accepts the same
    range, so a seed gives the same images in both.
    """
    if seed is None:
        return int(np.random.randint(0, SEED_RANGE - 1))
    if isinstance(seed, np.ndarray) and seed.ndim == 0 and seed.dtype.kind in "iu":
        seed = seed.item()
    elif ops.is_tensor(seed) and len(seed.shape) == 0 and "int" in str(seed.dtype):
        return seed  # A traced seed (checked where the graph's inputs are).
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ValueError(
            f"`{name}` must be an int in [0, 2**31) or None, received {name}={seed!r}"
        )
    if not 0 <= int(seed) < SEED_RANGE:
        raise ValueError(f"`{name}` must be in [0, 2**31), received {name}={seed}")
    return int(seed)
