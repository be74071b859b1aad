"""Small pieces shared by the multistep and stochastic samplers."""

import numpy as np
from keras import ops


def check_order(order, orders=(1, 2, 3)):
    """Returns `order` as an int, or raises naming it when not one of `orders`."""
    if isinstance(order, bool) or order not in orders:
        raise ValueError(
            f"`order` must be one of {list(orders)}, received order={order!r}"
        )
    return int(order)


def check_choice(argument, value, choices):
    """Returns `value`, or raises naming `argument` when not one of `choices`."""
    if value not in choices:
        raise ValueError(f"Unknown `{argument}`: {value!r}. Valid names: {list(choices)}")
    return value


def multistep_order(order, i, num_steps, lower_order_final, lam_1, lam_2):
    """The order of step i of a multistep solver (DPM-Solver++, its SDE form).

    The first steps warm up (order at most i + 1); with `lower_order_final`
    and fewer than 15 steps the step before the last drops to order 2 (as
    diffusers does); a previous time at lambda = -inf (alpha = 0) gives no
    slope, so the order drops below it.
    """
    order = ops.minimum(order, i + 1)
    if lower_order_final:
        low = ops.logical_and(i == num_steps - 2, num_steps < 15)
        order = ops.where(low, ops.minimum(order, 2), order)
    order = ops.where(ops.isfinite(lam_1), order, 1)
    return ops.where(ops.logical_or(ops.isfinite(lam_2), order < 3), order, 2)


def finite(x, fill=1.0):
    """`x` where finite, else `fill`: keeps inf/NaN out of unselected branches."""
    return ops.where(ops.isfinite(x), x, fill)


def at(values, i):
    """`values[i]`, with negative `i` clamped to 0 (warm-up steps)."""
    return values[ops.maximum(i, 0)]


def vandermonde_solve(nodes, b):
    """Solves sum_k rho_k r_k^j = b_j (j = 0, ..., n - 1) for n = 1, 2, 3 nodes.

    The transposed Vandermonde system of UniPC (Zhao et al. 2023, eq. 8):
    rho_k is the functional b applied to the Lagrange basis polynomial of
    node k, written out in closed form.
    """
    if len(nodes) == 1:
        return [b[0]]
    if len(nodes) == 2:
        r1, r2 = nodes
        return [(b[1] - r2 * b[0]) / (r1 - r2), (r1 * b[0] - b[1]) / (r1 - r2)]
    rho = []
    for k in range(3):
        ra, rb = [nodes[j] for j in range(3) if j != k]
        rk = nodes[k]
        rho.append((b[2] - (ra + rb) * b[1] + ra * rb * b[0]) / ((rk - ra) * (rk - rb)))
    return rho


def rescaled_sigma(schedule, t):
    """sigma(t) / alpha(t), the noise level of x / alpha (EDM's sigma)."""
    alpha, sigma = schedule.alpha_sigma(t)
    return sigma / alpha


def numpy_coefficients(schedule, t):
    """alpha, sigma, alpha', sigma' at the times `t`, as float64 numpy arrays."""
    t = ops.convert_to_tensor(np.asarray(t, "float32"))
    values = list(schedule.alpha_sigma(t)) + list(schedule.alpha_sigma_derivatives(t))
    return [np.asarray(ops.convert_to_numpy(v), "float64") for v in values]
