"""training/configs/dreambooth_mnist.py and model.kind='dreambooth'."""

import os

import numpy as np
import tensorflow as tf

import keras_diffusion
from keras_diffusion.models import UNet
from keras_diffusion.testing import TestCase
from training.configs import dreambooth_mnist
from training.lib import builders
from training.lib import config as config_lib
from training.lib.experiment import Experiment


def tiny_config(workdir, num_subject=5):
    """A 3-class 8x8 base saved as .keras, `num_subject` subject PNGs, 2 steps."""
    unet = UNet(input_channels=1, base_channels=8, channel_multipliers=(1, 2),
                num_res_blocks=1, attention_resolutions=(), num_groups=4, num_classes=3)
    base = keras_diffusion.DiffusionModel(unet, image_shape=(8, 8, 1), seed=0)
    base.build()
    folder = os.path.join(workdir, "subject")
    os.makedirs(folder)
    base_path = os.path.join(workdir, "base.keras")
    base.save(base_path)
    rng = np.random.default_rng(0)
    for i in range(num_subject):
        image = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
        tf.io.write_file(os.path.join(folder, f"{i}.png"), tf.io.encode_png(image))
    config = dreambooth_mnist.get_config()
    config.data.path = folder
    config.data.image_size = 8
    config.data.batch_size = 4
    config.model.num_classes = 4
    config.model.dreambooth.base_model = base_path
    config.model.dreambooth.init_from = 1
    config.model.dreambooth.class_label = 1
    config.model.dreambooth.num_class_images = 4
    config.train.num_steps = 2
    config.train.checkpoint_every = 2
    config.train.log_every = 1
    config.train.sample_every = 0
    config.train.jit_compile = "false"
    config.sample.num_steps = 2
    config.sample.guidance_scale = 1.0
    config.sample.batch_size = 4
    config.sample.num_images = 4
    return config, base


class DreamBoothConfigTest(TestCase):
    def test_config_is_valid(self):
        config = config_lib.validate(dreambooth_mnist.get_config())
        self.assertEqual(config.model.kind, "dreambooth")
        self.assertTrue(config.model.dreambooth.prior_preservation)

    def test_trains_two_steps_on_the_new_label_with_class_images(self):
        workdir = self.get_temp_dir()
        config, base = tiny_config(workdir)
        # The data: 5 subject images under label 3, as many class images of 1.
        arrays = next(iter(builders.source_fn(config)().batch(1000)))
        self.assertEqual(np.bincount(arrays["labels"].numpy(), minlength=4).tolist(),
                         [0, 5, 0, 5])
        experiment = Experiment.create(config, os.path.join(workdir, "run"), "train")
        experiment.train()
        model = experiment.model
        self.assertEqual((model.num_classes, model.null_label), (4, 4))
        self.assertEqual(int(model.optimizer.iterations.numpy()), 2)
        table = model.denoiser.label_embed.embeddings.numpy()
        base_table = base.denoiser.label_embed.embeddings.numpy()
        self.assertGreater(np.abs(table[3] - base_table[1]).max(), 0)  # the new label trained
        self.assertEqual(experiment.sample().shape, (4, 8, 8, 1))

    def test_bad_configs_are_clear_errors(self):
        workdir = self.get_temp_dir()
        config, _ = tiny_config(workdir, num_subject=1)
        path, config.model.dreambooth.base_model = config.model.dreambooth.base_model, ""
        with self.assertRaisesRegex(ValueError, "model.dreambooth.base_model"):
            builders.build_model(config)
        config.model.dreambooth.base_model = path
        config.model.dreambooth.class_label = -1
        config.model.dreambooth.init_from = -1
        with self.assertRaisesRegex(ValueError, "class_label"):
            builders.source_fn(config)
        config.model.dreambooth.init_from = 5
        with self.assertRaisesRegex(ValueError, "init_from.*received 5"):
            builders.build_model(config)
