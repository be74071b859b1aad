"""MDLM's SUBS parameterization and continuous-time NELBO (objectives.py)."""

import math

import numpy as np
import pytest
from keras import ops

from keras_diffusion import objectives
from keras_diffusion.schedules import MaskingSchedule
from keras_diffusion.testing import TestCase

MASK = 4  # Vocabulary: tokens 0..3 and the mask.


@pytest.mark.jax
class MaskedObjectivesTest(TestCase):
    def test_subs(self):
        logits = np.random.default_rng(0).normal(size=(1, 3, 5)).astype("float32")
        z_t = np.array([[2, MASK, 0]], "int32")
        log_p = ops.convert_to_numpy(objectives.subs_log_probs(logits, z_t, MASK))
        probs = np.exp(log_p)
        self.assertAllClose(probs.sum(-1), np.ones((1, 3)), atol=1e-6)
        self.assertEqual(probs[0, 1, MASK], 0.0)  # A masked position never predicts the mask.
        self.assertAllClose(probs[0, 0], np.eye(5)[2])  # Unmasked tokens are copied.
        self.assertAllClose(probs[0, 2], np.eye(5)[0])
        expected = np.exp(logits[0, 1, :4]) / np.exp(logits[0, 1, :4]).sum()
        self.assertAllClose(probs[0, 1, :4], expected, atol=1e-6)

    def test_golden_loss(self):
        logits = np.zeros((1, 2, 5), "float32")
        logits[0, 0, 1] = 2.0
        tokens = np.array([[1, 2]], "int32")
        t = np.array([0.5], "float32")
        uniforms = np.array([[0.1, 0.9]], "float32")  # Masks the first token only.

        def network(z_t, t):
            np.testing.assert_array_equal(ops.convert_to_numpy(z_t), [[MASK, 2]])
            return logits

        loss = objectives.masked_diffusion_loss(
            network, tokens, t, uniforms, MaskingSchedule("log_linear"), MASK)
        cross_entropy = -(2.0 - math.log(math.exp(2.0) + 3.0))
        self.assertAllClose(ops.convert_to_numpy(loss), [2.0 * cross_entropy], rtol=1e-5)

    def test_nelbo_of_a_uniform_denoiser_is_length_times_log_v(self):
        """A denoiser predicting uniform tokens has NELBO exactly L log V."""
        batch, length = 20000, 8
        rng = np.random.default_rng(1)
        tokens = rng.integers(0, 4, (batch, length)).astype("int32")
        t = ((np.arange(batch) + rng.uniform()) / batch).astype("float32")
        uniforms = rng.uniform(size=(batch, length)).astype("float32")
        network = lambda z_t, t: ops.zeros((batch, length, 5))
        for kind in ("log_linear", "cosine"):
            loss = ops.convert_to_numpy(objectives.masked_diffusion_loss(
                network, tokens, t, uniforms, MaskingSchedule(kind), MASK))
            stderr = loss.std() / math.sqrt(batch)
            self.assertLess(abs(loss.mean() - length * math.log(4)), 4 * stderr)
            self.assertLess(stderr, 0.02 * length * math.log(4))
