"""Every sampler, schedule and prediction type with an imperfect model.

A network's prediction is never exact. With "epsilon" prediction x0 =
(x_t - sigma eps) / alpha, so an eps error e becomes an x0 error e sigma /
alpha, and near alpha = 0 (cosine: alpha(1) = 4.9e-5, rectified flow:
alpha(1) = 0) the first step of a grid starting at t = 1 blows it up. These
tests emulate a trained network by the exact Gaussian-mixture denoiser plus
a small smooth error in the prediction's own units, and check that every
sampler on the default grid stays near the data for every schedule x
prediction pair.
"""

import pytest

from keras_diffusion import samplers
from keras_diffusion import schedules
from keras_diffusion.testing import TestCase

from tests.samplers.test_grid_start import PREDICTIONS
from tests.samplers.test_grid_start import SCHEDULES
from tests.samplers.test_grid_start import _imperfect
from tests.samplers.test_grid_start import _near
from tests.samplers.test_grid_start import _noise


@pytest.mark.jax
class ImperfectModelTest(TestCase):
    def test_every_schedule_and_prediction(self):
        # generate()'s default sampler, DPM-Solver++(2M), with its defaults
        # (20 steps on the default grid), on every pair.
        noise = _noise()
        sampler = samplers.DPMSolverSampler()
        pairs = [(name, prediction) for name in SCHEDULES for prediction in PREDICTIONS]
        for name, prediction in self.backend_cases(pairs):
            schedule = schedules.get(name)
            x = sampler.sample(_imperfect(schedule, prediction), noise,
                               schedule=schedule, prediction=prediction, seed=0)
            near, max_abs = _near(x)
            msg = f"{name} {prediction}: near={near}, max={max_abs}"
            self.assertGreaterEqual(near, 0.9, msg=msg)
            self.assertLess(max_abs, 3.5, msg=msg)

    def test_every_sampler_on_cosine_and_rectified_flow_epsilon(self):
        # The two schedules with alpha(1) ~ 0, with "epsilon" prediction.
        all_samplers = [
            samplers.DDPMSampler(),
            samplers.DDIMSampler(),
            samplers.DPMSolverSampler(order=3),
            samplers.DPMSolverSampler(order=2, algorithm="dpmsolver"),
            samplers.EulerSampler(),
            samplers.HeunSampler(),
        ]
        noise = _noise()
        for name in ("cosine", "rectified_flow"):
            schedule = schedules.get(name)
            model_fn = _imperfect(schedule, "epsilon")
            for sampler in self.backend_cases(all_samplers):
                steps = 25 if isinstance(sampler, samplers.HeunSampler) else 50
                x = sampler.sample(model_fn, noise, schedule=schedule,
                                   prediction="epsilon", num_steps=steps, seed=0)
                near, max_abs = _near(x)
                msg = f"{name} {sampler!r}: near={near}, max={max_abs}"
                self.assertGreaterEqual(near, 0.9, msg=msg)
                self.assertLess(max_abs, 3.5, msg=msg)
