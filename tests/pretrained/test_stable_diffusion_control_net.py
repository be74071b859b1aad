"""A ControlNet on the Stable Diffusion bridge's UNet (random weights, tiny sizes)."""

import numpy as np
import pytest
from keras import ops

from keras_diffusion.testing import TestCase
from tests.pretrained.test_stable_diffusion import _changed
from tests.pretrained.test_stable_diffusion import _fingerprints
from tests.pretrained.test_stable_diffusion import _tiny_latent_model


class StableDiffusionControlNetTest(TestCase):
    def setUp(self):
        super().setUp()
        self.skip_unless_tensorflow()

    @pytest.mark.slow
    def test_control_net_starts_as_the_base_and_trains_alone(self):
        # keras-cv's 860M UNet (random weights, 64x64 pixels: 8x8x4 latents)
        # and a ControlNet copy of its encoder (~360M); a tiny VAE (16x16
        # pixels -> the 8x8 latents, so hint_downsampling=2) and text encoder.
        import keras
        import tensorflow as tf

        from keras_diffusion.models import ControlledUNet
        from keras_diffusion.pretrained.stable_diffusion import StableDiffusionDenoiser
        from keras_diffusion.pretrained.stable_diffusion_control_net import (
            StableDiffusionControlNet,
        )
        from keras_diffusion.pretrained.stable_diffusion_unet import run_encoder
        from keras_diffusion.pretrained.stable_diffusion_unet import sd_timestep_embedding

        unet = StableDiffusionDenoiser(64, 64, max_text_length=4)
        rng = np.random.default_rng(0)
        inputs = {
            "x_t": rng.normal(size=(2, 8, 8, 4)).astype("float32"),
            "t": np.array([0.3, 0.8], "float32"),
            "context": rng.normal(size=(2, 4, 768)).astype("float32"),
        }
        base = ops.convert_to_numpy(unet(inputs))

        # The layer-by-layer pass (which takes residuals) is keras-cv's
        # Functional model's computation.
        _, skips, h = run_encoder(unet.parts, inputs["x_t"],
                                  sd_timestep_embedding(inputs["t"]), inputs["context"])
        self.assertEqual([tuple(s.shape[1:3]) for s in skips],
                         [(8, 8)] * 3 + [(4, 4)] * 3 + [(2, 2)] * 3 + [(1, 1)] * 3)
        zeros = [ops.zeros_like(s) for s in skips] + [ops.zeros_like(h)]
        self.assertAllClose(unet(inputs, residuals=zeros), base, atol=1e-5, rtol=1e-5)
        with self.assertRaisesWithArgument(ValueError, "residuals", "13", "12"):
            unet(inputs, residuals=zeros[:-1])

        model = ControlledUNet(unet, control_channels=1, hint_downsampling=2)
        net = model.control_nets[0]
        self.assertIsInstance(net, StableDiffusionControlNet)
        control = rng.uniform(-1, 1, (2, 16, 16, 1)).astype("float32")
        # At initialization the controlled UNet is the base: exactly.
        np.testing.assert_array_equal(
            ops.convert_to_numpy(model({**inputs, "control": control})), base)
        # The encoder copy holds the base's weights; only the ControlNet trains.
        copied = [w for layer in net.res_blocks[:2] for w in layer.weights]
        originals = [w for layer in unet.parts["res"][:2] for w in layer.weights]
        self.assertEqual([d for _, d in _fingerprints(copied)],
                         [d for _, d in _fingerprints(originals)])
        self.assertEqual(set(map(id, model.trainable_variables)),
                         set(map(id, net.trainable_variables)))
        self.assertFalse(unet.trainable_variables)

        # Bad input: the control's size or channels, a negative scale.
        with self.assertRaisesWithArgument(ValueError, "control", "(B, 16, 16, 1)"):
            model({**inputs, "control": control[:, :8, :8]})
        with self.assertRaisesWithArgument(ValueError, "control", "(B, 16, 16, 1)"):
            model({**inputs, "control": np.concatenate([control, control], -1)})
        with self.assertRaisesWithArgument(ValueError, "conditioning_scale", "-1"):
            ControlledUNet(unet, [net], conditioning_scale=-1.0)

        # fit on {"images", "control", "text"} with a frozen base.
        prompts = ["a red square", "a blue dot"]
        diffusion = _tiny_latent_model(model, prompts)
        diffusion.text_encoder.trainable = False
        diffusion.vae.trainable = False
        self.assertEqual(set(map(id, diffusion.trainable_variables)),
                         set(map(id, net.trainable_variables)))
        base_before = _fingerprints(unet.weights)
        net_before = _fingerprints(net.weights)
        images = rng.uniform(-1, 1, (2, 16, 16, 1)).astype("float32")
        data = {"images": images, "control": control, "text": np.array(prompts)}
        diffusion.compile(keras.optimizers.Adam(1e-3), run_eagerly=True)
        history = diffusion.fit(tf.data.Dataset.from_tensor_slices(data).batch(2), verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][-1]))
        self.assertEqual(_changed(base_before, _fingerprints(unet.weights)), [])
        # One step moves the zero convolutions (nothing upstream of them
        # gets a gradient while they are 0) and then the control steers.
        changed = _changed(net_before, _fingerprints(net.weights))
        self.assertTrue(changed)
        self.assertTrue(all("zero_conv" in p for p in changed), changed[:5])
        steered = ops.convert_to_numpy(model({**inputs, "control": control}))
        self.assertGreater(np.max(np.abs(steered - base)), 0.0)

        out = ops.convert_to_numpy(diffusion.generate(text=prompts[0], control=control[:1],
                                                      num_steps=2, seed=0))
        self.assertEqual(out.shape, (1, 16, 16, 1))
        self.assertTrue(np.isfinite(out).all())
        with self.assertRaisesWithArgument(ValueError, "control"):
            diffusion.generate(text=prompts[0], num_steps=2, seed=0)

        # The ControlNet's config rebuilds it (what a .keras file loads into).
        restored = StableDiffusionControlNet.from_config(net.get_config())
        self.assertEqual((restored.control_channels, restored.hint_downsampling,
                          restored.max_text_length), (1, 2, 4))
