"""Model-function wrappers: classifier-free and classifier guidance, and
known-region replacement.

Each takes a model function and returns another one, `model_fn(x_t, t)`,
that any sampler accepts.
"""

import numbers

import keras
from keras import ops

from keras_diffusion import objectives
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


def log_prob_gradient(log_prob_fn, x):
    """The gradient of `sum(log_prob_fn(x))` with respect to `x`.

    Uses the backend's autodiff (`tf.GradientTape` on TensorFlow,
    `jax.grad` on JAX, `torch.autograd` on PyTorch), so `log_prob_fn` may
    be any `keras.ops` function (a Keras classifier included); it works in
    eager code, inside `tf.function` / `jax.jit` and inside a sampler's
    `ops.fori_loop`.

    Args:
        log_prob_fn: `log_prob_fn(x) -> (B,)` log-probabilities.
        x: the point, `(B, ...)`.

    Returns:
        The gradient, shaped like `x`.
    """
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        x = tf.convert_to_tensor(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            total = tf.reduce_sum(log_prob_fn(x))
        return tape.gradient(total, x)
    if backend == "jax":
        import jax

        return jax.grad(lambda v: ops.sum(log_prob_fn(v)))(ops.convert_to_tensor(x))
    if backend == "torch":
        import torch

        with torch.enable_grad():
            v = ops.convert_to_tensor(x).detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(torch.sum(log_prob_fn(v)), v)
        return grad
    raise NotImplementedError(
        f"Classifier guidance needs autodiff; the {backend!r} backend is not supported"
    )


def classifier_guidance(model_fn, classifier_fn, labels, classifier_scale, *, schedule,
                        prediction, num_classes=None):
    """Wraps a model function with classifier guidance (Dhariwal & Nichol, 2021).

    In score space the guided model is

        score(x_t) + classifier_scale * grad_x log p(y | x_t, t),

    with log p(y | x_t, t) the log-softmax of `classifier_fn(x_t, t)` at the
    requested labels. The model's output is converted to a score and back to
    its `prediction` type with `objectives.convert` (for epsilon, the
    familiar eps - scale * sigma * grad), so the guided function works with
    every sampler. At scale 1 with an exact classifier it is the exact
    class-conditional model p(x_t | y). Combine with classifier-free guidance
    by wrapping a guided model function:
    `classifier_guidance(classifier_free_guidance(...), ...)`.

    Args:
        model_fn: `model_fn(x_t, t) -> prediction`.
        classifier_fn: `classifier_fn(x_t, t) -> logits (B, num_classes)`, a
            noise-conditional classifier (e.g.
            `keras_diffusion.models.NoisyClassifier`, called on
            `{"x_t": x_t, "t": t}`) trained on the same schedule.
        labels: int labels `(B,)` of the classes to guide towards.
        classifier_scale: the scale s >= 0 (0: no guidance).
        schedule: the schedule (or its name) of the model and classifier.
        prediction: the prediction type of `model_fn`.
        num_classes: the classifier's number of classes; when given, labels
            outside `[0, num_classes)` raise a ValueError.

    Returns:
        `guided_fn(x_t, t)`.

    Example:
    >>> guided = classifier_guidance(
    ...     model.model_fn(), lambda x, t: classifier({"x_t": x, "t": t}),
    ...     labels=np.array([3, 7]), classifier_scale=2.0,
    ...     schedule=model.schedule, prediction=model.prediction)
    >>> x0 = DDIMSampler().sample(guided, noise, schedule=model.schedule,
    ...                           prediction=model.prediction, num_steps=50)

    References:
        Dhariwal & Nichol, Diffusion Models Beat GANs on Image Synthesis, 2021.
        Song et al., Score-Based Generative Modeling through Stochastic
        Differential Equations, 2021 (section 5, controllable generation).
    """
    schedule = schedules_lib.get(schedule)
    objectives.validate_prediction(prediction)
    if isinstance(classifier_scale, numbers.Number) and not classifier_scale >= 0:
        raise ValueError(
            f"`classifier_scale` must be >= 0, received classifier_scale={classifier_scale}"
        )
    if num_classes is not None and not ops.is_tensor(labels):
        import numpy as np

        values = np.asarray(labels)
        if values.size and (values.min() < 0 or values.max() >= int(num_classes)):
            raise ValueError(
                f"`labels` must be classes of the classifier, in [0, {int(num_classes)}) "
                f"(the classifier's num_classes={int(num_classes)}), received labels "
                f"in [{values.min()}, {values.max()}]"
            )
    if isinstance(classifier_scale, numbers.Number) and classifier_scale == 0:
        return model_fn
    labels = ops.cast(ops.convert_to_tensor(labels), "int32")

    def guided(x_t, t):
        out = model_fn(x_t, t)
        x_t = ops.cast(x_t, "float32")
        y = ops.broadcast_to(ops.reshape(labels, (-1,)), (ops.shape(x_t)[0],))

        def log_prob(x):
            logits = ops.cast(classifier_fn(x, t), "float32")
            log_p = ops.log_softmax(logits, axis=-1)
            return ops.take_along_axis(log_p, y[:, None], axis=1)[:, 0]

        grad = ops.stop_gradient(log_prob_gradient(log_prob, x_t))
        score = objectives.convert(out, x_t, t, schedule, prediction, "score")
        score = score + ops.cast(classifier_scale, "float32") * grad
        return objectives.convert(score, x_t, t, schedule, "score", prediction)

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
