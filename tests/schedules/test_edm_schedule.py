"""The EDM schedule: alpha, sigma, log-SNR, the karras grid, serialization."""

import math

import numpy as np
import pytest
from keras import ops

from keras_diffusion import samplers
from keras_diffusion import schedules
from keras_diffusion.testing import TestCase


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


@pytest.mark.jax
class EDMScheduleTest(TestCase):
    def test_alpha_sigma_log_snr(self):
        schedule = schedules.get("edm")
        self.assertIsInstance(schedule, schedules.EDMSchedule)
        t = np.array([1.0, 0.7, 0.3, schedule.t_min, 0.05], "float32")
        alpha, sigma = schedule.alpha_sigma(t)
        self.assertAllClose(alpha, np.ones(5))
        self.assertAllClose(sigma, 80.0 * t.astype(np.float64) ** 7, rtol=1e-5)
        self.assertAllClose(schedule.log_snr(t), -2 * np.log(80.0 * t.astype(np.float64) ** 7),
                            rtol=1e-5)
        # sigma(1) = sigma_max, sigma(t_min) = sigma_min, sigma(0) = 0 (data).
        self.assertAllClose(_np(schedule.sigma(np.float32(schedule.t_min))), 0.002, rtol=1e-5)
        self.assertEqual(float(_np(schedule.sigma(np.float32(0.0)))), 0.0)
        self.assertEqual(schedule.prior_std, 80.0)
        self.assertEqual(schedule.sigma_data, 0.5)
        self.assertAlmostEqual(schedule.t_min, (0.002 / 80) ** (1 / 7))
        # Inverse and derivatives.
        self.assertAllClose(schedule.t_from_log_snr(schedule.log_snr(t)), t, rtol=1e-5)
        eps = 1e-3
        tt = np.array([0.4, 0.8], "float64")
        numeric = (_np(schedule.sigma((tt + eps).astype("float32")))
                   - _np(schedule.sigma((tt - eps).astype("float32")))) / (2 * eps)
        self.assertAllClose(schedule.alpha_sigma_derivatives(tt.astype("float32"))[1],
                            numeric, rtol=1e-3)
        self.assertAllClose(schedule.d_log_snr(tt.astype("float32")), -14.0 / tt, rtol=1e-5)

    def test_karras_spacing_is_edm_grid(self):
        # Karras et al. (2022) eq. 5 with rho = 7, N = 18.
        schedule = schedules.EDMSchedule()
        n = 18
        i = np.arange(n)
        expected = (80 ** (1 / 7) + i / (n - 1) * (0.002 ** (1 / 7) - 80 ** (1 / 7))) ** 7
        times = samplers.make_timesteps(schedule, n, "karras")
        self.assertAllClose(schedule.sigma(times), expected, rtol=2e-4)
        # In t that grid is uniform from 1 to t_min.
        self.assertAllClose(times, np.linspace(1.0, schedule.t_min, n), atol=1e-5)

    def test_serialization_and_errors(self):
        schedule = schedules.EDMSchedule(sigma_min=0.01, sigma_max=50.0, rho=5.0, sigma_data=1.0)
        revived = self.run_serialization_test(schedule)
        self.assertEqual(repr(revived), repr(schedule))
        self.assertAlmostEqual(revived.t_min, (0.01 / 50) ** (1 / 5))
        with self.assertRaisesWithArgument(ValueError, "sigma_min", "100.0"):
            schedules.EDMSchedule(sigma_min=100.0)
        with self.assertRaisesWithArgument(ValueError, "rho", "0.0"):
            schedules.EDMSchedule(rho=0.0)
        with self.assertRaisesWithArgument(ValueError, "sigma_data", "-1.0"):
            schedules.EDMSchedule(sigma_data=-1.0)
        self.assertTrue(math.isinf(float(_np(schedule.log_snr(np.float32(0.0))))))
