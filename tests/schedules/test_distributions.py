"""The TFP distributions of schedules against the DDPM paper's closed forms."""

import numpy as np

from keras_diffusion import schedules
from keras_diffusion.testing import TestCase


class ScheduleDistributionTest(TestCase):
    def setUp(self):
        super().setUp()
        self.skip_unless_tensorflow()
        self.schedule = schedules.LinearSchedule()
        self.betas = np.linspace(1e-4, 0.02, 1000)
        self.abar = np.cumprod(1 - self.betas)

    def test_marginal_is_ddpm_eq_4(self):
        rng = np.random.default_rng(0)
        x0 = rng.normal(size=(4, 3)).astype("float32")
        k = np.array([0, 10, 500, 999])
        dist = self.schedule.marginal(x0, (k + 1) / 1000)
        mean = np.sqrt(self.abar[k])[:, None] * x0
        std = np.sqrt(1 - self.abar[k])[:, None] * np.ones_like(x0)
        self.assertAllClose(dist.mean(), mean, rtol=1e-5, atol=1e-6)
        self.assertAllClose(dist.stddev(), std, rtol=1e-5)
        x = rng.normal(size=x0.shape)
        expected = -0.5 * ((x - mean) / std) ** 2 - np.log(std) - 0.5 * np.log(2 * np.pi)
        self.assertAllClose(dist.log_prob(x.astype("float32")), expected, rtol=1e-4, atol=1e-4)

    def test_posterior_is_ddpm_eq_6_7(self):
        rng = np.random.default_rng(1)
        x0 = rng.normal(size=(3, 5)).astype("float32")
        xt = rng.normal(size=(3, 5)).astype("float32")
        k = np.array([1, 200, 999])
        t, s = (k + 1) / 1000, k / 1000
        dist = self.schedule.posterior(xt, x0, s, t)
        beta, abar, abar_prev = self.betas[k], self.abar[k], self.abar[k - 1]
        coef_x0 = np.sqrt(abar_prev) * beta / (1 - abar)
        coef_xt = np.sqrt(1 - beta) * (1 - abar_prev) / (1 - abar)
        variance = (1 - abar_prev) / (1 - abar) * beta
        self.assertAllClose(
            dist.mean(), coef_x0[:, None] * x0 + coef_xt[:, None] * xt, rtol=1e-4, atol=1e-5
        )
        self.assertAllClose(dist.variance(), variance[:, None] * np.ones((3, 5)), rtol=1e-4)

    def test_posterior_at_first_step_is_exact(self):
        # From k = 0 to t = 0 (alpha_bar = 1): mean x0, variance 0.
        x0 = np.ones((2, 3), "float32")
        xt = np.zeros((2, 3), "float32")
        dist = self.schedule.posterior(xt, x0, 0.0, 0.001)
        self.assertAllClose(dist.mean(), x0)
        self.assertAllClose(dist.stddev(), np.zeros((2, 3)))

    def test_prior(self):
        prior = schedules.VESchedule(sigma_max=30.0).prior((2, 4))
        self.assertAllClose(prior.stddev(), 30.0 * np.ones((2, 4)))
        self.assertEqual(tuple(self.schedule.prior((3,)).mean().shape), (3,))
