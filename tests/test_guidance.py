"""Classifier-free guidance wrapper."""

import numpy as np
import pytest
from keras import ops

from keras_diffusion.guidance import classifier_free_guidance
from keras_diffusion.testing import TestCase


@pytest.mark.jax
class GuidanceTest(TestCase):
    def setUp(self):
        super().setUp()
        self.calls = []

        def model_fn(x, t, labels):
            self.calls.append(int(x.shape[0]))
            return x * ops.cast(labels, "float32")[:, None] + t[:, None]

        self.model_fn = model_fn
        self.x = np.arange(6, dtype="float32").reshape(3, 2)
        self.t = np.full((3,), 0.5, "float32")
        self.labels = np.array([2, 3, 4])
        self.null = np.zeros(3, "int32")

    def test_one_batched_call_and_formula(self):
        guided = classifier_free_guidance(self.model_fn, self.labels, self.null, 3.0)
        out = guided(self.x, self.t)
        self.assertEqual(self.calls, [6])
        cond = self.x * self.labels[:, None] + 0.5
        uncond = self.x * 0 + 0.5
        self.assertAllClose(out, uncond + 3.0 * (cond - uncond))

    def test_scale_one_is_conditional_without_doubling(self):
        guided = classifier_free_guidance(self.model_fn, self.labels, self.null, 1.0)
        self.assertAllClose(guided(self.x, self.t), self.x * self.labels[:, None] + 0.5)
        self.assertEqual(self.calls, [3])

    def test_dict_conditions(self):
        def model_fn(x, t, cond):
            return x * cond["a"][:, None] + cond["b"]

        cond = {"a": np.ones(3, "float32"), "b": np.ones((3, 2), "float32")}
        null = {"a": np.zeros(3, "float32"), "b": np.zeros((3, 2), "float32")}
        out = classifier_free_guidance(model_fn, cond, null, 2.0)(self.x, self.t)
        self.assertAllClose(out, 2.0 * (self.x + 1.0))

    def test_negative_scale(self):
        with self.assertRaisesWithArgument(ValueError, "guidance_scale", "-1"):
            classifier_free_guidance(self.model_fn, self.labels, self.null, -1.0)


def _mixture_log_posterior(mixture, schedule):
    """The exact log p(component | x_t, t) of a Gaussian mixture, in keras.ops."""
    means = mixture.means.astype("float32")[None]
    var0 = (mixture.stds**2).astype("float32")[None]
    log_w = np.log(mixture.weights).astype("float32")

    def logits(x_t, t):
        alpha, sigma = schedule.alpha_sigma(ops.cast(t, "float32"))
        alpha, sigma = alpha[:, None, None], sigma[:, None, None]
        var = ops.square(alpha) * var0 + ops.square(sigma)
        diff = x_t[:, None, :] - alpha * means
        return -0.5 * ops.sum(ops.square(diff) / var + ops.log(var), axis=-1) + log_w

    return logits


@pytest.mark.jax
class ClassifierGuidanceTest(TestCase):
    def setUp(self):
        super().setUp()
        from keras_diffusion import schedules
        from keras_diffusion.testing import GaussianMixture

        self.schedule = schedules.CosineSchedule()
        self.mixture = GaussianMixture.ring(num_modes=4, std=0.3)
        self.x = np.random.default_rng(0).normal(size=(4, 2)).astype("float32")
        self.t = np.array([0.2, 0.4, 0.6, 0.8], "float32")
        self.labels = np.array([0, 1, 2, 3])

    def test_exact_classifier_at_scale_one_gives_the_class_conditional_model(self):
        from keras_diffusion.guidance import classifier_guidance
        from keras_diffusion.testing import GaussianMixture

        classifier = _mixture_log_posterior(self.mixture, self.schedule)
        for prediction in ("epsilon", "v", "flow", "score"):
            guided = classifier_guidance(
                self.mixture.denoiser(self.schedule, prediction), classifier, self.labels, 1.0,
                schedule=self.schedule, prediction=prediction, num_classes=4,
            )
            out = ops.convert_to_numpy(guided(self.x, self.t))
            for i, k in enumerate(self.labels):
                component = GaussianMixture(self.mixture.means[k:k + 1], self.mixture.stds[k:k + 1])
                expected = component.denoiser(self.schedule, prediction)(self.x[i:i + 1],
                                                                         self.t[i:i + 1])
                self.assertAllClose(out[i], ops.convert_to_numpy(expected)[0], atol=2e-4,
                                    rtol=1e-4, msg=prediction)

    def test_combines_with_classifier_free_guidance_and_runs_in_samplers(self):
        from keras_diffusion import samplers
        from keras_diffusion.guidance import classifier_guidance

        exact = self.mixture.denoiser(self.schedule, "v")
        cfg = classifier_free_guidance(lambda x, t, c: exact(x, t) * c[:, None],
                                       np.ones(4, "float32"), np.zeros(4, "float32"), 2.0)
        classifier = _mixture_log_posterior(self.mixture, self.schedule)
        guided = classifier_guidance(cfg, classifier, self.labels, 3.0,
                                     schedule=self.schedule, prediction="v")
        # The classifier term is added on top of the CFG output, in score space.
        plain = classifier_guidance(exact, classifier, self.labels, 3.0,
                                    schedule=self.schedule, prediction="v")
        self.assertAllClose(guided(self.x, self.t) - 2.0 * exact(self.x, self.t),
                            plain(self.x, self.t) - exact(self.x, self.t), atol=1e-4)
        for sampler in (samplers.DDIMSampler(), samplers.DPMSolverSampler()):
            strong = classifier_guidance(exact, classifier, self.labels, 4.0,
                                         schedule=self.schedule, prediction="v")
            x0 = sampler.sample(strong, self.x, schedule=self.schedule, prediction="v",
                                num_steps=8, seed=0)
            self.assertEqual(self.mixture.classify(ops.convert_to_numpy(x0)).tolist(),
                             self.labels.tolist())

    def test_bad_arguments(self):
        from keras_diffusion.guidance import classifier_guidance

        fn = self.mixture.denoiser(self.schedule, "v")
        classifier = _mixture_log_posterior(self.mixture, self.schedule)
        with self.assertRaisesWithArgument(ValueError, "labels", "num_classes=4", "7"):
            classifier_guidance(fn, classifier, [1, 7], 1.0, schedule=self.schedule,
                                prediction="v", num_classes=4)
        with self.assertRaisesWithArgument(ValueError, "classifier_scale", "-2"):
            classifier_guidance(fn, classifier, [1], -2.0, schedule=self.schedule,
                                prediction="v")
