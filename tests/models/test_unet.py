"""UNet denoiser: contract, conditioning, saving, mixed precision, LoRA,
validation and the DDPM parameter count (any backend)."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_diffusion.models import UNet
from keras_diffusion.testing import TestCase

TINY = {
    "input_channels": 3,
    "base_channels": 8,
    "channel_multipliers": (1, 2),
    "num_res_blocks": 1,
    "attention_resolutions": (4,),
    "num_heads": 2,
    "num_groups": 4,
}


def _inputs(batch=2, size=8, channels=3, seed=0, **extra):
    rng = np.random.default_rng(seed)
    out = {
        "x_t": ops.convert_to_tensor(rng.normal(size=(batch, size, size, channels)).astype("float32")),
        "t": ops.convert_to_tensor(rng.uniform(size=(batch,)).astype("float32")),
    }
    for k, v in extra.items():
        out[k] = ops.convert_to_tensor(v)
    return out


@pytest.mark.jax
class UNetTest(TestCase):
    def test_layer_test_unconditional(self):
        self.skip_on_jax(
            "test_denoiser_contract.test_unet runs the denoiser checks (mixed_bfloat16 float32 "
            "outputs, LoRA, .keras round-trip) on JAX; TensorFlow runs this one"
        )
        self.run_layer_test(UNet, TINY, _inputs(), expected_output_shape=(2, 8, 8, 3))

    def test_layer_test_all_conditioning(self):
        rng = np.random.default_rng(1)
        config = dict(TINY, num_classes=5, context_dim=6, condition_channels=2,
                      time_conditioning="additive", dropout=0.1)
        inputs = _inputs(
            labels=np.array([0, 5], "int32"),
            context=rng.normal(size=(2, 3, 6)).astype("float32"),
            condition=rng.normal(size=(2, 8, 8, 2)).astype("float32"),
        )
        model = self.run_layer_test(UNet, config, inputs, expected_output_shape=(2, 8, 8, 3))
        self.assertEqual(model.null_label, 5)
        # Missing labels are the null class.
        without = {k: v for k, v in inputs.items() if k != "labels"}
        null = dict(inputs, labels=ops.convert_to_tensor(np.array([5, 5], "int32")))
        self.assertAllClose(model(without), model(null), atol=1e-5)
        # Labels, context and condition all change the output.
        base = ops.convert_to_numpy(model(inputs))
        for key in ("labels", "context", "condition"):
            other = dict(inputs)
            other[key] = ops.flip(inputs[key], axis=0)
            self.assertFalse(np.allclose(base, ops.convert_to_numpy(model(other))), key)

    def test_output_dtype_and_time_dependence(self):
        model = UNet(**TINY)
        x = _inputs()
        a = model(x)
        self.assertEqual(ops.convert_to_numpy(a).dtype, np.float32)
        b = model(dict(x, t=x["t"] * 0.5))
        self.assertFalse(np.allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b)))
        # A scalar t broadcasts over the batch.
        c = model(dict(x, t=ops.convert_to_tensor(np.float32(0.3))))
        d = model(dict(x, t=ops.convert_to_tensor(np.full((2,), 0.3, "float32"))))
        self.assertAllClose(c, d, atol=1e-6)

    def test_guidance_embedding(self):
        self.skip_on_jax(
            "the w embedding is the Denoiser base's (test_dit and test_mmdit run its checks "
            "on JAX); TensorFlow runs this one (22 s on JAX)"
        )
        model = self.run_guidance_embedding_test(
            UNet, dict(TINY, channel_multipliers=(1,), attention_resolutions=()), _inputs()
        )
        self.assertEqual(model.guidance_proj.units, 4 * TINY["base_channels"])

    def test_saving_identical_outputs(self):
        model = UNet(**dict(TINY, num_classes=3))
        inputs = _inputs(labels=np.array([1, 3], "int32"))
        self.run_model_saving_test(model, inputs)

    def test_mixed_precision_outputs_float32(self):
        self.skip_on_jax(
            "test_denoiser_contract.test_unet runs the denoiser checks (mixed_bfloat16 float32 "
            "outputs, LoRA, .keras round-trip) on JAX; TensorFlow runs this one"
        )
        reference = UNet(**TINY)
        inputs = _inputs()
        expected = ops.convert_to_numpy(reference(inputs))
        for policy in ("mixed_bfloat16", "mixed_float16"):
            keras.config.set_dtype_policy(policy)
            model = UNet(**TINY)
            model(inputs)
            model.set_weights(reference.get_weights())
            out = model(inputs)
            self.assertEqual(model.compute_dtype, policy.split("_")[1])
            self.assertEqual(ops.convert_to_numpy(out).dtype, np.float32)
            self.assertAllClose(out, expected, atol=0.1, rtol=0.1)
            keras.config.set_dtype_policy("float32")

    def test_lora(self):
        self.skip_on_jax(
            "test_denoiser_contract.test_unet runs the denoiser checks (mixed_bfloat16 float32 "
            "outputs, LoRA, .keras round-trip) on JAX; TensorFlow runs this one"
        )
        model = UNet(**dict(TINY, num_classes=3))
        inputs = _inputs(labels=np.array([1, 2], "int32"))
        before = ops.convert_to_numpy(model(inputs))
        model.enable_lora(2)
        # LoRA starts as a no-op and only LoRA weights train.
        self.assertAllClose(model(inputs), before, atol=1e-6)
        names = [w.path for w in model.trainable_weights]
        self.assertTrue(names)
        self.assertTrue(all("lora_kernel" in n for n in names), names)
        # 4 attention blocks (1 down, 2 up, 1 middle), qkv and proj each,
        # two LoRA kernels each.
        self.assertEqual(len(names), 4 * 2 * 2)
        frozen = [ops.convert_to_numpy(w) for w in model.non_trainable_weights]
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        target = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
        model.fit(inputs, target, batch_size=2, epochs=2, verbose=0)
        for a, w in zip(frozen, model.non_trainable_weights):
            self.assertAllClose(w, a)
        self.assertFalse(np.allclose(ops.convert_to_numpy(model(inputs)), before))
        restored = self.run_model_saving_test(model, inputs)
        self.assertEqual(restored.lora_rank, 2)

    def test_validation_errors(self):
        model = UNet(**TINY)
        model(_inputs())
        with self.assertRaisesWithArgument(ValueError, "x_t", "rank 4", "(2, 8, 8)"):
            model({"x_t": ops.zeros((2, 8, 8)), "t": ops.zeros((2,))})
        with self.assertRaisesWithArgument(ValueError, "x_t", "4 channels", "input_channels=3"):
            model(_inputs(channels=4))
        with self.assertRaisesWithArgument(ValueError, "x_t", "not divisible", "2"):
            UNet(**TINY)(_inputs(size=7))
        with self.assertRaisesWithArgument(ValueError, "t", r"\(2, 1\)"):
            model({"x_t": ops.zeros((2, 8, 8, 3)), "t": ops.zeros((2, 1))})
        with self.assertRaisesWithArgument(ValueError, "labels", "num_classes=None"):
            model(_inputs(labels=np.array([0, 1])))
        with self.assertRaisesWithArgument(ValueError, "inputs", "x_t"):
            model(ops.zeros((2, 8, 8, 3)))
        labeled = UNet(**dict(TINY, num_classes=3))
        with self.assertRaisesWithArgument(ValueError, "labels", r"\[0, 3\]", r"\[1, 4\]"):
            labeled(_inputs(labels=np.array([1, 4], "int32")))
        with self.assertRaisesWithArgument(ValueError, "labels", r"\[-1, 0\]"):
            labeled(_inputs(labels=np.array([-1, 0], "int32")))
        cross = UNet(**dict(TINY, context_dim=4))
        with self.assertRaisesWithArgument(ValueError, "context", "context_dim=4"):
            cross(_inputs())
        with self.assertRaisesWithArgument(ValueError, "context", r"\(2, 3, 5\)"):
            cross(_inputs(context=np.zeros((2, 3, 5), "float32")))
        cond = UNet(**dict(TINY, condition_channels=1))
        with self.assertRaisesWithArgument(ValueError, "condition", r"\(2, 8, 8, 2\)"):
            cond(_inputs(condition=np.zeros((2, 8, 8, 2), "float32")))
        with self.assertRaisesWithArgument(ValueError, "num_groups", "3"):
            UNet(**dict(TINY, num_groups=3))
        with self.assertRaisesWithArgument(ValueError, "name", "nope"):
            UNet.from_preset("nope")

    def test_presets_and_ddpm_parameter_count(self):
        self.skip_on_jax("parameter counts do not depend on the backend; building "
                         "35.7M parameters costs a minute of JAX initializers")
        # Ho et al. 2020 report 35.7M parameters for the CIFAR-10 model.
        model = UNet.from_preset("ddpm_cifar10")
        model.build({"x_t": (None, 32, 32, 3), "t": (None,)})
        count = model.count_params()
        self.assertLess(abs(count - 35.7e6) / 35.7e6, 0.01, count)
        self.assertEqual(count, 35_746_307)  # diffusers' google/ddpm-cifar10-32
        # The benchmark config: 8.95M in diffusers' UNet2DModel.
        small = UNet.from_preset("unet_cifar10_small")
        small.build({"x_t": (None, 32, 32, 3), "t": (None,)})
        self.assertEqual(small.count_params(), 8_952_067)
        tiny = UNet.from_preset("unet_tiny")
        out = tiny(_inputs(size=16))
        self.assertEqual(tuple(out.shape), (2, 16, 16, 3))
        self.assertEqual(UNet.from_preset("unet_tiny", dropout=0.2).dropout, 0.2)

