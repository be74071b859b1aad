import os

import numpy as np

from keras_diffusion.metrics import KID
from keras_diffusion.metrics import compute_statistics
from keras_diffusion.metrics import kernel_inception_distance
from keras_diffusion.metrics.kid import mmd2_unbiased
from keras_diffusion.testing import TestCase


def brute_force_mmd2(x, y):
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1.0) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


class KIDTest(TestCase):
    def test_unbiased_mmd_matches_definition(self):
        rng = np.random.default_rng(0)
        x, y = rng.normal(size=(7, 3)), rng.normal(size=(5, 3)) + 0.2
        self.assertAllClose(mmd2_unbiased(x, y), brute_force_mmd2(x, y), rtol=1e-10)

    def test_unbiased_near_zero_for_same_distribution(self):
        rng = np.random.default_rng(1)
        values, biased = [], []
        for _ in range(40):
            x, y = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
            values.append(kernel_inception_distance(x, y, num_subsets=1, subset_size=50)[0])
            z = np.concatenate([x, y])
            k = (z @ z.T / 4 + 1.0) ** 3
            biased.append(k[:50, :50].mean() + k[50:, 50:].mean() - 2 * k[:50, 50:].mean())
        stderr = np.std(values) / np.sqrt(len(values))
        # Unbiased: the mean over independent pairs is 0 within its error,
        # while the biased V-statistic is clearly positive.
        self.assertLess(abs(np.mean(values)), 3 * stderr)
        self.assertGreater(np.mean(biased), 10 * stderr)

    def test_grows_with_shift(self):
        rng = np.random.default_rng(2)
        real = rng.normal(size=(200, 4))
        kids = []
        for shift in (0.0, 0.25, 0.5, 1.0):
            kid = KID(feature_extractor="identity", num_subsets=10, subset_size=100)
            kid.update_state(real, rng.normal(size=(200, 4)) + shift)
            kids.append(float(kid.result()))
        self.assertLess(abs(kids[0]), 0.05)
        self.assertTrue(np.all(np.diff(kids) > 0), kids)
        self.assertGreater(kids[-1], 1.0)

    def test_streaming_equals_at_once(self):
        rng = np.random.default_rng(3)
        real, generated = rng.normal(size=(60, 5)), rng.normal(size=(45, 5)) + 0.5
        at_once = KID(feature_extractor="identity", num_subsets=5, subset_size=30)
        at_once.update_state(real, generated)
        streamed = KID(feature_extractor="identity", num_subsets=5, subset_size=30)
        for i in range(3):
            streamed.update_state(real[20 * i : 20 * (i + 1)], generated[15 * i : 15 * (i + 1)])
        self.assertAllClose(streamed.result(), at_once.result(), rtol=1e-6)
        self.assertAllClose(streamed.result_std(), at_once.result_std(), rtol=1e-6)
        streamed.reset_state()
        with self.assertRaisesWithArgument(ValueError, "no real features"):
            streamed.result()

    def test_cached_real_features(self):
        rng = np.random.default_rng(4)
        real, generated = rng.normal(size=(30, 3)), rng.normal(size=(30, 3))
        path = os.path.join(self.get_temp_dir(), "real.npz")
        compute_statistics(real, "identity", path=path)
        cached = KID(feature_extractor="identity", real_statistics=path, num_subsets=3,
                     subset_size=20)
        cached.update_state(generated_images=generated)
        direct = KID(feature_extractor="identity", num_subsets=3, subset_size=20)
        direct.update_state(real, generated)
        self.assertAllClose(cached.result(), direct.result(), rtol=1e-6)
        no_features = compute_statistics(real, "identity", keep_features=False)
        with self.assertRaisesWithArgument(ValueError, "real_statistics", "keep_features=True"):
            KID(feature_extractor="identity", real_statistics=no_features)

    def test_bad_inputs(self):
        kid = KID(feature_extractor="identity")
        with self.assertRaisesWithArgument(ValueError, "real_images", "generated_images", "neither"):
            kid.update_state()
        kid.update_state(np.zeros((4, 3)))
        with self.assertRaisesWithArgument(ValueError, "generated_images", r"\(5,\)", r"\(3,\)"):
            kid.update_state(generated_images=np.zeros((4, 5)))
        with self.assertRaisesWithArgument(ValueError, "subset_size", "1"):
            KID(subset_size=1)
        with self.assertRaisesWithArgument(FileNotFoundError, "real_statistics", "nope.npz"):
            KID(real_statistics=os.path.join(self.get_temp_dir(), "nope.npz"))

    def test_serialization(self):
        kid = KID(feature_extractor="identity", num_subsets=7, subset_size=11, seed=3)
        revived = self.run_serialization_test(kid)
        self.assertEqual((revived.num_subsets, revived.subset_size, revived.seed), (7, 11, 3))
