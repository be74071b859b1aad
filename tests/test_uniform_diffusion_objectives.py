"""D3PM-uniform in continuous time (objectives.py): the NELBO is exact for the
exact reverse rates, matches the rate form by hand, and the sampler's step is
Bayes' rule."""

import math

import numpy as np
from keras import ops

from keras_diffusion import objectives
from keras_diffusion.schedules import MaskingSchedule
from keras_diffusion.testing import TestCase

N = 3
P = np.array([0.6, 0.3, 0.1])  # A one-token data distribution.


def _integrate(kind, denoiser):
    """E_t E_{z_t | x} of the loss for each x, exactly over z_t and by
    Gauss-Legendre in log t and log(1 - t) over [1e-4, 1 - 1e-4]; below
    1e-4 the loss is the one at 1e-4 (its clipping), as for t ~ U(0, 1)."""
    schedule = MaskingSchedule(kind)
    nodes, weights = np.polynomial.legendre.leggauss(100)
    lo, hi = math.log(1e-4), math.log(0.5)
    t = np.exp((nodes + 1) / 2 * (hi - lo) + lo)
    w = weights * (hi - lo) / 2 * t
    times = np.concatenate([t, 1 - t, [1e-4]]).astype("float32")
    wts = np.concatenate([w, w, [1e-4]])
    alpha = ops.convert_to_numpy(schedule.alpha(times)).astype("float64")
    moved = ops.convert_to_numpy(schedule.mask_probability(times)).astype("float64")
    out = []
    for x in range(N):
        total = 0.0
        for z in range(N):
            q_z = moved / N + (alpha if z == x else 0.0)
            uniforms = (moved * (z + 0.5) / N)[:, None].astype("float32")  # Picks z_t = z.
            loss = objectives.uniform_diffusion_loss(
                denoiser, np.full((len(times), 1), x, "int32"), times, uniforms, schedule, N)
            total += (wts * q_z * ops.convert_to_numpy(loss)).sum()
        out.append(total)
    return np.array(out)


class UniformDiffusionObjectivesTest(TestCase):
    def test_nelbo_is_minus_log_p_for_the_exact_reverse_rates(self):
        # One token: x_theta = p(x | the other positions) = P gives the exact
        # reverse rates q_t(y) / q_t(z), so NELBO(x) = -log P(x) for each x.
        exact = lambda z_t, t: np.log(np.broadcast_to(P, (len(t), 1, N))).astype("float32")
        for kind, atol in (("cosine", 1e-5), ("log_linear", 1e-4)):
            self.assertAllClose(_integrate(kind, exact), -np.log(P), atol=atol)

        # A worse denoiser (the posterior given z_t, which this
        # parameterization does not want) is a strictly looser bound.
        def posterior(z_t, t):
            schedule = MaskingSchedule("cosine")
            alpha = ops.convert_to_numpy(schedule.alpha(t))[:, None]
            moved = ops.convert_to_numpy(schedule.mask_probability(t))[:, None]
            lik = alpha * (np.arange(N)[None] == np.asarray(z_t)[:, :1]) + moved / N
            post = P * lik / (P * lik).sum(-1, keepdims=True)
            return np.log(post)[:, None].astype("float32")

        nelbo = _integrate("cosine", posterior)
        self.assertGreater(P @ nelbo, -(P @ np.log(P)) + 0.1)

    def test_golden_against_the_reverse_rates(self):
        """The loss equals beta(t) sum_{y != z} (R_model - R log R_model +
        R log R - R) over positions, written here with the rates in float64."""
        rng = np.random.default_rng(0)
        logits = rng.normal(size=(1, 2, N)).astype("float32")
        tokens = np.array([[0, 2]], "int32")
        t = np.array([0.3], "float32")
        schedule = MaskingSchedule("log_linear")
        alpha, moved = 0.7, 0.3
        uniforms = np.array([[0.5, 0.15]], "float32")  # Keeps token 0; moves 2 -> 1.
        z_t = [0, 1]

        def network(z, times):
            np.testing.assert_array_equal(ops.convert_to_numpy(z), [z_t])
            return logits

        loss = ops.convert_to_numpy(objectives.uniform_diffusion_loss(
            network, tokens, t, uniforms, schedule, N))
        beta = 1.0 / alpha  # -alpha' / alpha for alpha = 1 - t.
        x_theta = np.exp(logits[0].astype("float64"))
        x_theta /= x_theta.sum(-1, keepdims=True)
        expected = 0.0
        for pos in range(2):
            data = N * alpha * np.eye(N)[tokens[0, pos]] + moved
            model = N * alpha * x_theta[pos] + moved
            z = z_t[pos]
            for y in range(N):
                if y != z:
                    r, r_hat = data[y] / data[z], model[y] / model[z]
                    expected += beta / N * (r_hat - r * math.log(r_hat) + r * math.log(r) - r)
        self.assertAllClose(loss, [expected], rtol=1e-5)

    def test_time_grid_limits(self):
        """At t = 1 the data is forgotten (the loss vanishes); t = 0 is the
        clipped t = 1e-4; the gradient is finite at both ends."""
        import keras

        schedule = MaskingSchedule("log_linear")
        tokens = np.array([[1, 2, 0]] * 3, "int32")
        t = np.array([0.0, 1e-4, 1.0], "float32")
        uniforms = np.full((3, 3), 0.5, "float32")
        weights = keras.Variable(np.ones((N,), "float32"))

        def network(z, times):
            return ops.one_hot(z, N) * weights

        loss = ops.convert_to_numpy(objectives.uniform_diffusion_loss(
            network, tokens, t, uniforms, schedule, N))
        self.assertTrue(np.isfinite(loss).all())
        self.assertAllClose(loss[0], loss[1], rtol=1e-6)
        self.assertGreater(loss[1], 1e-3)
        self.assertLess(loss[2], 1e-3 * loss[1])
        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            with tf.GradientTape() as tape:
                total = ops.sum(objectives.uniform_diffusion_loss(
                    network, tokens, t, uniforms, schedule, N))
            self.assertTrue(np.isfinite(tape.gradient(total, weights.value).numpy()).all())

    def test_posterior_is_bayes_rule(self):
        schedule = MaskingSchedule("cosine")
        t, s = 0.6, 0.35
        a_t, a_s = [float(ops.convert_to_numpy(schedule.alpha(v))) for v in (t, s)]
        a_ts = a_t / a_s
        transition = a_ts * np.eye(N) + (1 - a_ts) / N  # q(z_t = j | z_s = i)
        rng = np.random.default_rng(1)
        p = rng.dirichlet(np.ones(N), size=(1, 2))
        z_t = np.array([[2, 0]], "int32")
        got = np.exp(ops.convert_to_numpy(objectives.uniform_posterior_log_probs(
            np.log(p).astype("float32"), z_t, t, s, schedule)))
        for pos in range(2):
            # Exact posteriors for each clean x, mixed by p(x) q(z_t | x).
            mix, norm = np.zeros(N), 0.0
            for x in range(N):
                q_s = a_s * np.eye(N)[x] + (1 - a_s) / N
                joint = transition[:, z_t[0, pos]] * q_s
                mix += p[0, pos, x] * joint
                norm += p[0, pos, x] * joint.sum()
            self.assertAllClose(got[0, pos], mix / norm, atol=1e-6)
        # At s = 0 a one-hot x is reached for sure.
        one_hot = np.where(np.eye(N)[[[1, 1]]] > 0, 0.0, -1e9).astype("float32")
        final = np.exp(ops.convert_to_numpy(objectives.uniform_posterior_log_probs(
            one_hot, z_t, 0.2, 0.0, schedule)))
        self.assertAllClose(final, np.eye(N)[[[1, 1]]], atol=1e-6)
