import os
import re
import warnings

import keras
import numpy as np
import tensorflow as tf

import keras_diffusion
from keras_diffusion import objectives
from keras_diffusion.models.diffusion_model import DiffusionModel
from keras_diffusion.models.mlp_denoiser import MLPDenoiser
from keras_diffusion.testing import GaussianMixture
from keras_diffusion.testing import TestCase

RING = GaussianMixture.ring(num_modes=4, radius=1.0, std=0.05)


def _points(n=512, seed=0):
    return RING.sample(n, seed=seed).astype("float32")


def _mlp(**kwargs):
    return MLPDenoiser(hidden_dim=kwargs.pop("hidden_dim", 32), num_layers=1, **kwargs)


def _images(n=8, size=16, channels=1, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(-1, 1, size=(n, size, size, channels)).astype("float32")


class DiffusionModelTest(TestCase):
    """Fits are few and tiny: graph tracing dominates on CPU.

    Models that several tests only read are fitted once in `setUpClass`.
    """

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        if keras.backend.backend() != "tensorflow":
            return
        keras.utils.set_random_seed(0)
        # A class-conditional model with EMA, non-default schedule / prediction
        # / weighting: guidance, saving and EMA tests read it.
        x, comp = RING.sample(256, seed=0, return_components=True)
        cls.cond_data = (x.astype("float32"), comp.astype("int32"))
        cls.cond_model = DiffusionModel(
            _mlp(num_classes=4), schedule="linear", prediction="x0", weighting="min_snr",
            seed=0,
        )
        cls.cond_model.compile(keras.optimizers.Adam(1e-2, use_ema=True, ema_momentum=0.9))
        cls.cond_model.fit(*cls.cond_data, batch_size=64, epochs=1, verbose=0)

    def setUp(self):
        super().setUp()
        self.skip_unless_tensorflow()

    def test_default_fit_on_images_as_written(self):
        ds = tf.data.Dataset.from_tensor_slices(_images(n=4, size=8)).batch(4)
        model = keras_diffusion.DiffusionModel()
        history = model.fit(ds)
        self.assertEqual(model.image_shape, (8, 8, 1))
        self.assertIsInstance(model.denoiser, keras_diffusion.models.UNet)
        self.assertTrue(np.isfinite(history.history["loss"][0]))
        for key in ("loss_q1", "loss_q2", "loss_q3", "loss_q4"):
            self.assertIn(key, history.history)
        images = model.generate(2, num_steps=2, seed=0)
        self.assertEqual(images.shape, (2, 8, 8, 1))
        self.assertLessEqual(float(np.abs(images).max()), 1.0)

    def test_loss_decreases_for_each_objective(self):
        x = _points(512)
        for prediction, schedule in (
            ("epsilon", "linear"),
            ("x0", "cosine"),
            ("v", "cosine"),
            ("flow", "rectified_flow"),
        ):
            model = DiffusionModel(
                _mlp(), schedule=schedule, prediction=prediction, num_eval_times=4, seed=1
            )
            model.compile(keras.optimizers.Adam(3e-3))
            before = model.evaluate(x, batch_size=512, verbose=0, return_dict=True)
            model.fit(x, batch_size=128, epochs=4, verbose=0)
            after = model.evaluate(x, batch_size=512, verbose=0, return_dict=True)
            self.assertLess(after["loss"], 0.9 * before["loss"], prediction)

    def test_learns_modes_of_2d_toy(self):
        x = _points(2048)
        model = DiffusionModel(
            MLPDenoiser(hidden_dim=64, num_layers=2),
            schedule="rectified_flow",
            prediction="flow",
            seed=0,
        )
        model.compile(keras.optimizers.Adam(3e-3), steps_per_execution=16)
        model.fit(x, batch_size=128, epochs=12, verbose=0)
        # The last weights (the model's average, which generate uses by
        # default, lags them by about 20 of these 192 steps: checked below).
        samples = model.generate(400, sampler="ddim", num_steps=16, seed=0, use_ema=False)
        distance = np.linalg.norm(samples[:, None] - RING.means[None], axis=-1).min(1)
        # Prior samples are ~1 away on average; trained ones near the modes.
        self.assertLess(float(np.median(distance)), 0.2)
        fractions = np.bincount(RING.classify(samples), minlength=4) / len(samples)
        self.assertGreater(fractions.min(), 0.15)
        averaged = model.generate(400, sampler="ddim", num_steps=16, seed=0)
        self.assertFalse(np.allclose(averaged, samples))
        distance = np.linalg.norm(averaged[:, None] - RING.means[None], axis=-1).min(1)
        self.assertLess(float(np.median(distance)), 0.25)
        fractions = np.bincount(RING.classify(averaged), minlength=4) / len(averaged)
        self.assertGreater(fractions.min(), 0.15)

    def test_weightings_and_time_distributions(self):
        x = _points(64)
        t = np.linspace(0.01, 1.0, 5).astype("float32")
        noise = np.random.default_rng(0).normal(size=(5, 2)).astype("float32")
        denoiser = _mlp()
        for weighting in objectives.WEIGHTINGS:
            for distribution in objectives.TIME_DISTRIBUTIONS:
                model = DiffusionModel(
                    denoiser, weighting=weighting, time_distribution=distribution,
                    image_shape=(2,),
                )
                model.build(None)
                losses = np.asarray(model.per_example_loss(x[:5], noise, t))
                self.assertEqual(losses.shape, (5,))
                self.assertTrue(np.all(np.isfinite(losses)), (weighting, distribution))
                if weighting == "none":
                    continue
                # Drawn times of the distribution, in (0, 1].
                times = np.asarray(objectives.sample_time(distribution, 16, model.schedule, seed=0))
                self.assertEqual(times.shape, (16,))
                self.assertTrue(np.all((times >= 0) & (times <= 1)), distribution)
        # Fits: low-discrepancy times on a dataset with a partial last batch
        # (unknown batch size), ELBO weights with logit-normal times.
        partial = tf.data.Dataset.from_tensor_slices(_points(10)).batch(4)  # 4, 4, 2
        model = DiffusionModel(_mlp(), weighting="min_snr", time_distribution="low_discrepancy")
        history = model.fit(partial, epochs=1, verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][0]))
        model = DiffusionModel(_mlp(), weighting="elbo", time_distribution="logit_normal")
        history = model.fit(x, batch_size=32, epochs=1, verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][0]))
        # ELBO weights are divided by the density of the time distribution.
        uniform = DiffusionModel(denoiser, weighting="elbo", image_shape=(2,))
        logit = DiffusionModel(
            denoiser, weighting="elbo", time_distribution="logit_normal", image_shape=(2,)
        )
        uniform.build(None)
        t = np.array([0.2, 0.5, 0.8], "float32")
        noise = np.ones((3, 2), "float32")
        ratio = np.asarray(logit.per_example_loss(x[:3], noise, t)) / np.asarray(
            uniform.per_example_loss(x[:3], noise, t)
        )
        density = np.asarray(
            objectives.time_density("logit_normal", t, uniform.schedule)
        ) / np.asarray(objectives.time_density("uniform", t, uniform.schedule))
        self.assertAllClose(ratio, 1.0 / density, rtol=1e-4)

    def test_class_conditional_training_and_guidance(self):
        model = self.cond_model
        self.assertEqual(model.num_classes, 4)
        self.assertEqual(model.null_label, 4)
        samples = model.generate(labels=[0, 1, 2, 3], guidance_scale=3.0, num_steps=4, seed=0)
        self.assertEqual(samples.shape, (4, 2))
        again = model.generate(labels=[0, 1, 2, 3], guidance_scale=3.0, num_steps=4, seed=0)
        self.assertAllClose(samples, again)
        # Guidance: uncond + w (cond - uncond).
        x_t = np.zeros((2, 2), "float32")
        t = np.full((2,), 0.5, "float32")
        labels = np.array([1, 2], "int32")
        cond = np.asarray(model.model_fn(labels=labels)(x_t, t))
        uncond = np.asarray(model.model_fn()(x_t, t))
        guided = np.asarray(model.model_fn(labels=labels, guidance_scale=3.0)(x_t, t))
        self.assertAllClose(guided, uncond + 3.0 * (cond - uncond), atol=1e-5)

    def test_dict_dataset_with_labels(self):
        x, comp = self.cond_data
        model = DiffusionModel(_mlp(num_classes=4), prediction="v", seed=0)
        ds = tf.data.Dataset.from_tensor_slices({"images": x, "labels": comp}).batch(128)
        history = model.fit(ds, epochs=1, verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][0]))

    def test_condition_dropout_uses_null_label(self):
        model = DiffusionModel(_mlp(num_classes=3), condition_dropout=1.0, image_shape=(2,))
        model.build(None)
        from keras_diffusion.conditioning import ConditionSpec

        null = model._null_condition(3)
        cond = ConditionSpec.drop({"labels": tf.constant([0, 1, 2])}, null, 1.0, seed=0)
        self.assertAllClose(cond["labels"], [3, 3, 3])

    def test_saving_round_trip_with_ema(self):
        model = self.cond_model
        expected = model.generate(labels=[0, 3], guidance_scale=2.0, num_steps=3, seed=5)
        path = os.path.join(self.get_temp_dir(), "model.keras")
        model.save(path)
        restored = keras.saving.load_model(path)
        self.assertIsInstance(restored, DiffusionModel)
        for key in ("prediction", "weighting", "num_classes", "image_shape", "schedule"):
            self.assertEqual(restored.get_config()[key], model.get_config()[key])
        self.assertEqual(restored.prediction, "x0")
        self.assertEqual(type(restored.schedule).__name__, "LinearSchedule")
        self.assertTrue(restored.optimizer.use_ema)
        actual = restored.generate(labels=[0, 3], guidance_scale=2.0, num_steps=3, seed=5)
        self.assertAllClose(actual, expected, atol=1e-6)

    def test_ema_weights_used_and_restored(self):
        model = self.cond_model
        # Keras' fit ends with the EMA values in the weights; move the
        # training weights away to see generate() swap the EMA back in.
        original = [np.asarray(w) for w in model.trainable_weights]
        try:
            expected = model.generate(8, num_steps=3, seed=0)
            for w in model.trainable_weights:
                w.assign(w + 0.1)
            training = [np.asarray(w) for w in model.trainable_weights]
            self.assertAllClose(model.generate(8, num_steps=3, seed=0), expected, atol=1e-6)
            without = model.generate(8, num_steps=3, seed=0, use_ema=False)
            self.assertFalse(np.allclose(without, expected))
            for a, b in zip(training, model.trainable_weights):
                self.assertAllClose(b, a)
        finally:
            for w, value in zip(model.trainable_weights, original):
                w.assign(value)

    def test_checkpoint_resume(self):
        x = _points(64)
        model = DiffusionModel(_mlp(), seed=0)
        model.fit(x, batch_size=32, epochs=1, verbose=0)
        ckpt = tf.train.Checkpoint(model=model, optimizer=model.optimizer)
        path = ckpt.save(os.path.join(self.get_temp_dir(), "ckpt"))
        weights = [np.asarray(w) for w in model.weights]
        model.fit(x, batch_size=32, epochs=1, verbose=0)
        ckpt.restore(path)
        self.assertAllClose(model.weights, weights)
        self.assertEqual(int(model.optimizer.iterations), 2)
        # BackupAndRestore (Keras weights files) runs too.
        backup = keras.callbacks.BackupAndRestore(os.path.join(self.get_temp_dir(), "b"))
        model.fit(x, batch_size=32, epochs=2, verbose=0, callbacks=[backup])

    def test_fit_outside_the_strategy_scope(self):
        # Created under a strategy, fit outside it: the lazily built
        # denoiser and the optimizer get the strategy's variables.
        strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
        with strategy.scope():
            model = DiffusionModel(_mlp(), seed=0)
            model.compile(keras.optimizers.Adam(1e-3, use_ema=True))
        history = model.fit(_points(64), batch_size=32, epochs=1, verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][0]))
        self.assertTrue(model.optimizer.built)
        self.assertIsInstance(model.trainable_variables[0].value, tf.distribute.DistributedValues)

    def test_generate_is_deterministic_and_batched(self):
        model = DiffusionModel(_mlp(), image_shape=(2,))
        model.build(None)
        a = model.generate(6, sampler="ddim", num_steps=3, seed=3)
        b = model.generate(6, sampler="ddim", num_steps=3, seed=3)
        c = model.generate(6, sampler="ddim", num_steps=3, seed=3, batch_size=4, verbose=0)
        self.assertAllClose(a, b)
        self.assertAllClose(a, c, atol=1e-5)  # Deterministic sampler: same noise.
        self.assertFalse(np.allclose(a, model.generate(6, sampler="ddim", num_steps=3, seed=4)))

    def test_uint8_images_are_rescaled(self):
        images = np.full((4, 8, 8, 1), 255, "uint8")
        model = DiffusionModel(_conv_denoiser(), image_shape=(8, 8, 1))
        model.build(None)
        got = np.asarray(model.codec.encode(images))
        self.assertAllClose(got, np.ones_like(got))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            model.fit(images, batch_size=4, epochs=1, verbose=0)
            model2 = DiffusionModel(_conv_denoiser())
            model2.fit(images.astype("float32"), batch_size=4, epochs=1, verbose=0)
        messages = [str(w.message) for w in caught]
        self.assertTrue(any("[-1, 1]" in m and "255" in m for m in messages), messages)

    def test_nan_policy(self):
        x = _points(8)
        x[3] = np.nan
        model = DiffusionModel(_mlp())
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "NaN or Inf in `images`"):
            model.fit(x, batch_size=8, epochs=1, verbose=0)
        model = DiffusionModel(_mlp(), nan_policy="skip")
        history = model.fit(x, batch_size=8, epochs=1, verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][0]))
        self.assertEqual(history.history["nonfinite_examples"][0], 1.0)
        self.assertTrue(all(np.all(np.isfinite(w)) for w in model.get_weights()))

    def test_bad_inputs(self):
        with self.assertRaisesWithArgument(ValueError, "prediction", "eps"):
            DiffusionModel(_mlp(), prediction="eps")
        with self.assertRaisesWithArgument(ValueError, "weighting", "snr"):
            DiffusionModel(_mlp(), weighting="snr")
        with self.assertRaisesWithArgument(ValueError, "condition_dropout", "1.5"):
            DiffusionModel(_mlp(), condition_dropout=1.5)
        with self.assertRaisesWithArgument(ValueError, "nan_policy", "ignore"):
            DiffusionModel(_mlp(), nan_policy="ignore")
        uncond = DiffusionModel(_mlp(), image_shape=(2,))
        uncond.build(None)
        with self.assertRaisesWithArgument(ValueError, "labels", "unconditional"):
            uncond.generate(labels=[1, 2])
        with self.assertRaisesWithArgument(ValueError, "labels", "num_classes"):
            uncond.fit(_points(8), np.zeros(8, "int32"), verbose=0)
        with self.assertRaisesWithArgument(ValueError, "guidance_scale", "-1"):
            uncond.generate(2, guidance_scale=-1.0)
        with self.assertRaisesWithArgument(ValueError, "images", re.escape("(3,)"), "image_shape", re.escape("(2,)")):
            uncond.fit(np.zeros((8, 3), "float32"), verbose=0)
        cond = DiffusionModel(_mlp(num_classes=3), image_shape=(2,))
        cond.build(None)
        with self.assertRaisesWithArgument(ValueError, "labels", re.escape("[0, 3)"), "7"):
            cond.generate(labels=[0, 7])
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "labels"):
            cond.fit(_points(4), np.array([0, 1, 2, 5], "int32"), batch_size=4, verbose=0)
        with self.assertRaisesWithArgument(ValueError, "num_classes", "5", "3"):
            DiffusionModel(_mlp(num_classes=3), num_classes=5)
        with self.assertRaisesWithArgument(ValueError, "loss"):
            cond.compile(loss="mse")


def _conv_denoiser():
    inputs = {
        "x_t": keras.Input((8, 8, 1), name="x_t"),
        "t": keras.Input((), name="t"),
    }
    h = keras.layers.Conv2D(4, 3, padding="same")(inputs["x_t"])
    h = h + keras.layers.Reshape((1, 1, 4))(keras.layers.Dense(4)(inputs["t"][:, None]))
    out = keras.layers.Conv2D(1, 3, padding="same")(h)
    return keras.Model(inputs, out)
