"""Stable Diffusion bridge: keras-cv parts with random weights, tiny sizes."""

import gc
import gzip
import os
import zlib

import numpy as np
import pytest
from keras import ops

from keras_diffusion.testing import TestCase

# keras-cv's SD 1.x UNet: its Conv2D and Dense layers (LoRA target "all").
CONVS = 98  # 44 in the 22 ResBlocks + 14 residual projections, 32 proj1/proj2, 6 up/down, in, out
DENSES = 184  # 16 transformers x (8 attention + 2 feed-forward), 22 ResBlocks, 2 time


def _fingerprints(variables):
    """A CRC-32 of each variable's bytes, in order (no copy of a model's
    weights kept). It catches any change of one float; 5x faster than
    blake2b here (2.4 GB/s), which took 62 s of the 860M UNet's test."""
    return [
        (v.path, zlib.crc32(np.ascontiguousarray(ops.convert_to_numpy(v)).data))
        for v in variables
    ]


def _changed(before, after):
    """The paths whose digest differs between two `_fingerprints` of the same weights."""
    assert [p for p, _ in before] == [p for p, _ in after], "not the same weights"
    return [path for (path, a), (_, b) in zip(before, after) if a != b]


def _tiny_latent_model(denoiser, prompts):
    """A `LatentDiffusionModel` of the 64x64 SD UNet `denoiser` (8x8x4
    latents) with a tiny VAE (16x16x1 pixels -> those latents) and a tiny
    text encoder giving its (4, 768) context, adapted to `prompts`; built."""
    from keras_diffusion.models import VAE
    from keras_diffusion.models import LatentDiffusionModel
    from keras_diffusion.models import TextConditioner
    from keras_diffusion.schedules import ScaledLinearSchedule

    vae = VAE(input_channels=1, latent_channels=4, base_channels=8, channel_multipliers=(1, 1),
              num_res_blocks=1, num_groups=4, mid_attention=False, scaling_factor=2.0)
    encoder = TextConditioner(vocabulary_size=20, sequence_length=4, embedding_dim=768,
                              num_layers=1, num_heads=1, intermediate_dim=64)
    encoder.adapt(prompts)
    model = LatentDiffusionModel(vae, denoiser, text_encoder=encoder,
                                 schedule=ScaledLinearSchedule(), prediction="epsilon",
                                 pixel_shape=(16, 16, 1), seed=0)
    model.build(None)
    return model


def _lora_step(model, inputs, target_fn):
    """One SGD step on the trainable variables; returns the paths of the
    weights it changed (by digest: no copy of the 860M UNet's weights kept)."""
    import keras
    import tensorflow as tf

    before = _fingerprints(model.weights)
    optimizer = keras.optimizers.SGD(0.1)
    with tf.GradientTape() as tape:
        loss = ops.mean(ops.square(target_fn(model(inputs))))
    grads = tape.gradient(loss, model.trainable_variables)
    optimizer.apply(grads, model.trainable_variables)
    return set(_changed(before, _fingerprints(model.weights)))


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
        changed = _lora_step(model, inputs, lambda y: y - 1.0)
        self.assertTrue(changed)
        self.assertTrue(all("lora_kernel" in p for p in changed), changed)
        with self.assertRaisesWithArgument(ValueError, "rank", "0"):
            enable_lora(model, rank=0)
        # Names, not characters: a string other than "attention" / "all" is refused.
        for bad in ("al", "to_q", ()):
            with self.assertRaisesWithArgument(ValueError, "targets", repr(bad)):
                enable_lora(model, rank=2, targets=bad)
        # "all": every Dense and Conv2D, those with LoRA already left as they are.
        everything = enable_lora(model, rank=2, targets="all")
        kinds = (keras.layers.Dense, keras.layers.Conv2D)
        layers = [la for la in model._flatten_layers(recursive=True) if isinstance(la, kinds)]
        self.assertEqual(len(layers), 8 + 2 + 2)  # attention, GEGLU + FF Dense, proj1/proj2 convs
        self.assertEqual(len(everything), len(layers) - 8)
        self.assertTrue(all(la.lora_enabled for la in layers))
        self.assertEqual(set(map(id, model.trainable_weights)), set(map(id, lora_weights(model))))
        with self.assertRaisesWithArgument(ValueError, "already", "'all'"):
            enable_lora(model, rank=2, targets="all")

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
    def test_unet_adapter_lora_and_lcm_lora(self):
        # The 860M-parameter UNet with random weights, built three times (~40 s
        # and 3.4 GB each, at most two at once; 12.2 GB peak RSS on CPU measured
        # alone, 2.5-4.5 min):
        # the adapter (the denoiser contract, then an LCM-LoRA teacher), the
        # student's copy and a config restore. The student gets a tiny VAE
        # (16x16 pixels -> the UNet's 8x8x4 latents) and a tiny text encoder
        # giving the (4, 768) context. It trains lora_target="attention":
        # fitting "all" (every Dense and Conv2D) materializes each layer's full
        # kernel (Keras' LoRA), which took 13.8 GB peak as a tf.function (4
        # steps in 144 s), more eagerly; "all" is checked on the UNet's layers
        # at the end.
        import keras
        import tensorflow as tf

        from keras_diffusion.models import LatentConsistencyModel
        from keras_diffusion.pretrained.stable_diffusion import StableDiffusionDenoiser
        from keras_diffusion.pretrained.stable_diffusion import lora_weights

        # The denoiser contract (models.Denoiser). 64x64 pixels for SD's VAE:
        # the latents are 8x8x4.
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
        self.assertEqual(tuple(unet(inputs).shape), (1, 8, 8, 4))
        self.assertEqual(unet.schedule().num_train_timesteps, 1000)
        with self.assertRaisesWithArgument(ValueError, "x_t", "(1, 4, 4, 4)"):
            unet({**inputs, "x_t": np.zeros((1, 4, 4, 4), "float32")})
        with self.assertRaisesWithArgument(ValueError, "target", "'al'"):
            unet.enable_lora(4, "al")

        prompts = ["a red square", "a blue dot"]
        teacher = _tiny_latent_model(unet, prompts)
        # The encoder is shared with the student, which must not train it.
        teacher.text_encoder.trainable = False
        teacher_before = _fingerprints(teacher.weights)

        lcm = LatentConsistencyModel.from_teacher(
            teacher, guidance_embedding=False, lora_rank=4, lora_target="attention",
            guidance_range=4.0, seed=0,
        )
        net = lcm.denoiser.denoiser
        self.assertIsInstance(net, StableDiffusionDenoiser)
        self.assertIsNot(net, unet)
        self.assertIsNone(lcm.guidance_input)
        self.assertEqual((net.lora_rank, net.get_config()["lora_target"]), (4, "attention"))
        # 16 transformers x (self + cross attention) x (to_q, to_k, to_v, out_proj).
        self.assertEqual(len(lora_weights(net)), 2 * 16 * 2 * 4)
        # Only the LoRA factors train: not the copy's kernels, the VAE, the encoder.
        self.assertEqual(set(map(id, lcm.trainable_variables)), set(map(id, lora_weights(net))))

        student_before = _fingerprints(lcm.denoiser.weights)
        images = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 1)).astype("float32")
        data = {"images": images, "text": np.array(prompts)}
        lcm.compile(keras.optimizers.Adam(1e-3), run_eagerly=True)
        # One eager step on both prompts (9-13 s here, profiled).
        history = lcm.fit(tf.data.Dataset.from_tensor_slices(data).batch(2), verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][-1]))
        changed = _changed(student_before, _fingerprints(lcm.denoiser.weights))
        self.assertTrue(changed)
        self.assertTrue(all("lora_kernel" in p for p in changed), changed[:5])
        self.assertEqual(_changed(teacher_before, _fingerprints(teacher.weights)), [])

        out = ops.convert_to_numpy(lcm.generate(text=prompts[0], num_steps=2, seed=0))
        self.assertEqual(out.shape, (1, 16, 16, 1))
        self.assertTrue(np.isfinite(out).all())

        # The student's config restores its LoRA (what a .keras file loads into).
        config = net.get_config()
        lora_shapes = [tuple(v.shape) for v in lora_weights(net)]
        del lcm, net, teacher
        gc.collect()
        restored = StableDiffusionDenoiser.from_config(config)
        self.assertEqual([tuple(v.shape) for v in lora_weights(restored)], lora_shapes)
        self.assertEqual(set(map(id, restored.trainable_weights)),
                         set(map(id, lora_weights(restored))))
        with self.assertRaisesWithArgument(ValueError, "LoRA is already enabled"):
            restored.enable_lora(4)
        # One SGD step on the restored network moves only its LoRA factors.
        changed = _lora_step(restored, inputs, lambda y: y - inputs["x_t"])
        self.assertTrue(changed)
        self.assertTrue(all("lora_kernel" in p for p in changed), sorted(changed)[:5])
        del restored
        gc.collect()

        # "all" (from_teacher's default, LCM-LoRA's): every Dense and Conv2D.
        enabled = unet.enable_lora(4, "all")
        self.assertEqual(sum(isinstance(la, keras.layers.Conv2D) for la in enabled), CONVS)
        self.assertEqual(len(enabled), CONVS + DENSES)
        self.assertEqual(set(map(id, unet.trainable_weights)), set(map(id, lora_weights(unet))))
