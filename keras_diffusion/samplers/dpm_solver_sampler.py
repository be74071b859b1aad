"""DPM-Solver and DPM-Solver++ (multistep)."""

from keras import ops

from keras_diffusion.samplers.sampler import Sampler
from keras_diffusion.samplers.solver_utils import at
from keras_diffusion.samplers.solver_utils import check_choice
from keras_diffusion.samplers.solver_utils import check_order
from keras_diffusion.samplers.solver_utils import finite
from keras_diffusion.samplers.solver_utils import multistep_order
from keras_diffusion.schedules.schedule import register

ALGORITHMS = ("dpmsolver++", "dpmsolver")
SOLVERS = ("multistep",)
THIRD_ORDER = ("taylor", "diffusers")


@register
class DPMSolverSampler(Sampler):
    """DPM-Solver++ (data prediction) and DPM-Solver (noise prediction), multistep.

    Works in lambda = log(alpha / sigma) (half the log-SNR). With
    h = lambda_s - lambda_t for a step from t to s < t, and m the previous
    model outputs (x0 for "dpmsolver++", eps for "dpmsolver"):

    - order 1 (DDIM): x_s = (sigma_s/sigma_t) x - alpha_s (e^{-h} - 1) m_0
    - order 2 (Lu et al. 2022b, Algorithm 2): with r = h_prev / h,
      D = (1 + 1/(2r)) m_0 - 1/(2r) m_1,
      x_s = (sigma_s/sigma_t) x - alpha_s (e^{-h} - 1) D
    - order 3 (3M): with r0 = h_prev / h, r1 = h_prev2 / h,
      D1_0 = (m_0 - m_1) / r0, D1_1 = (m_1 - m_2) / r1,
      D1 = D1_0 + r0 / (r0 + r1) (D1_0 - D1_1)        (~ h x0'),
      D2 = 2 (D1_0 - D1_1) / (r0 + r1)                (~ h^2 x0''),
      x_s = (sigma_s/sigma_t) x - alpha_s phi_1 m_0 + alpha_s phi_2 D1
            - alpha_s phi_3 D2,
      phi_1 = e^{-h} - 1, phi_2 = phi_1 / h + 1, phi_3 = phi_2 / h - 1/2,
      the third-order Taylor expansion of the exact solution
      x_s = (sigma_s/sigma_t) x + sigma_s int e^lambda x0(lambda) dlambda.
      The reference code of DPM-Solver (and diffusers'
      `multistep_dpm_solver_third_order_update`) uses half this D2, which
      makes its 3M formally second order; `third_order="diffusers"` selects
      that update, to reproduce diffusers' samples.

    The noise-prediction forms replace (sigma, alpha, -h) by (alpha, sigma, h).
    The first steps warm up with lower orders (there are not yet enough
    previous outputs); the final step, to t = 0, is first order, the DDIM step
    x = alpha(0) x0 + sigma(0) eps; with `lower_order_final` and fewer than 15
    timesteps order 3 drops to 2 on the step before it (as diffusers does).
    Every timestep costs one model evaluation.

    Args:
        order: 1, 2 or 3.
        algorithm: "dpmsolver++" (data prediction) or "dpmsolver" (noise
            prediction).
        solver: "multistep".
        lower_order_final: see above.
        third_order: "taylor" (third order, the default) or "diffusers" (the
            3M update of diffusers and the DPM-Solver reference code).
        **kwargs: `clip_x0`, `dynamic_threshold` (see `Sampler`).

    Example:
    >>> sampler = keras_diffusion.samplers.DPMSolverSampler(order=2)
    >>> x0 = sampler.sample(model_fn, noise, schedule="cosine",
    ...                     prediction="epsilon", num_steps=20)

    References:
        Lu et al., DPM-Solver: A Fast ODE Solver for Diffusion Probabilistic
        Model Sampling in Around 10 Steps, 2022. Lu et al., DPM-Solver++: Fast
        Solver for Guided Sampling of Diffusion Probabilistic Models, 2022.
    """

    default_num_steps = 20

    def __init__(
        self,
        order=2,
        algorithm="dpmsolver++",
        solver="multistep",
        lower_order_final=True,
        third_order="taylor",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.order = check_order(order)
        self.third_order = check_choice("third_order", third_order, THIRD_ORDER)
        self.algorithm = check_choice("algorithm", algorithm, ALGORITHMS)
        self.solver = check_choice("solver", solver, SOLVERS)
        self.lower_order_final = bool(lower_order_final)

    def get_config(self):
        return {
            **super().get_config(),
            "order": self.order,
            "algorithm": self.algorithm,
            "solver": self.solver,
            "lower_order_final": self.lower_order_final,
            "third_order": self.third_order,
        }

    def _loop(self, denoise, x, times, schedule, seed):
        num_steps = ops.shape(times)[0] - 1
        lambdas = 0.5 * schedule.log_snr(times)  # lambdas[-1] may be +inf
        data = self.algorithm == "dpmsolver++"

        def step(i, state):
            x, m1, m2 = state  # outputs at times[i - 1], times[i - 2]
            t, s = times[i], times[i + 1]
            x0, eps = denoise(x, t)
            m0 = x0 if data else eps
            alpha_t, sigma_t = schedule.alpha_sigma(t)
            alpha_s, sigma_s = schedule.alpha_sigma(s)
            lam_t, lam_1, lam_2 = lambdas[i], at(lambdas, i - 1), at(lambdas, i - 2)
            # h is +inf on a step to sigma = 0 (and from alpha = 0): the
            # exponentials take it as it is, divisions get a finite stand-in.
            h_raw = lambdas[i + 1] - lam_t
            h = finite(h_raw)
            r0 = finite((lam_t - lam_1) / h)
            r1 = finite((lam_1 - lam_2) / h)
            order = multistep_order(
                self.order, i, num_steps, self.lower_order_final, lam_1, lam_2
            )
            # Divided differences (diffusers' D1_0, D1_1, D1, D2).
            d1_0 = (m0 - m1) / ops.where(order >= 2, r0, 1.0)
            d1_1 = (m1 - m2) / ops.where(order >= 3, r1, 1.0)
            r01 = ops.where(order >= 3, r0 + r1, 1.0)
            d1_3 = d1_0 + (r0 / r01) * (d1_0 - d1_1)
            d2 = (d1_0 - d1_1) / r01
            if self.third_order == "taylor":
                d2 = 2.0 * d2
            if data:
                phi_1 = ops.expm1(-h_raw)  # e^{-h} - 1, -1 at h = inf
                base = (sigma_s / sigma_t) * x - alpha_s * phi_1 * m0
                second = -0.5 * alpha_s * phi_1 * d1_0
                third = alpha_s * ((phi_1 / h + 1.0) * d1_3 - ((phi_1 + h) / h**2 - 0.5) * d2)
            else:
                phi_1 = ops.expm1(h)  # e^{h} - 1
                base = (alpha_s / alpha_t) * x - sigma_s * phi_1 * m0
                second = -0.5 * sigma_s * phi_1 * d1_0
                third = -sigma_s * ((phi_1 / h - 1.0) * d1_3 + ((phi_1 - h) / h**2 - 0.5) * d2)
            update = ops.where(
                order == 1, base, ops.where(order == 2, base + second, base + third)
            )
            update = ops.where(
                i == num_steps - 1, self.ddim_step(x0, eps, s, schedule), update
            )
            return update, m0, m1

        zeros = ops.zeros_like(x)
        return ops.fori_loop(0, num_steps, step, (x, zeros, zeros))[0]
