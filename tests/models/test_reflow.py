import keras
import numpy as np
from keras import ops

from keras_diffusion import random as random_lib
from keras_diffusion import schedules
from keras_diffusion.models import DiffusionModel
from keras_diffusion.models import MLPDenoiser
from keras_diffusion.models import ReflowModel
from keras_diffusion.models.reflow import generate_pairs
from keras_diffusion.models.reflow import straightness
from keras_diffusion.samplers.spacing import start_time
from keras_diffusion.testing.gaussian_mixture import GaussianMixture
from keras_diffusion.testing.test_case import TestCase


def _mlp():
    return MLPDenoiser(data_dim=2, hidden_dim=16, num_layers=1)


class StraightnessTest(TestCase):
    def test_straight_and_curved_flows(self):
        flow = schedules.get("rectified_flow")
        noise = np.random.default_rng(0).normal(size=(64, 2)).astype("float32")
        c = np.array([[1.0, -2.0]], "float32")

        def point_flow(x, t):  # data = one point c: x_t = (1 - t) c + t eps, straight
            return (x - c) / ops.reshape(t, (-1, 1))

        self.assertLess(straightness(point_flow, noise, flow, "flow", num_steps=8), 1e-6)
        ring = GaussianMixture.ring(4).denoiser(flow, "flow")
        self.assertGreater(straightness(ring, noise, flow, "flow", num_steps=8), 0.1)


class ReflowTest(TestCase):
    def test_pairs_from_a_model_match_generate(self):
        model = DiffusionModel(_mlp(), image_shape=(2,), schedule="rectified_flow",
                               prediction="flow")
        model.build(None)
        noise, samples = generate_pairs(model, 5, seed=3, num_steps=2)
        self.assertAllClose(noise, random_lib.initial_noise((5, 2), 3))
        self.assertAllClose(samples, model.generate(5, sampler="euler", num_steps=2, seed=3,
                                                    clip=False, verbose=0))
        with self.assertRaisesWithArgument(ValueError, "schedule=None"):
            generate_pairs(lambda x, t: x, 5)

    def test_fit_on_pairs_and_one_step_distillation(self):
        rng = np.random.default_rng(0)
        noise = rng.normal(size=(16, 2)).astype("float32")
        samples = rng.normal(size=(16, 2)).astype("float32")
        for distill in (False, True):
            model = ReflowModel(_mlp(), distill=distill, seed=0)
            model.compile(keras.optimizers.Adam(1e-2), run_eagerly=True)
            history = model.fit({"images": samples, "noise": noise}, batch_size=8, verbose=0)
            self.assertTrue(np.isfinite(history.history["loss"][-1]))
        # Distillation trains at the grid start only.
        self.assertAllClose(model._times(3), np.full((3,), float(start_time(model.schedule))))
        # The pair's own noise: x_t at t_start is alpha x0 + sigma noise, so the
        # loss of a batch depends on the noise given.
        loss_a = ops.convert_to_numpy(model.training_loss(
            {"images": samples, "noise": noise})[0])
        loss_b = ops.convert_to_numpy(model.training_loss(
            {"images": samples, "noise": noise[::-1]})[0])
        self.assertGreater(abs(float(loss_a) - float(loss_b)), 1e-6)
        self.assertEqual(ReflowModel.from_config(model.get_config()).distill, True)
        with self.assertRaisesWithArgument(ValueError, "noise", "ndarray"):
            ReflowModel(_mlp()).fit(samples, batch_size=8, verbose=0)
        with self.assertRaisesWithArgument(ValueError, "noise", r"\(16, 3\)"):
            ReflowModel(_mlp()).fit({"images": samples, "noise": np.zeros((16, 3))},
                                    batch_size=8, verbose=0)
