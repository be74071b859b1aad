"""Shared test helpers, in the manner of keras-hub's TestCase."""

import os
import tempfile
import unittest
import zlib

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
    saving round-trip), `run_model_saving_test`, `run_denoiser_test` (the
    denoiser dict contract, null label, mixed precision, LoRA, saving) and
    `run_guidance_embedding_test` (a denoiser's w input).
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

    def skip_on_jax(self, reason):
        """Skips a backend-independent check under JAX (`reason` says why
        the TensorFlow run covers it)."""
        if backend() == "jax":
            self.skipTest(reason)

    def backend_cases(self, cases, jax_stride=4):
        """All of `cases` on TensorFlow, every `jax_stride`-th on JAX.

        The math is backend-neutral `keras.ops` code checked case by case on
        TensorFlow; the JAX run checks that the same code runs and agrees
        there. Under JAX each sampler call compiles its loop (about a second
        per case), so a matrix of cases runs there on an even sample of it,
        starting at an offset taken from the test's name: tests that share a
        list of cases run different parts of it.
        """
        cases = list(cases)
        if backend() != "jax":
            return cases
        offset = zlib.crc32(self.id().encode()) % max(1, min(jax_stride, len(cases)))
        return cases[offset::jax_stride]

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


    def run_denoiser_test(
        self,
        cls,
        init_kwargs,
        x_shape,
        context_shape=None,
        condition_channels=0,
        lora_target="attention",
        run_mixed_precision=True,
        run_saving=True,
        run_serialization=True,
        atol=1e-5,
    ):
        """The standard checks of a denoiser (a `models.Denoiser` subclass).

        - the dict contract: a non-dict input, an unknown key, a missing
          `t` and a wrong `x_t` rank are clear ValueErrors; the output has
          x_t's shape and is float32;
        - the null label: missing `labels` equals the explicit null label
          `num_classes` (class-conditional denoisers);
        - float32 outputs under `mixed_bfloat16`;
        - LoRA: `enable_lora` leaves the output unchanged and only LoRA
          weights trainable;
        - config and `.keras` round-trips with identical outputs (LoRA kept).

        Args:
            cls: the denoiser class.
            init_kwargs: constructor arguments.
            x_shape: the shape of `x_t` with batch, e.g. `(2, 8, 8, 3)`.
            context_shape: `(B, L, D)` of the context, if the denoiser takes one.
            condition_channels: channels of the image condition, if any.
            lora_target: the `enable_lora` target to check (None: skip).
            run_mixed_precision: check mixed_bfloat16 outputs.
            run_saving: check the `.keras` round-trip.
            run_serialization: check the config round-trip (it builds a
                second network; off for very large ones).
        """
        from keras_diffusion.models.denoiser import Denoiser

        rng = np.random.default_rng(0)
        inputs = {
            "x_t": rng.normal(size=x_shape).astype("float32"),
            "t": np.linspace(0.1, 0.9, x_shape[0]).astype("float32"),
        }
        if context_shape is not None:
            inputs["context"] = rng.normal(size=context_shape).astype("float32")
        if condition_channels:
            inputs["condition"] = rng.normal(
                size=tuple(x_shape[:-1]) + (condition_channels,)
            ).astype("float32")
        model = cls(**init_kwargs)
        self.assertIsInstance(model, Denoiser)
        output = model(inputs)
        self.assertEqual(tuple(output.shape), tuple(x_shape))
        self.assertEqual(keras.backend.standardize_dtype(output.dtype), "float32")
        with self.assertRaisesRegex(ValueError, "dict"):
            model(inputs["x_t"])
        with self.assertRaisesRegex(ValueError, "bogus"):
            model({**inputs, "bogus": inputs["t"]})
        with self.assertRaisesRegex(ValueError, "'t'"):
            model({k: v for k, v in inputs.items() if k != "t"})
        with self.assertRaisesRegex(ValueError, "x_t"):
            model({**inputs, "x_t": inputs["x_t"][..., None]})
        num_classes = getattr(model, "num_classes", None)
        if num_classes is not None:
            null = np.full((x_shape[0],), num_classes, "int32")
            self.assertAllClose(model({**inputs, "labels": null}), output, atol=atol)
            labelled = model({**inputs, "labels": np.zeros((x_shape[0],), "int32")})
            self.assertEqual(tuple(labelled.shape), tuple(x_shape))
        if run_serialization:
            self.run_serialization_test(model)
        if run_mixed_precision:
            keras.config.set_dtype_policy("mixed_bfloat16")
            try:
                mixed = cls(**init_kwargs)
                out = mixed(inputs)
            finally:
                keras.config.set_dtype_policy("float32")
            self.assertEqual(keras.backend.standardize_dtype(out.dtype), "float32")
            self.assertTrue(np.all(np.isfinite(to_numpy(out))))
        if lora_target is not None:
            model.enable_lora(2, lora_target)
            self.assertAllClose(model(inputs), output, atol=atol)
            trainable = [w.path for w in model.trainable_weights]
            self.assertTrue(trainable and all("lora_kernel" in p for p in trainable), trainable)
        if run_saving:
            path = os.path.join(self.get_temp_dir(), "denoiser.keras")
            model.save(path)
            restored = keras.saving.load_model(path)
            self.assertAllClose(restored(inputs), model(inputs), atol=atol)
            if lora_target is not None:
                self.assertEqual(
                    sorted(w.path for w in restored.trainable_weights),
                    sorted(w.path for w in model.trainable_weights),
                )
        return model

    def run_guidance_embedding_test(self, cls, init_kwargs, inputs, atol=1e-5):
        """The checks of a denoiser's `guidance_embedding` option (the w
        input of LCM students).

        - a copy of a trained-looking network (random weights) with the
          option turned on and the network's weights starts as the network
          at any w: only `guidance` weights are new;
        - "guidance" is required iff the option is on (clear ValueErrors);
        - with trained-looking w weights the output of an example changes
          with its own w only;
        - float32 outputs under `mixed_bfloat16`;
        - config and `.keras` round-trips with identical outputs.

        Args:
            cls: the denoiser class (a `guidance_embedding` argument).
            init_kwargs: constructor arguments (without the option).
            inputs: a dict of inputs without "guidance", batch >= 2.
            atol: tolerance of the output comparisons.
        """
        rng = np.random.default_rng(0)
        batch = int(np.shape(inputs["x_t"])[0])
        self.assertGreaterEqual(batch, 2, "the per-example check needs a batch of 2")
        plain = cls(**{**init_kwargs, "guidance_embedding": False})
        plain(inputs)
        plain.set_weights(
            [w + 0.1 * rng.normal(size=w.shape).astype(w.dtype) for w in plain.get_weights()]
        )
        expected = to_numpy(plain(inputs))
        model = cls.from_config({**plain.get_config(), "guidance_embedding": True})
        self.assertTrue(model.guidance_embedding)
        w = np.linspace(1.0, 8.0, batch).astype("float32")
        model({**inputs, "guidance": w})
        source = {v.path.split("/", 1)[-1]: v for v in plain.variables}
        new = []
        for v in model.variables:
            match = source.pop(v.path.split("/", 1)[-1], None)
            if match is None:
                new.append(v.path)
            else:
                v.assign(match.value)
        self.assertFalse(source, f"weights missing in the copy: {sorted(source)}")
        self.assertTrue(new and all("guidance" in p for p in new), new)
        for scales in (w, np.zeros(batch, "float32"), np.full(batch, 14.0, "float32")):
            self.assertAllClose(model({**inputs, "guidance": scales}), expected, atol=atol)

        with self.assertRaisesRegex(ValueError, "(?s)guidance.*guidance_embedding=True"):
            model(inputs)
        with self.assertRaisesRegex(ValueError, "(?s)guidance.*shape \\(B,\\)"):
            model({**inputs, "guidance": w[:, None]})
        with self.assertRaisesRegex(ValueError, "(?s)guidance.*guidance_embedding=False"):
            plain({**inputs, "guidance": w})

        for v in model.variables:
            if "guidance" in v.path:
                v.assign(to_numpy(v) + 0.1 * rng.normal(size=v.shape).astype("float32"))
        with_w = {**inputs, "guidance": w}
        base = to_numpy(model(with_w))
        other_w = w.copy()
        other_w[-1] += 2.0
        other = to_numpy(model({**inputs, "guidance": other_w}))
        self.assertAllClose(other[:-1], base[:-1], atol=atol)
        self.assertFalse(np.allclose(other[-1], base[-1], atol=1e-4), "w changes nothing")

        keras.config.set_dtype_policy("mixed_bfloat16")
        try:
            out = cls(**{**init_kwargs, "guidance_embedding": True})(with_w)
        finally:
            keras.config.set_dtype_policy("float32")
        self.assertEqual(keras.backend.standardize_dtype(out.dtype), "float32")
        self.assertTrue(np.all(np.isfinite(to_numpy(out))))

        revived = self.run_serialization_test(model)
        self.assertTrue(revived.guidance_embedding)
        restored = self.run_model_saving_test(model, with_w, atol=atol)
        self.assertTrue(restored.guidance_embedding)
        return model


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
