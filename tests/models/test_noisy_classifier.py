"""The noise-conditional classifier of classifier guidance."""

import os

import keras
import numpy as np
import pytest

from keras_diffusion import samplers
from keras_diffusion.guidance import classifier_guidance
from keras_diffusion.models import NoisyClassifier
from keras_diffusion.testing import TestCase


def _classifier(**kwargs):
    return NoisyClassifier(num_classes=3, input_channels=1, base_channels=8,
                           channel_multipliers=(1, 2), num_groups=4, seed=0, **kwargs)


class NoisyClassifierTest(TestCase):
    def setUp(self):
        super().setUp()
        rng = np.random.default_rng(0)
        self.images = rng.uniform(-1, 1, size=(4, 8, 8, 1)).astype("float32")
        self.labels = np.array([0, 1, 2, 1])

    def test_fit_on_clean_images_and_save(self):
        classifier = _classifier()
        classifier.compile(keras.optimizers.Adam(1e-3),
                           keras.losses.SparseCategoricalCrossentropy(from_logits=True))
        history = classifier.fit(self.images, self.labels, batch_size=4, epochs=1, verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][0]))
        inputs = {"x_t": self.images, "t": np.full((4,), 0.3, "float32")}
        logits = classifier(inputs)
        self.assertEqual(tuple(logits.shape), (4, 3))
        # Clean images are noised at random t: not the logits of x_t = x0.
        self.assertFalse(np.allclose(keras.ops.convert_to_numpy(classifier(self.images)),
                                     keras.ops.convert_to_numpy(logits)))
        path = os.path.join(self.get_temp_dir(), "classifier.keras")
        classifier.save(path)
        restored = keras.saving.load_model(path)
        self.assertAllClose(restored(inputs), logits, atol=1e-5)
        self.assertEqual(restored.get_config(), classifier.get_config())

    @pytest.mark.jax
    def test_guides_a_sampler_through_backend_autodiff(self):
        restored = _classifier()

        def model_fn(x, t):
            return 0.1 * x

        guided = classifier_guidance(
            model_fn, lambda x, t: restored({"x_t": x, "t": t}), self.labels, 2.0,
            schedule=restored.schedule, prediction="epsilon", num_classes=restored.num_classes,
        )
        kwargs = dict(schedule="cosine", prediction="epsilon", num_steps=1, seed=0)
        noise = np.random.default_rng(1).normal(size=self.images.shape).astype("float32")
        out = samplers.DDIMSampler().sample(guided, noise, **kwargs)
        unguided = samplers.DDIMSampler().sample(model_fn, noise, **kwargs)
        self.assertTrue(np.all(np.isfinite(keras.ops.convert_to_numpy(out))))
        self.assertGreater(np.abs(keras.ops.convert_to_numpy(out - unguided)).max(), 1e-4)

    def test_bad_input(self):
        with self.assertRaisesWithArgument(ValueError, "num_classes", "1"):
            NoisyClassifier(num_classes=1)
        with self.assertRaisesWithArgument(ValueError, "time_distribution", "bogus"):
            NoisyClassifier(num_classes=3, time_distribution="bogus")
        classifier = _classifier()
        with self.assertRaisesWithArgument(ValueError, "(B, H, W, 1)", "3"):
            classifier({"x_t": np.zeros((2, 8, 8, 3), "float32"), "t": np.zeros(2, "float32")})
