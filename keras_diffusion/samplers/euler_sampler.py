"""Explicit Euler on the probability-flow ODE."""

from keras import ops

from keras_diffusion import objectives
from keras_diffusion.samplers.sampler import Sampler
from keras_diffusion.schedules.schedule import register


def flow(x0, eps, t, schedule):
    """The probability-flow velocity dx/dt = alpha'(t) x0 + sigma'(t) eps."""
    return objectives.from_x0_epsilon("flow", x0, eps, t, schedule)


@register
class EulerSampler(Sampler):
    """Explicit Euler on the probability-flow ODE, in t, on any schedule.

        x_s = x_t + (s - t) v(x_t, t),   v = alpha'(t) x0 + sigma'(t) eps.

    On `RectifiedFlowSchedule` with a "flow" model this is flow matching's
    Euler sampler (v = eps - x0). The last step, to t = 0, is the DDIM step
    x = alpha(0) x0 + sigma(0) eps. First order; N timesteps use N model
    evaluations.

    Args:
        **kwargs: `clip_x0`, `dynamic_threshold` (see `Sampler`).

    Example:
    >>> sampler = keras_diffusion.samplers.EulerSampler()
    >>> x0 = sampler.sample(model_fn, noise, schedule="rectified_flow",
    ...                     prediction="flow", num_steps=50)

    References:
        Song et al., Score-Based Generative Modeling through Stochastic
        Differential Equations, 2021 (the probability-flow ODE). Lipman et
        al., Flow Matching for Generative Modeling, 2023.
    """

    default_num_steps = 50

    def _loop(self, denoise, x, times, schedule, seed):
        num_steps = ops.shape(times)[0] - 1

        def step(i, x):
            t, s = times[i], times[i + 1]
            x0, eps = denoise(x, t)
            euler = x + (s - t) * flow(x0, eps, t, schedule)
            return ops.where(
                i == num_steps - 1, self.ddim_step(x0, eps, s, schedule), euler
            )

        return ops.fori_loop(0, num_steps, step, x)
