"""The samplers' counter-based noise: same numbers on every backend and compiler."""

import numpy as np
import pytest
from scipy import stats

from keras_diffusion.samplers.sampler import step_noise
from keras_diffusion.testing import TestCase


@pytest.mark.jax
class StepNoiseTest(TestCase):
    def test_golden_values_on_every_backend(self):
        z = np.asarray(step_noise((1000, 100), 3, 5))
        # Computed once on TensorFlow (eager and XLA agree exactly); JAX agrees
        # to float round-off of log/cos.
        self.assertAllClose(
            z.ravel()[:4], [1.1696719, 0.53086257, 0.03348736, -0.44071245], atol=2e-6
        )

    def test_is_standard_normal_and_independent(self):
        a = np.asarray(step_noise((100000,), 3, 5), np.float64)
        b = np.asarray(step_noise((100000,), 3, 6), np.float64)
        c = np.asarray(step_noise((100000,), 4, 5), np.float64)
        for x in (a, b, c):
            self.assertGreater(stats.kstest(x, "norm").pvalue, 1e-3)
        self.assertLess(abs(np.corrcoef(a, b)[0, 1]), 0.015)
        self.assertLess(abs(np.corrcoef(a, c)[0, 1]), 0.015)
        self.assertLess(abs(np.corrcoef(a[:-1], a[1:])[0, 1]), 0.015)

    def test_a_smaller_batch_is_a_prefix(self):
        big = step_noise((4, 3, 2), 5, 0)
        self.assertAllClose(step_noise((1, 3, 2), 5, 0), big[:1], atol=0)

    def test_same_seed_same_noise(self):
        self.assertAllClose(step_noise((3, 4), 9, 1), step_noise((3, 4), 9, 1), atol=0)

    def test_xla_draws_the_same_noise(self):
        self.skip_unless_tensorflow()
        import tensorflow as tf

        eager = step_noise((8, 5), 11, 2)
        fn = tf.function(
            lambda x: step_noise(tf.shape(x), tf.constant(11, tf.int64), 2), jit_compile=True
        )
        self.assertAllClose(fn(tf.zeros((8, 5))), eager, atol=0)
