"""`generate` and `img2img` use the grid of the model's prediction type: a
noise prediction's default grid starts at log-SNR -5
(`samplers.spacing.start_log_snr_for`), the others' at -10.5."""

import keras
import numpy as np
import pytest

from keras_diffusion import samplers
from keras_diffusion.models import DiffusionModel
from keras_diffusion.models import MLPDenoiser
from keras_diffusion.pipelines import strength_timesteps
from keras_diffusion.samplers import spacing
from keras_diffusion.testing import TestCase

FLOORS = {"epsilon": spacing.NOISE_START_LOG_SNR, "v": spacing.START_LOG_SNR}


@pytest.mark.jax
class NoisePredictionGridTest(TestCase):
    def test_generate_and_img2img_start_where_the_prediction_says(self):
        x = np.random.default_rng(1).normal(size=(3, 2)).astype("float32")
        common = dict(sampler="ddim", seed=0, verbose=0)
        for prediction, floor in FLOORS.items():
            keras.utils.set_random_seed(0)
            model = DiffusionModel(MLPDenoiser(hidden_dim=16, num_layers=1), schedule="cosine",
                                   prediction=prediction, image_shape=(2,))
            schedule = model.schedule
            grid = samplers.make_timesteps(schedule, 4, start_log_snr=floor)
            (other,) = [f for f in FLOORS.values() if f != floor]
            default = model.generate(3, num_steps=4, **common)
            self.assertAllClose(default, model.generate(3, timesteps=grid, **common), atol=1e-6)
            moved = model.generate(
                3, timesteps=samplers.make_timesteps(schedule, 4, start_log_snr=other), **common
            )
            self.assertGreater(np.abs(default - moved).max(), 1e-3, msg=prediction)
            # img2img at strength 1 runs the whole default grid (on JAX
            # compiled too: the grid is computed at trace time).
            full = strength_timesteps("ddim", schedule, 1.0, num_steps=4, prediction=prediction)
            self.assertAllClose(full, grid, atol=1e-7, msg=prediction)
            self.assertAllClose(
                model.img2img(x, strength=1.0, num_steps=4, sampler="ddim", seed=0),
                model.img2img(x, strength=1.0, timesteps=grid, sampler="ddim", seed=0), atol=1e-6,
            )
