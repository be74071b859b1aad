"""Schedules: closed forms, inverses, derivatives, serialization (any backend)."""

import math

import numpy as np
import pytest
from keras import ops

from keras_diffusion import schedules
from keras_diffusion.testing import TestCase

ALL = {
    "linear": {},
    "scaled_linear": {},
    "cosine": {},
    "ve": {"sigma_min": 0.02, "sigma_max": 80.0},
    "rectified_flow": {"shift": 3.0},
}


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


@pytest.mark.jax
class ScheduleTest(TestCase):
    def test_get_and_serialization(self):
        for name, kwargs in ALL.items():
            schedule = schedules.get(name, **kwargs)
            self.assertIs(schedules.get(schedule), schedule)
            revived = self.run_serialization_test(schedule)
            t = ops.linspace(0.01, 1.0, 7)
            self.assertAllClose(revived.log_snr(t), schedule.log_snr(t))

    def test_unknown_name_lists_valid_ones(self):
        with self.assertRaisesWithArgument(ValueError, "'nope'", "cosine", "linear"):
            schedules.get("nope")

    def test_bad_arguments(self):
        with self.assertRaisesWithArgument(ValueError, "shift", "-1.0"):
            schedules.RectifiedFlowSchedule(shift=-1.0)
        with self.assertRaisesWithArgument(ValueError, "sigma_min=5.0"):
            schedules.VESchedule(sigma_min=5.0, sigma_max=1.0)
        with self.assertRaisesWithArgument(ValueError, "num_train_timesteps=1"):
            schedules.LinearSchedule(num_train_timesteps=1)

    def test_alpha_sigma_log_snr_consistent(self):
        t = ops.linspace(0.002, 0.998, 101)
        for name, kwargs in ALL.items():
            schedule = schedules.get(name, **kwargs)
            alpha, sigma = map(_np, schedule.alpha_sigma(t))
            log_snr = _np(schedule.log_snr(t))
            self.assertAllClose(
                log_snr, 2 * np.log(alpha / sigma), atol=2e-4, rtol=1e-4, msg=name
            )
            self.assertTrue(np.all(np.diff(log_snr) < 0), name)
            if name in ("linear", "scaled_linear", "cosine"):
                self.assertAllClose(alpha**2 + sigma**2, np.ones_like(alpha), atol=1e-6)

    def test_inverse_of_log_snr(self):
        t = ops.linspace(0.0005, 1.0, 257)
        for name, kwargs in ALL.items():
            schedule = schedules.get(name, **kwargs)
            back = schedule.t_from_log_snr(schedule.log_snr(t))
            self.assertAllClose(back, t, atol=3e-5, rtol=1e-4, msg=name)

    def test_derivatives_match_finite_differences(self):
        # Away from the discrete grid's kinks: midpoints of grid cells.
        t = (np.arange(40, 960, 37) + 1.5) / 1000.0
        h = 2e-4
        for name, kwargs in ALL.items():
            schedule = schedules.get(name, **kwargs)
            d_alpha, d_sigma = map(_np, schedule.alpha_sigma_derivatives(t))
            a_hi, s_hi = map(_np, schedule.alpha_sigma(t + h))
            a_lo, s_lo = map(_np, schedule.alpha_sigma(t - h))
            scale = np.maximum(np.abs(d_sigma), 1.0)
            self.assertAllClose(d_alpha / scale, (a_hi - a_lo) / (2 * h) / scale, atol=2e-3)
            self.assertAllClose(d_sigma / scale, (s_hi - s_lo) / (2 * h) / scale, atol=2e-3)
            d_log_snr = _np(schedule.d_log_snr(t))
            fd = (_np(schedule.log_snr(t + h)) - _np(schedule.log_snr(t - h))) / (2 * h)
            self.assertAllClose(d_log_snr, fd, rtol=2e-2, atol=1e-2, msg=name)

    def test_discrete_schedules_follow_ddpm_exactly(self):
        cases = {
            "linear": np.linspace(1e-4, 0.02, 1000, dtype=np.float64),
            "scaled_linear": np.linspace(0.00085**0.5, 0.012**0.5, 1000) ** 2,
        }

        def f(u):
            return math.cos((u + 0.008) / 1.008 * math.pi / 2) ** 2

        cases["cosine"] = np.array(
            [min(1 - f((k + 1) / 1000) / f(k / 1000), 0.999) for k in range(1000)]
        )
        for name, betas in cases.items():
            schedule = schedules.get(name)
            alphas_cumprod = np.cumprod(1.0 - betas)
            np.testing.assert_array_equal(schedule.alphas_cumprod, alphas_cumprod)
            # Step k sits at t = (k + 1) / T.
            t = ((np.arange(1000) + 1) / 1000).astype("float32")
            alpha, sigma = map(_np, schedule.alpha_sigma(t))
            self.assertAllClose(alpha, np.sqrt(alphas_cumprod), rtol=1e-6, atol=0)
            self.assertAllClose(sigma, np.sqrt(1 - alphas_cumprod), rtol=1e-6, atol=0)
        self.assertLessEqual(schedules.CosineSchedule().betas_np.max(), 0.999)

    def test_endpoints(self):
        for name in ("linear", "scaled_linear", "cosine"):
            schedule = schedules.get(name)
            alpha, sigma = map(_np, schedule.alpha_sigma(ops.array([0.0])))
            self.assertEqual((alpha[0], sigma[0]), (1.0, 0.0))
            self.assertEqual(schedule.t_min, 1e-3)
        ve = schedules.VESchedule(sigma_min=0.01, sigma_max=50.0)
        self.assertAllClose(ve.sigma(ops.array([0.0, 1.0])), [0.01, 50.0], rtol=1e-6)
        self.assertEqual(ve.prior_std, 50.0)
        rf = schedules.RectifiedFlowSchedule()
        alpha, sigma = rf.alpha_sigma(ops.array([0.0, 0.25, 1.0]))
        self.assertAllClose(alpha, [1.0, 0.75, 0.0])
        self.assertAllClose(sigma, [0.0, 0.25, 1.0])

    def test_rectified_flow_shift_matches_sd3(self):
        t = np.linspace(0.01, 1.0, 9).astype("float32")
        shift = 3.0
        expected = shift * t / (1 + (shift - 1) * t)
        self.assertAllClose(
            schedules.RectifiedFlowSchedule(shift=shift).sigma(t), expected, rtol=1e-6
        )

    def test_add_noise(self):
        rng = np.random.default_rng(0)
        x0 = rng.normal(size=(3, 4, 4, 2)).astype("float32")
        eps = rng.normal(size=x0.shape).astype("float32")
        t = np.array([0.1, 0.5, 0.9], "float32")
        for name, kwargs in ALL.items():
            schedule = schedules.get(name, **kwargs)
            alpha, sigma = map(_np, schedule.alpha_sigma(t))
            expected = alpha[:, None, None, None] * x0 + sigma[:, None, None, None] * eps
            self.assertAllClose(schedule.add_noise(x0, eps, t), expected, atol=1e-5)

    def test_transition_and_posterior_coefficients(self):
        # x_t = a_{t|s} x_s + sigma_{t|s} z must reproduce the marginal at t.
        s = np.array([0.05, 0.3, 0.7], "float32")
        t = np.array([0.1, 0.31, 0.99], "float32")
        for name, kwargs in ALL.items():
            schedule = schedules.get(name, **kwargs)
            a_s, s_s = map(_np, schedule.alpha_sigma(s))
            a_t, s_t = map(_np, schedule.alpha_sigma(t))
            a_ts, var_ts = map(_np, schedule.transition(s, t))
            self.assertAllClose(a_ts * a_s, a_t, rtol=1e-5)
            self.assertAllClose(a_ts**2 * s_s**2 + var_ts, s_t**2, rtol=1e-4)
            c_xt, c_x0, var = map(_np, schedule.posterior_coefficients(s, t))
            # Gaussian conditioning of (x_s, x_t) given x0.
            self.assertAllClose(c_xt, a_ts * s_s**2 / s_t**2, rtol=1e-4)
            self.assertAllClose(c_x0, a_s - c_xt * a_t, rtol=1e-4, atol=1e-6)
            self.assertAllClose(var, s_s**2 * var_ts / s_t**2, rtol=1e-4, atol=1e-9)
