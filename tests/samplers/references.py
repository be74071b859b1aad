"""Float64 NumPy re-implementations of diffusers' and the papers' updates.

Each takes `eps_fn(x, k)` (the model's noise prediction at the discrete step
k of a schedule with cumulative alphas `abar`), the decreasing steps, and the
initial x; the last step goes to t = 0 (alpha = 1, sigma = 0), where every
solver returns the data prediction, as diffusers does with
`final_sigmas_type="zero"`. Written from diffusers'
`scheduling_unipc_multistep.py`, `scheduling_deis_multistep.py`,
`scheduling_dpmsolver_singlestep.py`, `scheduling_dpmsolver_multistep.py`
(the "sde-dpmsolver++" branch), `scheduling_euler_ancestral_discrete.py`,
`scheduling_ipndm.py` and from Karras et al. (2022), Algorithm 2.
"""

import math

import numpy as np


def _coefficients(abar):
    alpha = np.sqrt(abar)
    sigma = np.sqrt(1.0 - abar)
    return alpha, sigma, np.log(alpha) - np.log(sigma)


def unipc(eps_fn, abar, steps, x, order, solver_type="bh2", corrector=True,
          predict_x0=True, history=None):
    """UniPCMultistepScheduler (lower_order_final=True, final sigma 0).

    `history`, a list, receives the sample at each step (before its
    model evaluation).
    """
    alpha, sigma, lam = _coefficients(abar)
    a = [alpha[k] for k in steps] + [1.0]
    s = [sigma[k] for k in steps] + [0.0]
    lams = [lam[k] for k in steps] + [np.inf]
    n = len(steps)

    def coefficients(h, p):
        hh = -h if predict_x0 else h
        h_phi_1 = np.expm1(hh)
        h_phi_k = h_phi_1 / hh - 1.0
        b_h = hh if solver_type == "bh1" else h_phi_1
        b, factorial = [], 1
        for j in range(1, p + 1):
            b.append(h_phi_k * factorial / b_h)
            factorial *= j + 1
            h_phi_k = h_phi_k / hh - 1.0 / factorial
        return h_phi_1, b_h, np.array(b)

    def base(x, m0, i, j, h_phi_1):
        if predict_x0:
            return s[j] / s[i] * x - a[j] * h_phi_1 * m0, a[j]
        return a[j] / a[i] * x - s[j] * h_phi_1 * m0, s[j]

    outputs, last, prev_order = [], None, None
    for i, k in enumerate(steps):
        if history is not None:
            history.append(x)
        e = eps_fn(x, k)
        x0 = (x - sigma[k] * e) / alpha[k]
        m = x0 if predict_x0 else e
        if corrector and i > 0:  # UniC-p, p = prev_order, from times[i - 1]
            p = prev_order
            m0 = outputs[-1]
            h = lams[i] - lams[i - 1]
            rks = [(lams[i - 1 - j] - lams[i - 1]) / h for j in range(1, p)]
            d1s = [(outputs[-(j + 1)] - m0) / r for j, r in zip(range(1, p), rks)]
            h_phi_1, b_h, b = coefficients(h, p)
            nodes = np.array(rks + [1.0])
            rhos = [0.5] if p == 1 else np.linalg.solve(
                np.stack([nodes**j for j in range(p)]), b)
            x_, scale = base(last, m0, i - 1, i, h_phi_1)
            res = sum(r * d for r, d in zip(rhos[:-1], d1s)) + rhos[-1] * (m - m0)
            x = x_ - scale * b_h * res
        outputs.append(m)
        if i == n - 1:
            return x0
        p = min(order, n - i, i + 1)
        prev_order, last = p, x
        m0 = m
        h = lams[i + 1] - lams[i]
        rks = [(lams[i - j] - lams[i]) / h for j in range(1, p)]
        d1s = [(outputs[-(j + 1)] - m0) / r for j, r in zip(range(1, p), rks)]
        h_phi_1, b_h, b = coefficients(h, p)
        x_, scale = base(x, m0, i, i + 1, h_phi_1)
        if p == 1:
            x = x_
            continue
        if p == 2:
            rhos = [0.5]
        else:
            nodes = np.array(rks)
            rhos = np.linalg.solve(np.stack([nodes**j for j in range(p - 1)]), b[:-1])
        x = x_ - scale * b_h * sum(r * d for r, d in zip(rhos, d1s))
    return x


def deis(eps_fn, abar, steps, x, order, history=None):
    """DEISMultistepScheduler, "logrho" (lower_order_final=True)."""
    alpha, sigma, lam = _coefficients(abar)
    n = len(steps)
    eps = []
    for i, k in enumerate(steps):
        if history is not None:
            history.append(x)
        e = eps_fn(x, k)
        eps.append(e)
        if i == n - 1:
            return (x - sigma[k] * e) / alpha[k]
        kn = steps[i + 1]
        p = min(order, i + 1)
        if n < 15 and i == n - 2:
            p = min(p, 2)
        rho = [sigma[j] / alpha[j] for j in (kn, k)] + [
            sigma[steps[i - j]] / alpha[steps[i - j]] for j in range(1, p)]
        rho_t, rho_s0 = rho[0], rho[1]
        if p == 1:
            h = lam[kn] - lam[k]
            x = alpha[kn] / alpha[k] * x - sigma[kn] * np.expm1(h) * e
        elif p == 2:
            def ind(t, b, c):
                return t * (-np.log(c) + np.log(t) - 1) / (np.log(b) - np.log(c))
            rho_s1 = rho[2]
            c1 = ind(rho_t, rho_s0, rho_s1) - ind(rho_s0, rho_s0, rho_s1)
            c2 = ind(rho_t, rho_s1, rho_s0) - ind(rho_s0, rho_s1, rho_s0)
            x = alpha[kn] * (x / alpha[k] + c1 * eps[-1] + c2 * eps[-2])
        else:
            def ind(t, b, c, d):
                lt, lb, lc, ld = np.log(t), np.log(b), np.log(c), np.log(d)
                num = t * (lc * (ld - lt + 1) - ld * lt + ld + lt**2 - 2 * lt + 2)
                return num / ((lb - lc) * (lb - ld))
            rho_s1, rho_s2 = rho[2], rho[3]
            c1 = ind(rho_t, rho_s0, rho_s1, rho_s2) - ind(rho_s0, rho_s0, rho_s1, rho_s2)
            c2 = ind(rho_t, rho_s1, rho_s2, rho_s0) - ind(rho_s0, rho_s1, rho_s2, rho_s0)
            c3 = ind(rho_t, rho_s2, rho_s0, rho_s1) - ind(rho_s0, rho_s2, rho_s0, rho_s1)
            x = alpha[kn] * (x / alpha[k] + c1 * eps[-1] + c2 * eps[-2] + c3 * eps[-3])
    return x


def singlestep_orders(n, order):
    """DPMSolverSinglestepScheduler.get_order_list, lower_order_final=True."""
    if order == 3:
        if n % 3 == 0:
            orders = [1, 2, 3] * (n // 3 - 1) + [1, 2] + [1]
        elif n % 3 == 1:
            orders = [1, 2, 3] * (n // 3) + [1]
        else:
            orders = [1, 2, 3] * (n // 3) + [1, 2]
    elif order == 2:
        orders = [1, 2] * (n // 2 - 1) + [1, 1] if n % 2 == 0 else [1, 2] * (n // 2) + [1]
    else:
        orders = [1] * n
    orders[-1] = 1
    return orders


def dpm_singlestep(eps_fn, abar, steps, x, order, solver_type="midpoint"):
    """DPMSolverSinglestepScheduler, "dpmsolver++" (final sigma 0)."""
    alpha, sigma, lam = _coefficients(abar)
    a = [alpha[k] for k in steps] + [1.0]
    s = [sigma[k] for k in steps] + [0.0]
    lams = [lam[k] for k in steps] + [np.inf]
    orders = singlestep_orders(len(steps), order)
    outputs, start = [None] * 3, None
    for i, k in enumerate(steps):
        e = eps_fn(x, k)
        outputs = outputs[1:] + [(x - sigma[k] * e) / alpha[k]]
        p = orders[i]
        if p == 1:
            start = x
        m0, m1, m2 = outputs[-1], outputs[-2], outputs[-3]
        j = i + 1
        if i == len(steps) - 1:
            return m0
        if p == 1:
            h = lams[j] - lams[i]
            x = s[j] / s[i] * start - a[j] * np.expm1(-h) * m0
        elif p == 2:
            h, h0 = lams[j] - lams[i - 1], lams[i] - lams[i - 1]
            r0 = h0 / h
            d0, d1 = m1, (m0 - m1) / r0
            x = s[j] / s[i - 1] * start - a[j] * np.expm1(-h) * d0
            if solver_type == "midpoint":
                x = x - 0.5 * a[j] * np.expm1(-h) * d1
            else:
                x = x + a[j] * (np.expm1(-h) / h + 1.0) * d1
        else:
            h = lams[j] - lams[i - 2]
            r0, r1 = (lams[i] - lams[i - 2]) / h, (lams[i - 1] - lams[i - 2]) / h
            d0 = m2
            d1_0, d1_1 = (m1 - m2) / r1, (m0 - m2) / r0
            d1 = (r0 * d1_0 - r1 * d1_1) / (r0 - r1)
            d2 = 2.0 * (d1_1 - d1_0) / (r0 - r1)
            x = s[j] / s[i - 2] * start - a[j] * np.expm1(-h) * d0
            if solver_type == "midpoint":
                x = x + a[j] * (np.expm1(-h) / h + 1.0) * d1_1
            else:
                x = (x + a[j] * (np.expm1(-h) / h + 1.0) * d1
                     - a[j] * ((np.expm1(-h) + h) / h**2 - 0.5) * d2)
    return x


def dpm_sde(eps_fn, abar, steps, x, order, noises, solver_type="midpoint",
            factor_d2=1.0, half=-0.5):
    """DPMSolverMultistepScheduler, "sde-dpmsolver++" (final sigma 0).

    `noises[i]` is the noise of step i. `factor_d2=1, half=-0.5` is diffusers'
    third-order update; `factor_d2=2, half=0.5` the Taylor-consistent one.
    """
    alpha, sigma, lam = _coefficients(abar)
    n = len(steps)
    outputs = []
    for i, k in enumerate(steps):
        e = eps_fn(x, k)
        x0 = (x - sigma[k] * e) / alpha[k]
        outputs.append(x0)
        if i == n - 1:
            return x0
        kn = steps[i + 1]
        a_t, s_t, s_s = alpha[kn], sigma[kn], sigma[k]
        h = lam[kn] - lam[k]
        p = min(order, i + 1)
        if n < 15 and i == n - 2:
            p = min(p, 2)
        noise_term = s_t * np.sqrt(-np.expm1(-2.0 * h)) * noises[i]
        x_new = s_t / s_s * np.exp(-h) * x + a_t * (-np.expm1(-2.0 * h)) * x0 + noise_term
        if p >= 2:
            r0 = (lam[k] - lam[steps[i - 1]]) / h
            d1_0 = (outputs[-1] - outputs[-2]) / r0
        if p == 2:
            if solver_type == "midpoint":
                x_new = x_new + 0.5 * a_t * (-np.expm1(-2.0 * h)) * d1_0
            else:
                x_new = x_new + a_t * ((-np.expm1(-2.0 * h)) / (-2.0 * h) + 1.0) * d1_0
        if p == 3:
            r1 = (lam[steps[i - 1]] - lam[steps[i - 2]]) / h
            d1_1 = (outputs[-2] - outputs[-3]) / r1
            d1 = d1_0 + r0 / (r0 + r1) * (d1_0 - d1_1)
            d2 = factor_d2 * (d1_0 - d1_1) / (r0 + r1)
            x_new = (x_new
                     + a_t * ((-np.expm1(-2.0 * h)) / (-2.0 * h) + 1.0) * d1
                     + a_t * ((-np.expm1(-2.0 * h) - 2.0 * h) / (2.0 * h) ** 2 + half) * d2)
        x = x_new
    return x


def euler_ancestral(eps_fn, abar, steps, x, noises):
    """EulerAncestralDiscreteScheduler.step, in x / alpha (its `sample`)."""
    alpha, sigma, _ = _coefficients(abar)
    sigmas = [sigma[k] / alpha[k] for k in steps] + [0.0]
    sample = x / alpha[steps[0]]
    for i, k in enumerate(steps):
        e = eps_fn(sample * alpha[k], k)
        pred = sample - sigmas[i] * e
        s_from, s_to = sigmas[i], sigmas[i + 1]
        s_up = np.sqrt(s_to**2 * (s_from**2 - s_to**2) / s_from**2)
        s_down = np.sqrt(s_to**2 - s_up**2)
        derivative = (sample - pred) / sigmas[i]
        sample = sample + derivative * (s_down - sigmas[i]) + noises[i] * s_up
    return sample


def ipndm(eps_fn, abar, steps, x, order=4):
    """IPNDMScheduler's update: a DDIM step with the Adams-Bashforth eps."""
    alpha, sigma, _ = _coefficients(abar)
    a = [alpha[k] for k in steps] + [1.0]
    s = [sigma[k] for k in steps] + [0.0]
    ets = []
    for i, k in enumerate(steps):
        e = eps_fn(x, k)
        ets.append(e)
        p = min(order, len(ets))
        if i == len(steps) - 1:
            return (x - s[i] * e) / a[i]
        if p == 1:
            et = ets[-1]
        elif p == 2:
            et = (3 * ets[-1] - ets[-2]) / 2
        elif p == 3:
            et = (23 * ets[-1] - 16 * ets[-2] + 5 * ets[-3]) / 12
        else:
            et = (55 * ets[-1] - 59 * ets[-2] + 37 * ets[-3] - 9 * ets[-4]) / 24
        pred = (x - s[i] * et) / a[i]
        x = a[i + 1] * pred + s[i + 1] * et
    return x


def edm(denoise_fn, sigmas, x, noises, s_churn=0.0, s_tmin=0.0, s_tmax=math.inf,
        s_noise=1.0):
    """Karras et al. (2022), Algorithm 2, verbatim (VE, sigmas[-1] = 0).

    `denoise_fn(x, sigma)` is D(x; sigma); `noises[i]` the noise of step i.
    """
    n = len(sigmas) - 1
    for i in range(n):
        s_cur, s_next = sigmas[i], sigmas[i + 1]
        gamma = min(s_churn / n, math.sqrt(2) - 1) if s_tmin <= s_cur <= s_tmax else 0.0
        s_hat = min(s_cur * (1 + gamma), sigmas[0])
        x_hat = x + math.sqrt(s_hat**2 - s_cur**2) * s_noise * noises[i]
        d = (x_hat - denoise_fn(x_hat, s_hat)) / s_hat
        x = x_hat + (s_next - s_hat) * d
        if s_next != 0:
            d_prime = (x - denoise_fn(x, s_next)) / s_next
            x = x_hat + (s_next - s_hat) * (0.5 * d + 0.5 * d_prime)
    return x
