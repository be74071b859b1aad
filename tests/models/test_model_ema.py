"""DiffusionModel's own weight average (`ema_decay`, `model.ema`): kept by
fit on both backends, used by generate, saved, off for old files."""

import os

import keras
import numpy as np
import pytest

import keras_diffusion as kd
from keras_diffusion.models import MLPDenoiser
from keras_diffusion.models import TextConditioner
from keras_diffusion.testing import TestCase


def _points(n=256, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 2)).astype("float32")


def _model(**kwargs):
    return kd.DiffusionModel(MLPDenoiser(hidden_dim=16, num_layers=1), seed=0, **kwargs)


@pytest.mark.jax
class ModelEmaTest(TestCase):
    def test_fit_keeps_an_average_that_generate_uses(self):
        model = _model()
        self.assertEqual(model.ema_decay, 0.999)
        model.compile(keras.optimizers.Adam(1e-2))
        model.fit(_points(), batch_size=32, epochs=2, verbose=0)
        self.assertAllClose(model.ema.count, float(model.optimizer.iterations))
        self.assertEqual(len(model.ema.averages), len(model.denoiser.trainable_variables))
        weights = [np.array(v) for v in model.denoiser.trainable_variables]
        with_ema = model.generate(8, num_steps=3, seed=1)
        plain = model.generate(8, num_steps=3, seed=1, use_ema=False)
        self.assertGreater(float(np.abs(with_ema - plain).max()), 1e-4)
        with model.ema_weights() as swapped:
            self.assertTrue(swapped)
            self.assertAllClose(model.generate(8, num_steps=3, seed=1, use_ema=False),
                                with_ema, atol=1e-6)
        for before, after in zip(weights, model.denoiser.trainable_variables):
            np.testing.assert_array_equal(before, np.asarray(after))

    def test_saving_keeps_the_average(self):
        model = _model()
        model.fit(_points(), batch_size=64, epochs=1, verbose=0)
        expected = model.generate(8, num_steps=3, seed=2)
        path = os.path.join(self.get_temp_dir(), "m.keras")
        model.save(path)
        restored = keras.saving.load_model(path)
        self.assertAllClose(restored.ema.count, 4.0)
        for a, b in zip(restored.ema.averages, model.ema.averages):
            self.assertAllClose(a, b)
        self.assertAllClose(restored.generate(8, num_steps=3, seed=2), expected, atol=1e-6)

    def test_off_and_files_from_before(self):
        model = _model(ema_decay=None)
        model.fit(_points(64), batch_size=32, epochs=1, verbose=0)
        self.assertIsNone(model.ema)
        self.assertAllClose(model.generate(4, num_steps=2, seed=0),
                            model.generate(4, num_steps=2, seed=0, use_ema=False))
        # A config saved before `ema_decay` existed: no average, so that the
        # file's weights (without one) load.
        config = _model(image_shape=(2,)).get_config()
        del config["ema_decay"]
        old = kd.DiffusionModel.from_config(config)
        old.build(None)
        self.assertIsNone(old.ema)
        for bad in (1.0, -0.5, 2, "0.9", True):
            with self.assertRaisesWithArgument(ValueError, "ema_decay", str(bad)):
                _model(ema_decay=bad)


class FrozenNetworkTest(TestCase):
    def setUp(self):
        super().setUp()
        self.skip_unless_tensorflow()

    def test_a_frozen_text_encoder_stays_frozen_after_loading(self):
        # Keras gives a layer made with trainable=False (from its config) the
        # flag before its sublayers exist; the model freezes them again.
        captions = np.array(["a red dot", "a blue square"] * 2)
        encoder = TextConditioner(vocabulary_size=20, sequence_length=4, embedding_dim=8,
                                  num_layers=1, num_heads=2)
        encoder.adapt(captions)
        encoder.trainable = False
        model = kd.DiffusionModel(text_encoder=encoder, seed=0)  # a UNet sized for it
        images = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 1)).astype("float32")
        import tensorflow as tf

        data = tf.data.Dataset.from_tensor_slices({"images": images, "text": captions}).batch(4)
        model.fit(data, epochs=1, verbose=0)
        path = os.path.join(self.get_temp_dir(), "m.keras")
        model.save(path)
        restored = keras.saving.load_model(path)
        self.assertFalse(restored.text_encoder.trainable)
        self.assertEqual(len(restored.trainable_variables),
                         len(restored.denoiser.trainable_variables))
        self.assertEqual(len(restored.ema.averages), len(model.ema.averages))
        restored.fit(data, epochs=1, verbose=0)
