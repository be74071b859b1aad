"""DDPM ancestral sampling."""

from keras import ops

from keras_diffusion.samplers.sampler import Sampler
from keras_diffusion.samplers.sampler import step_noise
from keras_diffusion.schedules.schedule import register

VARIANCES = ("fixed_small", "fixed_large")


@register
class DDPMSampler(Sampler):
    """Ancestral sampling of Ho et al. (2020), on any grid and schedule.

    From time t to s < t (DDPM eq. 6-7 with the model's x0):

        x_s = coef_x_t x_t + coef_x0 x0 + c z,   z ~ N(0, I),

    where (coef_x_t, coef_x0, Var q(x_s | x_t, x0)) are the schedule's
    `posterior_coefficients(s, t)`. `c^2` is the posterior variance
    ("fixed_small", beta-tilde in DDPM) or the transition variance
    sigma_{t|s}^2 of q(x_t | x_s) ("fixed_large", beta in DDPM). The last step,
    to t = 0, is the deterministic DDIM step x = alpha(0) x0 + sigma(0) eps:
    no noise is added there (for sigma(0) = 0 that is the posterior mean).

    Args:
        variance: "fixed_small" or "fixed_large".
        **kwargs: `clip_x0`, `dynamic_threshold` (see `Sampler`).

    Example:
    >>> sampler = keras_diffusion.samplers.DDPMSampler()
    >>> x0 = sampler.sample(model_fn, noise, schedule="linear",
    ...                     prediction="epsilon", seed=0)  # 1000 steps

    References:
        Ho, Jain & Abbeel, Denoising Diffusion Probabilistic Models, 2020.
    """

    default_num_steps = 1000

    def __init__(self, variance="fixed_small", **kwargs):
        super().__init__(**kwargs)
        if variance not in VARIANCES:
            raise ValueError(
                f"Unknown `variance`: {variance!r}. Valid names: {list(VARIANCES)}"
            )
        self.variance = variance

    def get_config(self):
        return {**super().get_config(), "variance": self.variance}

    def _loop(self, denoise, x, times, schedule, seed):
        num_steps = ops.shape(times)[0] - 1

        def step(i, x):
            t, s = times[i], times[i + 1]
            x0, eps = denoise(x, t)
            coef_x_t, coef_x0, variance = schedule.posterior_coefficients(s, t)
            if self.variance == "fixed_large":
                variance = schedule.transition(s, t)[1]
            final = i == num_steps - 1
            std = ops.sqrt(ops.where(final, 0.0, variance))
            ancestral = coef_x_t * x + coef_x0 * x0 + std * step_noise(
                ops.shape(x), seed, i
            )
            return ops.where(final, self.ddim_step(x0, eps, s, schedule), ancestral)

        return ops.fori_loop(0, num_steps, step, x)
