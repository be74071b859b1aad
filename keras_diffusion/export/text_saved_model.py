"""Export a masked diffusion language model as a SavedModel (TensorFlow only).

The whole generation runs in the graph: the prefix's characters looked up
in the vocabulary, the semi-autoregressive blocks of texts longer than the
context (a `tf.while_loop` of `samplers.semi_autoregressive.sample_block`),
the sampler loop in each (one `tf.while_loop`, with MDLM's caching as a
`tf.cond`), the seeded draws of `keras_diffusion.random` and
the decode to strings. Serving needs TensorFlow only.
"""

import os

import keras

from keras_diffusion.export.saved_model import DEFAULT_MAX_BATCH_SIZE
from keras_diffusion.export.saved_model import DEFAULT_MAX_NUM_STEPS
from keras_diffusion.export.saved_model import _assert
from keras_diffusion.export.saved_model import check_bounds
from keras_diffusion.export.saved_model import write_archive
from keras_diffusion.samplers.semi_autoregressive import sample_block

TEXT_SIGNATURES = ("serving_default", "generate_text", "generate_text_with_prefix")


def export_text_saved_model(
    model,
    path,
    overwrite=False,
    temperature=1.0,
    top_k=None,
    max_batch_size=DEFAULT_MAX_BATCH_SIZE,
    max_num_steps=DEFAULT_MAX_NUM_STEPS,
    max_length=None,
    use_ema=True,
    verbose=False,
):
    """Writes a SavedModel of a text diffusion model that TF Serving runs.

    Signatures (inputs -> outputs):

    - `generate_text` (also `serving_default`): `seed` int64 scalar in
      [0, 2**31), `batch_size` int32 scalar in [1, max_batch_size],
      `length` int32 scalar in [1, max_length], `num_steps` int32 scalar
      in [1, max_num_steps] (per block) -> `text` string `(B,)`. Texts
      longer than the model's `sequence_length` are generated in
      semi-autoregressive blocks (a `tf.while_loop`), as `model.generate`
      makes them.
    - `generate_text_with_prefix`: the same and `prefix`, a string scalar
      (every text starts with it; at most `length` characters; characters
      outside the vocabulary become '[UNK]').

    Both give the texts of `model.generate(batch_size, length, num_steps,
    seed=seed, prefix=prefix, temperature=..., top_k=...)` with the export's
    `temperature` and `top_k`. A request out of these bounds fails with an
    `InvalidArgumentError` naming the input and its value.

    Args:
        model: a trained model with `text_export_spec()` (a
            `keras_diffusion.MaskedDiffusionLM`).
        path: the SavedModel directory to write.
        overwrite: replace `path` if it exists (else a `FileExistsError`).
        temperature, top_k: the sampler's options (0: greedy).
        max_batch_size: the largest `batch_size` a request may ask for.
        max_num_steps: the largest `num_steps` a request may ask for.
        max_length: the longest `length` a request may ask for (None: the
            model's `sequence_length`).
        use_ema: export the average weights (the model's `ema`) when kept,
            as `generate` uses them; the model's own weights are unchanged
            after the export.
        verbose: print the endpoints written.

    Returns:
        `path`.

    Example:
    >>> export_text_saved_model(model, "/models/text/1")
    >>> served = tf.saved_model.load("/models/text/1")
    >>> served.signatures["generate_text"](
    ...     seed=tf.constant(0, tf.int64), batch_size=tf.constant(2),
    ...     length=tf.constant(64), num_steps=tf.constant(64))["text"]
    """
    if keras.backend.backend() != "tensorflow":
        raise ValueError(
            "Export to SavedModel needs the TensorFlow backend, the current backend "
            f"is {keras.backend.backend()!r} (set KERAS_BACKEND=tensorflow)."
        )
    if not hasattr(model, "text_export_spec"):
        raise ValueError(
            "export_text_saved_model needs a text diffusion model (with "
            f"text_export_spec(), such as MaskedDiffusionLM), received {type(model).__name__}"
        )
    check_bounds(max_batch_size, max_num_steps)
    spec = model.text_export_spec()
    if max_length is None:
        max_length = spec["sequence_length"]
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 1:
        raise ValueError(
            f"`max_length` must be None or an int >= 1, received max_length={max_length!r}"
        )
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(
            f"The export path {path!r} already exists; pass overwrite=True to replace it."
        )
    sampler = spec["sampler"](temperature, top_k)
    endpoints = _TextEndpoints(spec, sampler, max_batch_size, max_num_steps, max_length)
    # The average is written as the variables' values (swapped in under
    # the model's lock while the archive is written, then swapped back).
    contexts = [spec["ema_weights"]()] if use_ema and "ema_weights" in spec else []
    return write_archive(
        path, lambda: [*spec["layers"], endpoints.table], endpoints, contexts, verbose=verbose
    )


class _TextEndpoints:
    """The signatures' functions and input specs."""

    def __init__(self, spec, sampler, max_batch_size, max_num_steps, max_length):
        self.spec = spec
        self.sampler = sampler
        self.max_batch_size = int(max_batch_size)
        self.max_num_steps = int(max_num_steps)
        self.vocabulary = list(spec["vocabulary"])
        self.mask_id = int(spec["mask_id"])
        self.sequence_length = int(spec["sequence_length"])
        self.max_length = int(max_length)
        self._shared_sample = None
        import tensorflow as tf

        chars = self.vocabulary[2:]
        # The prefix's characters -> ids (unknown ones: 1, '[UNK]').
        self.table = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(
                tf.constant(chars, tf.string), tf.range(2, len(chars) + 2, dtype=tf.int32)
            ),
            default_value=1,
        )

    def _sample_fn(self):
        """The sampler loop as one tf.function that both endpoints call: it is
        traced once, not once per endpoint."""
        if self._shared_sample is None:
            import tensorflow as tf

            def sample(tokens, seed, num_steps):
                return self.spec["sample_tokens"](tokens, seed, num_steps, self.sampler)

            self._shared_sample = tf.function(sample, autograph=False, reduce_retracing=True)
        return self._shared_sample

    def _specs(self, with_prefix):
        import tensorflow as tf

        specs = [
            tf.TensorSpec((), tf.int64, name="seed"),
            tf.TensorSpec((), tf.int32, name="batch_size"),
            tf.TensorSpec((), tf.int32, name="length"),
            tf.TensorSpec((), tf.int32, name="num_steps"),
        ]
        if with_prefix:
            specs.append(tf.TensorSpec((), tf.string, name="prefix"))
        return specs

    def endpoints(self):
        def plain(seed, batch_size, length, num_steps):
            return self._generate(seed, batch_size, length, num_steps, None)

        def with_prefix(seed, batch_size, length, num_steps, prefix):
            return self._generate(seed, batch_size, length, num_steps, prefix)

        return [
            ("generate_text", plain, self._specs(False)),
            ("generate_text_with_prefix", with_prefix, self._specs(True)),
        ]

    def metadata(self):
        return {
            "format": "keras_diffusion text SavedModel",
            "signatures": {
                "serving_default": ["batch_size", "length", "num_steps", "seed"],
                "generate_text": ["batch_size", "length", "num_steps", "seed"],
                "generate_text_with_prefix": ["batch_size", "length", "num_steps", "prefix",
                                              "seed"],
            },
            "sampler": {"class": type(self.sampler).__name__, **self.sampler.get_config()},
            "sequence_length": self.sequence_length,
            "max_length": self.max_length,
            "vocabulary_size": len(self.vocabulary),
            "max_batch_size": self.max_batch_size,
            "max_num_steps": self.max_num_steps,
        }

    def _generate(self, seed, batch_size, length, num_steps, prefix):
        import tensorflow as tf

        if prefix is None:
            known = tf.zeros((0,), tf.int32)
        else:
            known = self.table.lookup(tf.strings.unicode_split(prefix, "UTF-8"))
        num_known = tf.shape(known)[0]
        checks = [
            _assert(tf.logical_and(batch_size >= 1, batch_size <= self.max_batch_size),
                    [f"`batch_size` must be in [1, {self.max_batch_size}] (max_batch_size of "
                     "this export), received batch_size =", batch_size]),
            _assert(tf.logical_and(length >= 1, length <= self.max_length),
                    [f"`length` must be in [1, {self.max_length}] (max_length of this "
                     "export), received length =", length]),
            _assert(tf.logical_and(num_steps >= 1, num_steps <= self.max_num_steps),
                    [f"`num_steps` must be in [1, {self.max_num_steps}] (max_num_steps of "
                     "this export), received num_steps =", num_steps]),
            _assert(tf.logical_and(seed >= 0, seed < 2**31),
                    ["`seed` must be in [0, 2**31), received seed =", seed]),
            _assert(num_known <= length,
                    ["`prefix` is longer than `length`: characters =", num_known,
                     "length =", length]),
        ]
        with tf.control_dependencies(checks):
            batch_size = tf.identity(batch_size)
            length = tf.identity(length)
            known = tf.identity(known)
        masks = tf.fill([length - num_known], self.mask_id)
        row = tf.concat([known, masks], axis=0)
        tokens = tf.tile(row[None, :], [batch_size, 1])

        def block(tokens, done, index):
            tokens, done, _ = sample_block(self._sample_fn(), tokens, done, index, seed,
                                           self.sequence_length, num_steps)
            return tokens, done, index + 1

        out = tf.while_loop(lambda tokens, done, index: done < length, block,
                            (tokens, num_known, tf.constant(0, tf.int64)))[0]
        table = tf.constant(self.vocabulary + [""], tf.string)
        text = tf.strings.reduce_join(tf.gather(table, out), axis=-1)
        return {"text": text}
