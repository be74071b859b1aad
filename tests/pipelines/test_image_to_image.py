import numpy as np
import tensorflow as tf
from keras import ops

from keras_diffusion.pipelines import image_to_image as i2i
from keras_diffusion import samplers
from keras_diffusion import schedules
from keras_diffusion.models.diffusion_model import DiffusionModel
from keras_diffusion.models.unet import UNet
from keras_diffusion.testing import TestCase

DETERMINISTIC = ("ddim", "dpm_solver", "euler", "heun", "ode")
MU, STD = 0.3, 0.5


def _coefficients(schedule, t):
    a, s = schedule.alpha_sigma(t)
    return ops.reshape(a, (-1, 1, 1, 1)), ops.reshape(s, (-1, 1, 1, 1))


def gaussian_x0_fn(schedule):
    """The exact x0-prediction for data with i.i.d. pixels ~ N(MU, STD^2)."""

    def fn(x, t):
        a, s = _coefficients(schedule, t)
        return MU + a * STD**2 * (x - a * MU) / (a * a * STD**2 + s * s)

    return fn


def shared_value_x0_fn(schedule):
    """The exact x0-prediction when all pixels of an image equal one c ~ N(0, 1)."""

    def fn(x, t):
        a, s = _coefficients(schedule, t)
        n = float(np.prod(x.shape[1:]))
        c = a * ops.sum(x, axis=(1, 2, 3), keepdims=True) / (n * a * a + s * s)
        return c * ops.ones_like(x)

    return fn


def _images(shape=(2, 4, 4, 1), seed=0):
    return np.random.default_rng(seed).normal(size=shape).astype("float32")


class Img2ImgTest(TestCase):
    def test_matches_probability_flow_for_gaussian_data(self):
        # For Gaussian data the probability-flow ODE maps x_t0 to
        # MU + STD * (x_t0 - a MU) / sqrt(a^2 STD^2 + s^2): the output must be
        # that map applied to the images noised to the first kept time.
        schedule = schedules.get("cosine")
        images, eps = _images(), _images(seed=1)
        tolerance = {"ddim": 0.1, "euler": 0.06, "heun": 0.02, "dpm_solver": 0.005, "ode": 0.005}
        for name in DETERMINISTIC:
            sampler = samplers.get(name)
            # The ODE sampler's default span ends at t = 1e-3, where its
            # solver meets NaN for this model (an ODESampler issue): stop at 0.01.
            # A grid from t = 1 with a point at 0.6 (the default grid on cosine
            # starts at t = 0.9966, `samplers.spacing.start_time`).
            uniform = [1.0 - i / 20 for i in range(20)]
            grid = dict(timesteps=[1.0, 0.6, 0.01] if name == "ode" else uniform)
            tail = i2i.strength_timesteps(sampler, schedule, 0.6, **grid)
            self.assertAlmostEqual(float(tail[0]), 0.6, places=5, msg=name)
            out = i2i.img2img(
                gaussian_x0_fn(schedule), images, sampler=sampler, schedule=schedule,
                prediction="x0", strength=0.6, seed=0, noise=eps, **grid,
            )
            a, s = (float(v) for v in schedule.alpha_sigma(ops.convert_to_tensor(0.6)))
            x_t0 = a * images + s * eps
            expected = MU + STD * (x_t0 - a * MU) / np.sqrt(a * a * STD**2 + s * s)
            self.assertAllClose(out, expected, atol=tolerance[name], rtol=0, msg=name)

    def test_tail_of_the_grid(self):
        schedule = schedules.get("linear")
        tail = i2i.strength_timesteps("ddim", schedule, 0.5, num_steps=10)
        self.assertAllClose(tail, [0.5, 0.4, 0.3, 0.2, 0.1], atol=1e-6)
        tail = i2i.strength_timesteps("ddim", schedule, 0.75, timesteps=[1.0, 0.8, 0.7, 0.2])
        self.assertAllClose(tail, [0.7, 0.2], atol=1e-6)
        self.assertEqual(i2i.strength_timesteps("ddim", schedule, 1.0, 10).size, 10)
        self.assertAllClose(i2i.strength_timesteps("ode", schedule, 0.3), [0.3, 1e-3], atol=1e-6)

    def test_strength_one_is_plain_sampling_and_zero_is_identity(self):
        schedule = schedules.get("rectified_flow")  # alpha(1) = 0: exactly the prior.
        images, eps = _images(), _images(seed=1)
        fn = gaussian_x0_fn(schedule)
        for name in ("ddim", "dpm_solver"):
            sampler = samplers.get(name)
            # From t = 1 exactly (where alpha = 0): the default grid starts at
            # log-SNR -10.5, where img2img's start keeps alpha(t0) x ~ 0.005 x.
            grid = [1.0, 0.8, 0.6, 0.4, 0.2]
            full = i2i.img2img(fn, images, sampler=sampler, schedule=schedule,
                               prediction="x0", strength=1.0, timesteps=grid, noise=eps, seed=0)
            plain = sampler.sample(fn, eps, schedule=schedule, prediction="x0", timesteps=grid)
            self.assertAllClose(full, plain, atol=1e-5)
        same = i2i.img2img(fn, images, sampler="ddim", schedule=schedule, prediction="x0",
                           strength=0.0, num_steps=5)
        self.assertAllClose(same, images)
        # Below the smallest grid time (0.2): nothing to run.
        same = i2i.img2img(fn, images, sampler="ddim", schedule=schedule, prediction="x0",
                           strength=0.1, num_steps=5)
        self.assertAllClose(same, images)

    def test_bad_strength(self):
        fn = gaussian_x0_fn(schedules.get("cosine"))
        for strength in (-0.1, 1.5, float("nan"), "high", None):
            with self.assertRaisesWithArgument(ValueError, "strength", strength):
                i2i.img2img(fn, _images(), sampler="ddim", schedule="cosine",
                            prediction="x0", strength=strength)


class InpaintTest(TestCase):
    def test_keeps_known_region_and_generated_region_is_plain_sampling(self):
        # i.i.d. pixels: the generated pixels do not depend on the known ones,
        # so with strength 1 they are plain sampling from the same noise.
        schedule = schedules.get("rectified_flow")
        images, eps = _images((2, 8, 8, 1)), _images((2, 8, 8, 1), seed=1)
        mask = np.zeros((8, 8, 1), "float32")
        mask[2:6, 2:6] = 1
        fn = gaussian_x0_fn(schedule)
        for name in DETERMINISTIC:
            sampler = samplers.get(name)
            grid = [1.0 - i / 6 for i in range(6)]  # From t = 1, where alpha = 0.
            out = np.asarray(i2i.inpaint(fn, images, mask, sampler=sampler, schedule=schedule,
                                         prediction="x0", timesteps=grid, seed=0, noise=eps))
            plain = np.asarray(sampler.sample(fn, eps, schedule=schedule, prediction="x0",
                                              timesteps=grid))
            known = mask[None] == 0
            np.testing.assert_array_equal(out[np.broadcast_to(known, out.shape)],
                                          images[np.broadcast_to(known, out.shape)])
            region = np.broadcast_to(~known, out.shape)
            self.assertAllClose(out[region], plain[region], atol=2e-3, msg=name)

    def test_fills_from_the_known_region(self):
        # All pixels share one value: the generated half must match the known half.
        schedule = schedules.get("cosine")
        images = np.full((8, 8, 8, 1), 0.7, "float32")
        mask = np.zeros((8, 8, 1), "float32")
        mask[:, 4:] = 1
        for name in ("ddim", "dpm_solver", "ddpm"):
            errors = {}
            for renoise in ("fresh", "fixed"):
                out = np.asarray(i2i.inpaint(
                    shared_value_x0_fn(schedule), images, mask, sampler=name,
                    schedule=schedule, prediction="x0", num_steps=20, seed=1, renoise=renoise,
                ))
                errors[renoise] = float(np.sqrt(np.mean((out[:, :, 4:] - 0.7) ** 2)))
            # Unconditional samples would be N(0, 1): an RMS error of ~1.
            self.assertLess(errors["fresh"], 0.15, name)
            self.assertLess(errors["fresh"], errors["fixed"], name)

    def test_mask_validation(self):
        fn = gaussian_x0_fn(schedules.get("cosine"))
        images = _images((2, 8, 8, 3))
        for mask in (np.ones((8, 8)), np.ones((8, 8, 1)), np.ones((2, 8, 8, 3)),
                     np.ones((1, 8, 8, 1))):
            self.assertEqual(tuple(i2i.check_mask(mask, images).shape)[1:3], (8, 8))
        for mask in (np.ones((4, 4)), np.ones((8, 8, 2)), np.ones((3, 8, 8, 1)), np.ones(8)):
            with self.assertRaisesWithArgument(ValueError, "mask", "shape", mask.shape):
                i2i.inpaint(fn, images, mask, sampler="ddim", schedule="cosine",
                            prediction="x0", num_steps=2)
        with self.assertRaisesWithArgument(ValueError, "mask", r"\[0, 1\]", "2"):
            i2i.check_mask(np.full((8, 8), 2.0), images)
        with self.assertRaisesWithArgument(ValueError, "strength", "2"):
            i2i.inpaint(fn, images, np.ones((8, 8)), sampler="ddim", schedule="cosine",
                        prediction="x0", strength=2)
        with self.assertRaisesWithArgument(ValueError, "renoise", "sometimes"):
            i2i.inpaint(fn, images, np.ones((8, 8)), sampler="ddim", schedule="cosine",
                        prediction="x0", renoise="sometimes")

    def test_channel_conditions(self):
        images = _images((2, 8, 8, 3))
        mask = np.zeros((8, 8, 1), "float32")
        mask[:4] = 1
        cond = np.asarray(i2i.inpainting_condition(images, mask))
        self.assertEqual(cond.shape, (2, 8, 8, 4))
        np.testing.assert_array_equal(cond[:, :4, :, :3], 0.0)
        np.testing.assert_array_equal(cond[:, 4:, :, :3], images[:, 4:])
        np.testing.assert_array_equal(cond[..., 3], np.broadcast_to(mask[..., 0], (2, 8, 8)))
        up = i2i.upsample_condition(images[:, :4, :4], (8, 8))
        self.assertEqual(tuple(up.shape), (2, 8, 8, 3))
        self.assertEqual(tuple(i2i.resize_to(images, (4, 4)).shape), (2, 4, 4, 3))


class ModelImageToImageTest(TestCase):
    """A pixel-space DiffusionModel conditioned on a channel-concatenated image."""

    def setUp(self):
        super().setUp()
        self.skip_unless_tensorflow()

    def test_super_resolution_model_img2img_and_inpaint(self):
        rng = np.random.default_rng(0)
        images = rng.uniform(-1, 1, (4, 8, 8, 1)).astype("float32")
        low = np.asarray(i2i.resize_to(images, (4, 4)))
        condition = np.asarray(i2i.upsample_condition(low, (8, 8)))
        unet = UNet(input_channels=1, base_channels=8, channel_multipliers=(1,),
                    num_res_blocks=1, attention_resolutions=(), num_groups=4,
                    condition_channels=1, num_classes=2)
        model = DiffusionModel(unet, prediction="v", seed=0)
        # Eager sampling: faster than tracing a graph per sampler for a tiny UNet.
        model.compile(optimizer="adam", run_eagerly=True)
        data = {"images": images, "condition": condition, "labels": np.array([0, 1, 0, 1])}
        model.fit(data, batch_size=4, epochs=1, verbose=0)
        self.assertEqual(model.condition_shape, (8, 8, 1))
        mask = np.zeros((8, 8, 1), "float32")
        mask[:, 4:] = 1
        for name in ("ddim", "dpm_solver", "euler", "heun"):
            out = model.img2img(images[:2], strength=0.5, condition=condition[:2],
                                    labels=[0, 1], sampler=name, num_steps=4, seed=0,
                                    guidance_scale=2.0)
            self.assertEqual(out.shape, (2, 8, 8, 1))
            self.assertTrue(np.all(np.isfinite(out)), name)
            filled = model.inpaint(images[:2], mask, condition=condition[:2],
                                       labels=[0, 1], sampler=name, num_steps=3, seed=0)
            np.testing.assert_array_equal(filled[:, :, :4], images[:2, :, :4])
        again = model.img2img(images[:2], strength=0.5, condition=condition[:2],
                                  labels=[0, 1], sampler="heun", num_steps=4, seed=0,
                                  guidance_scale=2.0)
        self.assertAllClose(out, again, atol=1e-5)
        with self.assertRaisesWithArgument(ValueError, "condition", "shape"):
            model.img2img(images[:2], condition=condition[:2, :4], num_steps=2)
        with self.assertRaisesWithArgument(ValueError, "strength", "-1"):
            model.img2img(images[:2], strength=-1, condition=condition[:2])
        with self.assertRaisesWithArgument(ValueError, "mask", "shape"):
            model.inpaint(images[:2], np.ones((4, 4)), condition=condition[:2])
        with self.assertRaisesWithArgument(ValueError, "labels"):
            model.img2img(images[:2], labels=[0, 5], condition=condition[:2])

    def test_runs_inside_tf_function(self):
        schedule = schedules.get("cosine")
        fn = gaussian_x0_fn(schedule)

        @tf.function
        def edit(x):
            return i2i.img2img(fn, x, sampler="ddim", schedule=schedule,
                               prediction="x0", strength=0.5, num_steps=4, seed=3)

        images = _images()
        eager = i2i.img2img(fn, images, sampler="ddim", schedule=schedule,
                            prediction="x0", strength=0.5, num_steps=4, seed=3)
        self.assertAllClose(edit(tf.constant(images)), eager, atol=1e-5)


class SeedContractTest(TestCase):
    def test_model_img2img_draws_its_noise_from_the_seed_streams(self):
        """img2img's noise is `random.step_noise(shape, seed, IMG2IMG_NOISE)`
        (as generate and the export draw theirs), not NumPy's generator."""
        self.skip_unless_tensorflow()
        from keras_diffusion import random as random_lib
        from keras_diffusion.models import MLPDenoiser

        model = DiffusionModel(MLPDenoiser(data_dim=3, hidden_dim=8, num_layers=1),
                               image_shape=(3,), prediction="v")
        model.build(None)
        images = np.random.default_rng(0).uniform(-1, 1, (4, 3)).astype("float32")
        got = model.img2img(images, strength=0.7, num_steps=5, seed=11, clip=False)
        noise = random_lib.step_noise((4, 3), 11, random_lib.IMG2IMG_NOISE)
        tail = i2i.strength_timesteps("ddim", model.schedule, 0.7, num_steps=5)
        expected = i2i.img2img(model.model_fn(), images, sampler="ddim",
                               schedule=model.schedule, prediction="v", timesteps=tail,
                               seed=11, noise=noise)
        self.assertAllClose(got, expected, atol=1e-5)
        self.assertAllClose(got, model.img2img(images, strength=0.7, num_steps=5, seed=11,
                                               clip=False))
