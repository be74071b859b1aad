"""The corrector gain of Heun and EDM, and the warning on grids that break them.

Heun's and EDM's second evaluation sits at the Euler predictor, off the data.
With few timesteps on a grid that ends near t = 0 (Heun) or starts at a large
sigma / alpha (EDM) its error is amplified, and the samples are far off:
benchmarks/results/sampler_mnist.md measured FD 375-950 at 3 timesteps.
"""

import warnings

import numpy as np
import pytest
import tensorflow as tf

from keras_diffusion import samplers
from keras_diffusion import schedules
from keras_diffusion.samplers.sampler import CORRECTION_GAIN_LIMIT
from keras_diffusion.testing import TestCase

from tests.samplers.test_grid_start import GMM
from tests.samplers.test_grid_start import _near
from tests.samplers.test_grid_start import _noise


def _gains(sampler, schedule, times):
    times = np.append(np.asarray(times, "float64"), 0.0)
    return sampler.correction_gains(schedules.get(schedule), times)


def _sample_warnings(sampler, spacing, num_steps=3, schedule="cosine"):
    """(the warnings of `sample`, the fraction of samples near the ring)."""
    schedule = schedules.get(schedule)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        x = sampler.sample(GMM.denoiser(schedule, "x0"), _noise(256), schedule=schedule,
                           prediction="x0", num_steps=num_steps, spacing=spacing)
    return [str(w.message) for w in caught], _near(x)[0]


class CorrectionGainTest(TestCase):
    @pytest.mark.jax
    def test_heun_gain_closed_form_on_rectified_flow(self):
        # alpha = 1 - s, sigma = s: alpha' - sigma' alpha / sigma = -1 / s, so
        # the gain of t -> s is (t - s) / (2 s (1 - s)).
        gains = _gains(samplers.HeunSampler(), "rectified_flow", [0.9, 0.5, 0.001])
        expected = [0.4 / (2 * 0.5 * 0.5), 0.499 / (2 * 0.001 * 0.999)]
        self.assertAllClose(gains, expected, rtol=1e-5)

    @pytest.mark.jax
    def test_edm_gain_closed_form_on_rectified_flow(self):
        # rho = sigma / alpha = t / (1 - t): 9, 1 and 1/9 on this grid.
        gains = _gains(samplers.EDMSampler(), "rectified_flow", [0.9, 0.5, 0.1])
        self.assertAllClose(gains, [0.5 * (9 - 1), 0.5 * (9 - 1)], rtol=1e-5)

    @pytest.mark.jax
    def test_samplers_without_corrector_have_no_gain(self):
        for sampler in (samplers.DDIMSampler(), samplers.DPMSolverSampler(),
                        samplers.EulerSampler()):
            self.assertIsNone(_gains(sampler, "cosine", [0.9, 0.5, 0.001]))

    def test_warning_where_the_samples_break(self):
        # Heun at 3 timesteps, exact mixture denoiser: the uniform grid (gain
        # 0.6) stays on the ring without a warning; linspace (94) and karras
        # (169) leave it, and warn naming the step.
        messages, near = _sample_warnings(samplers.HeunSampler(), "uniform")
        self.assertEqual(messages, [])
        self.assertGreater(near, 0.95)
        for spacing in ("linspace", "karras"):
            messages, near = _sample_warnings(samplers.HeunSampler(), spacing)
            self.assertLess(near, 0.7, msg=spacing)
            self.assertEqual(len(messages), 1, msg=messages)
            self.assertIn("HeunSampler with 3 timesteps", messages[0])
            self.assertIn("to t=0.001", messages[0])
        # EDM (Heun in sigma / alpha) on cosine's uniform grid starts at
        # rho = 190: gain 54 at 3 timesteps.
        messages, near = _sample_warnings(samplers.EDMSampler(), "uniform")
        self.assertLess(near, 0.5)
        self.assertEqual(len(messages), 1, msg=messages)
        self.assertIn("EDMSampler", messages[0])

    def test_edm_as_published_does_not_warn(self):
        # EDM's own schedule and grid: rho = 80 -> 0.002 in 18 steps (gains
        # 0.2-1.3).
        sampler = samplers.EDMSampler()
        times = sampler.timesteps(schedules.get("edm"), 18, None, "karras")
        gains = _gains(sampler, "edm", np.asarray(times))
        self.assertLess(gains.max(), 2.0)
        self.assertGreater(gains.max(), 1.0)
        messages, _ = _sample_warnings(sampler, "karras", num_steps=18, schedule="edm")
        self.assertEqual(messages, [])

    def test_limit_sits_between_the_measured_cases(self):
        heun = samplers.HeunSampler()
        cosine = schedules.get("cosine")
        uniform = np.asarray(heun.timesteps(cosine, 3, None, "uniform"))
        linspace = np.asarray(heun.timesteps(cosine, 3, None, "linspace"))
        self.assertLess(_gains(heun, cosine, uniform).max(), CORRECTION_GAIN_LIMIT)
        self.assertGreater(_gains(heun, cosine, linspace).max(), CORRECTION_GAIN_LIMIT)


class CorrectionGainGraphTest(TestCase):
    def test_traced_sample_skips_the_check(self):
        # Inside tf.function the grid is symbolic: no check, no error.
        schedule = schedules.get("cosine")
        sampler = samplers.HeunSampler()

        @tf.function
        def run(noise):
            return sampler.sample(GMM.denoiser(schedule, "x0"), noise, schedule=schedule,
                                  prediction="x0", num_steps=3, spacing="linspace")

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            x = run(tf.constant(_noise(8)))
        self.assertEqual(x.shape, (8, 2))
        self.assertEqual([w for w in caught if "corrector" in str(w.message)], [])

    def test_generate_warns_once_per_call_site(self):
        import keras_diffusion

        model = keras_diffusion.DiffusionModel(
            keras_diffusion.models.MLPDenoiser(hidden_dim=16, num_layers=1), image_shape=(2,))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.generate(4, sampler="heun", num_steps=3, spacing="linspace", seed=0,
                           verbose=0)
            model.generate(4, sampler="heun", num_steps=3, seed=0, verbose=0)
        messages = [str(w.message) for w in caught if "corrector" in str(w.message)]
        self.assertEqual(len(messages), 1, msg=messages)
        self.assertIn("HeunSampler with 3 timesteps", messages[0])
        self.assertEqual(caught[0].filename, __file__)  # Points at the caller.
