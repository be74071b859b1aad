"""The denoisers' building blocks (any backend)."""

import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_diffusion import layers
from keras_diffusion.layers.timestep_embedding import sinusoidal_embedding
from keras_diffusion.testing import TestCase


def _normal(*shape, seed=0):
    # (seed 0 is also run_layer_test's target: a fresh adaLN-Zero block, the
    # identity, would then have zero loss.)
    return ops.convert_to_tensor(
        np.random.default_rng(seed).normal(size=shape).astype("float32")
    )


@pytest.mark.jax
class LayersTest(TestCase):
    def test_timestep_embedding(self):
        self.run_layer_test(
            layers.TimestepEmbedding,
            {"output_dim": 8, "frequency_dim": 6},
            ops.convert_to_tensor(np.array([0.1, 0.9], "float32")),
            expected_output_shape=(2, 8),
            run_saving=False,
        )

    def test_sinusoids_scale_t_by_1000(self):
        # t = (k + 1) / 1000 gives the sinusoids of DDPM's step k + 1.
        k = np.array([0, 499, 999])
        emb = ops.convert_to_numpy(sinusoidal_embedding((k + 1) / 1000.0, 8))
        freqs = np.exp(-math.log(10000.0) * np.arange(4) / 4.0)
        args = (k + 1)[:, None] * freqs[None]
        expected = np.concatenate([np.cos(args), np.sin(args)], -1)
        self.assertAllClose(emb, expected, atol=2e-3, rtol=0)

    def test_timestep_embedding_keeps_t_float32_under_mixed_precision(self):
        keras.config.set_dtype_policy("mixed_bfloat16")
        layer = layers.TimestepEmbedding(8)
        a = layer(ops.convert_to_tensor(np.array([0.5], "float32")))
        b = layer(ops.convert_to_tensor(np.array([0.501], "float32")))
        # bfloat16 t would round 0.5 and 0.501 to the same value.
        self.assertFalse(np.allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b)))

    def test_resnet_block(self):
        for conditioning in ("scale_shift", "additive"):
            self.run_layer_test(
                layers.ResnetBlock,
                {"output_channels": 8, "num_groups": 4, "dropout": 0.1,
                 "time_conditioning": conditioning},
                (_normal(2, 4, 4, 4), _normal(2, 6)),
                expected_output_shape=(2, 4, 4, 8),
            )

    def test_resnet_block_bad_conditioning(self):
        with self.assertRaisesWithArgument(ValueError, "time_conditioning", "film"):
            layers.ResnetBlock(8, time_conditioning="film")

    def test_attention_block(self):
        self.run_layer_test(
            layers.AttentionBlock,
            {"num_heads": 2, "num_groups": 4},
            _normal(2, 4, 4, 8),
            expected_output_shape=(2, 4, 4, 8),
        )

    def test_attention_block_cross_attention(self):
        self.run_layer_test(
            layers.AttentionBlock,
            {"head_channels": 4, "num_groups": 4, "context_dim": 6},
            (_normal(2, 4, 4, 8), _normal(2, 3, 6)),
            expected_output_shape=(2, 4, 4, 8),
        )

    def test_attention_matches_reference(self):
        layer = layers.AttentionBlock(num_heads=2, num_groups=4)
        x = _normal(1, 2, 2, 8)
        out = ops.convert_to_numpy(layer(x))
        h = ops.convert_to_numpy(layer.norm(x)).reshape(1, 4, 8)
        qkv = h @ ops.convert_to_numpy(layer.qkv.kernel) + ops.convert_to_numpy(layer.qkv.bias)
        q, k, v = np.split(qkv, 3, -1)
        heads = []
        for i in range(2):
            s = slice(4 * i, 4 * i + 4)
            w = q[..., s] @ k[..., s].transpose(0, 2, 1) / 2.0
            w = np.exp(w - w.max(-1, keepdims=True))
            heads.append((w / w.sum(-1, keepdims=True)) @ v[..., s])
        a = np.concatenate(heads, -1)
        expected = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
        expected = expected.reshape(1, 4, 8) + a @ ops.convert_to_numpy(layer.proj.kernel) + ops.convert_to_numpy(layer.proj.bias)
        self.assertAllClose(out.reshape(1, 4, 8), expected, atol=1e-5, rtol=1e-5)

    def test_attention_heads_must_divide(self):
        with self.assertRaisesWithArgument(ValueError, "num_heads", "3"):
            layers.AttentionBlock(num_heads=3, num_groups=4)(_normal(1, 2, 2, 8))

    def test_downsample_upsample(self):
        self.run_layer_test(
            layers.Downsample, {"output_channels": 6}, _normal(2, 4, 4, 3),
            expected_output_shape=(2, 2, 2, 6),
        )
        self.run_layer_test(
            layers.Downsample, {"use_conv": False}, _normal(2, 4, 4, 3),
            expected_output_shape=(2, 2, 2, 3), run_training=False,
        )
        self.run_layer_test(
            layers.Upsample, {"output_channels": 6}, _normal(2, 2, 2, 3),
            expected_output_shape=(2, 4, 4, 6),
        )
        up = layers.Upsample(use_conv=False)(ops.reshape(ops.arange(4.0), (1, 2, 2, 1)))
        self.assertAllClose(
            ops.convert_to_numpy(up)[0, :, :, 0],
            [[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 3, 3], [2, 2, 3, 3]],
        )

    def test_patch_embedding(self):
        layer = self.run_layer_test(
            layers.PatchEmbedding, {"hidden_dim": 8, "patch_size": 2},
            _normal(2, 4, 6, 3), expected_output_shape=(2, 6, 8),
        )
        self.assertEqual(len(layer.trainable_weights), 2)  # pos. embedding fixed
        with self.assertRaisesWithArgument(ValueError, "patch_size", "2"):
            layers.PatchEmbedding(8, 2)(_normal(1, 5, 4, 3))

    def test_dit_block(self):
        block = self.run_layer_test(
            layers.DiTBlock, {"hidden_dim": 8, "num_heads": 2},
            (_normal(2, 5, 8, seed=1), _normal(2, 8)), expected_output_shape=(2, 5, 8),
        )
        # adaLN-Zero: a fresh block is the identity.
        x = _normal(2, 5, 8, seed=3)
        fresh = layers.DiTBlock(8, 2)
        self.assertAllClose(fresh([x, _normal(2, 8)]), x)
        del block

    def test_dit_block_cross_attention(self):
        self.run_layer_test(
            layers.DiTBlock, {"hidden_dim": 8, "num_heads": 2, "context_dim": 6},
            (_normal(2, 5, 8, seed=1), _normal(2, 8), _normal(2, 3, 6)),
            expected_output_shape=(2, 5, 8),
        )

    def test_dit_final_layer(self):
        self.run_layer_test(
            layers.DiTFinalLayer, {"patch_size": 2, "output_channels": 3},
            (_normal(2, 5, 8), _normal(2, 8)), expected_output_shape=(2, 5, 12),
        )
