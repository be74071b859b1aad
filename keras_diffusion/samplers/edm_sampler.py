"""The stochastic sampler of EDM (Karras et al. 2022, Algorithm 2)."""

import math

import numpy as np
from keras import ops

from keras_diffusion.samplers.sampler import Sampler
from keras_diffusion.samplers.sampler import step_noise
from keras_diffusion.samplers.solver_utils import numpy_coefficients
from keras_diffusion.samplers.solver_utils import rescaled_sigma
from keras_diffusion.schedules.schedule import register


@register
class EDMSampler(Sampler):
    """EDM's stochastic sampler: churn, Euler step, Heun correction.

    Works on x / alpha = x0 + rho eps with rho = sigma / alpha (EDM's sigma;
    alpha = 1 on the EDM schedule). With N timesteps t_0 > ... > t_{N-1} and
    rho_i = rho(t_i), step i is Karras et al. (2022), Algorithm 2:

        gamma_i = min(S_churn / N, sqrt(2) - 1) if S_tmin <= rho_i <= S_tmax else 0
        rho^ = rho_i (1 + gamma_i)
        x^ = x_i + sqrt(rho^2 - rho_i^2) S_noise z            (churn, line 6)
        d = (x^ - D(x^; rho^)) / rho^ = eps(x^, rho^)
        x_{i+1} = x^ + (rho_{i+1} - rho^) d                   (Euler, line 8)
        x_{i+1} = x^ + (rho_{i+1} - rho^) (d + d') / 2        (Heun, line 11)

    with d' = eps(x_{i+1}, rho_{i+1}), all in x / alpha. The model sees x^ at
    the time t^ with rho(t^) = rho^ (`schedule.t_from_log_snr`); rho^ is
    capped at rho(t_0) so t^ stays in (0, 1]. The Euler step is the DDIM
    step from (x^, t^) to t_{i+1}. The last step, to t = 0, has no Heun
    correction (line 9), so N timesteps use 2N - 1 model evaluations
    (`nfe`); the loop runs over them, one model call each, like
    `HeunSampler`'s. With S_churn = 0 it is Algorithm 1, Heun's method in
    rho; z is `step_noise(shape, seed, i)`. On the "edm" schedule with the
    "karras" spacing this is EDM's sampler as published.

    The corrector amplifies the error of its second evaluation by
    (rho_i / rho_{i+1} - 1) / 2 (`correction_gains`): a grid that starts at a
    sigma / alpha far above its next point (on "cosine": about 190 at the
    start of the "uniform" grid, 2e4 on "linspace") makes it unstable at any
    practical N there, and `sample` and `generate` warn above
    `CORRECTION_GAIN_LIMIT`. `HeunSampler` (Heun in t) is the stable choice
    on such grids.

    Args:
        s_churn: total churn S_churn (0: deterministic).
        s_tmin, s_tmax: the range of rho in which noise is added.
        s_noise: S_noise, the scale of the added noise.
        **kwargs: `clip_x0`, `dynamic_threshold` (see `Sampler`).

    Example:
    >>> sampler = keras_diffusion.samplers.EDMSampler(
    ...     s_churn=40, s_tmin=0.05, s_tmax=50, s_noise=1.003)
    >>> x0 = sampler.sample(model_fn, noise, schedule="edm", prediction="x0",
    ...                     num_steps=18, spacing="karras", seed=0)

    References:
        Karras, Aittala, Aila & Laine, Elucidating the Design Space of
        Diffusion-Based Generative Models, 2022.
    """

    default_num_steps = 18

    def __init__(self, s_churn=0.0, s_tmin=0.0, s_tmax=float("inf"), s_noise=1.0, **kwargs):
        super().__init__(**kwargs)
        s_churn, s_tmin, s_tmax, s_noise = map(float, (s_churn, s_tmin, s_tmax, s_noise))
        if not s_churn >= 0:
            raise ValueError(f"`s_churn` must be >= 0, received s_churn={s_churn}")
        if not 0 <= s_tmin <= s_tmax:
            raise ValueError(
                f"Need 0 <= s_tmin <= s_tmax, received s_tmin={s_tmin}, s_tmax={s_tmax}"
            )
        if not s_noise >= 0:
            raise ValueError(f"`s_noise` must be >= 0, received s_noise={s_noise}")
        self.s_churn = s_churn
        self.s_tmin = s_tmin
        self.s_tmax = s_tmax
        self.s_noise = s_noise

    def get_config(self):
        return {
            **super().get_config(),
            "s_churn": self.s_churn,
            "s_tmin": self.s_tmin,
            "s_tmax": self.s_tmax,
            "s_noise": self.s_noise,
        }

    @staticmethod
    def nfe(num_steps):
        """Model evaluations used with `num_steps` timesteps: 2N - 1."""
        return 2 * num_steps - 1

    def correction_gains(self, schedule, times):
        """(rho_i / rho_{i+1} - 1) / 2 per corrected step (without churn)."""
        alpha, sigma, _, _ = numpy_coefficients(schedule, times[:-1])
        with np.errstate(divide="ignore", invalid="ignore"):
            rho = sigma / alpha
            return 0.5 * (rho[:-1] / rho[1:] - 1.0)

    def _churn(self, k, times, num_steps, schedule):
        """(t^, rho^, rho_k) of step k."""
        t = times[k]
        rho = rescaled_sigma(schedule, t)
        inside = ops.logical_and(rho >= self.s_tmin, rho <= self.s_tmax)
        gamma = ops.minimum(self.s_churn / ops.cast(num_steps, "float32"), math.sqrt(2.0) - 1.0)
        gamma = ops.where(inside, gamma, 0.0)
        rho_hat = ops.minimum(rho * (1.0 + gamma), rescaled_sigma(schedule, times[0]))
        churned = rho_hat > rho
        t_hat = ops.where(
            churned, schedule.t_from_log_snr(-2.0 * ops.log(rho_hat)), t
        )
        return t_hat, ops.where(churned, rho_hat, rho), rho

    def _loop(self, denoise, x, times, schedule, seed):
        num_steps = ops.shape(times)[0] - 1

        def stage(j, state):
            x, y, d = state  # x_k, the next model input, the predictor's eps
            k = j // 2
            corrector = j % 2 == 1
            s = times[k + 1]
            t_hat, rho_hat, rho = self._churn(k, times, num_steps, schedule)
            alpha_s, sigma_s = schedule.alpha_sigma(s)
            if self.s_churn > 0:
                # Churn (predictor stages): x^ / alpha^ = x_k / alpha_k + noise.
                alpha_t, alpha_hat = schedule.alpha(times[k]), schedule.alpha(t_hat)
                z = step_noise(ops.shape(x), seed, k)
                extra = ops.sqrt(ops.square(rho_hat) - ops.square(rho)) * self.s_noise
                x_hat = ops.where(
                    rho_hat > rho, alpha_hat * (x / alpha_t + extra * z), x
                )
                y = ops.where(corrector, y, x_hat)
            t_eval = ops.where(corrector, s, t_hat)
            x0, eps = denoise(y, t_eval)
            # Predictor: the Euler step in rho, i.e. DDIM from (x^, t^) to s.
            euler = self.ddim_step(x0, eps, s, schedule)
            # Corrector: x_{k+1} = euler + (rho_{k+1} - rho^) (d' - d) / 2, in x.
            heun = y + 0.5 * (sigma_s - alpha_s * rho_hat) * (eps - d)
            heun = ops.where(ops.isfinite(rho_hat), heun, y)  # rho^ = inf: Euler only
            return (
                ops.where(corrector, heun, euler),
                ops.where(corrector, heun, euler),
                ops.where(corrector, d, eps),
            )

        state = ops.fori_loop(0, 2 * num_steps - 1, stage, (x, x, ops.zeros_like(x)))
        return state[0]
