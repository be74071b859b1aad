"""Heun's method (explicit trapezoid) on the probability-flow ODE."""

import numpy as np
from keras import ops

from keras_diffusion.samplers.euler_sampler import flow
from keras_diffusion.samplers.sampler import Sampler
from keras_diffusion.samplers.solver_utils import numpy_coefficients
from keras_diffusion.schedules.schedule import register


@register
class HeunSampler(Sampler):
    """Heun's second-order method on the probability-flow ODE, in t.

    From t to s < t, with v(x, t) = alpha'(t) x0 + sigma'(t) eps:

        x~  = x_t + (s - t) v(x_t, t)                      (Euler predictor)
        x_s = x_t + (s - t) / 2 * (v(x_t, t) + v(x~, s))   (trapezoid corrector)

    as in Karras et al. (2022), Algorithm 1, but in t on any schedule (on
    `RectifiedFlowSchedule` it is flow matching's Heun sampler). The last step,
    to t = 0, is the DDIM step x = alpha(0) x0 + sigma(0) eps, with no second
    evaluation. N timesteps therefore use 2N - 1 model evaluations (`nfe`).

    The loop runs over the 2N - 1 evaluations, one model call each: even
    iterations are predictors at the grid times, odd ones correctors.

    Few timesteps on a grid that ends near t = 0 ("linspace", "karras",
    "leading") make the last corrector unstable: it evaluates the model at
    the Euler predictor, off the data, at a tiny sigma, and the slope there
    amplifies that evaluation's error by about (t - s) / (2 sigma(s))
    (`correction_gains`). `sample` and `generate` warn when it exceeds
    `CORRECTION_GAIN_LIMIT`; "uniform" and "log_snr" stay below it.

    Args:
        **kwargs: `clip_x0`, `dynamic_threshold` (see `Sampler`).

    Example:
    >>> sampler = keras_diffusion.samplers.HeunSampler()
    >>> x0 = sampler.sample(model_fn, noise, schedule="rectified_flow",
    ...                     prediction="flow", num_steps=25)  # 49 NFE

    References:
        Karras, Aittala, Aila & Laine, Elucidating the Design Space of
        Diffusion-Based Generative Models, 2022.
    """

    default_num_steps = 25

    @staticmethod
    def nfe(num_steps):
        """Model evaluations used with `num_steps` timesteps: 2N - 1."""
        return 2 * num_steps - 1

    def correction_gains(self, schedule, times):
        """0.5 (t - s) |alpha'(s) - sigma'(s) alpha(s) / sigma(s)| / alpha(s).

        Per corrected step t -> s: the trapezoid's sensitivity to the x0 of
        the evaluation at (x~, s), relative to the exact step's alpha(s).
        """
        t, s = times[:-2], times[1:-1]  # The last step, to 0, is not corrected.
        alpha, sigma, d_alpha, d_sigma = numpy_coefficients(schedule, s)
        return 0.5 * (t - s) * np.abs(d_alpha - d_sigma * alpha / sigma) / alpha

    def _loop(self, denoise, x, times, schedule, seed):
        num_steps = ops.shape(times)[0] - 1

        def stage(j, state):
            x, y, d = state  # grid value x_k, next input, predictor slope
            k = j // 2
            corrector = j % 2 == 1
            t, s = times[k], times[k + 1]
            t_eval = ops.where(corrector, s, t)
            x0, eps = denoise(y, t_eval)
            v = flow(x0, eps, t_eval, schedule)
            # Predictor (even j): Euler to s; the final one is the DDIM step.
            final = ops.logical_and(ops.logical_not(corrector), k == num_steps - 1)
            x_final = self.ddim_step(x0, eps, s, schedule)
            predicted = ops.where(final, x_final, x + (s - t) * v)
            x_pred = ops.where(final, x_final, x)
            # Corrector (odd j): the trapezoid rule.
            x_corr = x + 0.5 * (s - t) * (d + v)
            return (
                ops.where(corrector, x_corr, x_pred),
                ops.where(corrector, x_corr, predicted),
                ops.where(corrector, d, v),
            )

        state = ops.fori_loop(0, 2 * num_steps - 1, stage, (x, x, ops.zeros_like(x)))
        return state[0]
