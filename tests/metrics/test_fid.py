import os
import warnings

import keras
import numpy as np
import scipy.linalg

from keras_diffusion.metrics import FID
from keras_diffusion.metrics import FeatureExtractor
from keras_diffusion.metrics import compute_statistics
from keras_diffusion.metrics import frechet_distance
from keras_diffusion.metrics import inception_v3
from keras_diffusion.metrics import load_statistics
from keras_diffusion.testing import TestCase


def exact_moment_sample(mu, cov, n, seed):
    """n points whose sample mean and (unbiased) covariance are exactly mu, cov."""
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(n, len(mu)))
    z -= z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False))).T
    return z @ np.linalg.cholesky(cov).T + mu


def random_covariance(dim, seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(dim, dim))
    return a @ a.T / dim + 0.1 * np.eye(dim)


def small_extractor():
    """A tiny conv net on 8x8 RGB images: the pluggable feature extractor."""
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, activation="tanh")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, x)


class FrechetDistanceTest(TestCase):
    def test_diagonal_gaussians_closed_form(self):
        mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([1.0, 1.0, 0.0])
        v1, v2 = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 1.0])
        expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
        got = frechet_distance(mu1, np.diag(v1), mu2, np.diag(v2))
        self.assertAllClose(got, expected, rtol=1e-10)

    def test_general_gaussians_closed_form(self):
        mu1, mu2 = np.zeros(5), np.linspace(-1, 1, 5)
        s1, s2 = random_covariance(5, 0), random_covariance(5, 1)
        root = scipy.linalg.sqrtm(s1).real  # tr sqrt(s1^1/2 s2 s1^1/2): symmetric.
        middle = np.linalg.eigvalsh(root @ s2 @ root)
        expected = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.sum(np.sqrt(middle))
        self.assertAllClose(frechet_distance(mu1, s1, mu2, s2), expected, rtol=1e-8)
        self.assertAllClose(frechet_distance(mu1, s1, mu1, s1), 0.0, atol=1e-8)

    def test_singular_covariances_use_the_offset(self):
        s = np.diag([1.0, 0.0, 0.0])
        value = frechet_distance(np.zeros(3), s, np.ones(3), np.diag([0.0, 1.0, 0.0]))
        self.assertTrue(np.isfinite(value))
        self.assertAllClose(value, 3.0 + 2.0, atol=1e-2)

    def test_mismatched_means(self):
        with self.assertRaisesWithArgument(ValueError, "mu1", r"\(3,\)", "mu2", r"\(4,\)"):
            frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


class FIDTest(TestCase):
    def test_equals_closed_form_between_two_gaussians(self):
        mu1, mu2 = np.zeros(4), np.array([0.5, -0.5, 1.0, 0.0])
        s1, s2 = random_covariance(4, 2), random_covariance(4, 3)
        real = exact_moment_sample(mu1, s1, 300, seed=0)
        generated = exact_moment_sample(mu2, s2, 200, seed=1)
        fid = FID(feature_extractor="identity")
        fid.update_state(real, generated)
        expected = frechet_distance(mu1, s1, mu2, s2)
        self.assertAllClose(fid.result(), expected, rtol=1e-5)

    def test_streaming_equals_at_once(self):
        rng = np.random.default_rng(0)
        real, generated = rng.normal(size=(120, 6)), rng.normal(size=(90, 6)) + 0.3
        at_once = FID(feature_extractor="identity")
        at_once.update_state(real, generated)
        streamed = FID(feature_extractor="identity")
        for r, g in zip(np.array_split(real, 5), np.array_split(generated, 3) + [None] * 2):
            streamed.update_state(r, g)
        self.assertAllClose(streamed.result(), at_once.result(), rtol=1e-6)
        self.assertAllClose(
            at_once.result(),
            frechet_distance(
                real.mean(0), np.cov(real, rowvar=False),
                generated.mean(0), np.cov(generated, rowvar=False),
            ),
            rtol=1e-6,
        )
        streamed.reset_state()
        streamed.update_state(real, generated)
        self.assertAllClose(streamed.result(), at_once.result(), rtol=1e-6)

    def test_result_in_a_graph(self):
        import tensorflow as tf

        fid = FID(feature_extractor="identity")
        fid.update_state(np.eye(3).repeat(4, 0), np.eye(3).repeat(4, 0) + 1.0)
        self.assertAllClose(tf.function(fid.result)(), fid.result(), rtol=1e-6)

    def test_cached_real_statistics(self):
        rng = np.random.default_rng(1)
        real = rng.uniform(-1, 1, size=(40, 8, 8, 3)).astype("float32")
        generated = rng.uniform(-1, 1, size=(30, 8, 8, 3)).astype("float32") * 0.5
        extractor = FeatureExtractor(small_extractor(), batch_size=16)
        path = os.path.join(self.get_temp_dir(), "stats", "real.npz")
        stats = compute_statistics(real, extractor, path=path)
        self.assertEqual(stats["features"].shape, (40, 4))
        loaded = load_statistics(path)
        self.assertAllClose(loaded["mu"], stats["mu"])
        self.assertEqual(loaded["num_samples"], 40)

        cached = FID(feature_extractor=extractor, real_statistics=path)
        cached.update_state(generated_images=generated)
        direct = FID(feature_extractor=extractor)
        direct.update_state(real, generated)
        self.assertAllClose(cached.result(), direct.result(), rtol=1e-5)
        self.assertGreater(float(direct.result()), 0.0)
        with self.assertRaisesWithArgument(ValueError, "real_statistics", "real_images"):
            cached.update_state(real, generated)
        with self.assertRaisesWithArgument(ValueError, "generated_images", r"\(16, 16, 3\)"):
            cached.update_state(generated_images=np.zeros((2, 16, 16, 3)))

    def test_missing_statistics_file(self):
        path = os.path.join(self.get_temp_dir(), "missing.npz")
        with self.assertRaisesWithArgument(FileNotFoundError, "real_statistics", "missing.npz"):
            FID(feature_extractor="identity", real_statistics=path)

    def test_mismatched_sizes_and_channels(self):
        extractor = FeatureExtractor(small_extractor())
        fid = FID(feature_extractor=extractor)
        real = np.zeros((4, 8, 8, 3), "float32")
        with self.assertRaisesWithArgument(
            ValueError, "image size", "generated_images", r"\(16, 16, 3\)", "real_images", r"\(8, 8, 3\)"
        ):
            fid.update_state(real, np.zeros((4, 16, 16, 3), "float32"))
        fid = FID(feature_extractor=extractor)
        with self.assertRaisesWithArgument(
            ValueError, "channel count", "generated_images", r"\(8, 8, 1\)", r"\(8, 8, 3\)"
        ):
            fid.update_state(real, np.zeros((4, 8, 8, 1), "float32"))
        with self.assertRaisesWithArgument(ValueError, "takes 3 channels", r"\(4, 8, 8, 2\)"):
            FID(feature_extractor=extractor).update_state(np.zeros((4, 8, 8, 2)))

    def test_warns_with_fewer_samples_than_features(self):
        rng = np.random.default_rng(0)
        fid = FID(feature_extractor="identity")
        fid.update_state(rng.normal(size=(10, 32)), rng.normal(size=(12, 32)))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = float(fid.result())
        messages = " ".join(str(w.message) for w in caught)
        self.assertIn("num_samples=10", messages)
        self.assertIn("num_samples=12", messages)
        self.assertIn("feature dimension 32", messages)
        self.assertTrue(np.isfinite(value))

    def test_inception_protocol_with_grayscale(self):
        # Random weights and 75x75 (Inception's minimum) instead of 299x299 to
        # stay small; the path is the same: quantize, gray -> RGB, resize.
        model = inception_v3(weights=None, image_size=(75, 75))
        extractor = FeatureExtractor(model, image_size=(75, 75), preprocessing="inception",
                                     quantize=True)
        images = np.random.default_rng(0).uniform(-1, 1, size=(2, 28, 28, 1))
        features = extractor.extract(images)
        self.assertEqual(features.shape, (2, 2048))
        defaults = FeatureExtractor()
        self.assertEqual(defaults.image_size, (299, 299))
        self.assertTrue(defaults.quantize)

    def test_serialization(self):
        fid = FID(feature_extractor="identity", eps=1e-5)
        revived = self.run_serialization_test(fid)
        self.assertEqual(revived.eps, 1e-5)
