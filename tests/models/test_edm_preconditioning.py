"""EDMPreconditioning: Table 1's coefficients, the wrapper, a short fit."""

import os

import keras
import numpy as np
import pytest
from keras import ops

import keras_diffusion
from keras_diffusion import schedules
from keras_diffusion.models.edm_preconditioning import EDMPreconditioning
from keras_diffusion.models.edm_preconditioning import edm_coefficients
from keras_diffusion.testing import TestCase


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), np.float64)


class _Recorder(keras.Model):
    """F(x, c_noise) = 2 x + c_noise; remembers its inputs."""

    def call(self, inputs):
        self.seen = inputs
        return 2.0 * inputs["x_t"] + inputs["t"][:, None]


@pytest.mark.jax
class EDMPreconditioningTest(TestCase):
    def test_coefficients_table_1(self):
        sigma = np.array([0.002, 0.1, 0.5, 1.0, 80.0])
        sd = 0.5
        c_skip, c_out, c_in, c_noise = map(_np, edm_coefficients(sigma.astype("float32"), sd))
        self.assertAllClose(c_skip, sd**2 / (sigma**2 + sd**2), rtol=1e-5)
        self.assertAllClose(c_out, sigma * sd / np.sqrt(sd**2 + sigma**2), rtol=1e-5)
        self.assertAllClose(c_in, 1 / np.sqrt(sigma**2 + sd**2), rtol=1e-5)
        self.assertAllClose(c_noise, np.log(sigma) / 4, rtol=1e-5)
        # EDM's loss weight lambda = 1 / c_out^2.
        schedule = schedules.EDMSchedule()
        t = _np(schedule.t_from_log_snr(-2 * np.log(sigma).astype("float32")))
        weight = keras_diffusion.objectives.loss_weight("edm", "x0", t.astype("float32"), schedule)
        self.assertAllClose(weight, 1 / c_out**2, rtol=1e-4)

    def test_wrapper_output(self):
        schedule = schedules.EDMSchedule()
        net = _Recorder()
        model = EDMPreconditioning(net)
        x = np.random.default_rng(0).normal(size=(3, 4)).astype("float32")
        t = np.array([1.0, 0.5, 0.3], "float32")
        out = _np(model({"x_t": x, "t": t}))
        sigma = _np(schedule.sigma(t))
        c_skip, c_out, c_in, c_noise = map(_np, edm_coefficients(sigma.astype("float32"), 0.5))
        expected = c_skip[:, None] * x + c_out[:, None] * (2 * c_in[:, None] * x + c_noise[:, None])
        self.assertAllClose(out, expected, rtol=1e-5, atol=1e-6)
        self.assertAllClose(net.seen["t"], c_noise, rtol=1e-5)
        # On a VP schedule it preconditions x / alpha with sigma / alpha.
        cosine = schedules.CosineSchedule()
        vp = EDMPreconditioning(_Recorder(), schedule=cosine)
        alpha, sig = map(_np, cosine.alpha_sigma(t))
        rho = sig / alpha
        c_skip, c_out, c_in, c_noise = map(_np, edm_coefficients(rho.astype("float32"), 0.5))
        xb = x / alpha[:, None]
        f = 2 * c_in[:, None] * xb + c_noise[:, None]
        expected = c_skip[:, None] * xb + c_out[:, None] * f
        self.assertAllClose(vp({"x_t": x, "t": t}), expected, rtol=1e-4, atol=1e-5)
        with self.assertRaisesWithArgument(ValueError, "sigma_data", "0.0"):
            EDMPreconditioning(_Recorder(), sigma_data=0.0)

    def test_fit_and_keras_round_trip(self):
        net = keras_diffusion.models.MLPDenoiser(data_dim=2, hidden_dim=32, num_layers=1)
        model = keras_diffusion.DiffusionModel(
            EDMPreconditioning(net), schedule="edm", prediction="x0",
            weighting="edm", time_distribution="edm", seed=0,
        )
        data = np.random.default_rng(0).normal(size=(64, 2)).astype("float32") * 0.5
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        history = model.fit(data, batch_size=16, epochs=2, verbose=0)
        losses = history.history["loss"]
        self.assertTrue(np.all(np.isfinite(losses)), msg=str(losses))
        # Sampling with EDM's sampler on the karras grid.
        noise = np.random.default_rng(1).normal(size=(8, 2)).astype("float32")
        x = keras_diffusion.samplers.EDMSampler().sample(
            model.model_fn(), noise, schedule=model.schedule, prediction="x0",
            num_steps=6, spacing="karras",
        )
        self.assertTrue(np.all(np.isfinite(_np(x))))
        path = os.path.join(self.get_temp_dir(), "edm.keras")
        wrapper = model.denoiser
        wrapper.save(path)
        revived = keras.saving.load_model(path)
        self.assertIsInstance(revived, EDMPreconditioning)
        self.assertEqual(revived.sigma_data, 0.5)
        self.assertIsInstance(revived.schedule, schedules.EDMSchedule)
        inputs = {"x_t": noise, "t": np.full((8,), 0.5, "float32")}
        self.assertAllClose(revived(inputs), wrapper(inputs), atol=1e-6)
