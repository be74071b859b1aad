"""Classifier-free guidance as a model-function wrapper."""

import numbers

import keras
from keras import ops


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
