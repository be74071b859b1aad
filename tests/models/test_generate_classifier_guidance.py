"""Classifier guidance as an option of `DiffusionModel.generate`."""

import contextlib
from unittest import mock

import keras
import numpy as np
import pytest
from keras import ops

import keras_diffusion
from keras_diffusion import random as random_lib
from keras_diffusion import samplers
from keras_diffusion.guidance import classifier_guidance
from keras_diffusion.models import MLPDenoiser
from keras_diffusion.models import NoisyClassifier
from keras_diffusion.models import UNet
from keras_diffusion.pipelines import generation_runner
from keras_diffusion.testing import TestCase

LABELS = np.array([0, 1, 2, 1])


def _model(num_classes=None):
    unet = UNet(input_channels=1, base_channels=8, channel_multipliers=(1, 2),
                num_res_blocks=1, attention_resolutions=(), num_groups=4,
                num_classes=num_classes)
    model = keras_diffusion.DiffusionModel(unet, image_shape=(8, 8, 1), seed=0)
    model.build(None)
    return model


def _classifier(**kwargs):
    options = dict(num_classes=3, input_channels=1, base_channels=8,
                   channel_multipliers=(1, 2), num_groups=4, seed=0)
    options.update(kwargs)
    classifier = NoisyClassifier(**options)
    classifier({"x_t": np.zeros((1, 8, 8, options["input_channels"]), "float32"),
                "t": np.zeros((1,), "float32")})
    return classifier


def _hand_built(model, classifier, labels, scale, sampler, condition, guidance_scale,
                num_steps=2, seed=0):
    """The guided sampler built by hand around the runner's model function."""
    times = sampler.timesteps(model.schedule, num_steps, None, None)
    noise = random_lib.initial_noise((len(labels),) + model.image_shape, seed)
    model_fn = model.runner.model_fn(condition, guidance_scale)
    if classifier is not None:
        model_fn = classifier_guidance(
            model_fn, lambda x, t: classifier({"x_t": x, "t": t}), labels, scale,
            schedule=model.schedule, prediction=model.prediction,
            num_classes=classifier.num_classes,
        )
    x = sampler.sample(model_fn, noise, schedule=model.schedule, prediction=model.prediction,
                       timesteps=times, seed=random_lib.sampler_seed(seed, 0))
    return np.asarray(ops.convert_to_numpy(x))


@contextlib.contextmanager
def _uncompiled(model):
    """The runner's functions run as Python (keys still recorded): no tracing.
    The runner's cache is dropped before and after."""
    model.runner.clear()
    try:
        with mock.patch.object(generation_runner, "_compile", lambda fn, jit_compile: fn):
            yield
    finally:
        model.runner.clear()


class GenerateClassifierGuidanceTest(TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.conditional = _model(num_classes=3)
        cls.classifier = _classifier()

    def setUp(self):
        super().setUp()
        self.skip_unless_tensorflow()

    def test_matches_hand_built_guidance(self):
        # The runner's logic on the UNet, run as Python (the compiled path is
        # checked on vectors below, on TensorFlow and JAX).
        model, classifier = self.conditional, self.classifier
        with _uncompiled(model):
            out = model.generate(labels=LABELS, classifier=classifier, classifier_scale=4.0,
                                 guidance_scale=1.0, sampler="ddim", num_steps=2, seed=0,
                                 verbose=0)
        sampler = samplers.get("ddim", clip_x0=1.0)  # As the name "ddim" gives it.
        cond = {"labels": LABELS}
        expected = _hand_built(model, classifier, LABELS, 4.0, sampler, cond, 1.0)
        self.assertAllClose(out, np.clip(expected, -1, 1), atol=1e-5)
        unguided = _hand_built(model, None, LABELS, 0.0, sampler, cond, 1.0)
        self.assertGreater(np.abs(out - np.clip(unguided, -1, 1)).max(), 0.05)

    def test_keys_scale_zero_and_the_unconditional_model_at_guidance_scale_zero(self):
        model, classifier = self.conditional, self.classifier
        runner = model.runner
        kwargs = dict(labels=LABELS, sampler="euler", num_steps=2, seed=0, verbose=0)
        with _uncompiled(model):
            plain = model.generate(**kwargs)
            (plain_key,) = runner._functions
            guided = model.generate(classifier=classifier, classifier_scale=2.0,
                                    guidance_scale=0.0, **kwargs)
            guided_key = next(k for k in runner._functions if k != plain_key)
            again = model.generate(**kwargs)
            zero = model.generate(classifier=classifier, classifier_scale=0.0, **kwargs)
            self.assertEqual(len(runner._functions), 2)
        # Unguided calls keep their key (and function); guided ones extend it.
        self.assertEqual(guided_key[:-1], plain_key[:3] + (0.0,) + plain_key[4:])
        self.assertEqual(guided_key[-1], ("classifier", id(classifier),
                                          len(classifier.variables), 2.0))
        self.assertAllClose(again, plain, atol=0)
        self.assertAllClose(zero, plain, atol=0)  # Scale 0: the unguided function.
        # At guidance_scale=0 one network call on the null label: the CFG pair's
        # uncond + 0 * (cond - uncond).
        sampler = samplers.get("euler", clip_x0=1.0)  # As the name "euler" gives it.
        expected = _hand_built(model, classifier, LABELS, 2.0, sampler, {"labels": LABELS}, 0.0)
        self.assertAllClose(guided, np.clip(expected, -1, 1), atol=1e-5)
        self.assertGreater(np.abs(guided - plain).max(), 0.05)

    def test_bad_input(self):
        model, classifier = self.conditional, self.classifier
        generate = dict(num_steps=1, seed=0, verbose=0)
        with self.assertRaisesWithArgument(ValueError, "classifier_scale", "-1"):
            model.generate(labels=LABELS, classifier=classifier, classifier_scale=-1.0,
                           **generate)
        with self.assertRaisesWithArgument(ValueError, "classifier_scale", "inf"):
            model.generate(labels=LABELS, classifier=classifier,
                           classifier_scale=float("inf"), **generate)
        with self.assertRaisesWithArgument(ValueError, "classifier_scale", "'big'"):
            model.generate(labels=LABELS, classifier=classifier, classifier_scale="big",
                           **generate)
        with self.assertRaisesWithArgument(ValueError, "classifier_scale=2.0", "classifier"):
            model.generate(labels=LABELS, classifier_scale=2.0, **generate)
        with self.assertRaisesWithArgument(ValueError, "labels", "labels=None"):
            model.generate(num_images=4, classifier=classifier, **generate)
        two = _classifier(num_classes=2)
        with self.assertRaisesWithArgument(ValueError, "labels", "num_classes=2", "2]",
                                           "classifier"):
            model.generate(labels=LABELS, classifier=two, **generate)
        rgb = NoisyClassifier(num_classes=3, input_channels=3, base_channels=8,
                              channel_multipliers=(1, 2), num_groups=4)
        with self.assertRaisesWithArgument(ValueError, "classifier", "input_channels=3",
                                           "(8, 8, 1)"):
            model.generate(labels=LABELS, classifier=rgb, **generate)
        deep = NoisyClassifier(num_classes=3, input_channels=1, base_channels=8,
                               channel_multipliers=(1, 1, 1, 1, 1), num_groups=4)
        with self.assertRaisesWithArgument(ValueError, "classifier", "(8, 8, 1)", "divisible"):
            model.generate(labels=LABELS, classifier=deep, **generate)
        with self.assertRaisesWithArgument(ValueError, "classifier", "Keras layer"):
            model.generate(labels=LABELS, classifier=lambda x: x, **generate)
        # Warned at the check (batch_size=0 then stops generate before sampling).
        with self.assertWarnsRegex(UserWarning, "schedule"), self.assertRaisesWithArgument(
            ValueError, "batch_size", "0"
        ):
            model.generate(labels=LABELS, classifier=_classifier(schedule="linear"),
                           batch_size=0, **generate)

    def test_latent_model_guides_latents(self):
        from keras_diffusion.models import VAE
        from keras_diffusion.models import LatentDiffusionModel

        vae = VAE(input_channels=1, latent_channels=4, base_channels=8,
                  channel_multipliers=(1, 1, 1), num_res_blocks=1, num_groups=4,
                  mid_attention=False, scaling_factor=2.0)
        unet = UNet(input_channels=4, base_channels=8, channel_multipliers=(1,),
                    num_res_blocks=1, attention_resolutions=(), num_groups=4)
        model = LatentDiffusionModel(vae, unet, pixel_shape=(16, 16, 1), seed=0)
        model.build(None)
        self.assertEqual(model.image_shape, (4, 4, 4))
        with self.assertRaisesWithArgument(ValueError, "classifier", "input_channels=1",
                                           "latents", "(4, 4, 4)"):
            model.generate(labels=LABELS, classifier=self.classifier, num_steps=1, seed=0)
        latent_classifier = NoisyClassifier(num_classes=3, input_channels=4, base_channels=8,
                                            channel_multipliers=(1,), num_groups=4, seed=0)
        with _uncompiled(model):
            images, latents = model.generate(
                labels=LABELS, classifier=latent_classifier, classifier_scale=4.0,
                sampler="ddim", num_steps=2, seed=0, verbose=0, return_latents=True,
            )
        self.assertEqual(images.shape, (4, 16, 16, 1))
        expected = _hand_built(model, latent_classifier, LABELS, 4.0, samplers.DDIMSampler(),
                               {}, 1.0)
        self.assertAllClose(latents, expected, atol=1e-5)


class TinyVectorClassifier(keras.Model):
    """A tiny classifier of 2-D x_t: Dense on (x_t, t)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.num_classes = 3
        self.hidden = keras.layers.Dense(8, activation="tanh")
        self.head = keras.layers.Dense(3)

    def call(self, inputs, training=None):
        t = ops.cast(inputs["t"], "float32")[:, None]
        return self.head(self.hidden(ops.concatenate([inputs["x_t"], t], axis=-1)))


@pytest.mark.jax
class GenerateClassifierGuidanceCompiledTest(TestCase):
    def test_compiled_matches_hand_built_with_cfg_a_sampler_object_and_seed(self):
        denoiser = MLPDenoiser(data_dim=2, hidden_dim=16, num_layers=1, time_embedding_dim=8,
                               num_classes=3)
        model = keras_diffusion.DiffusionModel(denoiser, image_shape=(2,), seed=0)
        model.build(None)
        classifier = TinyVectorClassifier()
        sampler = samplers.DDPMSampler()  # Stochastic: the seed matters.
        kwargs = dict(labels=LABELS, classifier=classifier, classifier_scale=5.0,
                      guidance_scale=2.0, sampler=sampler, num_steps=2, seed=0, verbose=0)
        out = model.generate(**kwargs)
        # The classifier was built by generate's check: its weights are inputs.
        self.assertEqual(len(classifier.trainable_variables), 4)
        cond = {"labels": LABELS}
        expected = _hand_built(model, classifier, LABELS, 5.0, sampler, cond, 2.0)
        self.assertAllClose(out, expected, atol=1e-5)
        # Seeded and reproducible, from the same compiled function.
        functions = dict(model.runner._functions)
        self.assertAllClose(model.generate(**kwargs), out, atol=0)
        self.assertEqual(model.runner._functions, functions)
        if keras.backend.backend() == "tensorflow":  # (JAX: one more compilation)
            (fn,) = functions.values()
            self.assertEqual(fn.experimental_get_tracing_count(), 1)
            unguided = _hand_built(model, None, LABELS, 0.0, sampler, cond, 2.0)
            self.assertGreater(np.abs(out - unguided).max(), 1e-3)
        self.assertGreater(np.abs(model.generate(**dict(kwargs, seed=1)) - out).max(), 1e-3)
