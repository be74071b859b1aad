"""Euler ancestral: Euler steps on x / alpha with fresh noise."""

from keras import ops

from keras_diffusion.samplers.sampler import Sampler
from keras_diffusion.samplers.sampler import step_noise
from keras_diffusion.schedules.schedule import register


@register
class EulerAncestralSampler(Sampler):
    """Euler ancestral sampling (k-diffusion's `sample_euler_ancestral`).

    In the variance-exploding form x / alpha = x0 + rho eps, rho = sigma /
    alpha, a step from rho_t to rho_s < rho_t splits rho_s^2 into a
    deterministic part and fresh noise:

        rho_up = min(rho_s, eta * rho_s sqrt(1 - rho_s^2 / rho_t^2)),
        rho_down = sqrt(rho_s^2 - rho_up^2),
        x_s / alpha_s = x_t / alpha_t + (rho_down - rho_t) eps + s_noise rho_up z,

    an Euler step to rho_down followed by noise up to rho_s. Since
    x_t / alpha_t + (rho_down - rho_t) eps = x0 + rho_down eps, it is computed
    as x_s = alpha_s (x0 + rho_down eps + s_noise rho_up z), with
    rho_s^2 / rho_t^2 = e^{-2h} (h the step in lambda = log(alpha/sigma)),
    which also holds where alpha_t = 0. This is diffusers'
    `EulerAncestralDiscreteScheduler` (eta = 1) on any schedule; with
    eta = 1 it is also DDPM's ancestral step. z is
    `step_noise(shape, seed, i)`. The final step, to t = 0, is the DDIM step.
    N timesteps use N model evaluations.

    Args:
        eta: the share of ancestral noise (0: Euler, the DDIM step; 1: full).
        s_noise: scale of the injected noise.
        **kwargs: `clip_x0`, `dynamic_threshold` (see `Sampler`).

    Example:
    >>> sampler = keras_diffusion.samplers.EulerAncestralSampler()
    >>> x0 = sampler.sample(model_fn, noise, schedule="scaled_linear",
    ...                     prediction="epsilon", num_steps=30, seed=0)

    References:
        Karras, Aittala, Aila & Laine, Elucidating the Design Space of
        Diffusion-Based Generative Models, 2022; Crowson, k-diffusion.
    """

    default_num_steps = 50

    def __init__(self, eta=1.0, s_noise=1.0, **kwargs):
        super().__init__(**kwargs)
        if not float(eta) >= 0:
            raise ValueError(f"`eta` must be >= 0, received eta={eta}")
        if not float(s_noise) >= 0:
            raise ValueError(f"`s_noise` must be >= 0, received s_noise={s_noise}")
        self.eta = float(eta)
        self.s_noise = float(s_noise)

    def get_config(self):
        return {**super().get_config(), "eta": self.eta, "s_noise": self.s_noise}

    def _loop(self, denoise, x, times, schedule, seed):
        num_steps = ops.shape(times)[0] - 1
        lambdas = 0.5 * schedule.log_snr(times)

        def step(i, x):
            t, s = times[i], times[i + 1]
            x0, eps = denoise(x, t)
            alpha_s, sigma_s = schedule.alpha_sigma(s)
            rho_s = sigma_s / alpha_s
            ratio_sq = ops.exp(-2.0 * (lambdas[i + 1] - lambdas[i]))  # rho_s^2 / rho_t^2
            rho_up = ops.minimum(rho_s, self.eta * rho_s * ops.sqrt(1.0 - ratio_sq))
            rho_down = ops.sqrt(ops.square(rho_s) - ops.square(rho_up))
            z = step_noise(ops.shape(x), seed, i)
            update = alpha_s * (x0 + rho_down * eps + self.s_noise * rho_up * z)
            return ops.where(
                i == num_steps - 1, self.ddim_step(x0, eps, s, schedule), update
            )

        return ops.fori_loop(0, num_steps, step, x)
