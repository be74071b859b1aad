"""The variance-exploding schedule of score SDEs."""

import math

from keras import ops

from keras_diffusion.schedules.schedule import Schedule
from keras_diffusion.schedules.schedule import _float
from keras_diffusion.schedules.schedule import register


@register
class VESchedule(Schedule):
    """Variance exploding: alpha = 1, sigma(t) = sigma_min (sigma_max/sigma_min)^t.

    The prior is N(0, sigma_max^2), so samplers start from `sigma_max * noise`.

    Args:
        sigma_min: noise level at t = 0.
        sigma_max: noise level at t = 1 (about the largest distance between
            training points).
        t_min: smallest time used for training and sampling grids.

    Example:
    >>> schedule = keras_diffusion.schedules.VESchedule(sigma_max=50.0)
    >>> schedule.sigma(keras.ops.array([1.0]))  # 50.0

    References:
        Song et al., Score-Based Generative Modeling through Stochastic
        Differential Equations, 2021.
    """

    def __init__(self, sigma_min=0.01, sigma_max=50.0, t_min=1e-5, **kwargs):
        sigma_min, sigma_max = float(sigma_min), float(sigma_max)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                "Need 0 < sigma_min < sigma_max, received "
                f"sigma_min={sigma_min}, sigma_max={sigma_max}"
            )
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.prior_std = sigma_max
        super().__init__(t_min=t_min, **kwargs)

    @property
    def _log_ratio(self):
        return math.log(self.sigma_max / self.sigma_min)

    def alpha_sigma(self, t):
        t = _float(t)
        sigma = self.sigma_min * ops.exp(t * self._log_ratio)
        return ops.ones_like(sigma), sigma

    def alpha_sigma_derivatives(self, t):
        _, sigma = self.alpha_sigma(t)
        return ops.zeros_like(sigma), sigma * self._log_ratio

    def log_snr(self, t):
        return -2.0 * (math.log(self.sigma_min) + _float(t) * self._log_ratio)

    def d_log_snr(self, t):
        return ops.full_like(_float(t), -2.0 * self._log_ratio)

    def t_from_log_snr(self, log_snr):
        return (-0.5 * _float(log_snr) - math.log(self.sigma_min)) / self._log_ratio

    def get_config(self):
        return {
            **super().get_config(),
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
        }
