"""Stable Diffusion bridge: keras-cv parts with random weights, tiny sizes."""

import gzip
import os

import numpy as np
import pytest
from keras import ops

from keras_diffusion.testing import TestCase


def _lora_step(model, inputs, target_fn):
    """One SGD step on the trainable variables; returns (before, after) of all weights."""
    import keras
    import tensorflow as tf

    before = {w.path: ops.convert_to_numpy(w).copy() for w in model.weights}
    optimizer = keras.optimizers.SGD(0.1)
    with tf.GradientTape() as tape:
        loss = ops.mean(ops.square(target_fn(model(inputs))))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply(grads, model.trainable_variables)
    after = {w.path: ops.convert_to_numpy(w) for w in model.weights}
    return before, after


class BridgeTest(TestCase):
    def setUp(self):
        super().setUp()
        self.skip_unless_tensorflow()

    def test_timestep_embedding_matches_keras_cv(self):
        from keras_cv.src.models.stable_diffusion.stable_diffusion import StableDiffusionBase

        from keras_diffusion.pretrained.stable_diffusion import sd_timestep_embedding
        from keras_diffusion.schedules import ScaledLinearSchedule

        steps = [0, 1, 500, 999]
        t = np.array([(k + 1) / 1000 for k in steps], "float32")
        ours = sd_timestep_embedding(t)
        for i, k in enumerate(steps):
            expected = StableDiffusionBase._get_timestep_embedding(None, k, 1)
            self.assertAllClose(ours[i : i + 1], expected, atol=2e-3)
        # ScaledLinearSchedule's grid gives keras-cv's alphas_cumprod.
        from keras_cv.src.models.stable_diffusion.constants import _ALPHAS_CUMPROD

        schedule = ScaledLinearSchedule()
        alpha = ops.convert_to_numpy(schedule.alpha(t))
        self.assertAllClose(alpha**2, np.array(_ALPHAS_CUMPROD)[steps], rtol=1e-4)

    def test_lora_on_attention_changes_only_lora_weights(self):
        import keras
        from keras_cv.src.models.stable_diffusion.diffusion_model import SpatialTransformer

        from keras_diffusion.pretrained.stable_diffusion import enable_lora, lora_weights

        x_in = keras.Input((4, 4, 32))
        c_in = keras.Input((3, 16))
        model = keras.Model([x_in, c_in], SpatialTransformer(2, 16)([x_in, c_in]))
        enabled = enable_lora(model, rank=2, targets=("to_q", "to_k", "to_v", "out_proj"))
        self.assertEqual(len(enabled), 8)  # self- and cross-attention, 4 each
        self.assertEqual(len(model.trainable_weights), 16)
        self.assertEqual(set(map(id, model.trainable_weights)), set(map(id, lora_weights(model))))
        rng = np.random.default_rng(0)
        inputs = [rng.normal(size=(2, 4, 4, 32)).astype("float32"),
                  rng.normal(size=(2, 3, 16)).astype("float32")]
        # lora_kernel_b starts at zero: the output is unchanged by enabling LoRA.
        before, after = _lora_step(model, inputs, lambda y: y - 1.0)
        changed = {p for p in before if not np.allclose(before[p], after[p])}
        self.assertTrue(changed)
        self.assertTrue(all("lora_kernel" in p for p in changed), changed)
        with self.assertRaisesWithArgument(ValueError, "rank", "0"):
            enable_lora(model, rank=0)

    def test_vae_adapter(self):
        from keras_cv.models.stable_diffusion import ImageEncoder

        from keras_diffusion.pretrained.stable_diffusion import StableDiffusionVAE

        vae = StableDiffusionVAE(64, 64, download_weights=False)
        images = np.random.default_rng(0).uniform(-1, 1, (1, 64, 64, 3)).astype("float32")
        mean, logvar = vae.encode_moments(images)
        self.assertEqual(tuple(mean.shape), (1, 8, 8, 4))
        self.assertEqual(vae.scaling_factor, 0.18215)
        # Same as keras-cv's encoder output (mean * 0.18215).
        self.assertAllClose(vae.encode_latents(images), vae.image_encoder(images), atol=1e-5)
        self.assertIsInstance(vae.image_encoder, ImageEncoder)
        self.assertEqual(tuple(vae.encode(images).event_shape), (8, 8, 4))
        decoded = vae.decode_latents(vae.encode_latents(images))
        self.assertEqual(tuple(decoded.shape), (1, 64, 64, 3))
        self.assertAllClose(vae.decode(mean), decoded, atol=1e-4)
        with self.assertRaisesWithArgument(ValueError, "latents", "(8, 8, 4)", "(1, 4, 4, 4)"):
            vae.decode_latents(np.zeros((1, 4, 4, 4), "float32"))

    @pytest.mark.slow
    def test_text_encoder_adapter(self):
        from keras_diffusion.pretrained.stable_diffusion import (
            StableDiffusionTextEncoder,
            lora_weights,
        )

        # A tiny BPE merges file in CLIP's format (a header line, then merges).
        path = os.path.join(self.get_temp_dir(), "bpe.txt.gz")
        with gzip.open(path, "wt") as f:
            f.write("#version: 0.2\nh e\nl l\nhe ll\no</w> o\n")
        text = StableDiffusionTextEncoder(max_length=8, bpe_path=path, download_weights=False)
        ids = text.tokenize(["hello", ""])
        self.assertEqual(ids.shape, (2, 8))
        end = text.tokenizer.end_of_text
        self.assertEqual(ids[1, 0], text.tokenizer.start_of_text)
        self.assertTrue((ids[1, 1:] == end).all())
        out = text.encode(["hello", ""])
        self.assertEqual(tuple(out["context"].shape), (2, 8, 768))
        self.assertEqual(tuple(out["pooled"].shape), (2, 768))
        self.assertEqual(tuple(text(["hello"]).shape), (1, 8, 768))
        with self.assertRaisesWithArgument(ValueError, "tokens", "max_length=8"):
            text.tokenize(["a b c d e f g h i j"])
        text.enable_lora(2)
        self.assertEqual(len(text.trainable_weights), 12 * 4 * 2)
        self.assertEqual(len(lora_weights(text)), 12 * 4 * 2)

    @pytest.mark.slow
    def test_unet_adapter_and_lora_step(self):
        # Builds the full 860M-parameter UNet (~100 s, ~6 GB RAM on CPU).
        from keras_diffusion.pretrained.stable_diffusion import StableDiffusionDenoiser

        # The denoiser contract (models.Denoiser) on the same network.
        unet = self.run_denoiser_test(
            StableDiffusionDenoiser,
            dict(image_height=64, image_width=64, max_text_length=4, download_weights=False),
            x_shape=(1, 8, 8, 4), context_shape=(1, 4, 768), lora_target=None,
            run_mixed_precision=False, run_saving=False, run_serialization=False,
        )
        rng = np.random.default_rng(0)
        inputs = {
            "x_t": rng.normal(size=(1, 8, 8, 4)).astype("float32"),
            "t": np.array([0.5], "float32"),
            "context": rng.normal(size=(1, 4, 768)).astype("float32"),
        }
        eps = unet(inputs)
        self.assertEqual(tuple(eps.shape), (1, 8, 8, 4))
        self.assertEqual(unet.schedule().num_train_timesteps, 1000)
        with self.assertRaisesWithArgument(ValueError, "x_t", "(1, 4, 4, 4)"):
            unet({**inputs, "x_t": np.zeros((1, 4, 4, 4), "float32")})
        enabled = unet.enable_lora(4)
        self.assertEqual(len(enabled), 16 * 2 * 4)  # 16 transformers, 2 attentions, 4 projections
        before, after = _lora_step(unet, inputs, lambda y: y - inputs["x_t"])
        changed = {p for p in before if not np.allclose(before[p], after[p])}
        self.assertTrue(changed)
        self.assertTrue(all("lora_kernel" in p for p in changed), sorted(changed)[:5])
