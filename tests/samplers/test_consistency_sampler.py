import numpy as np
import pytest
from keras import ops

from keras_diffusion import samplers
from keras_diffusion import schedules
from keras_diffusion.random import step_noise
from keras_diffusion.samplers import ConsistencySampler
from keras_diffusion.testing.test_case import TestCase


class ConsistencySamplerTest(TestCase):
    def test_registered_and_one_step_by_default(self):
        sampler = samplers.get("consistency")
        self.assertIsInstance(sampler, ConsistencySampler)
        calls = []

        def model_fn(x, t):
            calls.append(t)
            return ops.zeros_like(x) + 0.25

        out = sampler.sample(model_fn, np.ones((3, 2), "float32"), schedule="cosine",
                             prediction="x0", seed=0)
        self.assertEqual(len(calls), 1)
        # One step from the grid start: the x0 estimate itself.
        self.assertAllClose(out, np.full((3, 2), 0.25), atol=1e-6)

    def test_renoises_the_x0_estimate_at_each_time(self):
        """Algorithm 1 of Song et al.: x_{t_{i+1}} = alpha x0 + sigma z_i, with
        z_i = step_noise(shape, seed, i), checked against numpy."""
        schedule = schedules.get("cosine")
        times = [0.9, 0.6, 0.3]
        seen = []

        def model_fn(x, t):  # x0 estimate 0.5 x_t
            seen.append(np.asarray(ops.convert_to_numpy(x)))
            return 0.5 * x

        noise = np.random.default_rng(0).normal(size=(4, 3)).astype("float32")
        sampler = ConsistencySampler()
        out = sampler.sample(model_fn, noise, schedule=schedule, prediction="x0",
                             timesteps=times, seed=7)
        x = noise.astype("float64")
        for i, s in enumerate(times[1:]):
            alpha, sigma = [float(v) for v in schedule.alpha_sigma(ops.convert_to_tensor(s))]
            z = np.asarray(ops.convert_to_numpy(step_noise((4, 3), 7, i)), "float64")
            x = alpha * 0.5 * x + sigma * z
        self.assertAllClose(out, 0.5 * x, atol=1e-5, rtol=1e-5)

    def test_seed_changes_multistep_samples_only(self):
        sampler = ConsistencySampler()
        noise = np.ones((2, 2), "float32")

        def model_fn(x, t):
            return 0.1 * x

        def run(seed, n):
            return ops.convert_to_numpy(sampler.sample(
                model_fn, noise, schedule="cosine", prediction="x0", num_steps=n, seed=seed))

        self.assertAllClose(run(1, 2), run(1, 2))
        self.assertGreater(np.abs(run(1, 2) - run(2, 2)).max(), 1e-3)
        self.assertAllClose(run(1, 1), run(2, 1))

    @pytest.mark.jax
    def test_other_predictions_through_x0(self):
        """A v-prediction model function gives the x0 it implies."""
        schedule = schedules.get("cosine")
        noise = np.random.default_rng(1).normal(size=(3, 2)).astype("float32")
        target = np.array([[0.5, -0.5]], "float32")

        def v_model(x, t):
            from keras_diffusion import objectives

            x0 = ops.zeros_like(x) + target
            eps = (x - schedule.alpha(t)[:, None] * x0) / schedule.sigma(t)[:, None]
            return objectives.from_x0_epsilon("v", x0, eps, t, schedule)

        out = ConsistencySampler().sample(v_model, noise, schedule=schedule, prediction="v",
                                          num_steps=2, seed=0)
        self.assertAllClose(out, np.broadcast_to(target, (3, 2)), atol=1e-4)
