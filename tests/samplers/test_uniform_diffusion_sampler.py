"""UniformDiffusionSampler: exact for i.i.d. tokens, keeps given tokens, seeds,
greedy/top-k."""

import numpy as np
import pytest
from keras import ops

from keras_diffusion.samplers import UniformDiffusionSampler
from keras_diffusion.schedules import MaskingSchedule
from keras_diffusion.testing import TestCase

N = 4
PLACEHOLDER = N
P = np.array([0.1, 0.2, 0.3, 0.4], "float32")


def network(z_t, t):
    # For i.i.d. tokens, p(x^l | the other positions) = P: the exact denoiser.
    return ops.broadcast_to(ops.log(ops.convert_to_tensor(P)), tuple(z_t.shape) + (N,))


def run(sampler, tokens, num_steps=3, seed=0, kind="log_linear"):
    out, calls = sampler.sample(
        network, np.array(tokens, "int32"), schedule=MaskingSchedule(kind),
        mask_id=PLACEHOLDER, num_steps=num_steps, seed=seed, vocabulary_size=N,
        return_num_calls=True)
    return ops.convert_to_numpy(out), int(calls)


class UniformDiffusionSamplerTest(TestCase):
    @pytest.mark.jax
    def test_exact_distribution_for_iid_tokens(self):
        # With the exact denoiser every step is Bayes' rule of the marginal
        # chain, so any number of steps gives tokens distributed as P.
        tokens = np.full((2000, 4), PLACEHOLDER, "int32")
        for steps, kind in ((1, "log_linear"), (3, "cosine")):
            out, calls = run(UniformDiffusionSampler(), tokens, num_steps=steps, kind=kind)
            self.assertEqual(calls, steps)
            freq = np.bincount(out.reshape(-1), minlength=N) / out.size
            stderr = np.sqrt(P * (1 - P) / out.size)
            self.assertTrue((np.abs(freq - P) < 4 * stderr).all(), (freq, steps))

    def test_keeps_given_tokens_seeds_greedy_and_top_k(self):
        tokens = [[3, PLACEHOLDER, PLACEHOLDER, 0, PLACEHOLDER]] * 8
        out, _ = run(UniformDiffusionSampler(), tokens, seed=1)
        self.assertTrue((out[:, 0] == 3).all() and (out[:, 3] == 0).all())
        self.assertTrue(((out >= 0) & (out < N)).all())
        again, _ = run(UniformDiffusionSampler(), tokens, seed=1)
        other, _ = run(UniformDiffusionSampler(), tokens, seed=2)
        np.testing.assert_array_equal(out, again)
        self.assertFalse(np.array_equal(out, other))
        # Greedy and top-1 reach the denoiser's argmax at t = 0.
        for sampler in (UniformDiffusionSampler(temperature=0.0),
                        UniformDiffusionSampler(top_k=1)):
            out, _ = run(sampler, tokens, seed=3)
            self.assertTrue((out[:, [1, 2, 4]] == 3).all())
        revived = UniformDiffusionSampler(**UniformDiffusionSampler(0.5, 2).get_config())
        self.assertEqual((revived.temperature, revived.top_k), (0.5, 2))
        with self.assertRaisesWithArgument(ValueError, "temperature", "-1"):
            UniformDiffusionSampler(temperature=-1)
