"""The samplers' math, against exact answers from a Gaussian mixture.

- Every deterministic sampler converges to the adaptive ODE solution from the
  same noise at its order: the slope of log(error) against log(steps).
- Ancestral sampling (DDPM, DDIM with eta = 1) reproduces the mixture.

The order tests use a smooth VP schedule (the continuous cosine schedule,
log-SNR from -10 to 10): on the discrete schedules alpha and sigma are only
piecewise smooth in t (the log-SNR is interpolated linearly between the T
grid points), which caps the order of samplers that step in t. The
exponential integrators (DDIM, DPM-Solver) use a grid uniform in log-SNR,
Euler and Heun one uniform in t; all grids start at t = 1 and end at
T_END, so the final DDIM step to t = 0 is the same for all of them and for
the ODE reference, which integrates from 1 to T_END.
"""

import math

import numpy as np
from keras import ops

from keras_diffusion import samplers
from keras_diffusion import schedules
from keras_diffusion.schedules.schedule import _float
from keras_diffusion.schedules.vp_schedule import VPSchedule
from keras_diffusion.testing import GaussianMixture
from keras_diffusion.testing import TestCase
from keras_diffusion.testing.gaussian_mixture import sliced_wasserstein

T_END = 0.05


class SmoothCosineSchedule(VPSchedule):
    """alpha = cos(u), sigma = sin(u), u = a t + b, log-SNR in [lo, hi]."""

    def __init__(self, log_snr_min=-10.0, log_snr_max=10.0):
        self.b = math.atan(math.exp(-0.5 * log_snr_max))
        self.a = math.atan(math.exp(-0.5 * log_snr_min)) - self.b
        super().__init__(t_min=1e-3)

    def log_snr(self, t):
        return -2.0 * ops.log(ops.tan(self.a * _float(t) + self.b))

    def d_log_snr(self, t):
        return -4.0 * self.a / ops.sin(2.0 * (self.a * _float(t) + self.b))

    def t_from_log_snr(self, log_snr):
        return (ops.arctan(ops.exp(-0.5 * _float(log_snr))) - self.b) / self.a


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


class ConvergenceOrderTest(TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.schedule = SmoothCosineSchedule()
        cls.gmm = GaussianMixture.ring(num_modes=4, radius=1.0, std=0.4)
        cls.model_fn = staticmethod(cls.gmm.denoiser(cls.schedule, "epsilon"))
        cls.noise = np.random.default_rng(0).normal(size=(256, 2)).astype("float32")
        cls.reference = None

    def _reference(self):
        self.skip_unless_tensorflow()  # ODESampler uses tfp.math.ode.
        if ConvergenceOrderTest.reference is None:
            x, info = samplers.ODESampler(rtol=1e-7, atol=1e-7).solve(
                self.model_fn, self.noise, schedule=self.schedule,
                prediction="epsilon", timesteps=[1.0, T_END],
            )
            self.assertEqual(int(info["status"]), 0)
            ConvergenceOrderTest.reference = _np(x)
        return ConvergenceOrderTest.reference

    def _grid(self, n, kind):
        if kind == "t":
            return np.linspace(1.0, T_END, n)
        lo, hi = _np(self.schedule.log_snr(np.array([1.0, T_END], "float32")))
        t = _np(self.schedule.t_from_log_snr(np.linspace(lo, hi, n).astype("float32")))
        t[0], t[-1] = 1.0, T_END
        return t

    def _slope(self, sampler, steps, kind):
        reference = self._reference()
        errors = []
        for n in steps:
            x = sampler.sample(
                self.model_fn, self.noise, schedule=self.schedule,
                prediction="epsilon", timesteps=self._grid(n, kind), seed=0,
            )
            errors.append(np.mean(np.linalg.norm(_np(x) - reference, axis=1)))
        # Well above the reference's own error (about 1.4e-6 against a
        # 3e-8 tolerance solve).
        self.assertGreater(min(errors), 1e-5, msg=f"{sampler!r} {errors}")
        slope = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
        return slope, errors

    def assertOrder(self, sampler, order, steps, kind, margin=0.35):
        slope, errors = self._slope(sampler, steps, kind)
        self.assertAlmostEqual(
            slope, order, delta=margin,
            msg=f"{sampler!r}: slope {slope:.2f}, errors {errors} at {steps}",
        )

    def test_ddim_first_order(self):
        self.assertOrder(samplers.DDIMSampler(), 1, [8, 16, 32, 64], "log_snr")

    def test_euler_first_order(self):
        self.assertOrder(samplers.EulerSampler(), 1, [16, 32, 64], "t")

    def test_heun_second_order(self):
        self.assertOrder(samplers.HeunSampler(), 2, [8, 16, 32, 64], "t")

    def test_dpm_solver_2m_second_order(self):
        for algorithm in ("dpmsolver++", "dpmsolver"):
            self.assertOrder(
                samplers.DPMSolverSampler(order=2, algorithm=algorithm),
                2, [16, 24, 32, 48, 64], "log_snr",
            )

    def test_dpm_solver_3m_third_order(self):
        for algorithm in ("dpmsolver++", "dpmsolver"):
            sampler = samplers.DPMSolverSampler(
                order=3, algorithm=algorithm, lower_order_final=False
            )
            # Pre-asymptotic slopes run a little above 3 (3.4 for
            # "dpmsolver", 2.8 for "dpmsolver++" here).
            self.assertOrder(sampler, 3, [24, 32, 48, 64], "log_snr", margin=0.45)

    def test_diffusers_3m_is_second_order(self):
        # diffusers' (and the DPM-Solver reference code's) 3M update uses
        # half the Taylor D2 term; its error falls only like N^-2.
        sampler = samplers.DPMSolverSampler(
            order=3, third_order="diffusers", lower_order_final=False
        )
        slope, _ = self._slope(sampler, [24, 32, 48, 64], "log_snr")
        self.assertLess(slope, 2.4)
        taylor, _ = self._slope(
            samplers.DPMSolverSampler(order=3, lower_order_final=False),
            [24, 32, 48, 64], "log_snr",
        )
        self.assertGreater(taylor, slope + 0.4)

    def test_ode_sampler_is_converged(self):
        reference = self._reference()
        x, info = samplers.ODESampler(rtol=1e-5, atol=1e-5).solve(
            self.model_fn, self.noise, schedule=self.schedule,
            prediction="epsilon", timesteps=[1.0, T_END],
        )
        self.assertLess(np.mean(np.linalg.norm(_np(x) - reference, axis=1)), 1e-4)
        self.assertLess(int(info["nfe"]), 400)


class AncestralSamplingTest(TestCase):
    """DDPM at 1000 steps (and DDIM with eta = 1) reproduces the mixture."""

    def _check_mixture(self, sampler):
        schedule = schedules.LinearSchedule()
        gmm = GaussianMixture.ring(num_modes=8, radius=2.0, std=0.1)
        model_fn = gmm.denoiser(schedule, "epsilon")
        noise = np.random.default_rng(1).normal(size=(2000, 2)).astype("float32")

        def run(noise):
            return sampler.sample(
                model_fn, noise, schedule=schedule, prediction="epsilon",
                num_steps=1000, seed=5,
            )

        import keras

        if keras.backend.backend() == "tensorflow":
            import tensorflow as tf

            run = tf.function(run, autograph=False)
        x = _np(run(noise))
        data = gmm.sample(2000, seed=2)
        # Mode weights: 1/8 each, within binomial noise (sd 0.0074).
        counts = np.bincount(gmm.classify(x), minlength=8) / len(x)
        self.assertLess(np.abs(counts - 1 / 8).max(), 0.03, msg=f"{sampler!r} {counts}")
        # Within-mode spread: std 0.1 per coordinate.
        spread = np.std(x - gmm.means[gmm.classify(x)])
        self.assertAlmostEqual(spread, 0.1, delta=0.015, msg=repr(sampler))
        # Sliced Wasserstein distance close to that of two exact sample sets.
        baseline = sliced_wasserstein(data, gmm.sample(2000, seed=3))
        distance = sliced_wasserstein(x, data)
        self.assertLess(distance, 2.0 * baseline + 0.02, msg=f"{sampler!r} {baseline}")

    def test_ddpm_fixed_small(self):
        self._check_mixture(samplers.DDPMSampler())

    def test_ddpm_fixed_large(self):
        self._check_mixture(samplers.DDPMSampler(variance="fixed_large"))

    def test_ddim_eta_one(self):
        self._check_mixture(samplers.DDIMSampler(eta=1.0))
