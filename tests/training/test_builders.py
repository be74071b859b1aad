"""training/lib/builders.py: latent (DiT + VAE) and Stable Diffusion LoRA models."""

import json
import os

import numpy as np
import tensorflow as tf

import keras_diffusion
from keras_diffusion.testing import TestCase
from training.configs import latent_dit_flow
from training.configs import sd_lora
from training.lib import builders
from training.lib.experiment import Experiment


def write_pngs(folder, num=8, size=16):
    rng = np.random.default_rng(0)
    for cls in ("a", "b"):
        os.makedirs(os.path.join(folder, cls), exist_ok=True)
        for i in range(num // 2):
            image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            tf.io.write_file(os.path.join(folder, cls, f"{i}.png"), tf.io.encode_png(image))


def tiny_latent_config(folder):
    config = latent_dit_flow.get_config()
    config.data.path = folder
    config.data.image_size = 16
    config.data.batch_size = 4
    config.data.shuffle_buffer = 8
    config.data.labels = False
    config.model.vae = "new"
    config.model.vae_kwargs = {"latent_channels": 4, "base_channels": 8,
                               "channel_multipliers": (1, 2), "num_res_blocks": 1,
                               "num_groups": 4, "mid_attention": False}
    config.model.denoiser_kwargs = {"patch_size": 2, "hidden_dim": 16, "depth": 1,
                                    "num_heads": 2}
    config.optim.warmup_steps = 0
    config.train.num_steps = 2
    config.train.checkpoint_every = 2
    config.train.log_every = 1
    config.train.sample_every = 0
    config.train.jit_compile = "false"
    config.sample.num_images = 2
    config.sample.batch_size = 2
    config.sample.num_steps = 2
    config.sample.guidance_scale = 1.0
    config.eval.num_batches = 1
    config.eval.batch_size = 4
    config.eval.feature_extractor = "identity"
    config.eval.num_samples = 4
    config.eval.kid_num_subsets = 2
    config.eval.bpd_num_batches = 0
    return config


class LatentBuilderTest(TestCase):
    def test_latent_dit_trains_samples_and_evaluates(self):
        workdir = self.get_temp_dir()
        folder = os.path.join(workdir, "images")
        write_pngs(folder)
        config = tiny_latent_config(folder)
        experiment = Experiment.create(config, workdir, "train")
        experiment.train()
        model = experiment.model
        self.assertIsInstance(model, keras_diffusion.LatentDiffusionModel)
        self.assertIsInstance(model.denoiser, keras_diffusion.models.DiT)
        self.assertEqual(model.pixel_shape, (16, 16, 3))
        self.assertEqual(int(model.optimizer.iterations.numpy()), 2)
        images = experiment.sample()
        self.assertEqual(images.shape, (2, 16, 16, 3))
        metrics = experiment.evaluate()
        self.assertTrue(np.isfinite(metrics["fid"]))
        with open(os.path.join(workdir, "eval", "metrics.json")) as f:
            self.assertIn("kid", json.load(f))

    def test_latent_without_vae_is_a_clear_error(self):
        config = latent_dit_flow.get_config()
        with self.assertRaisesRegex(ValueError, "model.vae"):
            builders.build_model(config)


class SDLoraBuilderTest(TestCase):
    # Building SD's 860M-parameter UNet takes minutes: these check the
    # config's wiring up to that point.
    def test_checks_fail_before_building(self):
        config = sd_lora.get_config()
        config.data.channels = 1
        with self.assertRaisesRegex(ValueError, "RGB images"):
            builders.build_model(config)
        config = sd_lora.get_config()
        config.model.prediction = "v"
        with self.assertRaisesRegex(ValueError, "scaled_linear"):
            builders.build_model(config)
        config = sd_lora.get_config()
        config.data.captions = False
        with self.assertRaisesRegex(ValueError, "captions"):
            builders.build_model(config)

    def test_config_resolves(self):
        from training.lib import config as config_lib

        config = sd_lora.get_config()
        config.data.path = self.get_temp_dir()
        config_lib.validate(config)
        self.assertEqual(config.model.kind, "sd_lora")
        self.assertEqual(config.train.jit_compile, "false")


class ConfigDefaultsTest(TestCase):
    def test_workdir_config_from_before_new_keys(self):
        from training.configs import toy2d
        from training.lib import config as config_lib

        workdir = self.get_temp_dir()
        config = toy2d.get_config()
        config_lib.write(config, workdir)
        path = os.path.join(workdir, "config.json")
        with open(path) as f:
            saved = json.load(f)
        del saved["eval"]["feature_extractor"], saved["model"]["vae"]
        with open(path, "w") as f:
            json.dump(saved, f)
        # Read back with the defaults of the keys added since; same config.
        resolved, _ = config_lib.resolve(None, workdir)
        self.assertEqual(resolved.eval.feature_extractor, "inception")
        self.assertEqual(resolved.model.denoiser_kwargs.to_dict(),
                         {"hidden_dim": 128, "num_layers": 3})
        config_lib.resolve(toy2d.get_config(), workdir)  # No "different config" error.
