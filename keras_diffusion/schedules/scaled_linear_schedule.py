"""Stable Diffusion's scaled-linear beta schedule."""

import numpy as np

from keras_diffusion.schedules.discrete_schedule import DiscreteSchedule
from keras_diffusion.schedules.schedule import register


@register
class ScaledLinearSchedule(DiscreteSchedule):
    """Stable Diffusion's schedule: sqrt(beta) linear, betas 0.00085 to 0.012.

    Args:
        beta_start: first beta.
        beta_end: last beta.
        num_train_timesteps: T.

    Example:
    >>> schedule = keras_diffusion.schedules.ScaledLinearSchedule()
    >>> schedule.log_snr(keras.ops.array([1.0]))

    References:
        Rombach et al., High-Resolution Image Synthesis with Latent Diffusion
        Models, 2022.
    """

    def __init__(self, beta_start=0.00085, beta_end=0.012, num_train_timesteps=1000, **kwargs):
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        super().__init__(num_train_timesteps=num_train_timesteps, **kwargs)

    def betas(self):
        return (
            np.linspace(
                self.beta_start**0.5,
                self.beta_end**0.5,
                self.num_train_timesteps,
                dtype=np.float64,
            )
            ** 2
        )

    def get_config(self):
        return {
            **super().get_config(),
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
        }
