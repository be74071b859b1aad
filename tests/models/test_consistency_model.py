import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_diffusion import schedules
from keras_diffusion.models import ConsistencyModel
from keras_diffusion.models import ConsistencyParameterization
from keras_diffusion.models import Denoiser
from keras_diffusion.models import DiffusionModel
from keras_diffusion.models import MLPDenoiser
from keras_diffusion.models.consistency_parameterization import consistency_coefficients
from keras_diffusion.models.distillation import ode_step
from keras_diffusion.testing.gaussian_mixture import GaussianMixture
from keras_diffusion.testing.test_case import TestCase


def _mlp(**kwargs):
    return MLPDenoiser(data_dim=2, hidden_dim=16, num_layers=1, **kwargs)


def _ring_teacher(schedule):
    return GaussianMixture.ring(num_modes=4).denoiser(schedule, "x0")


class ConsistencyCoefficientsTest(TestCase):
    @pytest.mark.jax
    def test_boundary_condition_on_every_schedule(self):
        for name in ("cosine", "linear", "rectified_flow", "ve", "edm"):
            schedule = schedules.get(name)
            t = ops.convert_to_tensor([schedule.t_min, 0.5, 1.0], "float32")
            c_skip, c_out = consistency_coefficients(schedule, t)
            alpha = schedule.alpha(t)
            c_skip, c_out, alpha = [np.asarray(ops.convert_to_numpy(v)) for v in
                                    (c_skip, c_out, alpha)]
            self.assertAllClose(c_skip[0] * alpha[0], 1.0, atol=1e-5, msg=name)
            self.assertAllClose(c_out[0], 0.0, atol=1e-6, msg=name)
            self.assertTrue(np.all(np.isfinite(c_skip)) and np.all(np.isfinite(c_out)), name)
            self.assertGreater(c_out[1], 0.0)

    def test_parameterization_is_identity_at_t_min(self):
        schedule = schedules.get("cosine")
        f = ConsistencyParameterization(_mlp(), schedule)
        x = np.random.default_rng(0).normal(size=(5, 2)).astype("float32")
        out = f({"x_t": x, "t": np.full((5,), schedule.t_min, "float32")})
        alpha = float(ops.convert_to_numpy(schedule.alpha(schedule.t_min)))
        self.assertAllClose(out, x / alpha, atol=1e-5)
        inner = f({"x_t": x, "t": np.full((5,), 0.5, "float32")})
        self.assertGreater(np.abs(ops.convert_to_numpy(inner) - x).max(), 1e-3)
        self.run_serialization_test(f)
        with self.assertRaisesWithArgument(ValueError, "denoiser", "ConsistencyParameterization"):
            ConsistencyParameterization(f)


class ODEStepTest(TestCase):
    def test_solvers_on_a_gaussian_with_per_example_times(self):
        """For N(mu, s^2) the ODE is solved exactly: x_s = alpha_s mu +
        std_s / std_t (x_t - alpha_t mu). Heun and DPM-Solver-2 are closer to
        it than DDIM, each example with its own pair of times."""
        schedule = schedules.get("cosine")
        gmm = GaussianMixture([[0.7, -0.3], [0.7, -0.3]], 0.4)  # two equal components

        def denoise(x, t):
            from keras_diffusion import objectives

            return objectives.to_x0_epsilon(
                "x0", gmm.denoiser(schedule, "x0")(x, t), x, t, schedule)

        x = np.random.default_rng(0).normal(size=(3, 2)).astype("float32")
        t = np.array([0.9, 0.6, 0.3], "float32")
        s = np.array([0.5, 0.3, 0.05], "float32")

        def std(time):
            alpha, sigma = [np.asarray(ops.convert_to_numpy(v), "float64")[:, None]
                            for v in schedule.alpha_sigma(ops.convert_to_tensor(time))]
            return alpha, np.sqrt(alpha**2 * 0.16 + sigma**2)

        (a_t, std_t), (a_s, std_s) = std(t), std(s)
        mu = np.array([[0.7, -0.3]])
        exact = a_s * mu + std_s / std_t * (x - a_t * mu)
        def error(solver, parts):
            y = x
            for k in range(parts):
                y = ode_step(solver, denoise, y, t + (s - t) * k / parts,
                             t + (s - t) * (k + 1) / parts, schedule)
            return np.abs(ops.convert_to_numpy(y) - exact).max()

        # Four times smaller steps: DDIM's error ~4x smaller (first order),
        # Heun's and DPM-Solver-2's ~16x (second order).
        self.assertGreater(error("ddim", 1) / error("ddim", 4), 3.0)
        for solver in ("heun", "dpm_solver"):
            self.assertLess(error(solver, 1), error("ddim", 1) / 2, solver)
            self.assertGreater(error(solver, 1) / error(solver, 4), 8.0, solver)
        with self.assertRaisesWithArgument(ValueError, "solver", "rk4"):
            ode_step("rk4", denoise, x, t, s, schedule)


class ConsistencyModelTest(TestCase):
    def _data(self, n=64):
        return GaussianMixture.ring(num_modes=4).sample(n, seed=0).astype("float32")

    def test_distillation_fit_updates_the_ema_target_and_generates(self):
        schedule = schedules.get("cosine")
        model = ConsistencyModel(_mlp(), schedule=schedule, teacher=_ring_teacher(schedule),
                                 teacher_prediction="x0", solver="heun", seed=0)
        self.assertEqual(model.mode, "distillation")
        model.compile(keras.optimizers.Adam(1e-2), run_eagerly=True)
        history = model.fit(self._data(), batch_size=32, epochs=1, verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][-1]))
        self.assertEqual(len(model.target_variables), len(model.denoiser.trainable_variables))
        # Two steps with decay 0.95: the target is 0.95 theta_0 + 0.05 theta_1,
        # neither the weights now nor the initial ones.
        now = [np.asarray(v) for v in model.denoiser.trainable_variables]
        target = [np.asarray(v) for v in model.target_variables]
        self.assertGreater(max(np.abs(a - b).max() for a, b in zip(now, target)), 1e-6)
        self.assertEqual(float(np.asarray(model.step_counter)), 2.0)
        x = model.generate(5, num_steps=3, seed=0, verbose=0)
        self.assertEqual(x.shape, (5, 2))
        self.assertTrue(np.all(np.isfinite(x)))
        if keras.backend.backend() == "tensorflow":
            # tf.train.Checkpoint (the training script's resume) restores the
            # target network and the weight average with the weights.
            import tensorflow as tf

            checkpoint = tf.train.Checkpoint(model=model)
            path = checkpoint.save(os.path.join(self.get_temp_dir(), "ckpt"))
            saved = [np.asarray(v) for v in model.target_variables + model.ema.averages]
            for v in model.target_variables + model.ema.averages:
                v.assign(ops.zeros_like(v))
            checkpoint.restore(path)
            for a, b in zip(model.target_variables + model.ema.averages, saved):
                self.assertAllClose(a, b)

    def test_training_curriculum_and_class_conditions(self):
        model = ConsistencyModel(_mlp(num_classes=3), total_steps=700, seed=0)
        self.assertEqual((model.mode, model.distance, model.loss_weighting, model.time_draw),
                         ("training", "pseudo_huber", "ict", "lognormal"))
        # s0 = 10, s1 = 1280: 8 stages of floor(700 / 8) = 87 steps.
        for step, expected in ((0, 11), (86, 11), (87, 21), (700, 1281)):
            model.step_counter.assign(float(step))
            self.assertEqual(float(ops.convert_to_numpy(model._num_points())), expected)
        model.step_counter.assign(0.0)
        model.compile(keras.optimizers.Adam(1e-2), run_eagerly=True)
        labels = np.array([0, 1, 2, 1] * 8, "int32")
        model.fit(self._data(32), labels, batch_size=16, epochs=1, verbose=0)
        n = ops.convert_to_numpy(model._draw_pairs(256, ops.convert_to_tensor(11.0)))
        self.assertTrue(np.all((n >= 0) & (n <= 9)))
        x = model.generate(labels=[0, 2], num_steps=2, seed=1, verbose=0)
        self.assertEqual(x.shape, (2, 2))

    def test_class_conditional_model_teacher_with_guidance(self):
        teacher = DiffusionModel(_mlp(num_classes=2), image_shape=(2,), prediction="v")
        teacher.build(None)
        student = ConsistencyModel(_mlp(num_classes=2), teacher=teacher, solver="dpm_solver",
                                   guidance_scale=3.0, seed=0)
        student.compile(keras.optimizers.Adam(1e-2), run_eagerly=True)
        labels = np.array([0, 1] * 8, "int32")
        student.fit(self._data(16), labels, batch_size=16, epochs=1, verbose=0)
        self.assertEqual(student.generate(labels=[1], verbose=0).shape, (1, 2))

    def test_bad_teachers(self):
        linear = DiffusionModel(_mlp(), schedule="linear", image_shape=(2,))
        with self.assertRaisesRegex(ValueError, "schedule.*does not match"):
            ConsistencyModel(_mlp(), schedule="cosine", teacher=linear)
        wide = DiffusionModel(MLPDenoiser(data_dim=3, hidden_dim=8, num_layers=1),
                              image_shape=(3,))
        wide.build(None)
        student = ConsistencyModel(_mlp(), teacher=wide)
        with self.assertRaisesRegex(ValueError, r"shape \(3,\).*image_shape=\(2,\)"):
            student.fit(self._data(8), batch_size=8, verbose=0)
        classes = DiffusionModel(_mlp(num_classes=2), image_shape=(2,))
        with self.assertRaisesRegex(ValueError, "num_classes=2.*num_classes=None"):
            ConsistencyModel(_mlp(), teacher=classes).build({"images": (1, 2)})
        with self.assertRaisesWithArgument(ValueError, "teacher_prediction", "None"):
            ConsistencyModel(_mlp(), teacher=lambda x, t: x)
        with self.assertRaisesWithArgument(ValueError, "teacher", "int"):
            ConsistencyModel(_mlp(), teacher=3)
        with self.assertRaisesWithArgument(ValueError, "solver", "euler"):
            ConsistencyModel(_mlp(), teacher=lambda x, t: x, teacher_prediction="x0",
                             solver="euler")
        with self.assertRaisesWithArgument(ValueError, "target_ema_decay", "1.0"):
            ConsistencyModel(_mlp(), target_ema_decay=1.0)

    def test_saving_and_export_with_few_steps(self):
        self.skip_unless_tensorflow()
        import tensorflow as tf

        schedule = schedules.get("cosine")
        model = ConsistencyModel(_mlp(), schedule=schedule, teacher=_ring_teacher(schedule),
                                 teacher_prediction="x0", seed=0)
        model.compile(keras.optimizers.Adam(1e-2), run_eagerly=True)
        model.fit(self._data(16), batch_size=16, epochs=1, verbose=0)
        directory = self.get_temp_dir()
        path = os.path.join(directory, "cm.keras")
        model.save(path)
        expected = model.generate(4, num_steps=2, seed=3, verbose=0)
        loaded = keras.models.load_model(path)
        self.assertIsInstance(loaded, ConsistencyModel)
        self.assertEqual((loaded.teacher, loaded.mode), (None, "distillation"))
        self.assertAllClose(loaded.generate(4, num_steps=2, seed=3, verbose=0), expected,
                            atol=1e-5)
        export_path = os.path.join(directory, "export")
        model.export(export_path)
        served = tf.saved_model.load(export_path)
        for n in (1, 4):
            out = served.signatures["generate"](
                seed=tf.constant(3, tf.int64), batch_size=tf.constant(4),
                guidance_scale=tf.constant(1.0), num_steps=tf.constant(n))
            self.assertAllClose(out["images_float"],
                                model.generate(4, num_steps=n, seed=3, verbose=0),
                                atol=1e-4, rtol=1e-4)


class _ContextMLP(Denoiser):
    """A tiny denoiser of vectors that reads a text context (mean-pooled)."""

    data_rank = 2
    context_dim = 8

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(2)

    def call(self, inputs, training=None):
        t = ops.reshape(ops.cast(inputs["t"], "float32"), (-1, 1))
        context = ops.mean(inputs["context"], axis=1)
        return self.dense(ops.concatenate([inputs["x_t"], t, context], axis=-1))


class TextConsistencyModelTest(TestCase):
    def test_text_conditioned_distillation_shares_the_teacher_encoder(self):
        self.skip_unless_tensorflow()
        import tensorflow as tf

        from keras_diffusion.models import TextConditioner

        encoder = TextConditioner(vocabulary_size=20, sequence_length=4, embedding_dim=8,
                                  num_layers=1, num_heads=1)
        encoder.adapt(["a red square", "a blue dot"])
        teacher = DiffusionModel(_ContextMLP(), text_encoder=encoder, image_shape=(2,))
        teacher.build(None)
        encoder.trainable = False
        student = ConsistencyModel(_ContextMLP(), teacher=teacher, text_encoder=encoder,
                                   solver="ddim", guidance_scale=2.0, seed=0)
        student.compile(keras.optimizers.Adam(1e-3), run_eagerly=True)
        data = tf.data.Dataset.from_tensor_slices(
            {"images": _ring_data(4), "text": ["a red square", "a blue dot"] * 2}).batch(4)
        history = student.fit(data, verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][-1]))
        # Only the student's network trained: the shared encoder is frozen.
        self.assertEqual(len(student.trainable_variables),
                         len(student.denoiser.trainable_variables))
        out = student.generate(text=["a blue dot"], num_steps=2, seed=0, verbose=0)
        self.assertEqual(out.shape, (1, 2))


def _ring_data(n):
    return GaussianMixture.ring(num_modes=4).sample(n, seed=0).astype("float32")
