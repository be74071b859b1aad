"""The core tried as a new user would: defaults, fresh processes, generators,
threads, and the JAX backend's fit."""

import os
import subprocess
import sys
import textwrap
import threading

import keras
import numpy as np
import pytest

import keras_diffusion as kd
from keras_diffusion.models import MLPDenoiser
from keras_diffusion.models import TextConditioner
from keras_diffusion.models import UNet
from keras_diffusion.models import VAE
from keras_diffusion.testing import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _small_unet(**kwargs):
    return UNet(input_channels=1, base_channels=8, channel_multipliers=(1,), num_res_blocks=1,
                attention_resolutions=(), num_groups=4, **kwargs)


def _images(n=8, size=8, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, size, size, 1)).astype("float32")


def _text_encoder(captions):
    encoder = TextConditioner(vocabulary_size=20, sequence_length=4, embedding_dim=8,
                              num_layers=1, num_heads=2)
    encoder.adapt(captions)
    return encoder


def _text_dataset(images, captions):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices({"images": images, "text": captions}).batch(4)


class DefaultsTest(TestCase):
    def setUp(self):
        super().setUp()
        self.skip_unless_tensorflow()

    def test_text_model_without_denoiser_is_sized_for_the_context(self):
        captions = ["a one", "a two", "a three", "a four"]
        images = _images(4)
        model = kd.DiffusionModel(text_encoder=_text_encoder(captions))
        model.fit(_text_dataset(images, captions), epochs=1, verbose=0)
        self.assertEqual(model.denoiser.context_dim, 8)
        out = model.generate(text="a two", num_images=2, num_steps=2, seed=0)
        self.assertEqual(out.shape, (2, 8, 8, 1))

    def test_latent_text_model_without_denoiser(self):
        captions = ["a one", "a two", "a three", "a four"]
        vae = VAE(input_channels=1, latent_channels=4, base_channels=8,
                  channel_multipliers=(1, 1), num_res_blocks=1, num_groups=4,
                  mid_attention=False)
        model = kd.LatentDiffusionModel(vae=vae, text_encoder=_text_encoder(captions))
        model.fit(_text_dataset(_images(4, 16), captions), epochs=1, verbose=0)
        self.assertEqual(model.denoiser.context_dim, 8)
        out = model.generate(text=["a one"], num_steps=2, seed=0)
        self.assertEqual(out.shape, (1, 16, 16, 1))

    def test_vectors_get_an_mlp_denoiser(self):
        points = np.random.default_rng(0).normal(size=(64, 2)).astype("float32")
        model = kd.DiffusionModel(prediction="v")
        model.fit(points, batch_size=32, epochs=1, verbose=0)
        self.assertIsInstance(model.denoiser, MLPDenoiser)


class DataSourcesTest(TestCase):
    def setUp(self):
        super().setUp()
        self.skip_unless_tensorflow()

    def test_python_generator_and_py_dataset(self):
        images = _images(8)
        served = []

        def batches():
            for i in range(0, 8, 4):
                served.append(i)
                yield images[i:i + 4]

        model = kd.DiffusionModel(_small_unet())
        history = model.fit(batches(), epochs=1, verbose=0)
        self.assertEqual(len(history.history["loss"]), 1)
        self.assertTrue(np.isfinite(history.history["loss"][0]))
        # Each batch served once: the first one (read to build) is not lost.
        self.assertEqual(served, [0, 4])

        class Batches(keras.utils.PyDataset):
            def __len__(self):
                return 2

            def __getitem__(self, index):
                return images[4 * index:4 * index + 4], np.array([0, 1, 2, 0])[: 4]

        labeled = kd.DiffusionModel(_small_unet(num_classes=3))
        history = labeled.fit(Batches(), epochs=2, verbose=0)
        self.assertEqual(len(history.history["loss"]), 2)
        self.assertTrue(np.all(np.isfinite(history.history["loss"])))

    def test_empty_data_is_a_clear_error(self):
        import tensorflow as tf

        def nothing():
            return
            yield

        for data in (nothing(), tf.data.Dataset.from_tensor_slices(np.zeros((0, 8, 8, 1))).batch(2),
                     np.zeros((0, 8, 8, 1), "float32")):
            with self.assertRaisesRegex(ValueError, "yields no batch"):
                kd.DiffusionModel(_small_unet()).fit(data, epochs=1, verbose=0)


class ThreadsAndEmaTest(TestCase):
    def setUp(self):
        super().setUp()
        self.skip_unless_tensorflow()

    def test_concurrent_generate_uses_ema_and_never_mutates(self):
        model = kd.DiffusionModel(_small_unet(), seed=0)
        model.compile(optimizer=keras.optimizers.Adam(1e-2, use_ema=True, ema_momentum=0.5))
        model.fit(_images(8), batch_size=4, epochs=1, verbose=0)
        # fit() ends by assigning the EMA weights (Keras' finalize step); one
        # step more makes the training weights differ from the EMA weights,
        # as they do while training runs (e.g. a callback sampling).
        model.train_on_batch(_images(4, seed=1))
        before = [np.array(v) for v in model.denoiser.trainable_variables]
        ema = model._ema_by_variable()
        self.assertTrue(any(
            not np.allclose(np.asarray(v), np.asarray(ema[id(v)]))
            for v in model.denoiser.trainable_variables
        ))
        expected = model.generate(2, num_steps=3, seed=7)
        plain = model.generate(2, num_steps=3, seed=7, use_ema=False)
        self.assertGreater(np.abs(expected - plain).max(), 1e-4)
        results, errors = [], []

        def worker(use_ema):
            try:
                for _ in range(3):
                    results.append((use_ema, model.generate(2, num_steps=3, seed=7,
                                                            use_ema=use_ema)))
            except Exception as e:  # pragma: no cover - reported below
                errors.append(e)

        threads = [threading.Thread(target=worker, args=(i % 2 == 0,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        self.assertEqual(errors, [])
        self.assertEqual(len(results), 12)
        for use_ema, images in results:
            self.assertAllClose(images, expected if use_ema else plain, atol=1e-6)
        after = [np.array(v) for v in model.denoiser.trainable_variables]
        for a, b in zip(before, after):
            np.testing.assert_array_equal(a, b)


class FreshProcessTest(TestCase):
    def test_load_model_after_a_plain_import(self):
        self.skip_unless_tensorflow()
        path = os.path.join(self.get_temp_dir(), "m.keras")
        model = kd.DiffusionModel(_small_unet(num_classes=2))
        model.fit(_images(4), np.array([0, 1, 0, 1]), batch_size=4, epochs=1, verbose=0)
        model.save(path)
        expected = model.generate(labels=[0, 1], num_steps=2, seed=3)
        np.save(path + ".npy", expected)
        code = textwrap.dedent(
            f"""
            import numpy as np, keras
            import keras_diffusion
            model = keras.models.load_model({path!r})
            out = model.generate(labels=[0, 1], num_steps=2, seed=3)
            assert np.allclose(out, np.load({path + '.npy'!r}), atol=1e-6), "images differ"
            print("ok", type(model).__name__)
            """
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=600, cwd=ROOT)
        self.assertEqual(out.returncode, 0, out.stderr[-3000:])
        self.assertIn("ok DiffusionModel", out.stdout)


@pytest.mark.jax
class BackendFitTest(TestCase):
    """`fit`, `evaluate` and `generate` on the current backend (CI runs it on
    TensorFlow and on JAX)."""

    def test_mlp_fit_with_ema_and_accumulation(self):
        points = np.random.default_rng(0).normal(size=(256, 2)).astype("float32")
        model = kd.DiffusionModel(MLPDenoiser(hidden_dim=32, num_layers=1), prediction="v",
                                  seed=0)
        model.compile(optimizer=keras.optimizers.Adam(
            1e-3, use_ema=True, gradient_accumulation_steps=2))
        history = model.fit(points, batch_size=64, epochs=3, verbose=0)
        losses = history.history["loss"]
        self.assertTrue(all(np.isfinite(losses)))
        self.assertLess(losses[-1], losses[0])
        self.assertEqual(int(model.optimizer.iterations), 6)  # 12 batches / 2
        metrics = model.evaluate(points[:128], batch_size=64, verbose=0, return_dict=True)
        self.assertTrue(np.isfinite(metrics["loss"]))
        out = model.generate(16, num_steps=4, seed=0)
        self.assertEqual(out.shape, (16, 2))
        self.assertAllClose(out, model.generate(16, num_steps=4, seed=0), atol=1e-6)

    def test_small_unet_fit_class_conditional(self):
        images = _images(8)
        model = kd.DiffusionModel(_small_unet(num_classes=3), seed=0)
        history = model.fit(images, np.arange(8) % 3, batch_size=4, epochs=1, verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][0]))
        out = model.generate(labels=[0, 2], num_steps=2, seed=1, guidance_scale=2.0)
        self.assertEqual(out.shape, (2, 8, 8, 1))
        self.assertTrue(np.all(np.abs(out) <= 1.0))

    def test_nan_policy_raise(self):
        images = _images(4)
        images[1, 0, 0, 0] = np.nan
        model = kd.DiffusionModel(_small_unet())
        with self.assertRaisesRegex(Exception, "NaN or Inf"):
            model.fit(images, batch_size=4, epochs=1, verbose=0)
