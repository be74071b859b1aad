"""The cosine schedule of Nichol & Dhariwal."""

import math

import numpy as np

from keras_diffusion.schedules.discrete_schedule import DiscreteSchedule
from keras_diffusion.schedules.schedule import register


@register
class CosineSchedule(DiscreteSchedule):
    """Cosine schedule: alpha_bar(t) = f(t) / f(0), f(t) = cos^2(pi/2 (t+s)/(1+s)).

    Betas are 1 - alpha_bar(k+1)/alpha_bar(k) on the T-step grid, clipped at
    `max_beta` as in the paper (eq. 17).

    Args:
        s: the offset, 0.008 in the paper.
        max_beta: the clip on the betas, 0.999 in the paper.
        num_train_timesteps: T.

    Example:
    >>> schedule = keras_diffusion.schedules.CosineSchedule()
    >>> schedule.sigma(keras.ops.array([0.25, 1.0]))

    References:
        Nichol & Dhariwal, Improved Denoising Diffusion Probabilistic Models,
        2021.
    """

    def __init__(self, s=0.008, max_beta=0.999, num_train_timesteps=1000, **kwargs):
        self.s = float(s)
        self.max_beta = float(max_beta)
        super().__init__(num_train_timesteps=num_train_timesteps, **kwargs)

    def betas(self):
        def f(u):
            return math.cos((u + self.s) / (1 + self.s) * math.pi / 2) ** 2

        num = self.num_train_timesteps
        return np.array(
            [
                min(1 - f((k + 1) / num) / f(k / num), self.max_beta)
                for k in range(num)
            ],
            dtype=np.float64,
        )

    def get_config(self):
        return {**super().get_config(), "s": self.s, "max_beta": self.max_beta}
