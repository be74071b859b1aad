"""MaskingSchedule: endpoints, derivative and NELBO weight, bad kind, config."""

import numpy as np
import pytest
from keras import ops

from keras_diffusion.schedules import MaskingSchedule
from keras_diffusion.testing import TestCase


@pytest.mark.jax
class MaskingScheduleTest(TestCase):
    def test_endpoints_derivative_and_weight(self):
        t = np.linspace(0.01, 0.99, 50).astype("float32")
        for kind in ("log_linear", "cosine"):
            schedule = MaskingSchedule(kind)
            alpha = ops.convert_to_numpy(schedule.alpha(np.array([0.0, 1.0], "float32")))
            self.assertAllClose(alpha, [1.0, 0.0], atol=1e-6)  # t=0 data, t=1 all mask.
            h = 1e-3
            numeric = (ops.convert_to_numpy(schedule.alpha(t + h))
                       - ops.convert_to_numpy(schedule.alpha(t - h))) / (2 * h)
            derivative = ops.convert_to_numpy(schedule.alpha_derivative(t))
            self.assertAllClose(derivative, numeric, atol=2e-3)
            t64 = t.astype("float64")
            if kind == "log_linear":
                weight = 1.0 / t64
            else:  # -alpha' / (1 - alpha), in float64.
                weight = 0.5 * np.pi * np.sin(0.5 * np.pi * t64) / (1 - np.cos(0.5 * np.pi * t64))
            self.assertAllClose(ops.convert_to_numpy(schedule.elbo_weight(t)), weight, rtol=1e-4)
            # The weighted masked fraction integrates to 1 (each token's CE counts once).
            grid = (np.arange(20000) + 0.5) / 20000
            integrand = ops.convert_to_numpy(schedule.elbo_weight(grid)) * ops.convert_to_numpy(
                schedule.mask_probability(grid))
            self.assertAllClose(integrand.mean(), 1.0, atol=1e-3)

    def test_bad_kind_and_config(self):
        with self.assertRaisesWithArgument(ValueError, "kind", "'linear'"):
            MaskingSchedule("linear")
        schedule = MaskingSchedule("cosine")
        self.assertEqual(MaskingSchedule.from_config(schedule.get_config()).kind, "cosine")
