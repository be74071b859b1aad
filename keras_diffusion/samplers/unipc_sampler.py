"""UniPC: the unified predictor-corrector multistep solver."""

from keras import ops

from keras_diffusion.samplers.sampler import Sampler
from keras_diffusion.samplers.solver_utils import at
from keras_diffusion.samplers.solver_utils import check_choice
from keras_diffusion.samplers.solver_utils import check_order
from keras_diffusion.samplers.solver_utils import finite
from keras_diffusion.samplers.solver_utils import vandermonde_solve
from keras_diffusion.schedules.schedule import register

SOLVER_TYPES = ("bh1", "bh2")


@register
class UniPCSampler(Sampler):
    """UniPC (Zhao et al., 2023): multistep UniP predictor and UniC corrector.

    In lambda = log(alpha / sigma), with m the model outputs (x0 for the
    data-prediction form, eps for the noise form) and, for a step from t_i
    to t_{i+1}, h = lambda_{i+1} - lambda_i, hh = -h (data) or h (noise):

    - UniP-p (eq. 7): with r_k = (lambda_{i-k} - lambda_i) / h and
      D_k = (m_{i-k} - m_i) / r_k for k = 1, ..., p - 1,
      x_{i+1} = (sigma_{i+1}/sigma_i) x_i - alpha_{i+1} (e^{hh} - 1) m_i
                - alpha_{i+1} B(h) sum_k rho_k D_k            (data form)
      where rho solves the Vandermonde system sum_k rho_k r_k^j = b_{j+1}
      (eq. 8, j < p - 1), b_n = n! g_n / B(h) with g_1 = (e^{hh} - 1)/hh - 1
      and g_{n+1} = g_n / hh - 1/(n+1)! (g_n = hh phi_{n+1}(hh)); p = 2 uses
      rho = 1/2. B(h) = hh ("bh1") or e^{hh} - 1 ("bh2").
    - UniC-p (eq. 6), after the model is evaluated at the predicted
      x_{i+1}: the same update from x_i, with the new output m_{i+1} as one
      more node (r = 1, D = m_{i+1} - m_i), which raises the order by one
      at no extra model evaluation. p = 1 uses rho = 1/2. The model output
      stays the one at the uncorrected point, as in the paper.

    The noise form replaces (sigma, alpha) by (alpha, sigma) in the first two
    terms and alpha_{i+1} by sigma_{i+1} in front of B(h).

    The order warms up (there are not yet p - 1 previous outputs) and, with
    `lower_order_final`, falls to N - i on the last steps, as diffusers'
    `UniPCMultistepScheduler` does. The corrector at t_i uses the order of
    the predictor that produced x_i. The final step, to t = 0, is the DDIM
    step x = alpha(0) x0 + sigma(0) eps. N timesteps use N model evaluations.

    Args:
        order: the predictor's order, 1, 2 or 3 (the corrector adds one).
        solver_type: "bh1" or "bh2" (the paper recommends "bh1" for
            unconditional sampling at fewer than 10 steps, "bh2" otherwise).
        corrector: apply UniC after each step (UniPC); `False` gives UniP.
        predict_x0: the data-prediction form (default) or the noise form.
        lower_order_final: see above.
        **kwargs: `clip_x0`, `dynamic_threshold` (see `Sampler`).

    Example:
    >>> sampler = keras_diffusion.samplers.UniPCSampler(order=2, solver_type="bh2")
    >>> x0 = sampler.sample(model_fn, noise, schedule="linear",
    ...                     prediction="epsilon", num_steps=10)

    References:
        Zhao, Bai, Rao, Zhou & Lu, UniPC: A Unified Predictor-Corrector
        Framework for Fast Sampling of Diffusion Models, 2023.
    """

    default_num_steps = 20

    def __init__(
        self,
        order=2,
        solver_type="bh2",
        corrector=True,
        predict_x0=True,
        lower_order_final=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.order = check_order(order)
        self.solver_type = check_choice("solver_type", solver_type, SOLVER_TYPES)
        self.corrector = bool(corrector)
        self.predict_x0 = bool(predict_x0)
        self.lower_order_final = bool(lower_order_final)

    def get_config(self):
        return {
            **super().get_config(),
            "order": self.order,
            "solver_type": self.solver_type,
            "corrector": self.corrector,
            "predict_x0": self.predict_x0,
            "lower_order_final": self.lower_order_final,
        }

    def _order_at(self, i, num_steps):
        order = ops.minimum(self.order, i + 1)
        if self.lower_order_final:
            order = ops.minimum(order, num_steps - i)
        return order

    def _update(self, x, m0, prev, new, order, lambdas, schedule, times, i):
        """One UniP (new=None) or UniC (new=m_{i+1}) update from times[i].

        `prev` holds (m_{i-1}, m_{i-2}); `order` is p.
        """
        lam_i = lambdas[i]
        h = finite(lambdas[i + 1] - lam_i)
        hh = -h if self.predict_x0 else h
        h_phi_1 = ops.expm1(hh)
        b_h = hh if self.solver_type == "bh1" else h_phi_1
        # b_n = n! * g_n / B(h), g_1 = (e^hh - 1)/hh - 1, g_{n+1} = g_n/hh - 1/(n+1)!
        g, factorial, b = h_phi_1 / hh - 1.0, 1.0, []
        for n in range(1, 4):
            b.append(g * factorial / b_h)
            factorial *= n + 1
            g = g / hh - 1.0 / factorial
        # Nodes r_k and divided differences D_k of the previous outputs.
        r = [finite((at(lambdas, i - k) - lam_i) / h) for k in (1, 2)]
        r = [ops.where(order > k, r[k - 1], 1.0 + k) for k in (1, 2)]  # safe when unused
        d = [(prev[k - 1] - m0) / r[k - 1] for k in (1, 2)]
        alpha_i, sigma_i = schedule.alpha_sigma(times[i])
        alpha_s, sigma_s = schedule.alpha_sigma(times[i + 1])
        if self.predict_x0:
            base = (sigma_s / sigma_i) * x - alpha_s * h_phi_1 * m0
            scale = alpha_s * b_h
        else:
            base = (alpha_s / alpha_i) * x - sigma_s * h_phi_1 * m0
            scale = sigma_s * b_h
        if new is None:  # UniP-p: nodes r_1 .. r_{p-1}.
            rho3 = vandermonde_solve(r, b[:2])
            res2 = 0.5 * d[0]
            res3 = rho3[0] * d[0] + rho3[1] * d[1]
            res = ops.where(order == 2, res2, res3)
            return ops.where(order == 1, base, base - scale * res)
        # UniC-p: nodes r_1 .. r_{p-1} and 1.
        d_new = new - m0
        rho2 = vandermonde_solve([r[0], 1.0], b[:2])
        rho3 = vandermonde_solve([r[0], r[1], 1.0], b[:3])
        res1 = 0.5 * d_new
        res2 = rho2[0] * d[0] + rho2[1] * d_new
        res3 = rho3[0] * d[0] + rho3[1] * d[1] + rho3[2] * d_new
        res = ops.where(order == 1, res1, ops.where(order == 2, res2, res3))
        return base - scale * res

    def _loop(self, denoise, x, times, schedule, seed):
        num_steps = ops.shape(times)[0] - 1
        lambdas = 0.5 * schedule.log_snr(times)  # lambdas[-1] may be +inf

        def step(i, state):
            x, x_prev, m1, m2, m3 = state  # x_{i-1} and outputs at i-1, i-2, i-3
            t, s = times[i], times[i + 1]
            x0, eps = denoise(x, t)
            m0 = x0 if self.predict_x0 else eps
            if self.corrector:
                # UniC at t_i, from x_{i-1} with the order that predicted x_i.
                order_c = self._order_at(i - 1, num_steps)
                for k, cap in ((2, 1), (3, 2)):  # nodes at lambda = -inf give no slope
                    finite_k = ops.isfinite(at(lambdas, i - k))
                    order_c = ops.where(finite_k, order_c, ops.minimum(order_c, cap))
                corrected = self._update(
                    x_prev, m1, (m2, m3), m0, order_c, lambdas, schedule, times,
                    ops.maximum(i - 1, 0),
                )
                use = ops.logical_and(i > 0, ops.isfinite(at(lambdas, i - 1)))
                x = ops.where(use, corrected, x)
            # UniP from t_i to t_{i+1}.
            order = self._order_at(i, num_steps)
            # A previous time at lambda = -inf (alpha = 0) gives no slope.
            order = ops.where(ops.isfinite(at(lambdas, i - 1)), order, 1)
            order = ops.where(ops.logical_or(ops.isfinite(at(lambdas, i - 2)), order < 3), order, 2)
            predicted = self._update(x, m0, (m1, m2), None, order, lambdas, schedule, times, i)
            # The DDIM step: on the final step, and from alpha = 0 (where the
            # noise form's alpha_{i+1} / alpha_i is undefined).
            ddim = ops.logical_or(i == num_steps - 1, ops.logical_not(ops.isfinite(lambdas[i])))
            predicted = ops.where(ddim, self.ddim_step(x0, eps, s, schedule), predicted)
            return predicted, x, m0, m1, m2

        zeros = ops.zeros_like(x)
        return ops.fori_loop(0, num_steps, step, (x, x, zeros, zeros, zeros))[0]
