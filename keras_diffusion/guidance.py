"""Model-function wrappers: classifier-free guidance and known-region replacement.

Each takes a model function and returns another one, `model_fn(x_t, t)`,
that any sampler accepts.
"""

import numbers

import keras
from keras import ops

from keras_diffusion import random as random_lib
from keras_diffusion import schedules as schedules_lib

RENOISE_MODES = ("fresh", "fixed")


def classifier_free_guidance(model_fn, condition, null_condition, guidance_scale):
    """Wraps a conditional model into a guided `model_fn(x_t, t)`.

    The conditional and unconditional halves run in one batched call:

        out = uncond + guidance_scale * (cond - uncond)

    (Ho & Salimans, 2021, eq. 6 with w = guidance_scale - 1). A scale of 1
    is the plain conditional model, 0 the unconditional one. Because every
    prediction type is an affine function of the model output at fixed
    (x_t, t), guiding in any prediction space gives the same sampler update.

    Args:
        model_fn: `model_fn(x_t, t, condition) -> prediction`.
        condition: the condition for the batch: a tensor of shape [batch, ...]
            or a dict/tuple of such tensors.
        null_condition: the "no condition" input of the same structure and
            shapes (e.g. the null class label, the empty prompt's context).
        guidance_scale: a float >= 0 (or a scalar tensor).

    Returns:
        `guided_fn(x_t, t)`.

    Example:
    >>> labels = keras.ops.array([3, 7])
    >>> guided = classifier_free_guidance(
    ...     lambda x, t, y: unet({"x_t": x, "t": t, "labels": y}),
    ...     labels, keras.ops.full_like(labels, 10), guidance_scale=3.0)

    References:
        Ho & Salimans, Classifier-Free Diffusion Guidance, 2021.
    """
    if isinstance(guidance_scale, numbers.Number):
        if not guidance_scale >= 0:
            raise ValueError(
                "`guidance_scale` must be >= 0, received "
                f"guidance_scale={guidance_scale}"
            )
        if guidance_scale == 1:
            return lambda x_t, t: model_fn(x_t, t, condition)
    both = keras.tree.map_structure(
        lambda c, n: ops.concatenate([c, ops.cast(n, c.dtype)], axis=0),
        condition,
        null_condition,
    )

    def guided(x_t, t):
        batch = ops.shape(x_t)[0]
        out = model_fn(
            ops.concatenate([x_t, x_t], axis=0), ops.concatenate([t, t], axis=0), both
        )
        cond, uncond = out[:batch], out[batch:]
        scale = ops.cast(guidance_scale, uncond.dtype)
        return uncond + scale * (cond - uncond)

    return guided


def check_renoise(renoise):
    """Raises a ValueError unless `renoise` is "fresh" or "fixed"."""
    if renoise not in RENOISE_MODES:
        raise ValueError(
            f"`renoise` must be one of {list(RENOISE_MODES)}, received renoise={renoise!r}"
        )
    return renoise


def replace_known(model_fn, images, mask, schedule, noise, renoise="fresh", seed=0):
    """Wraps `model_fn` so that the known region of x_t is the noised image.

    `wrapped(x_t, t) = model_fn(mask * x_t + (1 - mask) * add_noise(images,
    eps_t, t), t)`, with eps_t = `noise` (`renoise="fixed"`) or fresh noise
    for each evaluation time (`"fresh"`: `step_noise(shape, seed,
    RENOISE_OFFSET + round(t * 1e6))`, so still reproducible). Fresh noise is
    independent of the sampler's state, as the forward process makes the
    known pixels' noise; see `keras_diffusion.pipelines.image_to_image`.

    Args:
        model_fn: `model_fn(x_t, t) -> prediction`.
        images: the known images (or latents) `(B, ...)`.
        mask: 1 where the sampler generates, 0 where `images` is known.
        schedule: the schedule (or its name).
        noise: eps of the shape of `images` (used by "fixed").
        renoise: "fresh" or "fixed".
        seed: the int seed of the fresh noise.

    Returns:
        `wrapped(x_t, t)`.

    References:
        Song et al., Score-Based Generative Modeling through Stochastic
        Differential Equations, 2021 (appendix I.2).
        Lugmayr et al., RePaint, 2022.
    """
    renoise = check_renoise(renoise)
    schedule = schedules_lib.get(schedule)

    def known_at(t):
        if renoise == "fixed":
            eps = noise
        else:
            step = ops.cast(ops.round(t[0] * 1e6), "int32") + random_lib.RENOISE_OFFSET
            eps = random_lib.step_noise(ops.shape(images), seed, step)
        return schedule.add_noise(images, eps, t)

    def wrapped(x_t, t):
        x_t = mask * x_t + (1.0 - mask) * ops.cast(known_at(t), x_t.dtype)
        return model_fn(x_t, t)

    return wrapped
