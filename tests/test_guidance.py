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
