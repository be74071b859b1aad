"""MMDiTBlock: two streams, one joint attention, adaLN-Zero (any backend)."""

import numpy as np
import pytest
from keras import ops

from keras_diffusion.layers import MMDiTBlock
from keras_diffusion.testing import TestCase


def _normal(*shape, seed=0):
    return ops.convert_to_tensor(
        np.random.default_rng(seed).normal(size=shape).astype("float32")
    )


def _randomize(layer, seed=0):
    rng = np.random.default_rng(seed)
    layer.set_weights(
        [w + 0.2 * rng.normal(size=w.shape).astype(w.dtype) for w in layer.get_weights()]
    )


@pytest.mark.jax
class MMDiTBlockTest(TestCase):
    def test_shapes_identity_and_config(self):
        block = MMDiTBlock(16, 2)
        self.run_serialization_test(block)
        x, ctx, c = _normal(2, 9, 16, seed=1), _normal(2, 4, 16, seed=2), _normal(2, 16, seed=3)
        out_x, out_ctx = block([x, ctx, c])
        self.assertEqual(tuple(out_x.shape), (2, 9, 16))
        self.assertEqual(tuple(out_ctx.shape), (2, 4, 16))
        # adaLN-Zero: the gates start at zero, so a fresh block is the identity.
        self.assertAllClose(out_x, x)
        self.assertAllClose(out_ctx, ctx)

    def test_joint_attention_mixes_both_ways(self):
        block = MMDiTBlock(16, 2)
        x, ctx, c = _normal(2, 9, 16, seed=1), _normal(2, 4, 16, seed=2), _normal(2, 16, seed=3)
        block([x, ctx, c])
        _randomize(block)
        base_x, base_ctx = (ops.convert_to_numpy(o) for o in block([x, ctx, c]))
        # The text changes the image tokens and the image the text tokens
        # (new random tokens: a constant shift would vanish in the LayerNorm).
        other_x, _ = block([x, _normal(2, 4, 16, seed=4), c])
        _, other_ctx = block([_normal(2, 9, 16, seed=5), ctx, c])
        self.assertFalse(np.allclose(base_x, ops.convert_to_numpy(other_x), atol=1e-4))
        self.assertFalse(np.allclose(base_ctx, ops.convert_to_numpy(other_ctx), atol=1e-4))
        # Separate weights: the same tokens in the two streams come out differently.
        same_x, same_ctx = block([x[:, :4], x[:, :4], c])
        self.assertFalse(np.allclose(ops.convert_to_numpy(same_x), ops.convert_to_numpy(same_ctx)))
        # Attention over a joint sequence: the image output depends on the
        # number of text tokens it attends to (a duplicated token reweights).
        doubled, _ = block([x, ops.concatenate([ctx, ctx[:, :1]], axis=1), c])
        self.assertFalse(np.allclose(base_x, ops.convert_to_numpy(doubled), atol=1e-4))

    def test_text_pre_only(self):
        block = MMDiTBlock(16, 2, text_output=False)
        x, ctx, c = _normal(2, 9, 16, seed=1), _normal(2, 4, 16, seed=2), _normal(2, 16, seed=3)
        block([x, ctx, c])
        _randomize(block)
        out_x, out_ctx = block([x, ctx, c])
        self.assertAllClose(out_ctx, ctx)
        self.assertFalse(hasattr(block, "text_proj") or hasattr(block, "text_mlp_1"))
        full = MMDiTBlock(16, 2)
        full.build([(None, None, 16), (None, None, 16), (None, 16)])
        # The pre-only text stream drops its proj, norm_2, MLP and 4 of 6 modulations.
        d, hidden = 16, 64
        dropped = (d * d + d) + (d * hidden + hidden) + (hidden * d + d) + 4 * (d * d + d)
        self.assertEqual(full.count_params() - block.count_params(), dropped)
        with self.assertRaisesWithArgument(ValueError, "num_heads", "3", "hidden_dim", "16"):
            MMDiTBlock(16, 3)
