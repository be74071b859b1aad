"""MaskedDiffusionSampler: fills masks, keeps given tokens, seeds, caching, greedy/top-k."""

import numpy as np
import pytest
from keras import ops

from keras_diffusion.samplers import MaskedDiffusionSampler
from keras_diffusion.schedules import MaskingSchedule
from keras_diffusion.testing import TestCase

MASK = 5
LOGITS = np.log(np.array([0.05, 0.1, 0.15, 0.3, 0.4, 1.0], "float32"))


def network(z_t, t):
    return ops.broadcast_to(ops.convert_to_tensor(LOGITS), tuple(z_t.shape) + (6,))


def run(sampler, tokens, num_steps=4, seed=0):
    return sampler.sample(network, np.array(tokens, "int32"), schedule=MaskingSchedule(),
                          mask_id=MASK, num_steps=num_steps, seed=seed, vocabulary_size=6,
                          return_num_calls=True)


@pytest.mark.jax
class MaskedDiffusionSamplerTest(TestCase):
    def test_fills_masks_keeps_known_and_is_seeded(self):
        tokens = [[2, MASK, MASK, 0, MASK, MASK]] * 3
        out, _ = run(MaskedDiffusionSampler(), tokens)
        out = ops.convert_to_numpy(out)
        self.assertFalse((out == MASK).any())
        np.testing.assert_array_equal(out[:, [0, 3]], [[2, 0]] * 3)
        again, _ = run(MaskedDiffusionSampler(), tokens)
        np.testing.assert_array_equal(out, ops.convert_to_numpy(again))
        other, _ = run(MaskedDiffusionSampler(), tokens, seed=1)
        self.assertFalse(np.array_equal(out, ops.convert_to_numpy(other)))

    def test_caching_skips_calls_and_changes_nothing(self):
        tokens = [[MASK] * 3] * 2
        cached, calls = run(MaskedDiffusionSampler(), tokens, num_steps=16)
        plain, plain_calls = run(MaskedDiffusionSampler(cache=False), tokens, num_steps=16)
        np.testing.assert_array_equal(ops.convert_to_numpy(cached), ops.convert_to_numpy(plain))
        self.assertEqual(int(plain_calls), 16)
        self.assertLessEqual(int(calls), 7)  # At most one call per changed step (6 tokens).
        self.assertLess(int(calls), 16)

    def test_greedy_top_k_and_distribution(self):
        tokens = [[MASK] * 8] * 4
        greedy, _ = run(MaskedDiffusionSampler(temperature=0.0), tokens)
        self.assertTrue((ops.convert_to_numpy(greedy) == 4).all())
        top1, _ = run(MaskedDiffusionSampler(top_k=1), tokens)
        self.assertTrue((ops.convert_to_numpy(top1) == 4).all())
        top2, _ = run(MaskedDiffusionSampler(top_k=2), [[MASK] * 64] * 8)
        self.assertEqual(set(np.unique(ops.convert_to_numpy(top2))), {3, 4})
        many, _ = run(MaskedDiffusionSampler(), [[MASK] * 500] * 4, num_steps=8)
        freq = np.bincount(ops.convert_to_numpy(many).ravel(), minlength=6)[:5] / 2000
        self.assertAllClose(freq, [0.05, 0.1, 0.15, 0.3, 0.4], atol=0.03)

    def test_bad_options(self):
        with self.assertRaisesWithArgument(ValueError, "temperature", "-1"):
            MaskedDiffusionSampler(temperature=-1.0)
        with self.assertRaisesWithArgument(ValueError, "top_k", "0"):
            MaskedDiffusionSampler(top_k=0)
