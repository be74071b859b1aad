import numpy as np
import tensorflow as tf

from keras_diffusion import schedules
from keras_diffusion.metrics import likelihood
from keras_diffusion.testing import GaussianMixture
from keras_diffusion.testing import TestCase

T_START = 1e-5
TOL = 1e-4


def mixture():
    return GaussianMixture.random(num_modes=4, dim=8, seed=0, std=(0.05, 0.15))


def truth_at(gmm, x, schedule, t):
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(np.float32(t)))
    return gmm.log_prob(x, alpha, sigma)


class ODELikelihoodTest(TestCase):
    def test_exact_trace_matches_mixture_density(self):
        gmm = mixture()
        x = gmm.sample(48, seed=1).astype("float32")
        for schedule, prediction in (
            (schedules.LinearSchedule(), "epsilon"),
            (schedules.RectifiedFlowSchedule(), "flow"),
        ):
            out = likelihood.ode_log_likelihood(
                gmm.denoiser(schedule, prediction), x, schedule=schedule,
                prediction=prediction, trace="exact", t_start=T_START, rtol=TOL, atol=TOL,
            )
            ll = out["log_likelihood"].numpy()
            truth = truth_at(gmm, x, schedule, T_START)
            # Per point within 1% on average, and the means within 0.1%.
            self.assertLess(np.abs(ll - truth).mean(), 0.01 * np.abs(truth).mean())
            self.assertLess(abs(ll.mean() - truth.mean()), 0.001 * abs(truth.mean()))
            bpd = -ll / (8 * np.log(2.0))
            self.assertAllClose(out["bits_per_dim"], bpd, rtol=1e-5)
            self.assertAllClose(truth, gmm.log_prob(x), rtol=1e-3)  # t_start ~ data.

    def test_hutchinson_rademacher_exact_for_diagonal_jacobian(self):
        # One diagonal Gaussian: the ODE's Jacobian is diagonal, so a
        # Rademacher probe gives the exact trace; Gaussian probes do not.
        gmm = GaussianMixture(np.array([[0.3, -0.2, 0.1]]), np.array([[0.1, 0.2, 0.05]]))
        x = gmm.sample(32, seed=2).astype("float32")
        schedule = schedules.LinearSchedule()
        kwargs = dict(schedule=schedule, prediction="v", t_start=T_START, rtol=TOL, atol=TOL)
        model_fn = gmm.denoiser(schedule, "v")
        truth = truth_at(gmm, x, schedule, T_START)
        rademacher = likelihood.ode_log_likelihood(model_fn, x, probe="rademacher", **kwargs)
        error = np.abs(rademacher["log_likelihood"].numpy() - truth)
        self.assertLess(error.mean(), 0.01 * np.abs(truth).mean())
        self.assertLess(error.max(), 0.02 * np.abs(truth).mean())
        gaussian = likelihood.ode_log_likelihood(model_fn, x, probe="gaussian", num_probes=2, **kwargs)
        error = gaussian["log_likelihood"].numpy() - truth
        self.assertGreater(np.abs(error).mean(), 0.01)  # Probe noise.
        self.assertLess(abs(error.mean()), 4 * error.std() / np.sqrt(len(error)))  # Unbiased.

    def test_hutchinson_is_unbiased_on_a_mixture(self):
        gmm = mixture()
        x = gmm.sample(128, seed=3).astype("float32")
        schedule = schedules.CosineSchedule()
        fn = likelihood.make_ode_log_likelihood_fn(
            gmm.denoiser(schedule, "epsilon"), schedule=schedule, prediction="epsilon",
            num_probes=2, t_start=T_START, rtol=TOL, atol=TOL,
        )
        out = fn(x, tf.constant([0, 0]))
        error = out["log_likelihood"].numpy() - truth_at(gmm, x, schedule, T_START)
        stderr = error.std() / np.sqrt(len(error))
        self.assertLess(abs(error.mean()), 4 * stderr)
        self.assertLess(stderr, 0.03 * np.abs(gmm.log_prob(x)).mean())
        # Same seed, same probes: reproducible.
        again = fn(x, tf.constant([0, 0]))["log_likelihood"]
        self.assertAllClose(again, out["log_likelihood"])

    def test_dequantized_bits_per_dim(self):
        rng = np.random.default_rng(0)
        x = (np.round(rng.uniform(0, 255, size=(4, 2, 2, 1))) / 127.5 - 1).astype("float32")
        gmm = GaussianMixture(np.zeros((1, 4)), 0.5)
        schedule = schedules.LinearSchedule()

        def model_fn(x_t, t):  # The mixture's denoiser on flattened images.
            flat = tf.reshape(x_t, (tf.shape(x_t)[0], -1))
            return tf.reshape(gmm.denoiser(schedule, "epsilon")(flat, t), tf.shape(x_t))

        out = likelihood.ode_log_likelihood(
            model_fn, x, schedule=schedule, prediction="epsilon", trace="exact",
            dequantize=True, rtol=1e-3, atol=1e-3,
        )
        bpd = out["bits_per_dim"].numpy()
        self.assertTrue(np.all(np.isfinite(bpd)) and np.all(bpd > 0))
        # A N(0, 0.5^2) density on [-1, 1] data: about 7 + 0.5 log2(2 pi e 0.25) bits.
        expected = -(gmm.log_prob(x.reshape(4, -1)) + 4 * np.log(2 / 255)) / (4 * np.log(2))
        self.assertAllClose(bpd.mean(), expected.mean(), rtol=0.02)

    def test_bad_arguments(self):
        schedule = schedules.LinearSchedule()
        model_fn = mixture().denoiser(schedule)
        with self.assertRaisesWithArgument(ValueError, "trace", "'diag'"):
            likelihood.ode_log_likelihood(model_fn, np.zeros((2, 8)), schedule=schedule,
                                          prediction="epsilon", trace="diag")
        with self.assertRaisesWithArgument(ValueError, "t_start=0.0"):
            likelihood.ode_log_likelihood(model_fn, np.zeros((2, 8)), schedule=schedule,
                                          prediction="epsilon", t_start=0.0)
        with self.assertRaisesWithArgument(ValueError, "x", r"\[1.5"):
            likelihood.ode_log_likelihood(model_fn, np.full((2, 8), 1.5), schedule=schedule,
                                          prediction="epsilon", dequantize=True)


class ELBOTest(TestCase):
    def test_elbo_bounds_mixture_likelihood(self):
        gmm = mixture()
        x = gmm.sample(128, seed=4).astype("float32")
        true_nll = -gmm.log_prob(x)
        schedule = schedules.LinearSchedule()
        out = likelihood.elbo(
            gmm.denoiser(schedule, "epsilon"), x, schedule=schedule, prediction="epsilon",
            decoder="gaussian", variance="large", num_samples=4, seed=0,
        )
        neg_elbo = out["nats"].numpy()
        self.assertAllClose(
            neg_elbo,
            (out["prior_nats"] + out["diffusion_nats"] + out["decoder_nats"]).numpy(),
            rtol=1e-5, atol=1e-4,
        )
        gap = neg_elbo - true_nll
        stderr = gap.std() / np.sqrt(len(gap))
        # E_q[-ELBO] >= E_q[-log q]: the mean gap is >= 0 (up to Monte Carlo
        # error) and, with the exact denoiser, within a few percent.
        self.assertGreater(gap.mean(), -2 * stderr)
        self.assertLess(gap.mean(), 0.05 * np.abs(true_nll).mean())
        self.assertLess(np.abs(out["prior_nats"].numpy()).max(), 1e-3)

    def test_small_variance_is_a_looser_bound(self):
        gmm = mixture()
        x = gmm.sample(64, seed=5).astype("float32")
        schedule = schedules.CosineSchedule()
        kwargs = dict(schedule=schedule, prediction="v", decoder="gaussian", seed=1)
        model_fn = gmm.denoiser(schedule, "v")
        large = likelihood.elbo(model_fn, x, variance="large", **kwargs)["nats"].numpy()
        small = likelihood.elbo(model_fn, x, variance="small", **kwargs)["nats"].numpy()
        self.assertGreater(small.mean(), large.mean())
        self.assertGreater(small.mean(), -gmm.log_prob(x).mean())

    def test_discretized_decoder_is_a_distribution(self):
        levels = tf.constant(np.arange(256) / 127.5 - 1.0, tf.float32)
        for loc, scale in ((0.0, 0.01), (0.3, 0.2), (-0.99, 0.004), (1.0, 1e-3)):
            log_p = likelihood.discretized_gaussian_log_likelihood(levels, loc, scale)
            self.assertAllClose(tf.reduce_sum(tf.exp(log_p)), 1.0, atol=1e-4)

    def test_discrete_elbo_on_8bit_data(self):
        rng = np.random.default_rng(1)
        x = (np.round(rng.uniform(0, 255, size=(3, 4, 4, 1))) / 127.5 - 1).astype("float32")
        schedule = schedules.LinearSchedule(num_train_timesteps=50)

        def model_fn(x_t, t):  # Predicts zero noise: a poor but valid model.
            return tf.zeros_like(x_t)

        out = likelihood.elbo(model_fn, x, schedule=schedule, prediction="epsilon")
        bpd = out["bits_per_dim"].numpy()
        self.assertEqual(bpd.shape, (3,))
        self.assertTrue(np.all(np.isfinite(bpd)) and np.all(bpd > 0))
        # The L_0 term alone is a probability: at most 8 bits per dim lost
        # there only if the decoder is very wrong; nats >= 0 always.
        self.assertTrue(np.all(out["decoder_nats"].numpy() >= 0))
        mean = likelihood.elbo_bits_per_dim(
            model_fn, x, schedule=schedule, prediction="epsilon"
        )
        self.assertTrue(np.isfinite(mean))

    def test_bad_arguments(self):
        model_fn = mixture().denoiser(schedules.RectifiedFlowSchedule(), "flow")
        with self.assertRaisesWithArgument(ValueError, "num_steps", "RectifiedFlowSchedule"):
            likelihood.elbo(model_fn, np.zeros((2, 8)), schedule="rectified_flow",
                            prediction="flow", decoder="gaussian")
        with self.assertRaisesWithArgument(ValueError, "decoder", "'laplace'"):
            likelihood.elbo(model_fn, np.zeros((2, 8)), schedule="linear",
                            prediction="flow", decoder="laplace")
        with self.assertRaisesWithArgument(ValueError, "x0", "8-bit", r"\[0, 3\]"):
            likelihood.elbo(model_fn, np.full((2, 8), 3.0) * np.arange(2)[:, None],
                            schedule="linear", prediction="epsilon")
