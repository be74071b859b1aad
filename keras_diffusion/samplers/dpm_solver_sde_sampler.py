"""SDE-DPM-Solver++ multistep: DPM-Solver++(2M) SDE and (3M) SDE."""

from keras import ops

from keras_diffusion.samplers.sampler import Sampler
from keras_diffusion.samplers.sampler import step_noise
from keras_diffusion.samplers.solver_utils import at
from keras_diffusion.samplers.solver_utils import check_choice
from keras_diffusion.samplers.solver_utils import check_order
from keras_diffusion.samplers.solver_utils import finite
from keras_diffusion.samplers.solver_utils import multistep_order
from keras_diffusion.schedules.schedule import register

SOLVER_TYPES = ("midpoint", "heun")
THIRD_ORDER = ("taylor", "diffusers")


@register
class DPMSolverSDESampler(Sampler):
    """SDE-DPM-Solver++ (Lu et al., 2022b), multistep, on the reverse SDE.

    The exact solution of the reverse-time SDE in lambda = log(alpha/sigma),
    from t to s < t with h = lambda_s - lambda_t, is

        x_s = (sigma_s/sigma_t) e^{-h} x_t
              + 2 alpha_s int_0^h e^{-2(h - u)} x0(lambda_t + u) du
              + sigma_s sqrt(1 - e^{-2h}) z,

    and the solver expands x0 in a Taylor series of the last outputs, with
    D1 ~ h x0' and D2 ~ h^2 x0'' the divided differences of DPM-Solver++
    (see `DPMSolverSampler`):

    - order 1: (sigma_s/sigma_t) e^{-h} x + alpha_s (1 - e^{-2h}) m_0 + noise
      (with eta = 1 this is DDPM's ancestral step);
    - order 2 (2M SDE): + 1/2 alpha_s (1 - e^{-2h}) D1 ("midpoint", diffusers'
      default) or + alpha_s ((1 - e^{-2h})/(-2h) + 1) D1 ("heun");
    - order 3 (3M SDE): + alpha_s ((1 - e^{-2h})/(-2h) + 1) D1
      + alpha_s c_2 D2, c_2 = (1 - e^{-2h} - 2h)/(2h)^2 + 1/2, the exact
      integral of the quadratic term. `third_order="diffusers"` reproduces
      diffusers' update instead: half this D2 and c_2 with -1/2 in place of
      +1/2, which does not vanish as h -> 0 and makes the update first-order
      accurate in that term.

    The noise z is `step_noise(shape, seed, i)`, scaled by `s_noise`. The
    first steps warm up with lower orders; with `lower_order_final` and fewer
    than 15 timesteps order 3 drops to 2 on the step before the last; the
    final step, to t = 0, is the DDIM step x = alpha(0) x0 + sigma(0) eps (the
    first-order update there, where sigma = 0). N timesteps use N model
    evaluations.

    Args:
        order: 1, 2 or 3.
        solver_type: "midpoint" or "heun", the second-order update.
        third_order: "taylor" (default) or "diffusers", see above.
        lower_order_final: see above.
        s_noise: scale of the injected noise (1 samples the SDE).
        **kwargs: `clip_x0`, `dynamic_threshold` (see `Sampler`).

    Example:
    >>> sampler = keras_diffusion.samplers.DPMSolverSDESampler(order=2)
    >>> x0 = sampler.sample(model_fn, noise, schedule="linear",
    ...                     prediction="epsilon", num_steps=20, seed=0)

    References:
        Lu et al., DPM-Solver++: Fast Solver for Guided Sampling of Diffusion
        Probabilistic Models, 2022 (appendix, SDE-DPM-Solver++).
    """

    default_num_steps = 25

    def __init__(
        self,
        order=2,
        solver_type="midpoint",
        third_order="taylor",
        lower_order_final=True,
        s_noise=1.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not float(s_noise) >= 0:
            raise ValueError(f"`s_noise` must be >= 0, received s_noise={s_noise}")
        self.order = check_order(order)
        self.solver_type = check_choice("solver_type", solver_type, SOLVER_TYPES)
        self.third_order = check_choice("third_order", third_order, THIRD_ORDER)
        self.lower_order_final = bool(lower_order_final)
        self.s_noise = float(s_noise)

    def get_config(self):
        return {
            **super().get_config(),
            "order": self.order,
            "solver_type": self.solver_type,
            "third_order": self.third_order,
            "lower_order_final": self.lower_order_final,
            "s_noise": self.s_noise,
        }

    def _loop(self, denoise, x, times, schedule, seed):
        num_steps = ops.shape(times)[0] - 1
        lambdas = 0.5 * schedule.log_snr(times)  # lambdas[-1] may be +inf

        def step(i, state):
            x, m1, m2 = state  # data predictions at times[i - 1], times[i - 2]
            t, s = times[i], times[i + 1]
            x0, eps = denoise(x, t)
            alpha_s, sigma_s = schedule.alpha_sigma(s)
            sigma_t = schedule.sigma(t)
            lam_t, lam_1, lam_2 = lambdas[i], at(lambdas, i - 1), at(lambdas, i - 2)
            # h is +inf from alpha = 0 (and to sigma = 0): the exponentials
            # take it as it is, divisions get a finite stand-in.
            h_raw = lambdas[i + 1] - lam_t
            h = finite(h_raw)
            order = multistep_order(
                self.order, i, num_steps, self.lower_order_final, lam_1, lam_2
            )
            r0 = ops.where(order >= 2, finite((lam_t - lam_1) / h), 1.0)
            r1 = ops.where(order >= 3, finite((lam_1 - lam_2) / h), 1.0)
            d1_0 = (x0 - m1) / r0
            d1_1 = (m1 - m2) / r1
            one_minus = -ops.expm1(-2.0 * h_raw)  # 1 - e^{-2h}
            decay = (sigma_s / sigma_t) * ops.exp(-h_raw)
            noise = step_noise(ops.shape(x), seed, i)
            base = (
                decay * x
                + alpha_s * one_minus * x0
                + self.s_noise * sigma_s * ops.sqrt(one_minus) * noise
            )
            one_minus_h = -ops.expm1(-2.0 * h)
            c_1 = one_minus_h / (-2.0 * h) + 1.0
            if self.solver_type == "midpoint":
                second = base + 0.5 * alpha_s * one_minus_h * d1_0
            else:
                second = base + alpha_s * c_1 * d1_0
            d1 = d1_0 + (r0 / (r0 + r1)) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / (r0 + r1)
            c_2 = (one_minus_h - 2.0 * h) / (2.0 * h) ** 2
            if self.third_order == "taylor":
                d2, c_2 = 2.0 * d2, c_2 + 0.5
            else:
                c_2 = c_2 - 0.5
            third = base + alpha_s * c_1 * d1 + alpha_s * c_2 * d2
            update = ops.where(order == 1, base, ops.where(order == 2, second, third))
            update = ops.where(
                i == num_steps - 1, self.ddim_step(x0, eps, s, schedule), update
            )
            return update, x0, m1

        zeros = ops.zeros_like(x)
        return ops.fori_loop(0, num_steps, step, (x, zeros, zeros))[0]
