"""DiT details: the learned-sigma output (DiT / improved DDPM) and patch
sizes 2, 4 and 8 on any image size they divide (any backend)."""

import numpy as np
import pytest
from keras import ops

from keras_diffusion.layers import DiTBlock
from keras_diffusion.models import DiT
from keras_diffusion.testing import TestCase

TINY = {"input_channels": 3, "patch_size": 2, "hidden_dim": 16, "depth": 1, "num_heads": 2}


def _inputs(height=8, width=8, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "x_t": ops.convert_to_tensor(rng.normal(size=(2, height, width, channels)).astype("float32")),
        "t": ops.convert_to_tensor(np.array([0.2, 0.7], "float32")),
    }


class DiTDetailsTest(TestCase):
    @pytest.mark.jax
    def test_learn_sigma(self):
        model = DiT(**dict(TINY, learn_sigma=True))
        inputs = _inputs()
        self.assertAllClose(model(inputs), np.zeros((2, 8, 8, 3)))
        rng = np.random.default_rng(1)
        model.set_weights([w + 0.1 * rng.normal(size=w.shape).astype(w.dtype)
                           for w in model.get_weights()])
        # The final layer predicts 2C channels; a call returns the first C
        # (what the losses, generate and the export use).
        self.assertEqual(model.final_layer.linear.kernel.shape[-1], 2 * 2 * 2 * 3)
        prediction, v = model(inputs, return_variance=True)
        out = model(inputs)
        self.assertEqual(tuple(out.shape), (2, 8, 8, 3))
        self.assertEqual(tuple(v.shape), (2, 8, 8, 3))
        self.assertAllClose(out, prediction)
        self.assertFalse(np.allclose(ops.convert_to_numpy(out), ops.convert_to_numpy(v)))
        restored = self.run_model_saving_test(model, inputs, atol=1e-5)
        self.assertTrue(restored.learn_sigma)
        self.assertAllClose(restored(inputs, return_variance=True)[1], v, atol=1e-5)
        with self.assertRaisesWithArgument(ValueError, "return_variance", "learn_sigma=False"):
            DiT(**TINY)(inputs, return_variance=True)

    def test_learn_sigma_matches_reference_parameter_count(self):
        # DiT-XL/2 of the reference implementation (learn_sigma, 8 output
        # channels) has 675,129,632 parameters, the fixed position embedding
        # of 32x32x4 latents included: counted from the built stem and block.
        block = DiTBlock(1152, 16)
        block.build([(None, None, 1152), (None, 1152)])
        stem = DiT.from_preset("dit_xl_2", depth=0, learn_sigma=True)
        stem.build({"x_t": (None, 32, 32, 4), "t": (None,)})
        self.assertEqual(stem.count_params() + 28 * block.count_params(), 675_129_632)

    @pytest.mark.jax
    def test_patch_sizes_on_any_divisible_size(self):
        for p, (h, w) in ((2, (6, 10)), (4, (12, 8)), (8, (16, 24)), (8, (8, 8))):
            model = DiT(**dict(TINY, patch_size=p))
            out = model(_inputs(h, w))
            self.assertEqual(tuple(out.shape), (2, h, w, 3), (p, h, w))
            self.assertEqual(model.patch_embed.grid, (h // p, w // p))
        with self.assertRaisesWithArgument(ValueError, "x_t", "not divisible", "patch_size=8"):
            DiT(**dict(TINY, patch_size=8))(_inputs(12, 16))
        with self.assertRaisesWithArgument(ValueError, "x_t", "not divisible", "patch_size=4"):
            DiT(**dict(TINY, patch_size=4))(_inputs(8, 10))
