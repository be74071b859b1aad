"""Checks of `generate`'s classifier-guidance options (`classifier`,
`classifier_scale`) against a model's sample shape and schedule."""

import numbers
import warnings

import keras
import numpy as np
from keras import ops

from keras_diffusion.conditioning import ConditionSpec


def check_classifier_options(classifier, classifier_scale, labels, num, sample_shape,
                             schedule, is_latent=False):
    """Validates `generate`'s classifier guidance arguments.

    The classifier is called once on zeros of the sample shape (which also
    builds it): it must take `{"x_t": (B, *sample_shape), "t": (B,)}` and
    return logits `(B, num_classes)`. A latent model guides its latents, so
    the classifier must take latents.

    Args:
        classifier: None, or a Keras layer/model (e.g.
            `keras_diffusion.models.NoisyClassifier`).
        classifier_scale: None (1.0 with a classifier), or a finite number
            >= 0.
        labels: the requested labels (required with a classifier).
        num: the number of samples.
        sample_shape: the shape the model samples (without batch): the image
            shape, or a latent model's latent shape.
        schedule: the model's schedule (a classifier trained on another one
            gets a warning).
        is_latent: whether `sample_shape` is a latent shape (for messages).

    Returns:
        None when there is no guidance (no classifier, or scale 0), else
        `(labels int32 (num,), scale float)`.
    """
    if classifier is None:
        if classifier_scale is not None:
            raise ValueError(
                "`classifier_scale` was given without a `classifier`, received "
                f"classifier_scale={classifier_scale!r} and classifier=None"
            )
        return None
    scale = 1.0 if classifier_scale is None else classifier_scale
    if (
        isinstance(scale, bool)
        or not isinstance(scale, numbers.Real)
        or not (np.isfinite(scale) and scale >= 0)
    ):
        raise ValueError(
            "`classifier_scale` must be a finite number >= 0, received "
            f"classifier_scale={classifier_scale!r}"
        )
    if not isinstance(classifier, keras.layers.Layer):
        raise ValueError(
            "`classifier` must be a Keras layer or model called on "
            '{"x_t": x_t, "t": t} (e.g. keras_diffusion.models.NoisyClassifier), '
            f"received classifier={classifier!r}"
        )
    if labels is None:
        raise ValueError(
            "Classifier guidance needs the classes to guide towards: pass `labels`, "
            f"received labels=None with classifier={classifier.name!r}"
        )
    num_classes = _check_shape(classifier, tuple(sample_shape), is_latent)
    try:
        labels = ConditionSpec(num_classes=num_classes).check_labels(labels, num)
    except ValueError as error:
        raise ValueError(f"{error}: the labels of classifier {classifier.name!r}") from None
    own = getattr(classifier, "schedule", None)
    if own is not None and _config(own) != _config(schedule):
        warnings.warn(
            f"The classifier {classifier.name!r} was trained on the schedule {_config(own)} "
            f"and guides a model on {_config(schedule)}: its p(y | x_t, t) is for other "
            "noise levels.",
            stacklevel=3,
        )
    if float(scale) == 0:
        return None  # Scale 0: the unguided model, the unguided compiled function.
    return labels, float(scale)


def _check_shape(classifier, sample_shape, is_latent):
    """Calls the classifier once on zeros; returns its number of classes."""
    what = "latents" if is_latent else "samples"
    hint = (" (a latent model guides its latents x_t: the classifier must take latents)"
            if is_latent else "")
    channels = getattr(classifier, "input_channels", None)
    if channels is not None and int(channels) != sample_shape[-1]:
        raise ValueError(
            f"`classifier` {classifier.name!r} takes inputs with input_channels={channels}, "
            f"but the model's {what} have shape {sample_shape}{hint}"
        )
    try:
        logits = classifier(
            {"x_t": ops.zeros((1,) + sample_shape, "float32"),
             "t": ops.full((1,), 0.5, "float32")},
            training=False,
        )
    except ValueError as error:
        raise ValueError(
            f"`classifier` {classifier.name!r} does not take the model's {what} of shape "
            f"{sample_shape}{hint}: {error}"
        ) from None
    shape = tuple(logits.shape)
    if len(shape) != 2 or shape[0] != 1 or shape[1] < 2:
        raise ValueError(
            f"`classifier` {classifier.name!r} must return logits (batch, num_classes), "
            f"received shape {shape} for {what} of shape (1,) + {sample_shape}"
        )
    declared = getattr(classifier, "num_classes", None)
    if declared is not None and int(declared) != shape[1]:
        raise ValueError(
            f"`classifier` {classifier.name!r} has num_classes={declared} but returns "
            f"{shape[1]} logits"
        )
    return int(shape[1])


def _config(schedule):
    return f"{type(schedule).__name__}({schedule.get_config()})"
