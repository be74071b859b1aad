"""Multistep consistency sampling."""

from keras import ops

from keras_diffusion.samplers.sampler import Sampler
from keras_diffusion.samplers.sampler import step_noise
from keras_diffusion.schedules.schedule import register


@register
class ConsistencySampler(Sampler):
    """Multistep consistency sampling (Song et al., 2023, Algorithm 1).

    At each time t_i of the grid the model's x0 estimate (for a consistency
    model: its consistency function f(x, t_i)) is taken, and the next input
    is that estimate noised afresh to the next time:

        x0 = f(x_{t_i}, t_i),   x_{t_{i+1}} = alpha(t_{i+1}) x0 + sigma(t_{i+1}) z,

    with z ~ N(0, I) drawn by `random.step_noise(shape, seed, i)`. One step
    is one model evaluation; after the last time the sampler returns the DDIM
    step to t = 0, alpha(0) x0 + sigma(0) eps (the x0 estimate when
    sigma(0) = 0). The default is one step, from `spacing.start_time`; pass
    `timesteps` to choose the times, e.g. `timesteps=[0.98, 0.5]` for two.
    On a model that is not a consistency model it is a stochastic sampler
    (each step forgets x_t but for the x0 estimate), poor at few steps.

    Args:
        **kwargs: `clip_x0`, `dynamic_threshold` (see `Sampler`).

    Example:
    >>> sampler = keras_diffusion.samplers.ConsistencySampler()
    >>> x0 = sampler.sample(model_fn, noise, schedule="cosine",
    ...                     prediction="x0", num_steps=2, seed=0)

    References:
        Song, Dhariwal, Chen & Sutskever, Consistency Models, 2023.
    """

    default_num_steps = 1

    def _loop(self, denoise, x, times, schedule, seed):
        num_steps = ops.shape(times)[0] - 1

        def step(i, x):
            s = times[i + 1]
            x0, eps = denoise(x, times[i])
            alpha_s, sigma_s = schedule.alpha_sigma(s)
            renoised = alpha_s * x0 + sigma_s * step_noise(ops.shape(x), seed, i)
            last = self.ddim_step(x0, eps, s, schedule)
            return ops.where(i == num_steps - 1, last, renoised)

        return ops.fori_loop(0, num_steps, step, x)
