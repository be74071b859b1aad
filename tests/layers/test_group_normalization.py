"""keras_diffusion.layers.GroupNormalization: the fused group norm against
Keras' own layer, gradients included, fused (XLA island) and not."""

import contextlib
import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_diffusion import layers
from keras_diffusion.layers import fusion
from keras_diffusion.testing import TestCase
from keras_diffusion.testing.test_case import backend


def _reference(x, gamma, beta, groups, epsilon, scale=None, shift=None, silu=False):
    """float64 NumPy group norm, then `* (1 + scale) + shift`, then SiLU."""
    x = np.asarray(x, np.float64)
    b, c = x.shape[0], x.shape[-1]
    xg = x.reshape(b, -1, groups, c // groups)
    mean = xg.mean(axis=(1, 3), keepdims=True)
    var = xg.var(axis=(1, 3), keepdims=True)
    y = ((xg - mean) / np.sqrt(var + epsilon)).reshape(x.shape) * gamma + beta
    per_sample = (b,) + (1,) * (x.ndim - 2) + (c,)
    if scale is not None:
        y = y * (1 + np.reshape(scale, per_sample))
    if shift is not None:
        y = y + np.reshape(shift, per_sample)
    return y / (1 + np.exp(-y)) if silu else y


def _data(seed=0, shape=(2, 4, 4, 8)):
    rng = np.random.default_rng(seed)
    x = (rng.normal(size=shape) * 3 + 1).astype("float32")
    c = shape[-1]
    gamma = rng.normal(size=c).astype("float32")
    beta = rng.normal(size=c).astype("float32")
    scale = (0.3 * rng.normal(size=(shape[0], c))).astype("float32")
    shift = rng.normal(size=(shape[0], c)).astype("float32")
    return x, gamma, beta, scale, shift


def _layer(groups, activation=None, epsilon=1e-5, **kwargs):
    return layers.GroupNormalization(groups, epsilon=epsilon, activation=activation, **kwargs)


@pytest.mark.jax
class GroupNormalizationTest(TestCase):
    def test_layer_checks(self):
        x = _data()[0]
        self.run_layer_test(
            layers.GroupNormalization,
            {"groups": 4, "activation": "silu"},
            ops.convert_to_tensor(x),
            expected_output_shape=x.shape,
        )

    def test_matches_numpy_with_modulation_and_silu(self):
        x, gamma, beta, scale, shift = _data()
        for activation in (None, "silu"):
            for modulation in (None, (scale, None), (None, shift), (scale, shift)):
                layer = _layer(4, activation)
                layer.build(x.shape)
                layer.set_weights([gamma, beta])
                out = layer(x, modulation=modulation)
                s, t = modulation or (None, None)
                expected = _reference(x, gamma, beta, 4, 1e-5, s, t, activation == "silu")
                self.assertAllClose(out, expected, atol=2e-5, rtol=2e-5)

    def test_matches_keras_layer(self):
        x, gamma, beta, _, _ = _data(1, shape=(3, 5, 6, 12))
        for kwargs in ({}, {"center": False}, {"scale": False}):
            ours = _layer(3, epsilon=1e-3, **kwargs)
            theirs = keras.layers.GroupNormalization(3, epsilon=1e-3, **kwargs)
            weights = [w for w, on in ((gamma, kwargs.get("scale", True)),
                                       (beta, kwargs.get("center", True))) if on]
            for layer in (ours, theirs):
                layer.build(x.shape)
                layer.set_weights(weights)
            self.assertAllClose(ours(x), theirs(x), atol=2e-5, rtol=2e-5)

    def test_large_offset_keeps_precision(self):
        # Two-pass variance: an offset of 1e3 over unit-variance data would
        # lose 6 of float32's 7 digits in E[x^2] - E[x]^2.
        x = _data()[0] + 1000.0
        layer = _layer(2)
        expected = _reference(x, 1.0, 0.0, 2, 1e-5)
        self.assertAllClose(layer(x), expected, atol=1e-3, rtol=1e-3)

    def test_works_on_sequences(self):
        x = np.random.default_rng(0).normal(size=(2, 7, 8)).astype("float32")
        layer = _layer(4, "silu")
        self.assertAllClose(layer(x), _reference(x, 1.0, 0.0, 4, 1e-5, silu=True),
                            atol=2e-5, rtol=2e-5)

    def test_mixed_bfloat16(self):
        x, gamma, beta, scale, shift = _data()
        layer = _layer(4, "silu", dtype="mixed_bfloat16")
        layer.build(x.shape)
        layer.set_weights([gamma, beta])
        out = layer(x, modulation=(scale, shift))
        self.assertEqual(keras.backend.standardize_dtype(out.dtype), "bfloat16")
        self.assertEqual(layer.gamma.dtype, "float32")
        expected = _reference(x, gamma, beta, 4, 1e-5, scale, shift, silu=True)
        # bfloat16 input (8 bits of mantissa) and output: relative ~2^-8 each.
        self.assertAllClose(ops.cast(out, "float32"), expected, atol=0.05, rtol=0.02)

    def test_bad_arguments(self):
        with self.assertRaisesWithArgument(ValueError, "activation", "relu"):
            _layer(2, "relu")
        with self.assertRaisesWithArgument(ValueError, "axis", "1"):
            layers.GroupNormalization(2, axis=1)
        with self.assertRaisesRegex(ValueError, "3"):
            _layer(3).build((2, 4, 4, 8))

    def test_loads_keras_group_normalization_weights(self):
        # Same weights, same saving path: files written with Keras' layer load.
        x, gamma, beta, _, _ = _data()

        def model(norm):
            inputs = keras.Input(x.shape[1:])
            return keras.Model(inputs, keras.layers.Conv2D(8, 1)(norm(inputs)))

        keras.utils.set_random_seed(0)
        theirs = model(keras.layers.GroupNormalization(4, epsilon=1e-5))
        theirs.layers[1].set_weights([gamma, beta])
        path = os.path.join(self.get_temp_dir(), "keras_gn.weights.h5")
        theirs.save_weights(path)
        ours = model(_layer(4))
        ours.load_weights(path)
        self.assertAllClose(ours.layers[1].gamma, gamma)
        self.assertAllClose(ours(x), theirs(x), atol=2e-5, rtol=2e-5)


class GroupNormalizationGradientTest(TestCase):
    """Gradients through the fused computation (TensorFlow: an XLA island)."""

    def _gradients(self, fused):
        import tensorflow as tf

        x, gamma, beta, scale, shift = _data(2)
        layer = _layer(4, "silu")
        layer.build(x.shape)
        layer.set_weights([gamma, beta])
        x, scale, shift = (tf.constant(v) for v in (x, scale, shift))
        weight = tf.constant(np.random.default_rng(3).normal(size=x.shape), tf.float32)
        context = fusion.disabled() if not fused else contextlib.nullcontext()
        with context, tf.GradientTape() as tape:
            tape.watch([x, scale, shift])
            loss = tf.reduce_sum(weight * layer(x, modulation=(scale, shift)))
        return tape.gradient(loss, [x, scale, shift, layer.gamma, layer.beta])

    def test_gradients_match_numpy(self):
        self.skip_unless_tensorflow()
        x, gamma, beta, scale, shift = _data(2)
        weight = np.random.default_rng(3).normal(size=x.shape)
        grads = self._gradients(fused=True)

        def loss(x=x, gamma=gamma, beta=beta, scale=scale, shift=shift):
            return np.sum(weight * _reference(x, gamma, beta, 4, 1e-5, scale, shift, True))

        # Central differences in float64 on a few coordinates of each input.
        rng = np.random.default_rng(4)
        for name, value, grad in zip(("x", "scale", "shift", "gamma", "beta"),
                                     (x, scale, shift, gamma, beta), grads):
            value = np.asarray(value, np.float64)
            for index in [tuple(rng.integers(0, n) for n in value.shape) for _ in range(4)]:
                plus, minus = value.copy(), value.copy()
                plus[index] += 1e-4
                minus[index] -= 1e-4
                numeric = (loss(**{name: plus}) - loss(**{name: minus})) / 2e-4
                self.assertAllClose(np.asarray(grad)[index], numeric, atol=2e-3, rtol=2e-3,
                                    msg=f"d loss / d {name}{index}")

    def test_fused_equals_unfused(self):
        self.skip_unless_tensorflow()
        self.assertAllClose(self._gradients(True), self._gradients(False), atol=1e-4, rtol=1e-4)

    def test_island_is_xla_only_when_enabled(self):
        self.skip_unless_tensorflow()
        import tensorflow as tf

        layer = _layer(4, "silu")
        x = tf.constant(_data()[0])

        def ops_of(enabled):
            context = contextlib.nullcontext() if enabled else fusion.disabled()
            with context:
                graph = tf.function(layer).get_concrete_function(x).graph
            names = {op.type for op in graph.get_operations()}
            library = graph.as_graph_def().library.function
            xla = any(f.attr["_XlaMustCompile"].b for f in library)
            return names, xla

        names, xla = ops_of(enabled=True)
        self.assertTrue(xla)
        names, xla = ops_of(enabled=False)
        self.assertFalse(xla)
        self.assertIn("Mean", names)


class GroupNormalizationTracingTest(TestCase):
    def test_many_layers_do_not_warn_of_retracing(self):
        # TensorFlow warns when one function retraces 5 times in a row; the
        # UNet has dozens of group norms of different shapes.
        self.skip_unless_tensorflow()
        import tensorflow as tf

        x = tf.constant(_data()[0])
        with self.assertNoLogs("tensorflow", level="WARNING"):
            for i in range(8):
                _layer(4, "silu")(tf.concat([x] * (1 + i % 3), axis=-1))


@pytest.mark.jax
class FusionTest(TestCase):
    def test_enabled_only_on_tensorflow(self):
        self.assertEqual(fusion.enabled(), backend() == "tensorflow")
        with fusion.disabled():
            self.assertFalse(fusion.enabled())
        self.assertEqual(fusion.enabled(), backend() == "tensorflow")

    def test_fused_function_computes_the_same(self):
        f = fusion.fused(lambda x, k=2.0: ops.silu(x) * k)
        x = np.linspace(-3, 3, 12, dtype="float32").reshape(3, 4)
        expected = x / (1 + np.exp(-x)) * 3.0
        self.assertAllClose(f(x, k=3.0), expected, atol=1e-6, rtol=1e-6)
        with fusion.disabled():
            self.assertAllClose(f(x, k=3.0), expected, atol=1e-6, rtol=1e-6)
