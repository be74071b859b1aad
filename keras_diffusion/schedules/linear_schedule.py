"""DDPM's linear beta schedule."""

import numpy as np

from keras_diffusion.schedules.discrete_schedule import DiscreteSchedule
from keras_diffusion.schedules.schedule import register


@register
class LinearSchedule(DiscreteSchedule):
    """DDPM's schedule: betas linear from `beta_start` to `beta_end`.

    Args:
        beta_start: first beta, 1e-4 in DDPM.
        beta_end: last beta, 0.02 in DDPM.
        num_train_timesteps: T, 1000 in DDPM.

    Example:
    >>> schedule = keras_diffusion.schedules.LinearSchedule()
    >>> alpha, sigma = schedule.alpha_sigma(keras.ops.array([0.5]))

    References:
        Ho et al., Denoising Diffusion Probabilistic Models, 2020.
    """

    def __init__(self, beta_start=1e-4, beta_end=0.02, num_train_timesteps=1000, **kwargs):
        self.beta_start = float(beta_start)
        self.beta_end = float(beta_end)
        super().__init__(num_train_timesteps=num_train_timesteps, **kwargs)

    def betas(self):
        return np.linspace(
            self.beta_start, self.beta_end, self.num_train_timesteps, dtype=np.float64
        )

    def get_config(self):
        return {
            **super().get_config(),
            "beta_start": self.beta_start,
            "beta_end": self.beta_end,
        }
