"""DPM-Solver++ singlestep (orders 1 to 3)."""

from keras import ops

from keras_diffusion.samplers.sampler import Sampler
from keras_diffusion.samplers.solver_utils import at
from keras_diffusion.samplers.solver_utils import check_choice
from keras_diffusion.samplers.solver_utils import check_order
from keras_diffusion.samplers.solver_utils import finite
from keras_diffusion.schedules.schedule import register

SOLVER_TYPES = ("midpoint", "heun")


@register
class DPMSolverSinglestepSampler(Sampler):
    """DPM-Solver++ singlestep (Lu et al., 2022), on the timestep grid.

    The N timesteps are cut into groups of `order` consecutive steps; each
    group is one singlestep update of that order from the group's first
    time, whose intermediate stages are the grid's own times (as in diffusers'
    `DPMSolverSinglestepScheduler`, so every timestep costs one model
    evaluation). In lambda = log(alpha / sigma), with the data predictions
    m_j at the group's times and the group start g, target s and
    h = lambda_s - lambda_g, phi_1 = e^{-h} - 1:

    - stage 1 (first order, DDIM): x_s = (sigma_s/sigma_g) x_g - alpha_s phi_1 m_g
    - stage 2, from g with r0 = (lambda_{g+1} - lambda_g) / h,
      D1 = (m_{g+1} - m_g) / r0:
      x_s = (sigma_s/sigma_g) x_g - alpha_s phi_1 m_g - 1/2 alpha_s phi_1 D1
      ("midpoint"), or + alpha_s (phi_1/h + 1) D1 ("heun");
    - stage 3, from g with r0 = (lambda_{g+2} - lambda_g) / h,
      r1 = (lambda_{g+1} - lambda_g) / h:
      "midpoint": x_s = (sigma_s/sigma_g) x_g - alpha_s phi_1 m_g
                        + alpha_s (phi_1/h + 1) (m_{g+2} - m_g) / r0;
      "heun": the same with D1 = (r0 D1_0 - r1 D1_1)/(r0 - r1) in place of
      the last difference and - alpha_s ((phi_1 + h)/h^2 - 1/2) D2,
      D2 = 2 (D1_1 - D1_0)/(r0 - r1), D1_0 = (m_{g+1} - m_g)/r1,
      D1_1 = (m_{g+2} - m_g)/r0 (DPM-Solver-3, Lu et al. 2022a, eq. 3.8).

    Step i thus has order (i mod `order`) + 1; the final step, to t = 0, is
    the DDIM step x = alpha(0) x0 + sigma(0) eps, as diffusers does with
    `final_sigmas_type="zero"`.

    Args:
        order: 1, 2 or 3.
        solver_type: "midpoint" (diffusers' default) or "heun".
        **kwargs: `clip_x0`, `dynamic_threshold` (see `Sampler`).

    Example:
    >>> sampler = keras_diffusion.samplers.DPMSolverSinglestepSampler(order=3)
    >>> x0 = sampler.sample(model_fn, noise, schedule="linear",
    ...                     prediction="epsilon", num_steps=12)

    References:
        Lu et al., DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic
        Model Sampling in Around 10 Steps, 2022. Lu et al., DPM-Solver++: Fast
        Solver for Guided Sampling of Diffusion Probabilistic Models, 2022.
    """

    default_num_steps = 20

    def __init__(self, order=2, solver_type="midpoint", **kwargs):
        super().__init__(**kwargs)
        self.order = check_order(order)
        self.solver_type = check_choice("solver_type", solver_type, SOLVER_TYPES)

    def get_config(self):
        return {**super().get_config(), "order": self.order, "solver_type": self.solver_type}

    def _loop(self, denoise, x, times, schedule, seed):
        num_steps = ops.shape(times)[0] - 1
        lambdas = 0.5 * schedule.log_snr(times)  # lambdas[-1] may be +inf
        midpoint = self.solver_type == "midpoint"

        def step(i, state):
            x, x_start, m_start, m_mid = state  # the group's start, its outputs
            t, s = times[i], times[i + 1]
            x0, eps = denoise(x, t)
            order = ops.mod(i, self.order) + 1
            # A group start at lambda = -inf (alpha = 0) gives no slope.
            order = ops.where(ops.isfinite(lambdas[i - order + 1]), order, 1)
            first = order == 1
            x_start = ops.where(first, x, x_start)
            m_start = ops.where(first, x0, m_start)
            m_mid = ops.where(order == 2, x0, m_mid)  # the output at g + 1
            g = i - order + 1
            alpha_g, sigma_g = schedule.alpha_sigma(times[g])
            alpha_s, sigma_s = schedule.alpha_sigma(s)
            h_raw = lambdas[i + 1] - lambdas[g]
            h = finite(h_raw)
            phi_1 = ops.expm1(-h_raw)
            base = (sigma_s / sigma_g) * x_start - alpha_s * phi_1 * m_start
            # Stage 2 (order == 2): the node g + 1 is this step's time.
            r0 = ops.where(order >= 2, finite((lambdas[i] - lambdas[g]) / h), 1.0)
            d1 = (x0 - m_start) / r0
            if midpoint:
                second = base - 0.5 * alpha_s * phi_1 * d1
            else:
                second = base + alpha_s * (phi_1 / h + 1.0) * d1
            # Stage 3 (order == 3): nodes g + 1 (m_mid) and g + 2 (x0).
            r1 = ops.where(order >= 3, finite((at(lambdas, g + 1) - lambdas[g]) / h), 0.5)
            gap = ops.where(order >= 3, r0 - r1, 1.0)  # safe when unused
            d1_0 = (m_mid - m_start) / r1
            d1_1 = d1
            if midpoint:
                third = base + alpha_s * (phi_1 / h + 1.0) * d1_1
            else:
                d1 = (r0 * d1_0 - r1 * d1_1) / gap
                d2 = 2.0 * (d1_1 - d1_0) / gap
                third = (
                    base
                    + alpha_s * (phi_1 / h + 1.0) * d1
                    - alpha_s * ((phi_1 + h) / h**2 - 0.5) * d2
                )
            update = ops.where(first, base, ops.where(order == 2, second, third))
            update = ops.where(
                i == num_steps - 1, self.ddim_step(x0, eps, s, schedule), update
            )
            return update, x_start, m_start, m_mid

        zeros = ops.zeros_like(x)
        return ops.fori_loop(0, num_steps, step, (x, x, zeros, zeros))[0]
