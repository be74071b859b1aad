"""DDIM."""

from keras import ops

from keras_diffusion.samplers.sampler import Sampler
from keras_diffusion.samplers.sampler import step_noise
from keras_diffusion.schedules.schedule import register


@register
class DDIMSampler(Sampler):
    """Denoising diffusion implicit models (Song et al., 2021, eq. 12).

    From time t to s < t:

        x_s = alpha_s x0 + sqrt(sigma_s^2 - c^2) eps + c z,
        c = eta * sqrt(Var q(x_s | x_t, x0)),

    with the posterior variance of the schedule (for VP schedules this is
    eq. 16's sigma_t(eta)). eta = 0 is the deterministic DDIM, eta = 1
    ancestral sampling (DDPM's fixed-small variance).

    Args:
        eta: stochasticity in [0, 1].
        **kwargs: `clip_x0`, `dynamic_threshold` (see `Sampler`).

    Example:
    >>> sampler = keras_diffusion.samplers.DDIMSampler(eta=0.0)
    >>> x0 = sampler.sample(model_fn, noise, schedule="cosine",
    ...                     prediction="epsilon", num_steps=50)

    References:
        Song, Meng & Ermon, Denoising Diffusion Implicit Models, 2021.
    """

    def __init__(self, eta=0.0, **kwargs):
        super().__init__(**kwargs)
        eta = float(eta)
        if not 0.0 <= eta <= 1.0:
            raise ValueError(f"`eta` must be in [0, 1], received eta={eta}")
        self.eta = eta

    def get_config(self):
        return {**super().get_config(), "eta": self.eta}

    def _loop(self, denoise, x, times, schedule, seed):
        num_steps = ops.shape(times)[0] - 1

        def step(i, x):
            t, s = times[i], times[i + 1]
            x0, eps = denoise(x, t)
            alpha_s, sigma_s = schedule.alpha_sigma(s)
            _, _, variance = schedule.posterior_coefficients(s, t)
            # No noise on the final step to t = 0.
            c = self.eta * ops.sqrt(variance) * ops.cast(i < num_steps - 1, "float32")
            x = alpha_s * x0 + ops.sqrt(ops.square(sigma_s) - ops.square(c)) * eps
            if self.eta > 0:
                x = x + c * step_noise(ops.shape(x), seed, i)
            return x

        return ops.fori_loop(0, num_steps, step, x)
