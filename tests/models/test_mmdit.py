"""MMDiT denoiser: the dict contract, text conditioning, saving, LoRA, and
the parameter counts of the SD3 paper's sizes (any backend)."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_diffusion.layers import MMDiTBlock
from keras_diffusion.models import MMDiT
from keras_diffusion.models.presets import MMDIT_PAPER_PARAMS
from keras_diffusion.models.presets import MMDIT_PRESETS
from keras_diffusion.testing import TestCase

TINY = {
    "input_channels": 4,
    "context_dim": 6,
    "patch_size": 2,
    "hidden_dim": 16,
    "depth": 2,
    "num_heads": 2,
}


def _inputs(batch=2, size=8, length=5, seed=0, **extra):
    rng = np.random.default_rng(seed)
    out = {
        "x_t": rng.normal(size=(batch, size, size, 4)).astype("float32"),
        "t": rng.uniform(size=(batch,)).astype("float32"),
        "context": rng.normal(size=(batch, length, 6)).astype("float32"),
    }
    out.update(extra)
    return {k: ops.convert_to_tensor(v) for k, v in out.items()}


def _randomize(model, seed=0):
    rng = np.random.default_rng(seed)
    model.set_weights(
        [w + 0.1 * rng.normal(size=w.shape).astype(w.dtype) for w in model.get_weights()]
    )


def _count(name, x_shape, context_shape):
    """Parameters of a preset from built layers: the network without blocks
    plus each block as built (blocks of one width are identical except the
    last one's pre-only text stream); `test_count_is_exact` checks the sum
    against a full build."""
    config = MMDIT_PRESETS[name] if isinstance(name, str) else name
    d, heads, depth = config["hidden_dim"], config["num_heads"], config["depth"]
    shapes = [(None, None, d), (None, None, d), (None, d)]
    middle = MMDiTBlock(d, heads)
    middle.build(shapes)
    last = MMDiTBlock(d, heads, text_output=False)
    last.build(shapes)
    stem = MMDiT(**dict(config, depth=0))
    stem.build({"x_t": x_shape, "t": (None,), "context": context_shape})
    return stem.count_params() + (depth - 1) * middle.count_params() + last.count_params()


def _count_at_width(name, x_shape, context_shape, widths=(64, 128, 192), check=256):
    """`_count` of a preset at its own width, without building it: with the
    head width fixed at 64 (num_heads = hidden_dim / 64, as every preset
    has), every weight is d x d, d x (a fixed size) or fixed, so the count
    is an exact quadratic in the width d. It is solved from three small
    builds, checked exactly against a fourth, then evaluated at the preset's
    width (building the d38 blocks took a minute)."""
    config = MMDIT_PRESETS[name]

    def count(d):
        return _count(dict(config, hidden_dim=d, num_heads=d // 64), x_shape, context_shape)

    counts = [count(d) for d in widths]
    a, b, c = np.linalg.solve(np.vander(np.array(widths, float), 3), np.array(counts, float))

    def quadratic(d):
        return int(round(a * d * d + b * d + c))

    assert quadratic(check) == count(check), (name, quadratic(check), count(check))
    return quadratic(config["hidden_dim"])


class MMDiTTest(TestCase):
    @pytest.mark.jax
    def test_denoiser_contract(self):
        self.run_denoiser_test(MMDiT, dict(TINY, num_classes=3), (2, 8, 8, 4), context_shape=(2, 5, 6))

    @pytest.mark.jax
    def test_guidance_embedding(self):
        model = self.run_guidance_embedding_test(MMDiT, TINY, _inputs())
        self.assertEqual(model.guidance_proj.units, TINY["hidden_dim"])

    def test_fresh_model_outputs_zeros_and_conditioning_matters(self):
        model = MMDiT(**TINY)
        inputs = _inputs()
        self.assertAllClose(model(inputs), np.zeros((2, 8, 8, 4)))
        _randomize(model)
        base = ops.convert_to_numpy(model(inputs))
        for key in ("context", "t", "x_t"):
            other = dict(inputs, **{key: ops.flip(inputs[key], axis=0)})
            self.assertFalse(np.allclose(base, ops.convert_to_numpy(model(other))), key)
        # The text length is free (the pooled vector and the joint attention
        # take any L); patch sizes 2 and 4 on 8x8, 4 on 12x12.
        self.assertEqual(tuple(model(_inputs(length=3)).shape), (2, 8, 8, 4))
        for p, size in ((4, 8), (4, 12)):
            out = MMDiT(**dict(TINY, patch_size=p, pooling="first"))(_inputs(size=size))
            self.assertEqual(tuple(out.shape), (2, size, size, 4))

    def test_validation_errors(self):
        with self.assertRaisesWithArgument(ValueError, "context_dim", "None"):
            MMDiT(**dict(TINY, context_dim=None))
        with self.assertRaisesWithArgument(ValueError, "pooling", "max"):
            MMDiT(**dict(TINY, pooling="max"))
        with self.assertRaisesWithArgument(ValueError, "num_heads", "3"):
            MMDiT(**dict(TINY, num_heads=3))
        with self.assertRaisesWithArgument(ValueError, "x_t", "not divisible", "patch_size=2"):
            MMDiT(**TINY)(_inputs(size=7))
        inputs = _inputs()
        with self.assertRaisesWithArgument(ValueError, "context", "context_dim=6"):
            MMDiT(**TINY)({k: v for k, v in inputs.items() if k != "context"})
        with self.assertRaisesWithArgument(ValueError, "context", r"\(B, L, 6\)"):
            MMDiT(**TINY)(dict(inputs, context=ops.zeros((2, 5, 7))))

    def test_count_is_exact(self):
        config = dict(TINY, depth=3)
        full = MMDiT(**config)
        full.build({"x_t": (None, 8, 8, 4), "t": (None,), "context": (None, 5, 6)})
        self.assertEqual(full.count_params(), _count(config, (None, 8, 8, 4), (None, 5, 6)))

    def test_presets_match_paper_parameter_counts(self):
        # SD3 at 1024x1024: 128x128x16 latents, a 4096-wide T5 context. The
        # paper gives one significant figure (2B, 8B): within 2.5%.
        counts = {
            name: _count_at_width(name, (None, 128, 128, 16), (None, 77, 4096))
            for name in MMDIT_PAPER_PARAMS
        }
        for name, billions in MMDIT_PAPER_PARAMS.items():
            paper = billions * 1e9
            self.assertLess(abs(counts[name] - paper) / paper, 0.025, (name, counts[name]))
        for name, config in MMDIT_PRESETS.items():
            self.assertEqual(config["hidden_dim"], 64 * config["depth"], name)
            self.assertEqual(config["num_heads"], config["depth"], name)
        # 8B / 2B ~ (38 / 24)^3: the width and depth both grow with d.
        self.assertAlmostEqual(counts["mmdit_d38"] / counts["mmdit_d24"], (38 / 24) ** 3, delta=0.1)

    def test_text_to_image_fit_and_generate(self):
        import keras_diffusion
        from keras_diffusion.models import TextConditioner

        self.skip_unless_tensorflow()  # TextConditioner tokenizes with TensorFlow
        captions = ["a one", "a two", "a one", "a two"]
        text = TextConditioner(sequence_length=4, embedding_dim=6, num_layers=1, num_heads=2)
        text.adapt(captions)
        model = keras_diffusion.DiffusionModel(
            MMDiT(**TINY), schedule="rectified_flow", prediction="flow",
            time_distribution="logit_normal", text_encoder=text, seed=0,
        )
        images = np.random.default_rng(0).uniform(-1, 1, (4, 8, 8, 4)).astype("float32")
        import tensorflow as tf

        data = tf.data.Dataset.from_tensor_slices({"images": images, "text": captions}).batch(4)
        history = model.fit(data, epochs=1, verbose=0)
        self.assertTrue(np.isfinite(history.history["loss"][-1]))
        out = model.generate(text=["a one", "a two"], num_steps=2, sampler="euler",
                             guidance_scale=2.0, seed=0)
        self.assertEqual(tuple(out.shape), (2, 8, 8, 4))
        self.assertTrue(np.all(np.isfinite(out)))
