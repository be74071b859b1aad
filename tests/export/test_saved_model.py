"""SavedModel export (TensorFlow only): signatures, the same images as
`generate()` in a process that cannot import keras_diffusion, EMA weights as
variables, `saved_model_cli`, errors at serving time."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import keras
import numpy as np
import pytest

from keras_diffusion.testing import TestCase

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow", reason="export needs the TensorFlow backend"
)

SEED = 5
NUM_STEPS = 4
LABELS = [0, 2]
TEXT = ["a red one", "two"]
# Longer than the tokenizer's 4 tokens: truncated.
LONG_TEXT = "a red one two a red one two"
UNET = {
    "input_channels": 3,
    "base_channels": 8,
    "channel_multipliers": (1, 2),
    "num_res_blocks": 1,
    "attention_resolutions": (4,),
    "num_heads": 2,
    "num_groups": 4,
}
# The README's request (TF Serving REST "inputs" format) for this test model.
README_REQUEST = {
    "signature_name": "generate",
    "inputs": {
        "seed": 42,
        "batch_size": 2,
        "labels": [0, 2],
        "text": ["a red one", "two"],
        "guidance_scale": 3.0,
        "num_steps": 4,
    },
}


@keras.saving.register_keras_serializable(package="keras_diffusion_tests")
class TinyTextEncoder(keras.layers.Layer):
    """Strings (B,) -> context (B, 4, 8): TextVectorization (in-graph) + Embedding."""

    def __init__(self, vocabulary=("a", "red", "one", "two"), length=4, dim=8, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary = list(vocabulary)
        self.length = length
        self.dim = dim
        self.vectorize = keras.layers.TextVectorization(
            vocabulary=self.vocabulary, output_sequence_length=length
        )
        self.embed = keras.layers.Embedding(len(self.vocabulary) + 2, dim)

    def call(self, text):
        return self.embed(self.vectorize(text))

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary": self.vocabulary,
            "length": self.length,
            "dim": self.dim,
        }


def _set_ema(model, factor=0.9):
    """An optimizer whose EMA weights differ from the model's weights."""
    model.compile(optimizer=keras.optimizers.Adam(use_ema=True))
    optimizer = model.optimizer
    optimizer.build(model.trainable_variables)
    optimizer.iterations.assign(1)
    for var, average in zip(optimizer._trainable_variables,
                            optimizer._model_variables_moving_average):
        average.assign(np.asarray(var) * factor + 0.01)


def _conditional_model():
    from keras_diffusion.models import UNet
    from keras_diffusion.models.diffusion_model import DiffusionModel

    keras.utils.set_random_seed(0)
    # A frozen text encoder (as CLIP usually is): generate() encodes prompts
    # before it swaps in the EMA weights, the export inside the swap.
    text_encoder = TinyTextEncoder()
    text_encoder.trainable = False
    model = DiffusionModel(
        UNet(num_classes=3, context_dim=8, **UNET),
        prediction="v",
        num_classes=3,
        text_encoder=text_encoder,
        image_shape=(8, 8, 3),
    )
    model.build(None)
    _set_ema(model)
    return model


@pytest.fixture(scope="module")
def exported():
    """One conditional (labels + text) model with EMA weights, exported once."""
    from keras_diffusion.export import export_saved_model

    model = _conditional_model()
    before = [np.array(v) for v in model.trainable_variables]
    root = tempfile.mkdtemp()
    path = os.path.join(root, "diffusion", "1")
    export_saved_model(model, path, sampler="dpm_solver")
    after = [np.array(v) for v in model.trainable_variables]
    yield {"model": model, "path": path, "before": before, "after": after}
    shutil.rmtree(root, ignore_errors=True)


_BLOCKED_RUNNER = textwrap.dedent(
    """
    import sys

    BLOCKED = {"keras_diffusion"}

    class Block:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError("blocked: " + name)

    sys.meta_path.insert(0, Block())
    import numpy as np
    import tensorflow as tf

    # Keras too (TensorFlow's own import looks it up, so block it after that).
    BLOCKED.add("keras")
    for name in [m for m in sys.modules if m.split(".")[0] in BLOCKED]:
        del sys.modules[name]

    try:
        import keras_diffusion  # noqa: F401
        raise SystemExit("keras_diffusion was importable")
    except ImportError:
        pass
    path, inputs_file, out_file = sys.argv[1:]
    data = dict(np.load(inputs_file))
    served = tf.saved_model.load(path)
    assert set(served.signatures) >= {"serving_default", "generate", "generate_from_noise",
                                      "denoise"}, list(served.signatures)

    def call(name, **kwargs):
        return served.signatures[name](**{k: tf.constant(v) for k, v in kwargs.items()})

    common = dict(seed=data["seed"], guidance_scale=data["guidance_scale"],
                  num_steps=data["num_steps"], labels=data["labels"], text=data["text"])
    out = {}
    gen = call("generate", batch_size=data["batch_size"], **common)
    out["generate_images"] = gen["images"].numpy()
    out["generate_float"] = gen["images_float"].numpy()
    out["serving_default"] = call("serving_default", batch_size=data["batch_size"],
                                  **common)["images_float"].numpy()
    out["from_library_noise"] = call("generate_from_noise", noise=data["library_noise"],
                                     **common)["images_float"].numpy()
    out["from_initial_noise"] = call("generate_from_noise", noise=data["initial_noise"],
                                     **common)["images_float"].numpy()
    unguided = dict(common, guidance_scale=np.float32(1.0))
    out["unguided"] = call("generate_from_noise", noise=data["library_noise"],
                           **unguided)["images_float"].numpy()
    out["denoise"] = call("denoise", x_t=data["x_t"], t=data["t"], labels=data["labels"],
                          text=data["text"])["prediction"].numpy()
    out["long_text"] = call("generate_from_noise", noise=data["library_noise"][:1],
                            seed=data["seed"], guidance_scale=data["guidance_scale"],
                            num_steps=data["num_steps"], labels=data["labels"][:1],
                            text=data["long_text"])["images_float"].numpy()
    np.savez(out_file, **out)
    print("ok")
    """
)


class ExportTest(TestCase):
    @pytest.fixture(autouse=True)
    def _exported(self, exported):
        self.exported = exported
        self.model = exported["model"]
        self.path = exported["path"]

    def _library_noise(self, batch, seed=SEED):
        # How DiffusionModel.generate draws its initial noise.
        from keras_diffusion.random import initial_noise

        return np.asarray(initial_noise((batch, 8, 8, 3), seed), "float32")

    def test_fresh_process_without_library_matches_generate(self):
        from keras_diffusion.export import initial_noise

        model = self.model
        rng = np.random.default_rng(1)
        inputs = {
            "seed": np.int64(SEED),
            "batch_size": np.int32(2),
            "guidance_scale": np.float32(3.0),
            "num_steps": np.int32(NUM_STEPS),
            "labels": np.array(LABELS, "int32"),
            "text": np.array(TEXT, dtype=bytes),
            "long_text": np.array([LONG_TEXT], dtype=bytes),
            "library_noise": self._library_noise(2),
            "initial_noise": np.asarray(initial_noise((2, 8, 8, 3), SEED)),
            "x_t": rng.normal(size=(2, 8, 8, 3)).astype("float32"),
            "t": np.array([0.3, 0.8], "float32"),
        }
        tmp = self.get_temp_dir()
        inputs_file, out_file = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(inputs_file, **inputs)
        script = os.path.join(tmp, "run.py")
        with open(script, "w") as f:
            f.write(_BLOCKED_RUNNER)
        env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
        env.pop("PYTHONPATH", None)
        proc = subprocess.run(
            [sys.executable, script, self.path, inputs_file, out_file],
            capture_output=True, text=True, timeout=600, env=env, cwd=tmp,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr[-4000:])
        out = dict(np.load(out_file))

        kwargs = dict(labels=LABELS, text=TEXT, num_steps=NUM_STEPS, seed=SEED, verbose=0)
        expected = model.generate(guidance_scale=3.0, **kwargs)
        # The exported graph from the library's noise: the library's images.
        self.assertAllClose(out["from_library_noise"], expected, atol=1e-5, rtol=0)
        self.assertGreater(np.abs(expected).mean(), 0.05)
        unguided = model.generate(guidance_scale=1.0, **kwargs)
        self.assertAllClose(out["unguided"], unguided, atol=1e-5, rtol=0)
        # The seed path draws `initial_noise(shape, seed)` in-graph.
        self.assertAllClose(out["generate_float"], out["from_initial_noise"], atol=1e-6, rtol=0)
        self.assertAllClose(out["serving_default"], out["generate_float"], atol=0, rtol=0)
        self.assertEqual(out["generate_images"].dtype, np.uint8)
        self.assertEqual(out["generate_images"].shape, (2, 8, 8, 3))
        pixels = np.round((np.clip(out["generate_float"], -1, 1) + 1) * 127.5)
        np.testing.assert_array_equal(out["generate_images"], pixels.astype("uint8"))
        self.assertLessEqual(np.abs(out["generate_float"]).max(), 1.0)
        # denoise: the network's prediction (EMA weights) for x_t, t, condition.
        with model.ema_weights():
            context = model.encode_text(keras.ops.convert_to_tensor(TEXT))
            prediction = model.denoiser(
                {"x_t": inputs["x_t"], "t": inputs["t"], "labels": np.array(LABELS),
                 "context": context}
            )
        self.assertAllClose(out["denoise"], prediction, atol=1e-5, rtol=0)
        # Over-long prompts are truncated to the tokenizer's length.
        truncated = model.generate(
            labels=LABELS[:1], text=[" ".join(LONG_TEXT.split()[:4])], guidance_scale=3.0,
            num_steps=NUM_STEPS, seed=SEED, verbose=0,
        )
        self.assertAllClose(out["long_text"], truncated, atol=1e-5, rtol=0)

    def test_generate_seed_matches_library_generate_seed(self):
        import tensorflow as tf

        served = tf.saved_model.load(self.path)
        out = served.signatures["generate"](
            seed=tf.constant(SEED, tf.int64), batch_size=tf.constant(2),
            guidance_scale=tf.constant(3.0), num_steps=tf.constant(NUM_STEPS),
            labels=tf.constant(LABELS), text=tf.constant(TEXT),
        )
        expected = self.model.generate(
            labels=LABELS, text=TEXT, num_steps=NUM_STEPS, seed=SEED, guidance_scale=3.0,
            verbose=0,
        )
        self.assertAllClose(out["images_float"], expected, atol=1e-5, rtol=0)

    def test_ema_weights_are_exported_as_variables(self):
        import tensorflow as tf

        # The model's own weights are back after the export.
        for before, after in zip(self.exported["before"], self.exported["after"]):
            np.testing.assert_array_equal(before, after)
        optimizer = self.model.optimizer
        averages = {
            v.path: np.asarray(a)
            for v, a in zip(optimizer._trainable_variables,
                            optimizer._model_variables_moving_average)
        }
        reader = tf.train.load_checkpoint(os.path.join(self.path, "variables", "variables"))
        stored = [reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
                  if name.endswith(".ATTRIBUTES/VARIABLE_VALUE")]
        stored_sizes = sum(x.size for x in stored if x.dtype == np.float32)
        weights = sum(np.asarray(v).size for v in self.model.denoiser.weights)
        self.assertGreaterEqual(stored_sizes, weights)
        # Every EMA average is a stored variable; the raw weights are not.
        kernel = max(averages, key=lambda k: averages[k].size)
        self.assertTrue(any(x.shape == averages[kernel].shape
                            and np.array_equal(x, averages[kernel]) for x in stored))
        raw = np.asarray(next(v for v in optimizer._trainable_variables if v.path == kernel))
        self.assertFalse(any(x.shape == raw.shape and np.array_equal(x, raw) for x in stored))
        # No weight is baked into the graph as a constant.
        with open(os.path.join(self.path, "saved_model.pb"), "rb") as f:
            graph = f.read()
        self.assertNotIn(averages[kernel].astype("float32").tobytes()[:64], graph)

    def test_runtime_errors_for_bad_inputs(self):
        import tensorflow as tf

        served = tf.saved_model.load(self.path)
        generate = served.signatures["generate"]
        good = dict(
            seed=tf.constant(1, tf.int64), batch_size=tf.constant(2),
            guidance_scale=tf.constant(3.0), num_steps=tf.constant(2),
            labels=tf.constant(LABELS), text=tf.constant(TEXT),
        )
        cases = [
            ("num_steps", tf.constant(0), "`num_steps` must be in [1, 1000]"),
            ("num_steps", tf.constant(-3), "received num_steps =] [-3]"),
            ("guidance_scale", tf.constant(-0.5), "`guidance_scale` must be >= 0"),
            ("guidance_scale", tf.constant(float("nan")), "`guidance_scale` must be >= 0"),
            ("labels", tf.constant([0, 3]), "`labels` must be integers in [0, 3)"),
            ("batch_size", tf.constant(-1), "`batch_size` must be in [1, 64]"),
            ("text", tf.constant(["a", "b", "c"]), "`text` must have the batch size or 1"),
        ]
        for key, value, message in cases:
            with self.subTest(key=key, value=str(value.numpy())):
                with self.assertRaisesRegex(tf.errors.InvalidArgumentError, _re(message)):
                    inputs = {**good, key: value}
                    if key == "batch_size":  # Only this input wrong.
                        inputs.update(labels=tf.constant([1]), text=tf.constant(["a"]))
                    generate(**inputs)
        # Length-1 labels and text are repeated over the batch.
        out = generate(**{**good, "labels": tf.constant([1]), "text": tf.constant(["two"])})
        self.assertEqual(tuple(out["images"].shape), (2, 8, 8, 3))

    def test_saved_model_cli_show_lists_documented_signatures(self):
        proc = subprocess.run(
            ["saved_model_cli", "show", "--all", "--dir", self.path],
            capture_output=True, text=True, timeout=300,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        signatures = _parse_show_all(proc.stdout)
        expected_generate = {
            "seed": "DT_INT64", "batch_size": "DT_INT32", "guidance_scale": "DT_FLOAT",
            "num_steps": "DT_INT32", "labels": "DT_INT32", "text": "DT_STRING",
        }
        for name in ("serving_default", "generate"):
            self.assertEqual(signatures[name]["inputs"], expected_generate)
            self.assertEqual(
                signatures[name]["outputs"], {"images": "DT_UINT8", "images_float": "DT_FLOAT"}
            )
        from_noise = dict(expected_generate, noise="DT_FLOAT")
        del from_noise["batch_size"]
        self.assertEqual(signatures["generate_from_noise"]["inputs"], from_noise)
        self.assertEqual(
            signatures["denoise"]["inputs"],
            {"x_t": "DT_FLOAT", "t": "DT_FLOAT", "labels": "DT_INT32", "text": "DT_STRING"},
        )
        self.assertEqual(signatures["denoise"]["outputs"], {"prediction": "DT_FLOAT"})
        # The README's request body names exactly the signature's inputs.
        self.assertEqual(set(README_REQUEST["inputs"]), set(expected_generate))

    def test_saved_model_cli_run_with_readme_request(self):
        import tensorflow as tf

        values = README_REQUEST["inputs"]
        exprs = ";".join(f"{k}={v!r}" for k, v in values.items())
        outdir = os.path.join(self.get_temp_dir(), "out")
        proc = subprocess.run(
            ["saved_model_cli", "run", "--dir", self.path, "--tag_set", "serve",
             "--signature_def", README_REQUEST["signature_name"], "--input_exprs", exprs,
             "--outdir", outdir],
            capture_output=True, text=True, timeout=300,
        )
        self.assertEqual(proc.returncode, 0, proc.stderr[-3000:])
        images = np.load(os.path.join(outdir, "images.npy"))
        self.assertEqual(images.dtype, np.uint8)
        self.assertEqual(images.shape, (2, 8, 8, 3))
        served = tf.saved_model.load(self.path)
        direct = served.signatures["generate"](
            seed=tf.constant(values["seed"], tf.int64),
            batch_size=tf.constant(values["batch_size"]),
            guidance_scale=tf.constant(values["guidance_scale"]),
            num_steps=tf.constant(values["num_steps"]),
            labels=tf.constant(values["labels"]), text=tf.constant(values["text"]),
        )
        np.testing.assert_array_equal(images, direct["images"].numpy())

    def test_no_xla_function_without_jit_compile(self):
        # The layers' XLA islands are traced unfused: TF Serving runs the
        # model with its default flags (no XLA on CPU).
        from tensorflow.core.protobuf import saved_model_pb2

        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(self.path, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
        functions = proto.meta_graphs[0].graph_def.library.function
        self.assertGreater(len(functions), 0)
        compiled = [f.signature.name for f in functions if f.attr["_XlaMustCompile"].b]
        self.assertEqual(compiled, [])

    def test_metadata(self):
        from keras_diffusion.export import read_metadata

        meta = read_metadata(self.path)
        self.assertEqual(meta["sampler"]["class"], "DPMSolverSampler")
        self.assertEqual(meta["sampler"]["algorithm"], "dpmsolver++")
        self.assertEqual(meta["num_classes"], 3)
        self.assertEqual(meta["signatures"]["generate"], sorted(README_REQUEST["inputs"]))
        json.dumps(meta)


class ExportLatentAndArgumentsTest(TestCase):
    def test_existing_path_is_refused_unless_overwrite(self):
        from keras_diffusion.export import export_saved_model

        path = self.get_temp_dir()
        with self.assertRaisesRegex(FileExistsError, "overwrite=True"):
            export_saved_model(object(), path)

    def test_not_a_diffusion_model(self):
        from keras_diffusion.export import export_saved_model

        with self.assertRaisesRegex(ValueError, "DiffusionModel"):
            export_saved_model(object(), os.path.join(self.get_temp_dir(), "x"))

    def test_latent_model_decodes_in_graph_and_overwrites(self):
        """A latent model (a DiffusionModel whose codec is a VAE): the VAE
        decode runs in the graph; the export replaces an existing directory."""
        import tensorflow as tf

        from keras_diffusion.export import export_saved_model
        from keras_diffusion.models import UNet
        from keras_diffusion.models import VAE
        from keras_diffusion.models.diffusion_model import DiffusionModel

        keras.utils.set_random_seed(0)
        vae = VAE(input_channels=3, latent_channels=2, base_channels=8,
                  channel_multipliers=(1, 2), num_res_blocks=1, num_groups=4,
                  mid_attention=False, scaling_factor=0.5)
        vae.build((None, 8, 8, 3))
        model = DiffusionModel(
            UNet(input_channels=2, base_channels=8, channel_multipliers=(1,), num_res_blocks=1,
                 attention_resolutions=(), num_groups=4),
            image_shape=(4, 4, 2), schedule="linear",
        )
        from keras_diffusion.models import VAECodec

        model.codec = VAECodec(vae)
        model.build(None)
        path = self.get_temp_dir()
        with open(os.path.join(path, "stale.txt"), "w") as f:
            f.write("old export")
        export_saved_model(model, path, sampler="ddim", overwrite=True)
        self.assertFalse(os.path.exists(os.path.join(path, "stale.txt")))
        served = tf.saved_model.load(path)
        from keras_diffusion.export import initial_noise

        noise = np.asarray(initial_noise((2, 4, 4, 2), SEED), "float32")
        out = served.signatures["generate_from_noise"](
            noise=tf.constant(noise), seed=tf.constant(SEED, tf.int64),
            guidance_scale=tf.constant(1.0), num_steps=tf.constant(3),
        )
        self.assertEqual(tuple(out["images"].shape), (2, 8, 8, 3))
        _, latents = model.generate(2, sampler="ddim", num_steps=3, seed=SEED, clip=False,
                                    verbose=0, return_latents=True)
        expected = np.clip(np.asarray(vae.decode_latents(latents)), -1, 1)
        self.assertAllClose(out["images_float"], expected, atol=1e-5, rtol=0)
        sig = served.signatures["generate"].structured_input_signature[1]
        self.assertEqual(set(sig), {"seed", "batch_size", "guidance_scale", "num_steps"})


class ExportXLATest(TestCase):
    def test_jit_compile_keeps_checks_and_matches_generate(self):
        """Vector data (MLPDenoiser), DDPM (stochastic: the sampler's seed
        path), XLA: same samples, and the input checks still run."""
        import tensorflow as tf

        from keras_diffusion.export import export_saved_model
        from keras_diffusion.export import initial_noise
        from keras_diffusion.models import MLPDenoiser
        from keras_diffusion.models.diffusion_model import DiffusionModel

        keras.utils.set_random_seed(0)
        model = DiffusionModel(
            MLPDenoiser(data_dim=2, hidden_dim=16, num_layers=1, num_classes=2),
            image_shape=(2,), num_classes=2, prediction="v",
        )
        model.build(None)
        path = os.path.join(self.get_temp_dir(), "xla")
        export_saved_model(model, path, sampler="ddpm", jit_compile=True)
        served = tf.saved_model.load(path)
        common = dict(seed=tf.constant(SEED, tf.int64), guidance_scale=tf.constant(2.0),
                      num_steps=tf.constant(3), labels=tf.constant([0, 1, 1]))
        noise = np.asarray(initial_noise((3, 2), SEED), "float32")
        out = served.signatures["generate_from_noise"](noise=tf.constant(noise), **common)
        self.assertEqual(set(out), {"images_float"})  # No uint8 output for vectors.
        # The per-step noise is counter-based: the same under XLA.
        expected = model.generate(labels=[0, 1, 1], sampler="ddpm", num_steps=3,
                                  guidance_scale=2.0, seed=SEED, verbose=0, jit_compile=True)
        self.assertAllClose(out["images_float"], expected, atol=1e-4, rtol=1e-4)
        seeded = served.signatures["generate"](batch_size=tf.constant(3), **common)
        from_noise = served.signatures["generate_from_noise"](
            noise=tf.constant(np.asarray(initial_noise((3, 2), SEED))), **common)
        self.assertAllClose(seeded["images_float"], from_noise["images_float"], atol=1e-6,
                            rtol=0)
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "`num_steps` must be"):
            served.signatures["generate"](batch_size=tf.constant(3),
                                          **{**common, "num_steps": tf.constant(0)})

    def test_fused_layers_keep_the_xla_islands(self):
        import tensorflow as tf
        from tensorflow.core.protobuf import saved_model_pb2

        from keras_diffusion.export import export_saved_model
        from keras_diffusion.models import UNet
        from keras_diffusion.models.diffusion_model import DiffusionModel

        keras.utils.set_random_seed(0)
        model = DiffusionModel(UNet(**UNET), image_shape=(8, 8, 3))
        model.build(None)
        path = os.path.join(self.get_temp_dir(), "fused")
        export_saved_model(model, path, sampler="ddim", fused_layers=True)
        proto = saved_model_pb2.SavedModel()
        with open(os.path.join(path, "saved_model.pb"), "rb") as f:
            proto.ParseFromString(f.read())
        functions = proto.meta_graphs[0].graph_def.library.function
        self.assertTrue(any(f.attr["_XlaMustCompile"].b for f in functions))
        served = tf.saved_model.load(path)
        out = served.signatures["generate"](
            seed=tf.constant(SEED, tf.int64), batch_size=tf.constant(2),
            guidance_scale=tf.constant(1.0), num_steps=tf.constant(3))
        expected = model.generate(2, sampler="ddim", num_steps=3, seed=SEED, verbose=0)
        self.assertAllClose(out["images_float"], expected, atol=1e-4, rtol=1e-4)


def _re(text):
    import re

    return re.escape(text)


def _parse_show_all(text):
    """`saved_model_cli show --all` -> {signature: {"inputs": {name: dtype}, "outputs": ...}}."""
    signatures, current, section, name = {}, None, None, None
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("signature_def['"):
            current = line.split("'")[1]
            signatures[current] = {"inputs": {}, "outputs": {}}
        elif current is None:
            continue
        elif "input(s):" in line:
            section = "inputs"
        elif "output(s):" in line:
            section = "outputs"
        elif line.startswith(("inputs['", "outputs['")):
            name = line.split("'")[1]
        elif line.startswith("dtype:") and name is not None:
            signatures[current][section][name] = line.split()[1]
            name = None
    return signatures


class ExportBoundsTest(TestCase):
    def test_requests_over_the_bounds_fail_at_once(self):
        import tensorflow as tf

        from keras_diffusion.export import export_saved_model
        from keras_diffusion.export import read_metadata
        from keras_diffusion.models import MLPDenoiser
        from keras_diffusion.models.diffusion_model import DiffusionModel

        model = DiffusionModel(MLPDenoiser(data_dim=2, hidden_dim=8, num_layers=1),
                               image_shape=(2,), prediction="v")
        model.build(None)
        path = os.path.join(self.get_temp_dir(), "bounded")
        with self.assertRaisesRegex(ValueError, "max_batch_size"):
            export_saved_model(model, path, max_batch_size=0)
        export_saved_model(model, path, sampler="ddim", max_batch_size=4, max_num_steps=10)
        meta = read_metadata(path)
        self.assertEqual((meta["max_batch_size"], meta["max_num_steps"]), (4, 10))
        served = tf.saved_model.load(path)
        common = dict(seed=tf.constant(1, tf.int64), guidance_scale=tf.constant(1.0))
        generate = served.signatures["generate"]
        out = generate(batch_size=tf.constant(4), num_steps=tf.constant(10), **common)
        self.assertEqual(out["images_float"].shape, (4, 2))
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "batch_size.*max_batch"):
            generate(batch_size=tf.constant(10**6), num_steps=tf.constant(2), **common)
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "num_steps.*max_num_steps"):
            generate(batch_size=tf.constant(1), num_steps=tf.constant(10**8), **common)
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "noise"):
            served.signatures["generate_from_noise"](
                noise=tf.zeros((5, 2)), num_steps=tf.constant(2), **common)
        # The served signature does not enforce the TensorSpec's shape: the graph does.
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "`noise` must have shape"):
            served.signatures["generate_from_noise"](
                noise=tf.zeros((2, 3)), num_steps=tf.constant(2), **common)
        denoise = served.signatures["denoise"]
        self.assertEqual(denoise(x_t=tf.zeros((2, 2)), t=tf.constant([0.0, 1.0]))[
            "prediction"].shape, (2, 2))
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "`x_t` must have shape"):
            denoise(x_t=tf.zeros((2, 3)), t=tf.constant([0.5, 0.5]))
        for bad in ([0.5, 1.5], [-0.1, 0.5], [float("nan"), 0.5]):
            with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "`t` must be in"):
                denoise(x_t=tf.zeros((2, 2)), t=tf.constant(bad))
