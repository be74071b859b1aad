"""Export a diffusion model as one SavedModel for TF Serving (TensorFlow only).

The whole pipeline runs in the graph: the initial noise drawn from a seed, the
sampler loop (one `tf.while_loop`), classifier-free guidance, text
tokenization (for models with a TF-native text encoder) and, for latent
models, the VAE decode. The SavedModel needs TensorFlow only: no Python code
of this library (nor Keras) is needed to serve it.
"""

import contextlib
import json
import os
import shutil
import tempfile

import keras
from keras import ops

from keras_diffusion import samplers as samplers_lib
from keras_diffusion.layers import fusion
from keras_diffusion.random import initial_noise
from keras_diffusion.random import sampler_seed

SIGNATURES = ("serving_default", "generate", "generate_from_noise", "denoise")
# The largest request a SavedModel serves unless exported with other bounds:
# a request over them fails at once (it would otherwise exhaust the
# server's memory or hold it for hours).
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_MAX_NUM_STEPS = 1000
METADATA_FILE = os.path.join("assets.extra", "keras_diffusion_export.json")


def export_saved_model(
    model,
    path,
    sampler="dpm_solver",
    overwrite=False,
    spacing=None,
    use_ema=True,
    clip=None,
    clip_denoised=None,
    jit_compile=False,
    fused_layers=False,
    verbose=False,
    max_batch_size=DEFAULT_MAX_BATCH_SIZE,
    max_num_steps=DEFAULT_MAX_NUM_STEPS,
):
    """Writes a SavedModel of `model` that TF Serving runs.

    Signatures (inputs -> outputs; `B` the batch, `...` the data shape):

    - `generate` (also `serving_default`):
        `seed` int64 scalar, `batch_size` int32 scalar, `guidance_scale`
        float32 scalar (>= 0; 1: no guidance), `num_steps` int32 scalar
        (>= 1), and, by model: `labels` int32 `(B,)` or `(1,)` (class-
        conditional models), `text` string `(B,)` or `(1,)` (text models;
        tokenized in-graph, prompts longer than the tokenizer's sequence
        length are truncated), `condition` float32 `(B, H, W, C)` (image-
        conditioned models), `control` float32 `(B, H', W', C')` (models
        with ControlNets; kept in both halves of guidance). Length-1 `labels` / `text` are repeated over
        the batch.
        -> `images` uint8 `(B, H, W, C)` (image models) and `images_float`
        float32 in [-1, 1] (clipped for images).
    - `generate_from_noise`: the same with `noise` float32 `(B, ...)`
        (standard normal, of the shape the sampler starts from: the latent
        shape for latent models) instead of `batch_size`; `seed` still seeds
        stochastic samplers.
    - `denoise`: `x_t` float32 `(B, ...)`, `t` float32 `(B,)` in [0, 1] and
        the model's conditions (`labels` int32 `(B,)`, with `num_classes` the
        null label; `text` string `(B,)` or `context` float32 `(B, L, D)`;
        `condition`) -> `prediction` float32 `(B, ...)`, the network output
        in the model's prediction type, for users with their own sampler.

    `generate` draws its noise as `initial_noise((B, ...), seed)` and seeds
    the sampler with `sampler_seed(seed)` (seeds in [0, 2**31)), so that it
    gives the same images as `model.generate(B, seed=seed, ...)` for the same
    inputs (both use the functions of `keras_diffusion.random`);
    so does `generate_from_noise` given `generate`'s noise. Invalid inputs
    at serving time (num_steps <= 0, guidance_scale < 0, labels out of
    range, ...) make the request fail with an `InvalidArgumentError` that
    names the input and its value.

    The average weights are exported when kept (the model's `ema`, else the
    optimizer's EMA; and `use_ema`); the model's own weights are unchanged
    afterwards. Weights are
    saved as variables (under `path/variables/`), never as graph constants.

    Args:
        model: a built `DiffusionModel` (or a latent model: one with a `vae`
            whose `decode_latents` maps the sampled latents to images).
        path: the SavedModel directory to write.
        sampler: a sampler or its name (default "dpm_solver": DPM-Solver++,
            order 2).
        overwrite: replace `path` if it exists (otherwise a
            `FileExistsError`).
        spacing: the sampler's time grid ("uniform" when None).
        use_ema: export the average weights when kept.
        clip: clip the output to [-1, 1]; default as `generate` (True for
            images).
        clip_denoised: clip the sampler's x0 estimates to [-1, 1] at every
            step when `sampler` is a name; default as `generate` (as `clip`;
            False for latent models).
        jit_compile: compile the sampler loop (and `denoise`'s network) with
            XLA; the input checks, the noise draw and the tokenization stay
            outside XLA. Not for text models. XLA draws the stochastic
            samplers' per-step noise differently: the images match
            `generate(..., jit_compile=True)`. Without it the SavedModel
            holds no XLA op at all (the layers' XLA islands,
            `keras_diffusion.layers.fusion`, are traced unfused), so TF
            Serving runs it with its default flags.
        verbose: print the endpoints written.
        max_batch_size: the largest batch a request may ask for (`batch_size`,
            or the first dimension of `noise` / `x_t`); default 64.
        max_num_steps: the largest `num_steps` a request may ask for;
            default 1000. Both are recorded in the export's metadata
            (`read_metadata(path)`); larger requests fail at once with an
            `InvalidArgumentError` naming the input.

    Returns:
        `path`.

    Example:
    >>> model.fit(dataset, epochs=10)
    >>> keras_diffusion.export.export_saved_model(model, "/models/diffusion/1")
    >>> served = tf.saved_model.load("/models/diffusion/1")
    >>> out = served.signatures["generate"](
    ...     seed=tf.constant(0, tf.int64), batch_size=tf.constant(4),
    ...     guidance_scale=tf.constant(1.0), num_steps=tf.constant(20))
    >>> out["images"].shape            # uint8 (4, H, W, C)
    """
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "Export to SavedModel needs the TensorFlow backend, the current backend "
            f"is {keras.backend.backend()!r} (set KERAS_BACKEND=tensorflow)."
        )
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"The export path {path!r} already exists; pass overwrite=True to replace it."
        )
    spec = _ModelSpec(model)
    if clip is None:
        clip = spec.is_image
    if clip_denoised is None:
        clip_denoised = bool(clip) and not spec.is_latent
    if isinstance(sampler, str):
        sampler = samplers_lib.get(sampler, **({"clip_x0": 1.0} if clip_denoised else {}))
    else:
        sampler = samplers_lib.get(sampler)
    spacing = spacing or getattr(spec.schedule, "default_spacing", "uniform")
    # Resolves the spacing eagerly, so that a bad name fails here, not in the graph.
    sampler.timesteps(spec.schedule, 1, None, spacing)

    if jit_compile and spec.text:
        raise ValueError(
            "`jit_compile=True` is not supported for models with a text encoder "
            "(XLA has no string ops); export with jit_compile=False."
        )
    check_bounds(max_batch_size, max_num_steps)
    builder = _Endpoints(spec, sampler, spacing, bool(clip), bool(jit_compile),
                         max_batch_size=max_batch_size, max_num_steps=max_num_steps)
    contexts = []
    if not fused_layers:
        # TF Serving runs no XLA on CPU unless started with a flag.
        contexts.append(fusion.disabled())
    if use_ema:
        # The EMA weights are written as the variables' values; the model's
        # lock keeps concurrent generate() calls off the swap.
        contexts.append(spec.ema_weights())
    return write_archive(path, spec.tracked_layers, builder, contexts, verbose)


def check_bounds(max_batch_size, max_num_steps):
    """Raises unless the export's bounds are positive ints."""
    for name, value in (("max_batch_size", max_batch_size), ("max_num_steps", max_num_steps)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"`{name}` must be a positive int, received {name}={value!r}")


def write_archive(path, tracked, endpoints, contexts=(), verbose=False):
    """Writes a SavedModel atomically: into a temporary folder beside `path`,
    with the metadata file, then renamed to `path`.

    Each endpoint is traced once, inside `tf.saved_model.save`, and each
    variable stored once. `keras.export.ExportArchive.write_out` traces every
    endpoint before saving (to list the variables), and TensorFlow keys its
    traces on the save context, so saving traces them all again; it also
    stores each Keras variable's value three times. Tracing is most of an
    export's time: the test suite's conditional UNet model (labels + text)
    exports in 11.6 s here instead of 18.1 s through ExportArchive, into
    3.3 MB instead of 4.0 MB.

    Args:
        path: the SavedModel folder (replaced when it exists).
        tracked: a callable returning the Keras layers (their variables and
            lookup tables are saved) and TensorFlow resources to track.
        endpoints: an object with `endpoints()` ((name, fn, signature)
            triples; the first is also `serving_default`) and `metadata()`
            (a JSON-able dict).
        contexts: context managers entered while tracing.
        verbose: print the endpoints written.
    """
    import tensorflow as tf

    parent = os.path.dirname(os.path.abspath(path))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".export-", dir=parent)
    try:
        with contextlib.ExitStack() as stack:
            for context in contexts:
                stack.enter_context(context)
            root = _archive_root(tracked())
            signatures = {}
            for name, fn, signature in endpoints.endpoints():
                function = tf.function(fn, input_signature=signature, autograph=False)
                setattr(root, name, function)
                signatures[name] = function
            signatures.setdefault("serving_default", next(iter(signatures.values())))
            # TensorFlow logs each variable the sampler loop captures being
            # renamed (three 4,500-character INFO lines): harmless, quieted.
            stack.enter_context(_tf_log_level("ERROR"))
            tf.saved_model.save(root, tmp, signatures=signatures)
        os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
        with open(os.path.join(tmp, METADATA_FILE), "w") as f:
            json.dump(endpoints.metadata(), f, indent=2)
        if os.path.exists(path):
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    if verbose:
        print(f"Saved a SavedModel at {path!r}, signatures: {', '.join(sorted(signatures))}")
    return path


def _archive_root(tracked):
    """The object a SavedModel is written from: the variables of the Keras
    layers in `tracked`, the lookup tables found under them (a text
    encoder's vocabulary) and the other resources in `tracked`. Each
    variable is stored once."""
    import tensorflow as tf
    from tensorflow.saved_model.experimental import TrackableResource

    root = tf.__internal__.tracking.AutoTrackable()
    variables, resources, seen = [], [], set()
    for item in tracked:
        if isinstance(item, keras.layers.Layer):
            if not item.built:
                raise ValueError(f"The layer {item.name!r} is not built; build it before export")
            for variable in item.variables:
                # The tf.Variable under a Keras variable: what the traced
                # functions capture, and what a TF1-style loader (TF
                # Serving, saved_model_cli) restores.
                variable = getattr(variable, "value", variable)
                if id(variable) not in seen:
                    seen.add(id(variable))
                    variables.append(variable)
            # Lookup tables are attributes of Keras' lookup layers (a
            # TextVectorization's StringLookup).
            for layer in item._flatten_layers(include_self=True, recursive=True):
                resources += [value for value in vars(layer).values()
                              if isinstance(value, TrackableResource)]
        elif isinstance(item, TrackableResource):
            resources.append(item)
        else:
            raise ValueError(
                f"Cannot track {type(item).__name__} in a SavedModel: expected a Keras layer "
                "or a TensorFlow resource"
            )
    root.variables = variables
    root.resources = list({id(r): r for r in resources}.values())
    return root


def export(model, path, **kwargs):
    """Alias of `export_saved_model` (see there)."""
    return export_saved_model(model, path, **kwargs)


# ----------------------------------------------------------------------
# What a model is made of
# ----------------------------------------------------------------------
class _ModelSpec:
    """What export needs of a model: `model.export_spec()`, a protocol.

    The export never imports the model classes: any object with an
    `export_spec()` returning these entries works.
    """

    def __init__(self, model):
        if not hasattr(model, "export_spec"):
            raise ValueError(
                "export needs a keras_diffusion model (an object with export_spec(), "
                f"such as DiffusionModel), received {type(model).__name__}"
            )
        parts = model.export_spec()
        self.model = model
        self.runner = parts["runner"]
        self.schedule = parts["schedule"]
        self.prediction = parts["prediction"]
        self.sample_shape = tuple(parts["sample_shape"])
        self.output_shape = tuple(parts["data_shape"])
        self.is_latent = bool(parts["is_latent"])
        self.is_image = len(self.output_shape) == 3
        conditions = parts["conditions"]
        self.conditional = conditions.is_conditional
        self.num_classes = conditions.num_classes
        self.encode_text = parts["encode_text"]
        self.text = self.encode_text is not None
        self.context_shape = None if self.text else conditions.context_shape
        self.condition_shape = conditions.condition_shape
        self.control_shape = getattr(conditions, "control_shape", None)  # ControlNets
        self.null_condition = parts["null_condition"]
        self.denoise = parts["denoise"]
        self.layers = parts["layers"]
        self.ema_weights = parts["ema_weights"]

    def tracked_layers(self):
        """The networks whose variables and lookup tables the export holds.

        The parts, not the model itself: Keras' SavedModel walk traces every
        Model's `_default_save_signature`, which fails for a model built with
        `build(None)` (its recorded input shape is None).
        """
        return list(self.layers)


class _Endpoints:
    """The signatures' functions and input specs."""

    def __init__(self, spec, sampler, spacing, clip, jit_compile=False,
                 max_batch_size=DEFAULT_MAX_BATCH_SIZE, max_num_steps=DEFAULT_MAX_NUM_STEPS):
        self.spec = spec
        self.sampler = sampler
        self.spacing = spacing
        self.clip = clip
        self.jit_compile = jit_compile
        self.max_batch_size = int(max_batch_size)
        self.max_num_steps = int(max_num_steps)
        self._shared_sample = None

    # --- input specs ----------------------------------------------------------
    def _condition_specs(self, for_denoise=False):
        import tensorflow as tf

        spec = self.spec
        out = {}
        if spec.num_classes is not None:
            out["labels"] = tf.TensorSpec((None,), tf.int32, name="labels")
        if spec.text:
            out["text"] = tf.TensorSpec((None,), tf.string, name="text")
        elif spec.context_shape is not None and for_denoise:
            out["context"] = tf.TensorSpec(
                (None,) + spec.context_shape, tf.float32, name="context"
            )
        if spec.condition_shape is not None:
            out["condition"] = tf.TensorSpec(
                (None,) + spec.condition_shape, tf.float32, name="condition"
            )
        if spec.control_shape is not None:
            out["control"] = tf.TensorSpec(
                (None,) + spec.control_shape, tf.float32, name="control"
            )
        return out

    def _scalar_specs(self):
        import tensorflow as tf

        return {
            "seed": tf.TensorSpec((), tf.int64, name="seed"),
            "guidance_scale": tf.TensorSpec((), tf.float32, name="guidance_scale"),
            "num_steps": tf.TensorSpec((), tf.int32, name="num_steps"),
        }

    def generate_specs(self):
        import tensorflow as tf

        specs = self._scalar_specs()
        specs["batch_size"] = tf.TensorSpec((), tf.int32, name="batch_size")
        specs.update(self._condition_specs())
        return specs

    def generate_from_noise_specs(self):
        import tensorflow as tf

        specs = self._scalar_specs()
        specs["noise"] = tf.TensorSpec(
            (None,) + self.spec.sample_shape, tf.float32, name="noise"
        )
        specs.update(self._condition_specs())
        return specs

    def denoise_specs(self):
        import tensorflow as tf

        specs = {
            "x_t": tf.TensorSpec((None,) + self.spec.sample_shape, tf.float32, name="x_t"),
            "t": tf.TensorSpec((None,), tf.float32, name="t"),
        }
        specs.update(self._condition_specs(for_denoise=True))
        return specs

    def endpoints(self):
        """(name, fn, input_signature) of each endpoint; `generate` first, so
        that `write_archive` also makes it `serving_default`."""
        out = []
        for name, specs, body in (
            ("generate", self.generate_specs(), self._generate),
            ("generate_from_noise", self.generate_from_noise_specs(), self._generate),
            ("denoise", self.denoise_specs(), self._denoise),
        ):
            out.append((name, _keyword_fn(list(specs), body), list(specs.values())))
        return out

    def metadata(self):
        spec = self.spec
        return {
            "format": "keras_diffusion SavedModel",
            "signatures": {
                "serving_default": sorted(self.generate_specs()),
                "generate": sorted(self.generate_specs()),
                "generate_from_noise": sorted(self.generate_from_noise_specs()),
                "denoise": sorted(self.denoise_specs()),
            },
            "sampler": {"class": type(self.sampler).__name__, **self.sampler.get_config()},
            "spacing": self.spacing,
            "prediction": spec.prediction,
            "schedule": type(spec.schedule).__name__,
            "sample_shape": list(spec.sample_shape),
            "output_shape": list(spec.output_shape),
            "num_classes": spec.num_classes,
            "null_label": spec.num_classes,
            "latent": spec.is_latent,
            "clip": self.clip,
            "jit_compile": self.jit_compile,
            "max_batch_size": self.max_batch_size,
            "max_num_steps": self.max_num_steps,
            "initial_noise": "step_noise(shape, seed, 2**31 - 1) (counter-based; "
            "keras_diffusion.export.initial_noise)",
        }

    # --- the graphs ---------------------------------------------------------
    def _checks(self, inputs, batch):
        """Runtime checks: a list of assert ops on the serving inputs."""
        import tensorflow as tf

        given = "batch_size" if "batch_size" in inputs else (
            "noise" if "noise" in inputs else "x_t")
        what = "`batch_size`" if given == "batch_size" else f"The first dimension of `{given}`"
        checks = [
            _assert(
                tf.logical_and(batch >= 1, batch <= self.max_batch_size),
                [f"{what} must be in [1, {self.max_batch_size}] (max_batch_size of this "
                 f"export), received {given} batch =", batch],
            )
        ]
        for key in ("noise", "x_t"):
            if key in inputs:
                # A served signature does not enforce its TensorSpec's shape.
                shape = list(self.spec.sample_shape)
                checks.append(
                    _assert(
                        tf.reduce_all(
                            tf.equal(tf.shape(inputs[key], out_type=tf.int32)[1:], shape)
                        ),
                        [f"`{key}` must have shape [batch, {', '.join(map(str, shape))}], "
                         "received shape", tf.shape(inputs[key])],
                    )
                )
        if "num_steps" in inputs:
            n = inputs["num_steps"]
            checks.append(
                _assert(
                    tf.logical_and(n >= 1, n <= self.max_num_steps),
                    [f"`num_steps` must be in [1, {self.max_num_steps}] (max_num_steps of "
                     "this export), received num_steps =", n],
                )
            )
        if "t" in inputs:
            t = inputs["t"]
            checks.append(
                _assert(
                    tf.reduce_all(tf.logical_and(t >= 0.0, t <= 1.0)),  # False for NaN.
                    ["`t` must be in [0, 1] (and not NaN), received t =", t],
                    summarize=16,
                )
            )
        if "guidance_scale" in inputs:
            g = inputs["guidance_scale"]
            checks.append(
                _assert(
                    g >= 0.0,  # False for NaN too.
                    ["`guidance_scale` must be >= 0, received guidance_scale =", g],
                )
            )
        if "seed" in inputs:
            s = inputs["seed"]
            checks.append(
                _assert(
                    tf.logical_and(s >= 0, s < 2**31),
                    ["`seed` must be in [0, 2**31), received seed =", s],
                )
            )
        if "labels" in inputs:
            labels = inputs["labels"]
            k = self.spec.num_classes
            # `denoise` also accepts the null label.
            high = k + 1 if "x_t" in inputs else k
            checks.append(
                _assert(
                    tf.reduce_all(tf.logical_and(labels >= 0, labels < high)),
                    [f"`labels` must be integers in [0, {high}) (num_classes={k}), "
                     "received labels =", labels],
                    summarize=16,
                )
            )
        for key in ("labels", "text", "context", "condition", "control"):
            if key in inputs:
                n = tf.shape(inputs[key], out_type=tf.int32)[0]
                ok = tf.equal(n, batch)
                if key in ("labels", "text") and "x_t" not in inputs:
                    ok = tf.logical_or(ok, tf.equal(n, 1))
                    what = "the batch size or 1"
                else:
                    what = "the batch size"
                checks.append(
                    _assert(
                        ok,
                        [f"`{key}` must have {what} as first dimension, received", n,
                         "for a batch of", batch],
                    )
                )
        return checks

    def _checked(self, inputs, batch):
        """The inputs, gated by the runtime checks: nothing uses an input
        before every check has passed."""
        import tensorflow as tf

        checks = self._checks(inputs, batch)
        with tf.control_dependencies(checks):
            return {key: tf.identity(value) for key, value in inputs.items()}

    def _conditions(self, inputs, batch):
        """The model_fn's labels / context / condition for a batch."""
        import tensorflow as tf

        out = {}
        if "labels" in inputs:
            out["labels"] = tf.broadcast_to(tf.cast(inputs["labels"], tf.int32), [batch])
        if "text" in inputs:
            context = self.spec.encode_text(inputs["text"])
            shape = tf.concat([[batch], tf.shape(context)[1:]], axis=0)
            out["context"] = tf.broadcast_to(context, shape)
        if "context" in inputs:
            out["context"] = inputs["context"]
        if "condition" in inputs:
            out["condition"] = inputs["condition"]
        if "control" in inputs:
            out["control"] = inputs["control"]
        return out

    def _generate(self, inputs):
        import tensorflow as tf

        spec = self.spec
        if "noise" in inputs:
            noise = inputs["noise"]
            batch = tf.shape(noise, out_type=tf.int32)[0]
        else:
            batch = inputs["batch_size"]
        inputs = self._checked(inputs, batch)
        if "batch_size" in inputs:
            batch = inputs["batch_size"]
        num_steps = inputs["num_steps"]
        guidance_scale = inputs["guidance_scale"]
        seed = inputs["seed"]
        if "noise" in inputs:
            noise = inputs["noise"]
        else:
            noise = initial_noise(tf.concat([[batch], spec.sample_shape], 0), seed)
        cond = self._conditions(inputs, batch)
        return self._sample_fn()(noise, seed, guidance_scale, num_steps, cond)

    def _sample_fn(self):
        """`_sample` as one tf.function that both generate endpoints call:
        the sampler loop is traced once per guidance branch, not once per
        endpoint (the export's main cost)."""
        if self._shared_sample is None:
            import tensorflow as tf

            self._shared_sample = tf.function(
                self._sample, jit_compile=True if self.jit_compile else None,
                autograph=False, reduce_retracing=True,
            )
        return self._shared_sample

    def _sample(self, noise, seed, guidance_scale, num_steps, cond):
        """Noise -> images: the runner's sampler loop, guidance and decode."""
        import tensorflow as tf

        spec = self.spec

        def run(scale):
            return spec.runner.sample(
                noise, cond, sampler=self.sampler, seed=sampler_seed(seed),
                guidance_scale=scale, num_steps=num_steps, spacing=self.spacing,
            )

        if spec.conditional:
            # Without guidance one network call per step, with it two (batched).
            # The branch is taken once, around the loop: a conditional inside
            # the loop body would keep Grappler from optimizing the loop.
            images = tf.cond(
                tf.equal(guidance_scale, 1.0), lambda: run(1.0), lambda: run(guidance_scale)
            )
        else:
            images = run(1.0)
        images = tf.cast(images, tf.float32)
        if self.clip:
            images = tf.clip_by_value(images, -1.0, 1.0)
        outputs = {"images_float": images}
        if spec.is_image:
            pixels = tf.round((tf.clip_by_value(images, -1.0, 1.0) + 1.0) * 127.5)
            outputs["images"] = tf.cast(pixels, tf.uint8)
        return outputs

    def _jit(self, fn):
        """`fn` itself, or compiled with XLA (the checks, the noise draw and
        the tokenization stay outside: XLA drops asserts, has no strings)."""
        if not self.jit_compile:
            return fn
        import tensorflow as tf

        return tf.function(fn, jit_compile=True, autograph=False)

    def _denoise(self, inputs):
        import tensorflow as tf

        x_t = inputs["x_t"]
        batch = tf.shape(x_t, out_type=tf.int32)[0]
        inputs = self._checked(inputs, batch)
        x_t = inputs["x_t"]
        cond = self.spec.null_condition(batch)
        cond.update(self._conditions(inputs, batch))

        def predict(x_t, t, cond):
            prediction = self.spec.denoise({"x_t": x_t, "t": t, **cond})
            return {"prediction": tf.cast(prediction, tf.float32)}

        return self._jit(predict)(x_t, inputs["t"], cond)


def _assert(condition, data, summarize=16):
    """An Assert op without the `tf.debugging.Assert` guard (a conditional):
    lowered conditionals make Grappler skip its loop optimizations."""
    import tensorflow as tf

    return tf.raw_ops.Assert(condition=condition, data=data, summarize=summarize)


@contextlib.contextmanager
def _tf_log_level(level):
    import tensorflow as tf

    logger = tf.get_logger()
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


def _keyword_fn(names, body):
    """A function of positional tensors named `names` calling `body(dict)`.

    The SavedModel signature's input names are the TensorSpecs' names.
    """

    def fn(*args):
        return body(dict(zip(names, args)))

    fn.__name__ = "serving_fn"
    return fn


def read_metadata(path):
    """The export's metadata (signatures, sampler, shapes), from `path`."""
    with open(os.path.join(os.fspath(path), METADATA_FILE)) as f:
        return json.load(f)
