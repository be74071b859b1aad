"""Orders of convergence of the new samplers, against exact answers.

As in test_convergence.py: the smooth cosine schedule (log-SNR from -10 to
10), grids uniform in log-SNR from t = 1 to T_END, the adaptive ODE solution
as reference; `lower_order_final=False` so the measured slope is the
solver's own. Then, on the 64-D mixture of the sampler benchmark, the
stochastic solvers: with the noise off (`s_noise=0`) SDE-DPM-Solver++ is a
deterministic integrator of the reverse SDE's drift, whose order is measured
against its own 256-step solution; with the noise on, the samples match
the mixture.
"""

import numpy as np
from keras import ops

from keras_diffusion import samplers
from keras_diffusion import schedules
from keras_diffusion.testing import GaussianMixture
from keras_diffusion.testing import TestCase
from tests.samplers.test_convergence import T_END
from tests.samplers.test_convergence import SmoothCosineSchedule


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


def _compiled(fn):
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, autograph=False)
    return fn


class SolverOrderTest(TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.schedule = SmoothCosineSchedule()
        gmm = GaussianMixture.ring(num_modes=4, radius=1.0, std=0.4)
        cls.model_fn = staticmethod(gmm.denoiser(cls.schedule, "epsilon"))
        cls.noise = np.random.default_rng(0).normal(size=(256, 2)).astype("float32")
        cls.reference = None

    def _reference(self):
        self.skip_unless_tensorflow()  # ODESampler uses tfp.math.ode.
        if SolverOrderTest.reference is None:
            x, info = samplers.ODESampler(rtol=1e-7, atol=1e-7).solve(
                self.model_fn, self.noise, schedule=self.schedule,
                prediction="epsilon", timesteps=[1.0, T_END],
            )
            SolverOrderTest.reference = _np(x)
        return SolverOrderTest.reference

    def _grid(self, n):
        lo, hi = _np(self.schedule.log_snr(np.array([1.0, T_END], "float32")))
        t = _np(self.schedule.t_from_log_snr(np.linspace(lo, hi, n).astype("float32")))
        t[0], t[-1] = 1.0, T_END
        return t.astype("float32")

    def _slope(self, sampler, steps):
        reference = self._reference()
        run = _compiled(lambda ts: sampler.sample(
            self.model_fn, self.noise, schedule=self.schedule, prediction="epsilon",
            timesteps=ts, seed=0))
        errors = [np.mean(np.linalg.norm(_np(run(self._grid(n))) - reference, axis=1))
                  for n in steps]
        self.assertGreater(min(errors), 1e-5, msg=f"{sampler!r} {errors}")
        return -np.polyfit(np.log(steps), np.log(errors), 1)[0], errors

    def assertOrder(self, sampler, order, steps=(24, 32, 48, 64), margin=0.35):
        slope, errors = self._slope(sampler, steps)
        self.assertAlmostEqual(slope, order, delta=margin,
                               msg=f"{sampler!r}: slope {slope:.2f}, errors {errors}")

    def test_unipc(self):
        # UniP-p is order p; the corrector UniC raises it by one (Zhao et al.,
        # 2023, Theorem 3.1). Measured here: 2.0, 2.0, 3.2 (bh1), 3.9.
        final = dict(lower_order_final=False)
        self.assertOrder(samplers.UniPCSampler(1, **final), 2)
        self.assertOrder(samplers.UniPCSampler(2, corrector=False, **final), 2)
        self.assertOrder(samplers.UniPCSampler(2, "bh1", **final), 3)
        self.assertOrder(samplers.UniPCSampler(3, **final), 4, steps=(24, 32, 40, 48),
                         margin=0.45)

    def test_deis(self):
        final = dict(lower_order_final=False)
        self.assertOrder(samplers.DEISSampler(2, **final), 2)
        # Order 3 reaches a float32 floor near 6e-5 at 64 steps: the
        # differences of antiderivatives (as in diffusers) cancel.
        self.assertOrder(samplers.DEISSampler(3, **final), 3, steps=(16, 24, 32, 48))

    def test_ipndm(self):
        # Fixed Adams-Bashforth weights on a grid that is not uniform in rho:
        # second order whatever `order` (sum_j b_j (j + 1/2) = 0 cancels the
        # first-order term of the grid's non-uniformity, not the next).
        self.assertOrder(samplers.IPNDMSampler(2), 2)
        self.assertOrder(samplers.IPNDMSampler(4), 2)

    def test_dpm_solver_singlestep(self):
        self.assertOrder(samplers.DPMSolverSinglestepSampler(2), 2)
        self.assertOrder(samplers.DPMSolverSinglestepSampler(3), 3)
        self.assertOrder(samplers.DPMSolverSinglestepSampler(3, "heun"), 3)

    def test_edm_heun(self):
        # S_churn = 0: Algorithm 1, Heun's method in rho = sigma / alpha.
        self.assertOrder(samplers.EDMSampler(), 2)


class StochasticSolverTest(TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.schedule = SmoothCosineSchedule()
        cls.gmm = GaussianMixture.random(num_modes=4, dim=64, seed=0, std=(0.3, 0.6))
        cls.model_fn = staticmethod(cls.gmm.denoiser(cls.schedule, "epsilon"))

    def _grid(self, n):
        lo, hi = _np(self.schedule.log_snr(np.array([1.0, T_END], "float32")))
        t = _np(self.schedule.t_from_log_snr(np.linspace(lo, hi, n).astype("float32")))
        t[0], t[-1] = 1.0, T_END
        return t.astype("float32")

    def test_sde_solver_orders_without_noise(self):
        self.skip_unless_tensorflow()  # Graph mode keeps this test short.
        noise = np.random.default_rng(0).normal(size=(32, 64)).astype("float32")
        slopes = {}
        for third in ("taylor", "diffusers"):
            for order in (2, 3):
                if order == 2 and third == "diffusers":
                    continue
                sampler = samplers.DPMSolverSDESampler(
                    order, third_order=third, s_noise=0.0, lower_order_final=False)
                run = _compiled(lambda ts, s=sampler: s.sample(
                    self.model_fn, noise, schedule=self.schedule, prediction="epsilon",
                    timesteps=ts, seed=0))
                reference = _np(run(self._grid(256)))
                steps = (24, 32, 48, 64)
                errors = [np.mean(np.linalg.norm(_np(run(self._grid(n))) - reference, axis=1))
                          for n in steps]
                slopes[(order, third)] = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
        # Measured: 2.6 (2M), 3.0 (3M), 0.2 (diffusers' 3M: its D2 coefficient
        # tends to -1 instead of 0 as h -> 0, so it does not converge).
        self.assertGreater(slopes[(2, "taylor")], 1.8, msg=str(slopes))
        self.assertGreater(slopes[(3, "taylor")], 2.5, msg=str(slopes))
        self.assertLess(slopes[(3, "diffusers")], 1.0, msg=str(slopes))

    def test_stochastic_samples_match_the_mixture(self):
        # 2000 samples: mode weights and spread of the mixture. EDM's sampler
        # on its own schedule and grid (on the linear schedule's uniform grid
        # even its deterministic Heun needs more than 50 steps).
        gmm = GaussianMixture.ring(num_modes=8, radius=2.0, std=0.1)
        noise = np.random.default_rng(1).normal(size=(2000, 2)).astype("float32")
        edm = samplers.EDMSampler(s_churn=40.0, s_tmin=0.05, s_tmax=50.0, s_noise=1.003)
        for sampler, schedule, steps, spacing in [
            (samplers.DPMSolverSDESampler(2), schedules.LinearSchedule(), 100, "uniform"),
            (samplers.DPMSolverSDESampler(3), schedules.LinearSchedule(), 100, "uniform"),
            # First order: more steps for the spread.
            (samplers.EulerAncestralSampler(), schedules.LinearSchedule(), 400, "uniform"),
            (edm, schedules.EDMSchedule(), 50, "karras"),
        ]:
            model_fn = gmm.denoiser(schedule, "epsilon")
            run = _compiled(lambda n, s=sampler, sch=schedule, k=steps, sp=spacing: s.sample(
                model_fn, n, schedule=sch, prediction="epsilon", num_steps=k, spacing=sp,
                seed=5))
            x = _np(run(noise))
            counts = np.bincount(gmm.classify(x), minlength=8) / len(x)
            self.assertLess(np.abs(counts - 1 / 8).max(), 0.03, msg=f"{sampler!r} {counts}")
            spread = np.std(x - gmm.means[gmm.classify(x)])
            self.assertAlmostEqual(spread, 0.1, delta=0.015, msg=repr(sampler))
