"""Bad arguments to generate / img2img / fit: a clear error naming the
argument and the value, never a silent cast."""

import warnings

import numpy as np
import pytest

import keras_diffusion as kd
from keras_diffusion.models import MLPDenoiser
from keras_diffusion.models import UNet
from keras_diffusion.testing import TestCase


def _vector_model(num_classes=3):
    model = kd.DiffusionModel(
        MLPDenoiser(data_dim=2, hidden_dim=8, num_layers=1, num_classes=num_classes),
        image_shape=(2,), prediction="v",
    )
    model.build(None)
    return model


@pytest.mark.jax
class GenerateArgumentsTest(TestCase):
    def test_num_steps(self):
        model = _vector_model()
        for bad in (2.5, True, "3", 0, -1):
            with self.assertRaisesWithArgument(ValueError, "num_steps", repr(bad)
                                               if not isinstance(bad, int) or isinstance(
                                                   bad, bool) else bad):
                model.generate(2, num_steps=bad, seed=0)

    def test_seed(self):
        model = _vector_model()
        for bad in ("abc", -1, 2**40, 1.7, True):
            with self.assertRaisesWithArgument(ValueError, "seed"):
                model.generate(2, num_steps=2, seed=bad)
        a = model.generate(2, num_steps=2, seed=1)
        self.assertAllClose(a, model.generate(2, num_steps=2, seed=np.int64(1)))

    def test_guidance_scale(self):
        model = _vector_model()
        for bad in (float("inf"), float("nan"), -0.5, "2"):
            with self.assertRaisesWithArgument(ValueError, "guidance_scale"):
                model.generate(labels=[0], num_steps=2, seed=0, guidance_scale=bad)

    def test_labels(self):
        model = _vector_model()
        with self.assertRaisesWithArgument(ValueError, "labels", "whole numbers", "2.7"):
            model.generate(labels=[2.7], num_steps=2, seed=0)
        with self.assertRaisesWithArgument(ValueError, "labels", r"\[0, 3\)", "5"):
            model.generate(labels=[0, 5], num_steps=2, seed=0)
        with self.assertRaisesWithArgument(ValueError, "labels", "integers"):
            model.generate(labels=["a"], num_steps=2, seed=0)
        # Whole-number floats and a single label for all are accepted.
        self.assertAllClose(model.generate(labels=[2.0, 2.0], num_steps=2, seed=0),
                            model.generate(2, labels=2, num_steps=2, seed=0))
        with self.assertRaisesWithArgument(ValueError, "labels", "2 entries", "3"):
            model.generate(3, labels=[0, 1], num_steps=2, seed=0)
        with self.assertRaisesWithArgument(ValueError, "unconditional"):
            _vector_model(None).generate(labels=[0], num_steps=2, seed=0)

    def test_num_images_and_batch_size(self):
        model = _vector_model()
        for name, kwargs in (("num_images", {"num_images": 0}),
                             ("num_images", {"num_images": 2.5}),
                             ("batch_size", {"num_images": 2, "batch_size": 0})):
            with self.assertRaisesWithArgument(ValueError, name):
                model.generate(num_steps=2, seed=0, **kwargs)
        with self.assertRaisesRegex(ValueError, "needs `num_images`"):
            model.generate(num_steps=2, seed=0)


class FitArgumentsTest(TestCase):
    def setUp(self):
        super().setUp()
        self.skip_unless_tensorflow()

    def _unet(self):
        return UNet(input_channels=1, base_channels=8, channel_multipliers=(1,),
                    num_res_blocks=1, attention_resolutions=(), num_groups=4)

    def test_images_in_zero_one_warn(self):
        images = np.random.default_rng(0).uniform(0, 1, (4, 8, 8, 1)).astype("float32")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            kd.DiffusionModel(self._unet()).fit(images, batch_size=4, epochs=1, verbose=0)
        self.assertTrue(any("[-1, 1]" in str(w.message) and "x * 2 - 1" in str(w.message)
                            for w in caught), [str(w.message) for w in caught])

    def test_all_nan_batch_under_skip_warns(self):
        images = np.full((4, 8, 8, 1), np.nan, "float32")
        model = kd.DiffusionModel(self._unet(), nan_policy="skip")
        model.compile(run_eagerly=True)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            history = model.fit(images, batch_size=4, epochs=1, verbose=0)
        self.assertEqual(history.history["nonfinite_examples"][-1], 4.0)
        self.assertTrue(any("every example" in str(w.message) for w in caught))

    def test_fractional_float_labels_fail_in_fit(self):
        images = np.zeros((4, 8, 8, 1), "float32")
        model = kd.DiffusionModel(UNet(input_channels=1, base_channels=8,
                                       channel_multipliers=(1,), num_res_blocks=1,
                                       attention_resolutions=(), num_groups=4, num_classes=3))
        with self.assertRaisesRegex(Exception, "whole numbers"):
            model.fit(images, np.array([0.0, 1.5, 2.0, 1.0], "float32"), batch_size=4,
                      epochs=1, verbose=0)


class ConstructorArgumentsTest(TestCase):
    def test_v_and_flow_on_variance_exploding_schedules_are_refused(self):
        # benchmarks/results/toy2d.md: trained, these pairs sampled 8-21% of
        # the ring; the error names the pairs that work.
        for schedule in ("ve", "edm"):
            for prediction in ("v", "flow"):
                with self.assertRaisesRegex(ValueError, f"prediction.*{prediction}.*epsilon"):
                    kd.DiffusionModel(MLPDenoiser(), schedule=schedule, prediction=prediction)
            for prediction in ("epsilon", "x0"):
                model = kd.DiffusionModel(MLPDenoiser(), schedule=schedule, prediction=prediction)
                self.assertEqual(model.prediction, prediction)
        for schedule in ("cosine", "rectified_flow"):
            for prediction in ("v", "flow"):
                kd.DiffusionModel(MLPDenoiser(), schedule=schedule, prediction=prediction)
