"""The generation runner: noise -> model function with guidance -> sampler -> decode.

`generate`, img2img, inpainting and the exported SavedModel all run through
`GenerationRunner`. It works on protocols, never on the model classes:

- `network(x_t, t, condition) -> prediction`: the denoiser (inference mode)
  with a dict of condition inputs;
- `null_condition(batch) -> dict`: the "no condition" inputs;
- a codec with `decode(x)` (identity for pixel models, a VAE's decoder for
  latent models);
- a sampler of `keras_diffusion.samplers`.

**Weights as inputs.** The runner's compiled functions take the values of
`variables` (the denoiser's and the text encoder's weights) as arguments and
read them through a `keras.StatelessScope`: the EMA weights, or any other
set, are used without assigning them to the model, so concurrent calls with
different weights never see each other's, and the model is never mutated.

**One compilation per signature.** A function is traced once per (kind,
sampler, time grid, guidance, condition keys, XLA) and reused: `tf.function`
on TensorFlow, `jax.jit` on JAX; the seed and the inputs are arguments.

**Classifier guidance.** `generate(..., classifier=...)` wraps the model
function with `guidance.classifier_guidance`. The classifier is a protocol:
`classifier({"x_t": x_t, "t": t}, training=False) -> logits` with
`.variables`, read through the same `StatelessScope` as the network (its
values and the requested labels are arguments of the compiled function). The
classifier and its scale join the compile key only when a classifier is
given: calls without one keep their key and function.
"""

import threading

import keras
import numpy as np
from keras import ops

from keras_diffusion.conditioning import KEPT_KEYS
from keras_diffusion.guidance import classifier_free_guidance
from keras_diffusion.guidance import classifier_guidance
from keras_diffusion.pipelines import image_to_image


class GenerationRunner:
    """Samples from a denoiser given as a function, with any sampler.

    Args:
        network: `network(x_t, t, condition_dict) -> prediction`.
        variables: the variables `network` (and `encode`) read; the values
            passed to `generate` / `edit` / `call` replace them.
        schedule: the `Schedule`.
        prediction: the network's prediction type.
        null_condition: `null_condition(batch) -> dict` of the null inputs.
        conditional: whether the model takes conditions (guidance applies).
        codec: an object with `decode(x)`; None for pixel space.
        guidance_input: None, or the condition key (e.g. "guidance") under
            which the network takes the guidance scale as an input (an LCM
            student, conditioned on w): the scale is then given to the
            network, broadcast over the batch, with no classifier-free
            guidance (one network call per step).

    Example:
    >>> runner = GenerationRunner(net_fn, model.trainable_variables, schedule,
    ...                           "v", null_condition=lambda b: {})
    >>> x = runner.generate(values, noise, {}, sampler=DDIMSampler(),
    ...                     timesteps=times, guidance_scale=1.0, seed=0)
    """

    def __init__(self, network, variables, schedule, prediction, null_condition,
                 conditional, codec=None, guidance_input=None):
        self.network = network
        self.variables = list(variables)
        self.schedule = schedule
        self.prediction = prediction
        self.null_condition = null_condition
        self.conditional = bool(conditional)
        self.codec = codec
        self.guidance_input = guidance_input
        self._functions = {}
        self._lock = threading.Lock()

    # --- the model function -----------------------------------------------------
    def model_fn(self, condition, guidance_scale=1.0):
        """`model_fn(x_t, t)` with the given conditions (missing ones null)
        and classifier-free guidance (a Python float or a scalar tensor)."""

        def resolve(x_t):
            null = self.null_condition(ops.shape(x_t)[0])
            cond = {k: v if condition.get(k) is None else condition[k]
                    for k, v in null.items()}
            # The null half of guidance keeps e.g. a ControlNet's control.
            null = {k: cond[k] if k in KEPT_KEYS else v for k, v in null.items()}
            return cond, null

        if self.guidance_input is not None:
            def with_scale(x_t, t):
                cond, _ = resolve(x_t)
                scale = ops.cast(ops.convert_to_tensor(guidance_scale), "float32")
                cond[self.guidance_input] = ops.broadcast_to(scale, (ops.shape(x_t)[0],))
                return self.network(x_t, t, cond)

            return with_scale

        plain = not self.conditional or (
            isinstance(guidance_scale, (int, float)) and guidance_scale == 1
        )
        if plain:
            return lambda x_t, t: self.network(x_t, t, resolve(x_t)[0])

        def guided(x_t, t):
            cond, null = resolve(x_t)
            return classifier_free_guidance(self.network, cond, null, guidance_scale)(x_t, t)

        return guided

    def sample(self, noise, condition, *, sampler, seed, guidance_scale=1.0,
               timesteps=None, num_steps=None, spacing=None, decode=True):
        """The sampler loop from `noise` (traceable: no compilation here)."""
        x = sampler.sample(
            self.model_fn(condition, guidance_scale),
            noise,
            schedule=self.schedule,
            prediction=self.prediction,
            timesteps=timesteps,
            num_steps=num_steps,
            spacing=spacing,
            seed=seed,
        )
        return self.decode(x) if decode else x

    def decode(self, x):
        x = ops.cast(x, "float32")
        if self.codec is None:
            return x
        return ops.cast(self.codec.decode(x), "float32")

    # --- compiled entry points -------------------------------------------------------
    def generate(self, values, noise, condition, *, sampler, timesteps, guidance_scale,
                 seed, decode=True, jit_compile=False, eager=False, model_fn_hook=None,
                 classifier=None, classifier_labels=None, classifier_scale=1.0,
                 classifier_values=None):
        """Samples from `noise` with the weights `values`; returns a tensor.

        With `classifier` (see the module docstring), the model function is
        `guidance.classifier_guidance(model_fn, classifier, classifier_labels,
        classifier_scale)` around the classifier-free guided one, with the
        classifier's weights `classifier_values` (default: its own current
        values). At `guidance_scale=0` the denoiser then runs once per step
        on the null condition (the unconditional model) instead of the CFG
        pair. `classifier_scale` is a Python number.
        """
        times = np.asarray(timesteps, "float32")

        def run(values, noise, condition, seed, *guide):
            def body():
                if guide:
                    model_fn = self._classifier_model_fn(
                        condition, guidance_scale, classifier, guide[1], classifier_scale
                    )
                else:
                    model_fn = self.model_fn(condition, guidance_scale)
                if model_fn_hook is not None:
                    model_fn = model_fn_hook(model_fn)
                x = sampler.sample(
                    model_fn, noise, schedule=self.schedule, prediction=self.prediction,
                    timesteps=times, seed=seed,
                )
                return self.decode(x) if decode else ops.cast(x, "float32")

            if guide:
                return self._with_values(values, body, classifier.variables, guide[0])
            return self._with_values(values, body)

        key = ("generate", repr(sampler), times.tobytes(), _guidance_key(guidance_scale),
               tuple(sorted(condition)), bool(decode), bool(jit_compile))
        args = (values, noise, condition, _seed_tensor(seed))
        if classifier is not None:
            # Only guided calls extend the key: unguided ones keep theirs.
            key += (("classifier", id(classifier), len(classifier.variables),
                     float(classifier_scale)),)
            if classifier_values is None:
                classifier_values = [ops.convert_to_tensor(v) for v in classifier.variables]
            labels = np.asarray(ops.convert_to_numpy(classifier_labels), "int32")
            args += (list(classifier_values), labels)
        fn = run if eager else self._compiled(key, run, jit_compile)
        return fn(*args)

    def _classifier_model_fn(self, condition, guidance_scale, classifier, labels, scale):
        """The classifier-guided model function (inside `_with_values`)."""
        if (self.guidance_input is None and isinstance(guidance_scale, (int, float))
                and guidance_scale == 0):
            # The unconditional model in one call: uncond + 0 * (cond - uncond).
            condition = {k: v for k, v in condition.items() if k in KEPT_KEYS}
            guidance_scale = 1.0
        return classifier_guidance(
            self.model_fn(condition, guidance_scale),
            lambda x_t, t: classifier({"x_t": x_t, "t": t}, training=False),
            labels, float(scale), schedule=self.schedule, prediction=self.prediction,
        )

    def edit(self, values, x, noise, mask, condition, *, sampler, timesteps, guidance_scale,
             seed, renoise="fresh", decode=True, jit_compile=False, eager=False):
        """img2img (`mask` None) or inpainting of `x` on the tail `timesteps`."""
        times = np.asarray(timesteps, "float32")

        def run(values, x, noise, mask, condition, seed):
            def body():
                common = dict(
                    sampler=sampler, schedule=self.schedule, prediction=self.prediction,
                    strength=1.0, timesteps=times, seed=seed, noise=noise,
                )
                model_fn = self.model_fn(condition, guidance_scale)
                if mask is None:
                    out = image_to_image.img2img(model_fn, x, **common)
                else:
                    out = image_to_image.inpaint(model_fn, x, mask, renoise=renoise, **common)
                return self.decode(out) if decode else ops.cast(out, "float32")

            return self._with_values(values, body)

        key = ("edit", repr(sampler), times.tobytes(), _guidance_key(guidance_scale),
               tuple(sorted(condition)), mask is None, renoise, bool(decode), bool(jit_compile))
        fn = run if eager else self._compiled(key, run, jit_compile)
        return fn(values, x, noise, mask, condition, _seed_tensor(seed))

    def call(self, values, fn, *args):
        """Runs `fn(*args)` eagerly with the weights `values` (e.g. the text
        encoder under the EMA weights)."""
        return self._with_values(values, lambda: fn(*args))

    # --- internals -------------------------------------------------------------
    def _with_values(self, values, body, extra_variables=(), extra_values=()):
        """Runs `body` with `values` for `self.variables` (and `extra_values`
        for `extra_variables`, e.g. a guidance classifier's)."""
        extra_variables, extra_values = list(extra_variables), list(extra_values)
        if values is None and not extra_variables:
            return body()
        if len(extra_values) != len(extra_variables):
            raise ValueError(
                f"Expected {len(extra_variables)} classifier weight values, received "
                f"{len(extra_values)}"
            )
        mapping = list(zip(extra_variables, extra_values))
        if values is not None:
            if len(values) != len(self.variables):
                raise ValueError(
                    f"Expected {len(self.variables)} weight values, received {len(values)}"
                )
            mapping = list(zip(self.variables, values)) + mapping
        with keras.StatelessScope(state_mapping=mapping):
            return body()

    def _compiled(self, key, fn, jit_compile):
        with self._lock:
            if key not in self._functions:
                self._functions[key] = _compile(fn, jit_compile)
            return self._functions[key]

    def clear(self):
        """Drops the compiled functions (after the weights' structure changed)."""
        with self._lock:
            self._functions = {}


def _guidance_key(guidance_scale):
    if isinstance(guidance_scale, (int, float, np.number)):
        return float(guidance_scale)
    return "tensor"


def _seed_tensor(seed):
    if isinstance(seed, (int, np.integer)):
        return np.asarray(seed, "int64")
    return seed


def _compile(fn, jit_compile):
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # The sampler loop is an ops.fori_loop already: no AutoGraph.
        return tf.function(
            tf.autograph.experimental.do_not_convert(fn), jit_compile=bool(jit_compile)
        )
    if backend == "jax":
        import jax

        return jax.jit(fn)
    return fn

