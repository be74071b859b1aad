import keras
import numpy as np
from keras import ops

from keras_diffusion import schedules
from keras_diffusion.models import DiffusionModel
from keras_diffusion.models import MLPDenoiser
from keras_diffusion.models import ProgressiveDistillationModel
from keras_diffusion.models.progressive_distillation import distillation_target
from keras_diffusion.samplers.sampler import Sampler
from keras_diffusion.testing.gaussian_mixture import GaussianMixture
from keras_diffusion.testing.test_case import TestCase


def _mlp(**kwargs):
    return MLPDenoiser(data_dim=2, hidden_dim=16, num_layers=1, **kwargs)


class ProgressiveDistillationTest(TestCase):
    def test_target_is_the_x0_of_one_ddim_step_onto_the_teacher(self):
        schedule = schedules.get("cosine")
        rng = np.random.default_rng(0)
        x_t, x_end = rng.normal(size=(2, 3, 2)).astype("float32")
        t = np.array([0.9, 0.5, 0.2], "float32")
        t_end = np.array([0.7, 0.0, 0.1], "float32")
        x0 = distillation_target(x_t, x_end, t, t_end, schedule)
        alpha_t, sigma_t = [ops.reshape(v, (-1, 1)) for v in schedule.alpha_sigma(t)]
        eps = (x_t - alpha_t * x0) / sigma_t
        landed = Sampler.ddim_step(x0, eps, ops.reshape(t_end, (-1, 1)), schedule)
        self.assertAllClose(landed, x_end, atol=1e-4, rtol=1e-4)
        self.assertAllClose(x0[1], x_end[1], atol=1e-5)  # t_end = 0: the x0 itself

    def test_student_starts_from_the_teacher_and_rounds_halve(self):
        teacher = DiffusionModel(_mlp(num_classes=2), image_shape=(2,), prediction="v")
        teacher.build(None)
        student = ProgressiveDistillationModel(teacher=teacher, teacher_steps=4, seed=0)
        self.assertEqual((student.student_steps, student.num_classes), (2, 2))
        self.assertIsNot(student.denoiser, teacher.denoiser)
        for a, b in zip(student.denoiser.weights, teacher.denoiser.weights):
            self.assertAllClose(a, b)
        student.compile(keras.optimizers.Adam(1e-2), run_eagerly=True)
        data = GaussianMixture.ring(4).sample(16).astype("float32")
        labels = np.array([0, 1] * 8, "int32")
        history = student.fit(data, labels, batch_size=16, verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][-1]))
        self.assertGreater(max(np.abs(np.asarray(a) - np.asarray(b)).max() for a, b in
                               zip(student.denoiser.weights, teacher.denoiser.weights)), 1e-4)
        nxt = student.next_round()
        self.assertEqual((nxt.teacher_steps, nxt.student_steps), (2, 1))
        self.assertIs(nxt.teacher.source, student)
        with self.assertRaisesWithArgument(ValueError, "1 step"):
            nxt.next_round()
        self.assertEqual(student.generate(labels=[0, 1], seed=0, verbose=0).shape, (2, 2))
        with self.assertRaisesWithArgument(ValueError, "2 DDIM steps", "num_steps=4"):
            student.generate(2, num_steps=4)
        config = student.get_config()
        restored = ProgressiveDistillationModel.from_config(config)
        self.assertEqual((restored.student_steps, restored.teacher), (2, None))

    def test_function_teacher_and_bad_input(self):
        schedule = schedules.get("cosine")
        teacher = GaussianMixture.ring(4).denoiser(schedule, "x0")
        student = ProgressiveDistillationModel(_mlp(), teacher=teacher, teacher_prediction="x0",
                                               teacher_steps=2, seed=0)
        student.compile(keras.optimizers.Adam(1e-2), run_eagerly=True)
        student.fit(GaussianMixture.ring(4).sample(8).astype("float32"), batch_size=8,
                    verbose=0)
        with self.assertRaisesWithArgument(ValueError, "teacher_steps", "3"):
            ProgressiveDistillationModel(_mlp(), teacher=teacher, teacher_prediction="x0",
                                         teacher_steps=3)
        eps_teacher = DiffusionModel(_mlp(), image_shape=(2,), prediction="epsilon")
        with self.assertRaisesWithArgument(ValueError, "prediction='v'", "'epsilon'"):
            ProgressiveDistillationModel(teacher=eps_teacher)
        flow = DiffusionModel(_mlp(), image_shape=(2,), schedule="rectified_flow")
        with self.assertRaisesRegex(ValueError, "schedule.*does not match"):
            ProgressiveDistillationModel(_mlp(), teacher=flow, schedule="cosine")
        loaded = ProgressiveDistillationModel(_mlp(), teacher_steps=2, image_shape=(2,))
        with self.assertRaisesRegex(ValueError, "needs a teacher"):
            loaded.fit(np.zeros((4, 2), "float32"), batch_size=4, verbose=0)
