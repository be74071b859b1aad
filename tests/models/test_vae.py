"""VAE: shapes, config/saving round-trips, posterior, fit, scaling factor."""

import warnings

import numpy as np
import pytest
from keras import ops

from keras_diffusion.models.vae import VAE
from keras_diffusion.testing import TestCase

TINY = dict(
    input_channels=1,
    latent_channels=2,
    base_channels=8,
    channel_multipliers=(1, 2, 2),
    num_res_blocks=1,
    num_groups=4,
)


def _images(batch=2, size=16, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, (batch, size, size, channels)).astype("float32")


@pytest.mark.jax
class VAEOpsTest(TestCase):
    """Backend-agnostic parts: run on TensorFlow and JAX."""

    def test_shapes_and_factors(self):
        for multipliers, factor in (((1, 2, 2), 4), ((1, 1, 2, 2), 8)):
            vae = VAE(**{**TINY, "channel_multipliers": multipliers})
            x = _images(size=16)
            self.assertEqual(vae.downsampling_factor, factor)
            z = vae.encode_mean(x)
            self.assertEqual(tuple(z.shape), (2, 16 // factor, 16 // factor, 2))
            self.assertEqual(vae.latent_shape((16, 16, 1)), (16 // factor, 16 // factor, 2))
            self.assertEqual(tuple(vae.decode(z).shape), x.shape)
            self.assertEqual(tuple(vae(x).shape), x.shape)
            mean, logvar = vae.encode_moments(x)
            self.assertEqual(mean.shape, logvar.shape)

    def test_serialization(self):
        vae = VAE(**TINY, scaling_factor=0.5, kl_weight=1e-3, reconstruction_loss="l2")
        revived = self.run_serialization_test(vae)
        self.assertEqual(revived.scaling_factor, 0.5)
        self.assertEqual(revived.channel_multipliers, (1, 2, 2))

    def test_scaled_latents(self):
        vae = VAE(**TINY, scaling_factor=0.25)
        x = _images()
        self.assertAllClose(vae.encode_latents(x), 0.25 * vae.encode_mean(x), atol=1e-6)
        z = vae.encode_latents(x)
        self.assertAllClose(vae.decode_latents(z), vae.decode(z / 0.25), atol=1e-5)
        sampled = vae.encode_latents(x, sample=True, seed=3)
        self.assertEqual(sampled.shape, z.shape)
        self.assertFalse(np.allclose(ops.convert_to_numpy(sampled), ops.convert_to_numpy(z)))

    def test_bad_arguments(self):
        with self.assertRaisesWithArgument(ValueError, "reconstruction_loss", "'huber'"):
            VAE(**{**TINY, "reconstruction_loss": "huber"})
        with self.assertRaisesWithArgument(ValueError, "num_groups", "3", "8"):
            VAE(**{**TINY, "num_groups": 3})
        with self.assertRaisesWithArgument(ValueError, "kl_weight", "-1"):
            VAE(**TINY, kl_weight=-1.0)
        with self.assertRaisesWithArgument(ValueError, "scaling_factor", "0"):
            VAE(**TINY, scaling_factor=0.0)
        vae = VAE(**TINY)
        with self.assertRaisesWithArgument(ValueError, "latent_channels=2", "3"):
            vae.decode(np.zeros((1, 4, 4, 3), "float32"))
        with self.assertRaisesWithArgument(ValueError, "images", "3"):
            vae.encode_mean(np.zeros((1, 16, 16, 3), "float32"))


class VAETrainingTest(TestCase):
    """TensorFlow backend: TFP posterior, fit, saving."""

    def setUp(self):
        super().setUp()
        self.skip_unless_tensorflow()

    def test_layer_test(self):
        # Config round-trip, call, one fit step (the VAE's own losses), and a
        # `.keras` saving round-trip with identical outputs.
        self.run_layer_test(VAE, TINY, _images(), expected_output_shape=(2, 16, 16, 1))

    def test_posterior_and_kl(self):
        import tensorflow_probability as tfp

        vae = VAE(**TINY)
        x = _images()
        posterior = vae.encode(x)
        self.assertIsInstance(posterior, tfp.distributions.Independent)
        self.assertEqual(tuple(posterior.event_shape), (4, 4, 2))
        self.assertEqual(tuple(posterior.batch_shape), (2,))
        self.assertAllClose(posterior.mean(), vae.encode_mean(x), atol=1e-6)
        # The KL term is tfp's KL to N(0, I), averaged over the batch, per pixel value.
        prior = tfp.distributions.Independent(
            tfp.distributions.Normal(ops.zeros((4, 4, 2)), 1.0), reinterpreted_batch_ndims=3
        )
        expected = np.mean(tfp.distributions.kl_divergence(posterior, prior)) / (16 * 16)
        _, _, kl = vae.compute_vae_losses(x)
        self.assertAllClose(kl, expected, atol=1e-6, rtol=1e-4)

    def test_fit_reduces_loss_and_reports_terms(self):
        import keras

        import tensorflow as tf

        # Two levels keep the number of variables (and the graph) small.
        vae = VAE(**{**TINY, "channel_multipliers": (1, 2)}, reconstruction_loss="l2", seed=1)
        x = _images(batch=4, seed=1)
        # (images, labels) tuples and {"images": ...} dicts are accepted.
        ds = tf.data.Dataset.from_tensor_slices((x, np.arange(4))).batch(4).repeat(2)
        vae.compile(optimizer=keras.optimizers.SGD(0.1), jit_compile=False)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = vae.fit(ds, epochs=4, verbose=0).history
        # A dataset comes shuffled: no warning about Keras' default shuffle=True.
        self.assertEqual([str(w.message) for w in caught if "shuffle" in str(w.message)], [])
        self.assertEqual(set(history), {"loss", "reconstruction_loss", "kl_loss"})
        self.assertLess(history["loss"][-1], history["loss"][0])
        ds = tf.data.Dataset.from_tensor_slices({"images": x}).batch(4)
        logs = vae.evaluate(ds, verbose=0, return_dict=True)
        self.assertIn("reconstruction_loss", logs)

    def test_estimate_scaling_factor_saved(self):
        import keras
        import tensorflow as tf

        vae = VAE(**TINY)
        x = _images(batch=6)
        factor = vae.estimate_scaling_factor(
            tf.data.Dataset.from_tensor_slices(x).batch(3), sample=False
        )
        z = ops.convert_to_numpy(vae.encode_mean(x))
        self.assertAllClose(factor, 1.0 / z.std(), rtol=1e-4)
        self.assertEqual(vae.get_config()["scaling_factor"], factor)
        scaled = ops.convert_to_numpy(vae.encode_latents(x))
        self.assertAllClose(scaled.std(), 1.0, rtol=1e-4)
        # Array input and num_batches.
        vae.estimate_scaling_factor(x, num_batches=1, batch_size=2)
        path = self.get_temp_dir() + "/vae.keras"
        vae.save(path)
        restored = keras.saving.load_model(path)
        self.assertEqual(restored.scaling_factor, vae.scaling_factor)
        self.assertAllClose(restored.encode_latents(x), vae.encode_latents(x), atol=1e-6)
        with self.assertRaisesWithArgument(ValueError, "dataset", "no images"):
            vae.estimate_scaling_factor([])
