"""Small pieces shared by the multistep and stochastic samplers."""

from keras import ops


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
