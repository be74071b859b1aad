"""Noise schedules: x_t = alpha(t) x0 + sigma(t) eps, t in [0, 1]."""

from keras_diffusion.schedules.cosine_schedule import CosineSchedule
from keras_diffusion.schedules.discrete_schedule import DiscreteSchedule
from keras_diffusion.schedules.edm_schedule import EDMSchedule
from keras_diffusion.schedules.linear_schedule import LinearSchedule
from keras_diffusion.schedules.masking_schedule import MaskingSchedule
from keras_diffusion.schedules.rectified_flow_schedule import RectifiedFlowSchedule
from keras_diffusion.schedules.scaled_linear_schedule import ScaledLinearSchedule
from keras_diffusion.schedules.schedule import Schedule
from keras_diffusion.schedules.schedule import broadcast_like
from keras_diffusion.schedules.ve_schedule import VESchedule
from keras_diffusion.schedules.vp_schedule import VPSchedule

_NAMES = {
    "linear": LinearSchedule,
    "scaled_linear": ScaledLinearSchedule,
    "cosine": CosineSchedule,
    "ve": VESchedule,
    "rectified_flow": RectifiedFlowSchedule,
    "edm": EDMSchedule,
}


def get(identifier, **kwargs):
    """Returns a schedule from a name, a config dict or a schedule instance.

    Args:
        identifier: one of "linear", "scaled_linear", "cosine", "ve",
            "rectified_flow", "edm"; a dict from `keras.saving.serialize_keras_object`;
            or a `Schedule` (returned as is).
        **kwargs: constructor options when `identifier` is a name.

    Example:
    >>> keras_diffusion.schedules.get("cosine", num_train_timesteps=1000)
    """
    if isinstance(identifier, Schedule):
        return identifier
    if isinstance(identifier, dict):
        import keras

        return keras.saving.deserialize_keras_object(identifier)
    if isinstance(identifier, str) and identifier in _NAMES:
        return _NAMES[identifier](**kwargs)
    raise ValueError(
        f"Unknown schedule: {identifier!r}. Valid names: {sorted(_NAMES)}"
    )
