"""LatentConsistencyModel (LCM, LCM-LoRA) on a tiny VAE, UNet (DiT, MMDiT) and
text encoder.

8x8 latents (16x16 pixels, factor-2 VAE), batch 2, one fit step each. The
Stable Diffusion bridge's UNet is keras-cv's fixed 860M-parameter network
(no smaller configuration): LCM-LoRA on it is a slow test in
tests/pretrained/test_stable_diffusion.py (test_unet_adapter_lora_and_lcm_lora).
"""

import os
import subprocess
import sys

import keras
import numpy as np
from keras import ops

from keras_diffusion.models import VAE
from keras_diffusion.models import DiT
from keras_diffusion.models import LatentConsistencyModel
from keras_diffusion.models import LatentDiffusionModel
from keras_diffusion.models import MMDiT
from keras_diffusion.models import TextConditioner
from keras_diffusion.models import UNet
from keras_diffusion.testing import TestCase

PROMPTS = ["a red square", "a blue dot"]


def _teacher(network=None):
    vae = VAE(input_channels=1, latent_channels=4, base_channels=8, channel_multipliers=(1, 1),
              num_res_blocks=1, num_groups=4, mid_attention=False, scaling_factor=2.0)
    encoder = TextConditioner(vocabulary_size=20, sequence_length=4, embedding_dim=8,
                              num_layers=1, num_heads=1)
    encoder.adapt(PROMPTS)
    unet = network or UNet(input_channels=4, base_channels=8, channel_multipliers=(1,),
                           num_res_blocks=1, attention_resolutions=(8,), num_groups=4,
                           context_dim=8)
    teacher = LatentDiffusionModel(vae, unet, text_encoder=encoder, prediction="v",
                                   pixel_shape=(16, 16, 1), seed=0)
    teacher.build(None)
    encoder.trainable = False
    return teacher


def _data():
    images = np.random.default_rng(0).uniform(-1, 1, (2, 16, 16, 1)).astype("float32")
    return {"images": images, "text": np.array(PROMPTS)}


class LatentConsistencyModelTest(TestCase):
    def setUp(self):
        super().setUp()
        self.skip_unless_tensorflow()

    def test_lcm_with_guidance_embedding_fit_save_load_export(self):
        import tensorflow as tf

        teacher = _teacher()
        lcm = LatentConsistencyModel.from_teacher(teacher, guidance_range=(2.0, 6.0), seed=0)
        self.assertEqual(lcm.guidance_input, "guidance")
        self.assertEqual(lcm.image_shape, (8, 8, 4))
        # The skipping-step grid: k / T apart, from t_min (cosine, T = 1000).
        self.assertEqual(lcm.num_timesteps, int((0.997 - 1e-3) * 1000 // 20) + 1)
        self.assertAllClose(lcm.grid_times(np.array([0.0, 1.0]), lcm.num_timesteps),
                            [1e-3, 1e-3 + 0.02], atol=1e-6)
        # The student starts as the teacher: the w projection is zero, the
        # network reads the teacher's v as x0.
        x = np.random.default_rng(1).normal(size=(2, 8, 8, 4)).astype("float32")
        t = np.array([0.3, 0.8], "float32")
        context = teacher.encode_text(tf.constant(PROMPTS))
        net = lcm.denoiser.denoiser
        self.assertAllClose(
            net({"x_t": x, "t": t, "context": context, "guidance": np.array([2.0, 7.0])}),
            teacher.denoiser({"x_t": x, "t": t, "context": context}), atol=1e-5)

        lcm.compile(keras.optimizers.Adam(1e-3), run_eagerly=True)
        history = lcm.fit(tf.data.Dataset.from_tensor_slices(_data()).batch(2), verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][-1]))
        # Only the student's network trained (not the VAE, not the shared
        # encoder), its guidance projection included (it starts at zero).
        self.assertEqual(len(lcm.trainable_variables), len(lcm.denoiser.trainable_variables))
        self.assertGreater(float(np.abs(net.guidance_proj.kernel.numpy()).max()), 0.0)

        # w is a network input at sampling: two scales, two outputs.
        out = {w: lcm.generate(text=PROMPTS[0], num_images=2, num_steps=2, seed=0,
                               guidance_scale=w) for w in (2.0, 6.0)}
        self.assertEqual(out[2.0].shape, (2, 16, 16, 1))
        self.assertGreater(float(np.abs(out[2.0] - out[6.0]).max()), 0.0)

        directory = self.get_temp_dir()
        path = os.path.join(directory, "lcm.keras")
        lcm.save(path)
        script = (
            "import sys, numpy as np, keras_diffusion\n"
            f"m = keras_diffusion.load_model({path!r})\n"
            "assert type(m).__name__ == 'LatentConsistencyModel', type(m)\n"
            "assert m.teacher is None and m.guidance_range == (2.0, 6.0)\n"
            f"x = m.generate(text={PROMPTS[0]!r}, num_images=2, num_steps=2, seed=0, "
            "guidance_scale=6.0)\n"
            f"np.save({os.path.join(directory, 'fresh.npy')!r}, x)\n"
        )
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
        subprocess.run([sys.executable, "-c", script], check=True, env=env)
        self.assertAllClose(np.load(os.path.join(directory, "fresh.npy")), out[6.0], atol=1e-5)

        export_path = os.path.join(directory, "export")
        lcm.export(export_path)
        served = tf.saved_model.load(export_path)
        for n in (1, 4):
            got = served.signatures["generate"](
                seed=tf.constant(0, tf.int64), batch_size=tf.constant(2),
                guidance_scale=tf.constant(6.0), num_steps=tf.constant(n),
                text=tf.constant([PROMPTS[0]]))
            self.assertAllClose(got["images_float"],
                                lcm.generate(text=PROMPTS[0], num_images=2, num_steps=n,
                                             seed=0, guidance_scale=6.0),
                                atol=1e-4, rtol=1e-4)

    def test_lcm_with_dit_teacher_embeds_guidance(self):
        self._check_transformer_student(DiT)

    def test_lcm_with_mmdit_teacher_embeds_guidance(self):
        self._check_transformer_student(MMDiT)

    def _check_transformer_student(self, cls):
        """A DiT / MMDiT teacher: the student's copy has the w embedding,
        starts as the teacher at any w, trains and samples with w."""
        import tensorflow as tf

        network = cls(input_channels=4, context_dim=8, patch_size=2, hidden_dim=16, depth=1,
                      num_heads=2)
        teacher = _teacher(network)
        # adaLN-Zero makes a fresh transformer output zeros: give the teacher
        # trained-looking weights.
        rng = np.random.default_rng(0)
        network.set_weights([w + 0.1 * rng.normal(size=w.shape).astype(w.dtype)
                             for w in network.get_weights()])
        lcm = LatentConsistencyModel.from_teacher(teacher, guidance_range=(2.0, 6.0), seed=0)
        net = lcm.denoiser.denoiser
        self.assertIsInstance(net, cls)
        self.assertTrue(net.guidance_embedding)
        self.assertEqual(lcm.guidance_input, "guidance")
        x = np.random.default_rng(1).normal(size=(2, 8, 8, 4)).astype("float32")
        t = np.array([0.3, 0.8], "float32")
        context = teacher.encode_text(tf.constant(PROMPTS))
        expected = teacher.denoiser({"x_t": x, "t": t, "context": context})
        self.assertGreater(float(np.abs(ops.convert_to_numpy(expected)).max()), 0.1)
        self.assertAllClose(
            net({"x_t": x, "t": t, "context": context, "guidance": np.array([2.0, 7.0])}),
            expected, atol=1e-5)
        lcm.compile(keras.optimizers.Adam(1e-3), run_eagerly=True)
        history = lcm.fit(tf.data.Dataset.from_tensor_slices(_data()).batch(1), verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][-1]))
        self.assertGreater(float(np.abs(net.guidance_proj.kernel.numpy()).max()), 0.0)
        out = {w: lcm.generate(text=PROMPTS[0], num_images=1, num_steps=1, seed=0,
                               guidance_scale=w) for w in (2.0, 6.0)}
        self.assertGreater(float(np.abs(out[2.0] - out[6.0]).max()), 0.0)

    def test_lcm_lora_trains_only_lora_weights(self):
        import tensorflow as tf

        teacher = _teacher()
        lcm = LatentConsistencyModel.from_teacher(teacher, guidance_embedding=False,
                                                  lora_rank=2, guidance_range=4.0, seed=0)
        self.assertIsNone(lcm.guidance_input)
        trainable = lcm.trainable_variables
        self.assertTrue(trainable)
        self.assertTrue(all("lora_kernel" in v.path for v in trainable))
        before = {v.path: v.numpy().copy() for v in lcm.denoiser.weights}
        lcm.compile(keras.optimizers.Adam(1e-2), run_eagerly=True)
        lcm.fit(tf.data.Dataset.from_tensor_slices(_data()).batch(2), verbose=0)
        after = {v.path: v.numpy() for v in lcm.denoiser.weights}
        changed = {p for p, v in before.items() if not np.allclose(v, after[p])}
        self.assertTrue(changed)
        self.assertTrue(all("lora_kernel" in p for p in changed), sorted(changed)[:4])
        self.assertEqual(lcm.generate(text=PROMPTS, num_steps=1, seed=0).shape, (2, 16, 16, 1))

    def test_bad_input(self):
        teacher = _teacher()
        with self.assertRaisesWithArgument(ValueError, "guidance_range", "(6.0, 2.0)"):
            LatentConsistencyModel.from_teacher(teacher, guidance_range=(6.0, 2.0))
        with self.assertRaisesWithArgument(ValueError, "skipping_step", "0"):
            LatentConsistencyModel.from_teacher(teacher, skipping_step=0)
        with self.assertRaisesWithArgument(ValueError, "guidance_range", "(2.0, 6.0)"):
            LatentConsistencyModel.from_teacher(teacher, guidance_embedding=False,
                                                guidance_range=(2.0, 6.0))
        with self.assertRaisesWithArgument(ValueError, "lora_rank", "4"):
            LatentConsistencyModel.from_teacher(teacher, lora_rank=4)
        with self.assertRaisesWithArgument(ValueError, "teacher", "str"):
            LatentConsistencyModel.from_teacher("teacher.keras")
        unet = UNet(input_channels=4, base_channels=8, channel_multipliers=(1,),
                    attention_resolutions=(), num_groups=4, guidance_embedding=True)
        x = {"x_t": ops.zeros((1, 8, 8, 4)), "t": ops.ones((1,))}
        with self.assertRaisesWithArgument(ValueError, "guidance", "guidance_embedding=True"):
            unet(x)
        plain = UNet(input_channels=4, base_channels=8, channel_multipliers=(1,),
                     attention_resolutions=(), num_groups=4)
        with self.assertRaisesWithArgument(ValueError, "guidance", "guidance_embedding=False"):
            plain({**x, "guidance": ops.ones((1,))})


class NetworkPredictionTest(TestCase):
    def test_network_read_as_its_prediction_type(self):
        from keras_diffusion import objectives
        from keras_diffusion import schedules
        from keras_diffusion.models import ConsistencyParameterization
        from keras_diffusion.models import MLPDenoiser
        from keras_diffusion.models.consistency_parameterization import consistency_coefficients

        schedule = schedules.get("cosine")
        net = MLPDenoiser(data_dim=2, hidden_dim=8, num_layers=1)
        f = ConsistencyParameterization(net, schedule, 0.5, network_prediction="v")
        x = np.random.default_rng(0).normal(size=(3, 2)).astype("float32")
        t = np.array([schedule.t_min, 0.5, 0.99], "float32")
        v = net({"x_t": x, "t": t})
        x0, _ = objectives.to_x0_epsilon("v", v, x, t, schedule)
        c_skip, c_out = consistency_coefficients(schedule, t, 0.5)
        expected = c_skip[:, None] * x + c_out[:, None] * x0 / 0.5
        out = f({"x_t": x, "t": t})
        self.assertAllClose(out, expected, atol=1e-5)
        self.assertAllClose(out[0], x[0] / ops.convert_to_numpy(schedule.alpha(t[:1]))[0],
                            atol=1e-5)  # the boundary condition still holds
        revived = ConsistencyParameterization.from_config(f.get_config())
        self.assertEqual(revived.network_prediction, "v")
        self.assertNotIn("network_prediction",
                         ConsistencyParameterization(net, schedule).get_config())
        with self.assertRaisesWithArgument(ValueError, "prediction", "'velocity'"):
            ConsistencyParameterization(net, schedule, network_prediction="velocity")
