"""The noise schedule of EDM (Karras et al., 2022)."""

import math

from keras import ops

from keras_diffusion.schedules.schedule import Schedule
from keras_diffusion.schedules.schedule import _float
from keras_diffusion.schedules.schedule import register


@register
class EDMSchedule(Schedule):
    """EDM's variance-exploding schedule: alpha = 1, sigma(t) = sigma_max t^rho.

    Time is EDM's sampling ramp: sigma^(1/rho) is linear in t, from 0 at
    t = 0 (data, log-SNR = +inf) to sigma_max at t = 1. `t_min` is the time
    of `sigma_min`, (sigma_min / sigma_max)^(1/rho), so the "karras" spacing
    (rho-spaced in sigma from t = 1 to `t_min`, then the step to t = 0) is
    exactly Karras et al.'s eq. 5 grid: sigma_i = (sigma_max^(1/rho) +
    i/(N-1) (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho, followed by
    sigma_N = 0. In t that grid is uniform from 1 to `t_min`. The prior is
    N(0, sigma_max^2): samplers start from `sigma_max * noise`.

    `sigma_data`, the standard deviation of the data, is what EDM's
    preconditioning (`keras_diffusion.models.EDMPreconditioning`) and loss
    weight (`objectives.loss_weight("edm", ...)`) read from the schedule.

    Args:
        sigma_min: the smallest noise level used for training and sampling
            (0.002 in EDM).
        sigma_max: the noise level at t = 1 (80 in EDM).
        rho: the exponent of the ramp (7 in EDM).
        sigma_data: standard deviation of the data (0.5 in EDM, for images
            in [-1, 1]).

    Example:
    >>> schedule = keras_diffusion.schedules.EDMSchedule()
    >>> sampler = keras_diffusion.samplers.EDMSampler()
    >>> x0 = sampler.sample(model_fn, noise, schedule=schedule, prediction="x0",
    ...                     num_steps=18, spacing="karras")

    References:
        Karras, Aittala, Aila & Laine, Elucidating the Design Space of
        Diffusion-Based Generative Models, 2022 (Table 1, eq. 5).
    """

    # EDM samples on its rho = 7 grid (eq. 5): the samplers' default here.
    default_spacing = "karras"

    def __init__(self, sigma_min=0.002, sigma_max=80.0, rho=7.0, sigma_data=0.5):
        sigma_min, sigma_max = float(sigma_min), float(sigma_max)
        rho, sigma_data = float(rho), float(sigma_data)
        if not 0 < sigma_min < sigma_max:
            raise ValueError(
                "Need 0 < sigma_min < sigma_max, received "
                f"sigma_min={sigma_min}, sigma_max={sigma_max}"
            )
        if not rho > 0:
            raise ValueError(f"`rho` must be positive, received rho={rho}")
        if not sigma_data > 0:
            raise ValueError(
                f"`sigma_data` must be positive, received sigma_data={sigma_data}"
            )
        self.sigma_min = sigma_min
        self.sigma_max = sigma_max
        self.rho = rho
        self.sigma_data = sigma_data
        self.prior_std = sigma_max
        super().__init__(t_min=(sigma_min / sigma_max) ** (1.0 / rho))

    def alpha_sigma(self, t):
        sigma = self.sigma_max * ops.power(_float(t), self.rho)
        return ops.ones_like(sigma), sigma

    def alpha_sigma_derivatives(self, t):
        t = _float(t)
        d_sigma = self.rho * self.sigma_max * ops.power(t, self.rho - 1.0)
        return ops.zeros_like(d_sigma), d_sigma

    def log_snr(self, t):
        return -2.0 * (math.log(self.sigma_max) + self.rho * ops.log(_float(t)))

    def d_log_snr(self, t):
        return -2.0 * self.rho / _float(t)

    def t_from_log_snr(self, log_snr):
        return ops.exp((-0.5 * _float(log_snr) - math.log(self.sigma_max)) / self.rho)

    def get_config(self):
        return {
            "sigma_min": self.sigma_min,
            "sigma_max": self.sigma_max,
            "rho": self.rho,
            "sigma_data": self.sigma_data,
        }
