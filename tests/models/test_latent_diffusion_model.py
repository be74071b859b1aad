"""LatentDiffusionModel with a tiny factor-4 VAE on 16x16 images.

The Stable Diffusion bridge end-to-end (StableDiffusionDenoiser +
StableDiffusionVAE in a LatentDiffusionModel) is not run here: keras-cv's SD
UNet has 860M parameters at any resolution and takes minutes and ~6 GB to
build on a CPU. The adapters follow the same duck-typed VAE interface
(`encode_latents`, `decode_latents`, `latent_shape`, ...) that these tests
exercise with `keras_diffusion.models.VAE`.
"""

import json
import os

import keras
import numpy as np
import tensorflow as tf

import keras_diffusion
from keras_diffusion.models import VAE
from keras_diffusion.models import LatentDiffusionModel
from keras_diffusion.models import TextConditioner
from keras_diffusion.models import UNet
from keras_diffusion.testing import TestCase


def _vae():
    return VAE(input_channels=1, latent_channels=4, base_channels=8,
               channel_multipliers=(1, 1, 1), num_res_blocks=1, num_groups=4,
               mid_attention=False, scaling_factor=2.0)


def _unet(**kwargs):
    return UNet(input_channels=4, base_channels=8, channel_multipliers=(1,),
                num_res_blocks=1, attention_resolutions=(), num_groups=4, **kwargs)


def _images(n=4, seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (n, 16, 16, 1)).astype("float32")


class LatentDiffusionModelTest(TestCase):
    def setUp(self):
        super().setUp()
        self.skip_unless_tensorflow()

    def test_fit_generate_save_round_trip(self):
        images = _images()
        vae = _vae()
        model = LatentDiffusionModel(vae, _unet(num_classes=2), prediction="v", seed=0)
        self.assertIs(keras_diffusion.LatentDiffusionModel, LatentDiffusionModel)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        vae_before = [w.numpy().copy() for w in vae.weights] if vae.built else None
        history = model.fit(images, np.array([0, 1, 0, 1]), batch_size=2, epochs=1, verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][0]))
        self.assertEqual(model.image_shape, (4, 4, 4))
        self.assertEqual(model.pixel_shape, (16, 16, 1))
        # The VAE is frozen: not trained, no optimizer slots.
        self.assertIsNone(vae_before)
        self.assertFalse(any("vae" in v.path for v in model.trainable_variables))
        self.assertEqual(len(model.trainable_variables), len(model.denoiser.trainable_variables))
        out, latents = model.generate(labels=[0, 1], sampler="ddim", num_steps=3, seed=0,
                                      guidance_scale=2.0, return_latents=True)
        self.assertEqual(out.shape, (2, 16, 16, 1))
        self.assertEqual(latents.shape, (2, 4, 4, 4))
        self.assertLessEqual(float(np.abs(out).max()), 1.0)
        self.assertAllClose(out, np.clip(model.decode(latents), -1, 1), atol=1e-5)

        path = os.path.join(self.get_temp_dir(), "ldm.keras")
        model.save(path)
        restored = keras.saving.load_model(path)
        self.assertIsInstance(restored, LatentDiffusionModel)
        self.assertEqual(restored.vae.scaling_factor, 2.0)
        self.assertEqual(len(restored.trainable_variables), len(model.trainable_variables))
        again = restored.generate(labels=[0, 1], sampler="ddim", num_steps=3, seed=0,
                                  guidance_scale=2.0)
        self.assertAllClose(again, out, atol=1e-5)
        normalize = lambda config: json.loads(json.dumps(config))
        self.assertEqual(normalize(restored.get_config()), normalize(model.get_config()))

    def test_cached_latents_and_text(self):
        captions = np.array(["a handwritten seven", "the digit one", "a seven", "one"])
        conditioner = TextConditioner(sequence_length=4, embedding_dim=8, num_layers=1,
                                      num_heads=2)
        conditioner.adapt(captions)
        model = LatentDiffusionModel(
            _vae(), _unet(context_dim=8), text_encoder=conditioner, prediction="epsilon",
            schedule="linear", seed=0,
        )
        model.compile(optimizer="adam", run_eagerly=True)
        ds = tf.data.Dataset.from_tensor_slices({"images": _images(), "text": captions}).batch(2)
        cached = model.encode_dataset(ds)
        batch = next(iter(cached))
        self.assertEqual(sorted(batch), ["latents", "text"])
        self.assertEqual(tuple(batch["latents"].shape), (2, 4, 4, 4))
        expected = model.encode_images(_images()[:2])
        self.assertAllClose(batch["latents"], expected, atol=1e-5)
        history = model.fit(cached, epochs=1, verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][0]))
        arrays = model.encode_dataset({"images": _images(), "text": captions}, batch_size=3)
        self.assertEqual(arrays["latents"].shape, (4, 4, 4, 4))
        out = model.generate(text=["a handwritten seven"], sampler="dpm_solver", num_steps=2,
                             seed=0, guidance_scale=3.0)
        self.assertEqual(out.shape, (1, 16, 16, 1))

        # Bad input: clear ValueErrors naming the argument and the value.
        with self.assertRaisesWithArgument(ValueError, "text", "empty prompt"):
            model.generate(text=[""], num_steps=2)
        with self.assertRaisesWithArgument(ValueError, "text", r"text=\[\]"):
            model.generate(text=[], num_steps=2)
        with self.assertRaisesWithArgument(ValueError, "text", "five six", "more than", "3"):
            model.generate(text=["one two three four five six"], num_steps=2)
        with self.assertRaisesWithArgument(ValueError, "latents", r"\(8, 8, 4\)", "VAE"):
            model.fit({"latents": np.zeros((2, 8, 8, 4), "float32"),
                       "text": captions[:2]}, batch_size=2, verbose=0)
        with self.assertRaisesWithArgument(ValueError, "latents", r"\(4, 4, 3\)"):
            model.decode(np.zeros((1, 4, 4, 3), "float32"))
        with self.assertRaisesWithArgument(ValueError, "images", r"\(12, 12, 1\)"):
            model.img2img(np.zeros((1, 12, 12, 1), "float32"), num_steps=2)

    def test_img2img_inpaint_and_condition_encodings(self):
        images = _images()
        mask = np.zeros((16, 16, 1), "float32")
        mask[:, 8:] = 1
        # SD-inpainting style: VAE-encoded masked image + downsampled mask.
        condition = keras_diffusion.pipelines.inpainting_condition(images, mask)
        model = LatentDiffusionModel(_vae(), _unet(condition_channels=5),
                                     condition_encoding="vae", seed=0)
        model.compile(optimizer="adam", run_eagerly=True)
        model.fit({"images": images, "condition": np.asarray(condition)}, batch_size=4,
                  epochs=1, verbose=0)
        self.assertEqual(model.condition_shape, (4, 4, 5))
        cond = np.asarray(condition[:2])
        # Every deterministic sampler is run on pixel models in test_image_to_image.
        for name in ("ddim", "heun"):
            edited = model.img2img(images[:2], strength=0.5, condition=cond, sampler=name,
                                   num_steps=3, seed=0)
            self.assertEqual(edited.shape, (2, 16, 16, 1))
        filled = model.inpaint(images[:2], mask, condition=cond, sampler="dpm_solver",
                               num_steps=3, seed=0)
        np.testing.assert_array_equal(filled[:, :, :8], images[:2, :, :8])
        self.assertAllClose(model.img2img(images[:2], strength=0.0, condition=cond), images[:2])
        latent_mask = np.asarray(model.latent_mask(mask[None]))
        self.assertEqual(latent_mask.shape, (1, 4, 4, 1))
        np.testing.assert_array_equal(latent_mask[0, :, :2, 0], 0)
        np.testing.assert_array_equal(latent_mask[0, :, 2:, 0], 1)
        with self.assertRaisesWithArgument(ValueError, "strength", "1.5"):
            model.img2img(images[:2], strength=1.5, condition=cond)
        with self.assertRaisesWithArgument(ValueError, "mask", r"\(8, 8\)"):
            model.inpaint(images[:2], np.ones((8, 8)), condition=cond)

        # Super-resolution: a low-resolution image resized to the latent grid.
        sr = LatentDiffusionModel(_vae(), _unet(condition_channels=1),
                                  condition_encoding="resize", seed=0)
        sr.compile(optimizer="adam", run_eagerly=True)
        low = images[:, ::2, ::2]
        sr.fit({"images": images, "condition": low}, batch_size=4, epochs=1, verbose=0)
        self.assertEqual(sr.condition_shape, (4, 4, 1))
        self.assertEqual(sr.generate(condition=low[:2], sampler="heun", num_steps=2,
                                     seed=0).shape, (2, 16, 16, 1))

    def test_constructor_validation(self):
        with self.assertRaisesWithArgument(ValueError, "vae", "None"):
            LatentDiffusionModel(None)
        with self.assertRaisesWithArgument(ValueError, "condition_encoding", "pixels"):
            LatentDiffusionModel(_vae(), condition_encoding="pixels")
        with self.assertRaisesWithArgument(ValueError, "images", r"\(18, 18, 1\)", "4"):
            LatentDiffusionModel(_vae(), pixel_shape=(18, 18, 1))
        with self.assertRaisesWithArgument(ValueError, "images", r"\(16, 16, 3\)"):
            LatentDiffusionModel(_vae(), pixel_shape=(16, 16, 3))


class LatentDiffusionExportTest(TestCase):
    def setUp(self):
        super().setUp()
        self.skip_unless_tensorflow()

    def test_export_decodes_in_graph_and_matches_generate(self):
        from keras_diffusion.export import export_saved_model

        model = LatentDiffusionModel(_vae(), _unet(num_classes=2), prediction="v", seed=0)
        model.compile(optimizer=keras.optimizers.Adam(1e-3))
        model.fit(_images(), np.array([0, 1, 0, 1]), batch_size=2, epochs=1, verbose=0)
        path = os.path.join(self.get_temp_dir(), "export")
        export_saved_model(model, path, sampler="ddim")
        served = tf.saved_model.load(path)
        out = served.signatures["generate"](
            seed=tf.constant(3, tf.int64), batch_size=tf.constant(2),
            labels=tf.constant([0, 1]), guidance_scale=tf.constant(2.0),
            num_steps=tf.constant(3),
        )
        self.assertEqual(tuple(out["images"].shape), (2, 16, 16, 1))
        expected = model.generate(labels=[0, 1], sampler="ddim", num_steps=3, seed=3,
                                  guidance_scale=2.0, verbose=0)
        self.assertAllClose(out["images_float"], expected, atol=1e-5, rtol=0)
