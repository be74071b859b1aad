"""Shared test helpers, in the manner of keras-hub's TestCase."""

import os
import tempfile
import unittest

import keras
import numpy as np
from keras import ops


def backend():
    return keras.backend.backend()


def to_numpy(x):
    if isinstance(x, (list, tuple)):
        return type(x)(to_numpy(v) for v in x)
    if isinstance(x, dict):
        return {k: to_numpy(v) for k, v in x.items()}
    return np.asarray(ops.convert_to_numpy(x))


class TestCase(unittest.TestCase):
    """Base class of the library's tests.

    Gives `assertAllClose` on nested tensors and the standard checks that
    every public object goes through: `run_serialization_test` (config
    round-trip), `run_layer_test` (build, call, shape, one fit step, `.keras`
    saving round-trip) and `run_model_saving_test`.
    """

    def setUp(self):
        super().setUp()
        keras.utils.set_random_seed(1337)
        keras.config.set_dtype_policy("float32")

    def tearDown(self):
        keras.config.set_dtype_policy("float32")
        super().tearDown()

    def get_temp_dir(self):
        path = tempfile.mkdtemp()
        self.addCleanup(lambda: __import__("shutil").rmtree(path, ignore_errors=True))
        return path

    def skip_unless_tensorflow(self):
        if backend() != "tensorflow":
            self.skipTest("needs the TensorFlow backend")

    def assertAllClose(self, actual, expected, atol=1e-6, rtol=1e-6, msg=None):
        actual, expected = to_numpy(actual), to_numpy(expected)
        if isinstance(expected, dict):
            self.assertEqual(set(actual), set(expected))
            for k in expected:
                self.assertAllClose(actual[k], expected[k], atol, rtol, msg)
            return
        if isinstance(expected, (list, tuple)):
            self.assertEqual(len(actual), len(expected))
            for a, e in zip(actual, expected):
                self.assertAllClose(a, e, atol, rtol, msg)
            return
        np.testing.assert_allclose(
            np.asarray(actual, dtype=np.float64),
            np.asarray(expected, dtype=np.float64),
            atol=atol,
            rtol=rtol,
            err_msg=msg or "",
        )

    def assertRaisesWithArgument(self, exc_type, *fragments):
        """Asserts an error whose message names the argument and the value."""
        return self.assertRaisesRegex(
            exc_type, "(?s)" + ".*".join(str(f) for f in fragments)
        )

    def run_serialization_test(self, instance):
        """get_config -> from_config -> get_config gives the same config, and
        `keras.saving.serialize_keras_object` round-trips."""
        config = instance.get_config()
        revived = type(instance).from_config(config)
        self.assertEqual(revived.get_config(), config)
        serialized = keras.saving.serialize_keras_object(instance)
        revived = keras.saving.deserialize_keras_object(serialized)
        self.assertIsInstance(revived, type(instance))
        self.assertEqual(revived.get_config(), config)
        return revived

    def run_model_saving_test(self, model, input_data, atol=1e-6, rtol=1e-6):
        """Saves `model` to `.keras`, reloads it and compares outputs."""
        expected = model(input_data)
        path = os.path.join(self.get_temp_dir(), "model.keras")
        model.save(path)
        restored = keras.saving.load_model(path)
        self.assertAllClose(restored(input_data), expected, atol=atol, rtol=rtol)
        return restored

    def run_layer_test(
        self,
        cls,
        init_kwargs,
        input_data,
        expected_output_shape=None,
        run_training=True,
        run_saving=True,
        atol=1e-6,
        rtol=1e-6,
    ):
        """The standard checks for a layer or model class.

        Config round-trip, call, output shape, (optionally) one `fit` step
        on an MSE loss that must change the weights, and a `.keras` saving
        round-trip with identical outputs.

        Args:
            cls: the layer or model class.
            init_kwargs: constructor arguments.
            input_data: a tensor, a tuple/list or a dict of tensors.
            expected_output_shape: the expected output shape, if checked.
            run_training: whether to run one training step.
            run_saving: whether to save and reload.
        """
        layer = cls(**init_kwargs)
        self.run_serialization_test(layer)
        output = layer(input_data)
        if expected_output_shape is not None:
            self.assertEqual(tuple(output.shape), tuple(expected_output_shape))
        if run_training:
            self._run_fit_step(layer, input_data, output)
        if run_saving:
            model = layer if isinstance(layer, keras.Model) else _wrap(layer, input_data)
            self.run_model_saving_test(model, input_data, atol=atol, rtol=rtol)
        return layer

    def _run_fit_step(self, layer, input_data, output):
        model = layer if isinstance(layer, keras.Model) else _wrap(layer, input_data)
        before = [to_numpy(w) for w in model.trainable_weights]
        self.assertGreater(len(before), 0, "nothing to train")
        model.compile(optimizer=keras.optimizers.SGD(1e-2), loss="mse")
        target = np.random.default_rng(0).normal(size=output.shape).astype("float32")
        model.fit(input_data, target, batch_size=int(output.shape[0]), epochs=1, verbose=0)
        after = [to_numpy(w) for w in model.trainable_weights]
        changed = any(not np.allclose(a, b) for a, b in zip(before, after))
        self.assertTrue(changed, "one fit step changed no weight")


def _wrap(layer, input_data):
    """A functional model around a bare layer, for fit and saving."""
    if isinstance(input_data, dict):
        inputs = {
            k: keras.Input(batch_shape=v.shape, dtype=v.dtype, name=k)
            for k, v in input_data.items()
        }
        return keras.Model(inputs, layer(inputs))
    if isinstance(input_data, (list, tuple)):
        inputs = [keras.Input(batch_shape=v.shape, dtype=v.dtype) for v in input_data]
        return keras.Model(inputs, layer(inputs))
    inputs = keras.Input(batch_shape=input_data.shape, dtype=input_data.dtype)
    return keras.Model(inputs, layer(inputs))
