"""ControlNet and ControlledUNet: the base model at initialization, fit, sampling."""

import os

import keras
import numpy as np
import pytest

import keras_diffusion
from keras_diffusion.models import ControlledUNet
from keras_diffusion.models import ControlNet
from keras_diffusion.models import UNet
from keras_diffusion.models.control_net import copy_layer_weights
from keras_diffusion.testing import TestCase


def _unet():
    return UNet(input_channels=1, base_channels=8, channel_multipliers=(1, 2), num_res_blocks=1,
                attention_resolutions=(4,), num_groups=4, num_classes=3)


class ControlNetTest(TestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(0)
        self.images = rng.uniform(-1, 1, size=(4, 8, 8, 1)).astype("float32")
        self.control = rng.uniform(-1, 1, size=(4, 8, 8, 1)).astype("float32")
        self.labels = np.array([0, 1, 2, 1])
        self.base = keras_diffusion.DiffusionModel(_unet(), image_shape=(8, 8, 1), seed=0)
        self.base.build()
        self.sample = dict(labels=self.labels, sampler="ddim", num_steps=2, seed=1,
                           guidance_scale=2.0, verbose=0)

    def _controlled(self, **kwargs):
        denoiser = ControlledUNet(self.base.denoiser, **kwargs)
        return keras_diffusion.DiffusionModel(denoiser, image_shape=(8, 8, 1), seed=0)

    def test_initial_output_is_the_base_and_fit_trains_only_the_control_net(self):
        model = self._controlled(control_channels=1)
        model.build()
        expected = self.base.generate(**self.sample)
        self.assertAllClose(model.generate(control=self.control, **self.sample), expected,
                            atol=0, rtol=0)
        base_weights = [keras.ops.convert_to_numpy(v) for v in self.base.denoiser.weights]
        net = model.denoiser.control_nets[0]
        net_weights = [keras.ops.convert_to_numpy(v) for v in net.trainable_weights]
        data = {"images": self.images, "control": self.control, "labels": self.labels}
        history = model.fit(data, batch_size=4, epochs=1, verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][0]))
        for v, before in zip(self.base.denoiser.weights, base_weights):
            self.assertAllClose(v, before, atol=0, rtol=0)
        changed = [not np.array_equal(keras.ops.convert_to_numpy(v), w)
                   for v, w in zip(net.trainable_weights, net_weights)]
        self.assertTrue(any(changed))
        # The control now matters; img2img takes it too.
        out = model.generate(control=self.control, **self.sample)
        self.assertGreater(np.abs(out - expected).max(), 0.0)
        edited = model.img2img(self.images, strength=0.5, control=self.control, labels=self.labels,
                               num_steps=2, seed=0)
        self.assertEqual(edited.shape, self.images.shape)
        # .keras round trip, loaded after a plain import.
        path = os.path.join(self.get_temp_dir(), "controlled.keras")
        model.save(path)
        restored = keras.saving.load_model(path)
        self.assertAllClose(restored.generate(control=self.control, use_ema=False, **self.sample),
                            model.generate(control=self.control, use_ema=False, **self.sample),
                            atol=1e-5)

    def test_two_control_nets_combine_and_start_at_the_base(self):
        unet = self.base.denoiser
        nets = [ControlNet.from_unet(unet, control_channels=1, name="edges"),
                ControlNet.from_unet(unet, control_channels=2, name="depth")]
        model = self._controlled(control_nets=nets, conditioning_scale=[1.0, 0.5])
        control = np.concatenate([self.control, self.control, -self.control], axis=-1)
        self.assertAllClose(model.generate(control=control, **self.sample),
                            self.base.generate(**self.sample), atol=0, rtol=0)
        inputs = {"x_t": self.images, "t": np.full((4,), 0.5, "float32"),
                  "labels": self.labels, "control": control}
        for v in nets[1].weights:
            if "zero_conv" in v.path:
                v.assign(np.full(v.shape, 0.1, "float32"))
        both = keras.ops.convert_to_numpy(model.denoiser(inputs))
        model.denoiser.conditioning_scale = [1.0, 0.0]
        self.assertAllClose(model.denoiser(inputs), self.base.denoiser(
            {k: v for k, v in inputs.items() if k != "control"}), atol=1e-6)
        self.assertGreater(np.abs(both - keras.ops.convert_to_numpy(
            model.denoiser(inputs))).max(), 1e-3)

    def test_bad_input(self):
        # Copying an encoder of other shapes names the layers and the shapes.
        a, b = keras.layers.Dense(3, name="a"), keras.layers.Dense(4, name="b")
        a.build((None, 2))
        b.build((None, 2))
        with self.assertRaisesWithArgument(ValueError, "a", "b", "(2, 3)", "(2, 4)"):
            copy_layer_weights([(a, b)])
        # A base whose skips take no residuals; a list that is not ControlNets.
        with self.assertRaisesWithArgument(ValueError, "unet", "ControlNet"):
            ControlledUNet(ControlNet.from_unet(self.base.denoiser))
        with self.assertRaisesWithArgument(ValueError, "unet", "MLPDenoiser"):
            ControlledUNet(keras_diffusion.models.MLPDenoiser(data_dim=2))
        with self.assertRaisesWithArgument(ValueError, "control_nets", "UNet"):
            ControlledUNet(self.base.denoiser, control_nets=[self.base.denoiser])
        with self.assertRaisesWithArgument(ValueError, "conditioning_scale", "-0.5"):
            ControlledUNet(self.base.denoiser, conditioning_scale=-0.5)
        with self.assertRaisesWithArgument(ValueError, "conditioning_scale", "2 numbers"):
            ControlledUNet(self.base.denoiser, control_nets=[
                ControlNet.from_unet(self.base.denoiser), ControlNet.from_unet(self.base.denoiser)
            ], conditioning_scale=[1.0])
        model = self._controlled(control_channels=1)
        for bad in (np.zeros((4, 8, 8, 3), "float32"), np.zeros((4, 16, 16, 1), "float32")):
            with self.assertRaisesWithArgument(ValueError, "control", "(4, 8, 8, 1)",
                                               str(bad.shape)):
                model.generate(control=bad, **self.sample)
            with self.assertRaisesWithArgument(ValueError, "control", str(bad.shape)):
                model.fit({"images": self.images, "control": bad, "labels": self.labels},
                          batch_size=4, epochs=1, verbose=0)
        with self.assertRaisesWithArgument(ValueError, "control", "no ControlNet"):
            self.base.generate(control=self.control, **self.sample)
        with self.assertRaisesWithArgument(ValueError, "control", "(N, 8, 8, 1)", "None"):
            model.generate(**self.sample)
        with self.assertRaisesWithArgument(ValueError, "control", "(2, 8, 8, 1)"):
            model.denoiser({"x_t": self.images[:2], "t": np.zeros(2, "float32")})

    @pytest.mark.slow
    def test_saved_model_takes_control(self):
        self.skip_unless_tensorflow()
        import tensorflow as tf

        model = self._controlled(control_channels=1)
        model.build()
        for v in model.denoiser.control_nets[0].weights:
            if "zero_conv" in v.path:  # A ControlNet that does something.
                v.assign(np.full(v.shape, 0.05, "float32"))
        path = os.path.join(self.get_temp_dir(), "saved")
        model.export(path, sampler="ddim")
        served = tf.saved_model.load(path).signatures["generate"]
        out = served(seed=tf.constant(1, tf.int64), batch_size=tf.constant(4),
                     guidance_scale=tf.constant(2.0), num_steps=tf.constant(2),
                     labels=tf.constant(self.labels, tf.int32),
                     control=tf.constant(self.control))
        expected = model.generate(control=self.control, labels=self.labels, sampler="ddim",
                                  num_steps=2, seed=1, guidance_scale=2.0, verbose=0)
        self.assertAllClose(out["images_float"], expected, atol=1e-5)
