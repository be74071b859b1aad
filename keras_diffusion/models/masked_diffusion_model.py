"""MaskedDiffusionLM: a masked (absorbing-state) diffusion language model."""

import contextlib
import itertools
import math
import threading

import keras
import numpy as np
from keras import ops

from keras_diffusion import objectives
from keras_diffusion import random as random_lib
from keras_diffusion.models import train_steps
from keras_diffusion.models.token_transformer import TokenTransformer
from keras_diffusion.samplers.masked_diffusion_sampler import MaskedDiffusionSampler
from keras_diffusion.samplers.masked_diffusion_sampler import uniform_noise
from keras_diffusion.samplers.semi_autoregressive import sample_block
from keras_diffusion.samplers.uniform_diffusion_sampler import UniformDiffusionSampler
from keras_diffusion.schedules.masking_schedule import MaskingSchedule
from keras_diffusion.utils.fitting import without_shuffle_warning
from keras_diffusion.utils.tensorflow_ops import has_accelerator
from keras_diffusion.utils.weight_average import WeightAverage
from keras_diffusion.utils.weight_average import averages_assigned
from keras_diffusion.utils.weight_average import check_decay

PAD_ID = 0
OOV_ID = 1
# Batches that `fit` reads to build the vocabulary of an infinite dataset.
ADAPT_BATCHES = 1000
PROCESSES = ("masked", "uniform")


@keras.saving.register_keras_serializable(package="keras_diffusion")
class MaskedDiffusionLM(keras.Model):
    """A character-level masked diffusion language model (MDLM).

    Text is split into characters by `keras.layers.TextVectorization(
    split="character", standardize=None)` (id 0 is padding, 1 the unknown
    character), built by `adapt(texts)` or, when no `vocabulary` is given, at
    the first `fit` from the training data. The mask token is the id after
    the vocabulary. Training minimizes MDLM's continuous-time negative ELBO
    (`keras_diffusion.objectives.masked_diffusion_loss`: the SUBS
    parameterization, the masked cross-entropy weighted by
    `-alpha'(t) / (1 - alpha(t))`) under a `MaskingSchedule`; the denoiser is
    a `TokenTransformer`.

    With `process="uniform"` the same model is D3PM-uniform diffusion in
    continuous time instead: a token is kept with probability `alpha(t)`,
    else replaced by a uniform draw among the vocabulary's tokens (no mask
    token); the loss is its exact NELBO
    (`keras_diffusion.objectives.uniform_diffusion_loss`), so its `bpc` is
    a bound comparable with the masked process's, and generation runs
    `UniformDiffusionSampler`. The network is then time-conditioned by
    default (the tokens do not show how noisy they are).

    Data for `fit` / `evaluate`: a batched `tf.data.Dataset`, a Python
    generator, a list or an array of strings `(B,)` (each truncated or
    padded to `sequence_length` characters) or of token ids `(B,
    sequence_length)`. Metrics: `loss` and `bpc`, the NELBO in bits per
    character (characters: the non-padding tokens) and `bpc_stderr`, its
    Monte-Carlo standard error (from the spread of the per-sequence
    single-sample estimates; `evaluate` draws `num_eval_samples` times per
    sequence with a fixed seed, so it is deterministic).

    Generation (`generate`, `infill`) runs `MaskedDiffusionSampler`
    (ancestral, with MDLM's caching) and decodes to strings; texts longer
    than `sequence_length` are made block by block (semi-autoregressive:
    each block sees the last `sequence_length // 2` characters before it).
    `keras_diffusion.export.export_text_saved_model` writes a SavedModel
    with a `generate_text` signature.

    **Weight average.** As `DiffusionModel`, the model keeps an exponential
    moving average of the denoiser's weights (`model.ema`, a
    `WeightAverage`, decay min(`ema_decay`, n / (n + 9)) at the n-th
    optimizer step). `generate`, `infill` and the export use it once it has
    been updated (`use_ema=False`: the last weights), reading it as values:
    the model is never mutated. `fit` and `evaluate` use the last weights;
    `with model.ema_weights(): model.evaluate(ds)` measures the average.

    Args:
        sequence_length: characters per training sequence (the context).
        vocabulary: a list of characters as `get_vocabulary()` returns them
            (`["", "[UNK]", ...]`), or None to build it by `adapt` / `fit`.
        max_vocabulary_size: the most vocabulary entries `adapt` keeps.
        schedule: a `MaskingSchedule` or its kind (`"log_linear"`,
            `"cosine"`); its `alpha(t)` is P(a token is kept) in both
            processes.
        process: `"masked"` (absorbing state, MDLM) or `"uniform"`
            (uniform noise, D3PM-uniform in continuous time).
        hidden_dim, num_layers, num_heads, mlp_ratio, dropout: the default
            `TokenTransformer`.
        time_conditioning: condition the network on t (MDLM: not needed;
            without it the sampler caches). None: False for `"masked"`,
            True for `"uniform"`.
        num_eval_samples: NELBO draws per sequence in `evaluate`.
        seed: seed of the training noise (None: random).
        ema_decay: the decay of the weight average after its warm-up, in
            [0, 1) (default 0.999), or None for no average.
        **kwargs: `keras.Model` arguments.

    Example:
    >>> model = MaskedDiffusionLM(sequence_length=64)
    >>> ds = tf.data.Dataset.from_tensor_slices(lines).batch(32)
    >>> model.fit(ds, epochs=5)                  # builds the vocabulary first
    >>> model.evaluate(ds, return_dict=True)["bpc"]
    >>> model.generate(batch_size=2, length=200, num_steps=64, seed=0)
    >>> model.infill(["The ____ brown fox"], mask_character="_", seed=0)

    References:
        Sahoo et al., Simple and Effective Masked Diffusion Language Models,
        2024.
        Austin et al., Structured Denoising Diffusion Models in Discrete
        State-Spaces, 2021.
        Schiff et al., Simple Guidance Mechanisms for Discrete Diffusion
        Models, 2024 (the uniform process's continuous-time NELBO).
    """

    def __init__(
        self,
        sequence_length=128,
        vocabulary=None,
        max_vocabulary_size=256,
        schedule="log_linear",
        hidden_dim=256,
        num_layers=4,
        num_heads=4,
        mlp_ratio=4.0,
        dropout=0.0,
        time_conditioning=None,
        num_eval_samples=1,
        seed=None,
        process="masked",
        ema_decay=0.999,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if process not in PROCESSES:
            raise ValueError(
                f"`process` must be one of {list(PROCESSES)}, received process={process!r}"
            )
        self.ema_decay = check_decay(ema_decay, "ema_decay", allow_none=True)
        self.ema = None
        self._weights_lock = threading.RLock()
        self.process = process
        self.sequence_length = int(sequence_length)
        if self.sequence_length < 2:
            raise ValueError(
                f"`sequence_length` must be >= 2, received sequence_length={sequence_length}"
            )
        self.max_vocabulary_size = int(max_vocabulary_size)
        if self.max_vocabulary_size < 3:
            raise ValueError(
                "`max_vocabulary_size` must be >= 3, received "
                f"max_vocabulary_size={max_vocabulary_size}"
            )
        if isinstance(schedule, dict):
            schedule = keras.saving.deserialize_keras_object(schedule)
        self.schedule = schedule if isinstance(schedule, MaskingSchedule) else (
            MaskingSchedule(schedule))
        self.hidden_dim = int(hidden_dim)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.mlp_ratio = float(mlp_ratio)
        self.dropout = float(dropout)
        if time_conditioning is None:
            time_conditioning = process == "uniform"
        self.time_conditioning = bool(time_conditioning)
        self.num_eval_samples = int(num_eval_samples)
        if self.num_eval_samples < 1:
            raise ValueError(
                f"`num_eval_samples` must be >= 1, received num_eval_samples={num_eval_samples}"
            )
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.bpc_tracker = keras.metrics.Mean(name="bpc")
        self.stderr_tracker = _StandardError(name="bpc_stderr")
        # The tokenizer is kept out of Keras' layer tracking: a tracked
        # TextVectorization (supports_jit=False) would turn XLA off for the
        # whole model's train step. Its vocabulary is saved in the config.
        vectorizer = None
        try:
            vectorizer = keras.layers.TextVectorization(
                max_tokens=self.max_vocabulary_size,
                standardize=None,
                split="character",
                output_mode="int",
                output_sequence_length=self.sequence_length,
                name="vectorizer",
            )
        except ImportError:  # TextVectorization needs TensorFlow.
            pass
        object.__setattr__(self, "vectorizer", vectorizer)
        self.vocabulary = None
        self.denoiser = None
        if vocabulary is not None:
            self.set_vocabulary(vocabulary)

    # ------------------------------------------------------------------
    # Vocabulary
    # ------------------------------------------------------------------
    @property
    def vocabulary_size(self):
        """Entries of the vocabulary (padding and unknown included)."""
        return None if self.vocabulary is None else len(self.vocabulary)

    @property
    def mask_id(self):
        """The mask token: the id after the vocabulary (for the uniform
        process, only the placeholder of the positions to generate)."""
        return self.vocabulary_size

    @property
    def num_logits(self):
        """The denoiser's output width: the vocabulary and, for the masked
        process, the mask token."""
        return self.vocabulary_size + (1 if self.process == "masked" else 0)

    def set_vocabulary(self, vocabulary):
        """Sets the characters (`["", "[UNK]", ...]`) and builds the network."""
        vocabulary = [str(v) for v in vocabulary]
        if len(vocabulary) < 3 or vocabulary[PAD_ID] != "" or vocabulary[OOV_ID] != "[UNK]":
            raise ValueError(
                "`vocabulary` must start with the padding '' and '[UNK]' and hold at "
                f"least one character, received vocabulary={vocabulary[:8]!r}"
            )
        if self.vocabulary is not None and vocabulary != self.vocabulary:
            raise ValueError(
                "The vocabulary is already set (the network is built on it); "
                "create a new MaskedDiffusionLM for another vocabulary"
            )
        if self.vocabulary is not None:
            return
        self.vocabulary = vocabulary
        if self.vectorizer is not None:
            self.vectorizer.set_vocabulary(vocabulary[2:])
        self.denoiser = TokenTransformer(
            vocabulary_size=self.num_logits,
            max_length=self.sequence_length,
            hidden_dim=self.hidden_dim,
            num_layers=self.num_layers,
            num_heads=self.num_heads,
            mlp_ratio=self.mlp_ratio,
            time_conditioning=self.time_conditioning,
            dropout=self.dropout,
            dtype=self.dtype_policy,
            name="denoiser",
        )
        self.denoiser.build()
        if self.ema_decay:
            self.ema = WeightAverage(self.denoiser.trainable_variables, self.ema_decay,
                                     name="ema")
        self.built = True

    def adapt(self, texts, steps=None):
        """Builds the character vocabulary from `texts` (then the network).

        Args:
            texts: a list or array of strings, or a `tf.data.Dataset` of
                (batches of) strings.
            steps: batches of a dataset to read (default: all, at most 1000
                of an infinite one).
        """
        if self.vectorizer is None:
            raise RuntimeError("`adapt` needs TensorFlow (keras.layers.TextVectorization)")
        if isinstance(texts, str):
            raise ValueError(
                f"`texts` must be a list of strings, received one string texts={texts[:40]!r}"
            )
        if hasattr(texts, "element_spec"):
            import tensorflow as tf

            if steps is None and texts.cardinality() == tf.data.INFINITE_CARDINALITY:
                steps = ADAPT_BATCHES
            if steps is not None:
                texts = texts.take(steps)
            texts = texts.map(lambda x: _first(x))
            if not any(True for _ in texts.take(1)):
                raise ValueError("`texts` is empty: the corpus has no text to adapt to")
            self.vectorizer.adapt(texts)
        else:
            texts = [str(t) for t in np.asarray(texts, dtype=object).reshape(-1)]
            if not any(texts):
                raise ValueError(
                    f"`texts` is empty: the corpus has no characters (received {len(texts)} "
                    "empty strings)" if texts else "`texts` is empty: received an empty corpus"
                )
            self.vectorizer.adapt(texts)
        vocabulary = self.vectorizer.get_vocabulary()
        if len(vocabulary) < 3:
            raise ValueError("`texts` is empty: the corpus has no characters to adapt to")
        self.vocabulary = None
        self.set_vocabulary(vocabulary)

    def tokenize(self, texts):
        """Strings `(B,)` -> int32 ids `(B, sequence_length)`, padded with 0."""
        if self.vocabulary is None:
            raise ValueError("The vocabulary is not built: call adapt(texts) or fit first")
        if self.vectorizer is None:
            raise RuntimeError("Tokenizing strings needs TensorFlow (TextVectorization)")
        return ops.cast(self.vectorizer(texts), "int32")

    def detokenize(self, tokens):
        """Token ids `(B, L)` -> a list of strings (padding dropped)."""
        table = list(self.vocabulary) + [""]
        out = []
        for row in np.asarray(ops.convert_to_numpy(tokens)):
            out.append("".join(table[int(i)] for i in row))
        return out

    def check_tokens(self, tokens, name="tokens"):
        """Raises a ValueError naming `name` for ids outside the vocabulary."""
        tokens = np.asarray(tokens)
        if tokens.size and (tokens.min() < 0 or tokens.max() >= self.vocabulary_size):
            bad = tokens[(tokens < 0) | (tokens >= self.vocabulary_size)]
            raise ValueError(
                f"`{name}` holds token ids outside the vocabulary [0, "
                f"{self.vocabulary_size}): received {bad[:8].tolist()}"
            )
        if tokens.ndim != 2 or tokens.shape[1] > self.sequence_length:
            raise ValueError(
                f"`{name}` must be token ids of shape (batch, length <= sequence_length="
                f"{self.sequence_length}), received shape {tokens.shape}"
            )

    # ------------------------------------------------------------------
    # Data
    # ------------------------------------------------------------------
    def _to_dataset(self, x, batch_size=None):
        """fit/evaluate data -> (a dataset or array of token ids, its first batch)."""
        if x is None:
            raise ValueError("`x` is None: pass the training texts or token ids")
        if isinstance(x, str):
            raise ValueError(f"`x` must be a batch of strings, received one string {x[:40]!r}")
        if hasattr(x, "__next__"):  # A generator: into tf.data, behind its first batch.
            try:
                first = next(x)
            except StopIteration:
                raise ValueError("`x` is empty: the generator yields no batch") from None
            head = [first]
            if self.vocabulary is None and np.asarray(_first(first)).dtype.kind in "USO":
                # A generator is read once: adapt on its first batches and
                # keep them for training.
                head += list(itertools.islice(x, ADAPT_BATCHES - 1))
                self.adapt([str(t) for b in head for t in np.asarray(_first(b)).reshape(-1)])
            x = _generator_dataset(head[0], itertools.chain(head[1:], x))
        if hasattr(x, "element_spec"):
            import tensorflow as tf

            x = x.map(lambda *e: _first(e[0] if len(e) == 1 else e))
            spec = x.element_spec
            if spec.shape.rank is not None and (
                spec.shape.rank < 1 or (spec.dtype != tf.string and spec.shape.rank < 2)
            ):
                raise ValueError(
                    "`x` must yield batches (strings (B,) or token ids (B, L)): batch the "
                    f"dataset, received elements of shape {spec.shape}"
                )
            if not any(True for _ in x.take(1)):
                raise ValueError("`x` is empty: the dataset yields no batch (empty corpus)")
            if spec.dtype == tf.string:
                if self.vocabulary is None:
                    self.adapt(x)
                return x.map(self.tokenize)
            if self.vocabulary is None:
                raise ValueError(
                    "`x` holds token ids but the model has no vocabulary: pass "
                    "`vocabulary=` or call adapt(texts) first"
                )
            for first in x.take(1):
                self.check_tokens(first.numpy(), "x")
            size, length = self.vocabulary_size, self.sequence_length

            def checked(ids):
                ids = tf.cast(ids, tf.int32)
                ok = tf.logical_and(
                    tf.reduce_all(ids >= 0), tf.reduce_all(ids < size)
                )
                ok = tf.logical_and(ok, tf.shape(ids)[1] <= length)
                check = tf.debugging.Assert(
                    ok, [f"`x` holds token ids outside [0, {size}) or sequences longer "
                         f"than sequence_length={length}"])
                with tf.control_dependencies([check]):
                    return tf.identity(ids)

            return x.map(checked)
        array = np.asarray(x)
        if array.size == 0:
            raise ValueError("`x` is empty: the corpus has no text (empty corpus)")
        if array.dtype.kind in "USO":
            if self.vocabulary is None:
                self.adapt(array.reshape(-1))
            return np.asarray(self.tokenize(array.reshape(-1)))
        if self.vocabulary is None:
            raise ValueError(
                "`x` holds token ids but the model has no vocabulary: pass `vocabulary=` "
                "or call adapt(texts) first"
            )
        self.check_tokens(array, "x")
        return array.astype("int32")

    def compile(self, optimizer="auto", loss=None, metrics=None, jit_compile="auto", **kwargs):
        """Configures training; `fit` calls it with the defaults if needed.

        Args:
            optimizer: an optimizer, or "auto" for
                `AdamW(learning_rate=1e-3, weight_decay=0.01, clipnorm=1.0)`.
            loss, metrics: must be None (the model defines them).
            jit_compile: "auto": XLA on JAX and where a GPU/TPU is visible.
            **kwargs: other `keras.Model.compile` arguments.
        """
        if loss is not None or metrics:
            raise ValueError(
                "MaskedDiffusionLM computes its own loss and metrics; compile() received "
                f"loss={loss!r}, metrics={metrics!r}"
            )
        if optimizer is None or (isinstance(optimizer, str) and optimizer == "auto"):
            optimizer = keras.optimizers.AdamW(
                learning_rate=1e-3, weight_decay=0.01, clipnorm=1.0
            )
        if jit_compile == "auto":
            jit_compile = True if keras.backend.backend() == "jax" else has_accelerator()
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)

    def get_compile_config(self):
        config = super().get_compile_config()
        if config is None:
            return None
        return {k: config[k] for k in ("optimizer", "jit_compile") if k in config}

    def compile_from_config(self, config):
        config = dict(config)
        if isinstance(config.get("optimizer"), dict):
            config["optimizer"] = keras.optimizers.deserialize(config["optimizer"])
        self.compile(**config)
        if self.built:
            self.optimizer.build(self.trainable_variables)

    def _prepare(self, x):
        x = self._to_dataset(x)
        if not self.compiled:
            self.compile()
        if not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)
        return x

    def fit(self, x=None, y=None, *args, **kwargs):
        x = self._prepare(x)
        return super().fit(x, None, *args, **without_shuffle_warning(x, args, kwargs))

    def evaluate(self, x=None, y=None, *args, **kwargs):
        return super().evaluate(self._prepare(x), None, *args, **kwargs)

    # ------------------------------------------------------------------
    # The loss
    # ------------------------------------------------------------------
    @property
    def metrics(self):
        return [self.loss_tracker, self.bpc_tracker, self.stderr_tracker]

    def network(self, training=False):
        """The denoiser as `network(z_t, t) -> logits`."""

        def fn(z_t, t):
            return self.denoiser({"x_t": z_t, "t": t}, training=training)

        return fn

    def _bits(self, tokens, t, uniforms, training):
        """Per-sequence NELBO in bits and the number of characters."""
        if self.process == "uniform":
            nelbo = objectives.uniform_diffusion_loss(
                self.network(training), tokens, t, uniforms, self.schedule, self.num_logits
            )
        else:
            nelbo = objectives.masked_diffusion_loss(
                self.network(training), tokens, t, uniforms, self.schedule, self.mask_id
            )
        chars = ops.sum(ops.cast(ops.not_equal(tokens, PAD_ID), "float32"), axis=1)
        return nelbo / math.log(2.0), chars

    def training_loss(self, data):
        """`(loss, (bits, chars, valid))`: the loss is the NELBO in bits per
        character of the batch; t is antithetic (stratified) over the batch."""
        tokens = ops.cast(_first(data), "int32")
        batch, length = ops.shape(tokens)[0], ops.shape(tokens)[1]
        u0 = keras.random.uniform((), seed=self.seed_generator)
        t = ops.mod(u0 + ops.arange(batch, dtype="float32") / ops.cast(batch, "float32"), 1.0)
        uniforms = keras.random.uniform((batch, length), seed=self.seed_generator)
        bits, chars = self._bits(tokens, t, uniforms, training=True)
        loss = ops.sum(bits) / ops.maximum(ops.sum(chars), 1.0)
        return loss, (bits, chars, ops.ones_like(bits))

    def eval_losses(self, data):
        """Yields `num_eval_samples` NELBO draws with a fixed seed (mixed with
        the batch's tokens, so that batches get different draws)."""
        tokens = ops.cast(_first(data), "int32")
        shape = ops.shape(tokens)
        weights = ops.arange(1, shape[1] + 1, dtype="int32")
        seed = random_lib.EVAL_SEED + ops.sum(tokens * weights[None, :])
        for k in range(self.num_eval_samples):
            t = uniform_noise((shape[0],), seed, 2 * k)
            uniforms = uniform_noise(shape, seed, 2 * k + 1)
            bits, chars = self._bits(tokens, t, uniforms, training=False)
            yield bits, chars, ops.ones_like(bits)

    def update_metrics(self, bits, chars, valid):
        per_char = bits / ops.maximum(chars, 1.0)
        total = ops.sum(chars)
        # Weighted by characters (an empty batch counts for nothing): `loss`
        # is the bits per character of all the batches seen, as `bpc`.
        self.loss_tracker.update_state(ops.sum(bits) / ops.maximum(total, 1.0),
                                       sample_weight=total)
        self.bpc_tracker.update_state(per_char, sample_weight=chars)
        self.stderr_tracker.update_state(per_char, sample_weight=chars)

    def train_step(self, *args):
        return train_steps.train_step(self, *args)

    def test_step(self, *args):
        return train_steps.test_step(self, *args)

    def call(self, inputs, training=None):
        """Logits of the denoiser on token ids `(B, L)` (no noise added)."""
        tokens = ops.cast(inputs, "int32")
        t = ops.zeros((ops.shape(tokens)[0],), "float32")
        return self.denoiser({"x_t": tokens, "t": t}, training=training)

    # ------------------------------------------------------------------
    # Generation
    # ------------------------------------------------------------------
    def sampler(self, temperature=1.0, top_k=None):
        """The sampler of `generate`: `MaskedDiffusionSampler` (cached iff
        the network is not time-conditioned) or, for the uniform process,
        `UniformDiffusionSampler`."""
        if self.process == "uniform":
            return UniformDiffusionSampler(temperature=temperature, top_k=top_k)
        return MaskedDiffusionSampler(
            temperature=temperature, top_k=top_k, cache=not self.time_conditioning
        )

    def sample_tokens(self, tokens, seed, num_steps, sampler):
        """Fills the masks of one window of token ids (at most
        `sequence_length`): the graph that `generate` and the export run."""
        return sampler.sample(
            self.network(), tokens, schedule=self.schedule, mask_id=self.mask_id,
            num_steps=num_steps, seed=seed, vocabulary_size=self.num_logits,
            return_num_calls=True,
        )

    # ------------------------------------------------------------------
    # Weights: the average read as values
    # ------------------------------------------------------------------
    def _ema_by_variable(self):
        """{id(variable): its average} once the average has been updated, else {}."""
        if self.ema is not None and self.ema.has_updates():
            return self.ema.by_variable()
        return {}

    @contextlib.contextmanager
    def ema_weights(self):
        """Assigns the average weights to the denoiser inside a `with` (for
        code that reads the variables themselves: `evaluate`, saving them);
        the training values are restored afterwards. Yields whether a swap
        happened. `generate`, `infill` and the export need no swap."""
        with averages_assigned(
            self.denoiser.variables, self._ema_by_variable(), self._weights_lock
        ) as swapped:
            yield swapped

    def _compiled_sampler(self, sampler, use_ema=True):
        """The sampling function of `sampler` (a tf.function on TensorFlow),
        reading the average weights when `use_ema` and the average is kept."""
        averages = self._ema_by_variable() if use_ema else {}
        mapping = [(v, averages[id(v)]) for v in self.denoiser.variables if id(v) in averages]
        key = (type(sampler).__name__, sampler.temperature, sampler.top_k, sampler.cache,
               bool(mapping))
        cache = self.__dict__.setdefault("_sample_fns", {})
        if key not in cache:

            def fn(tokens, seed, steps):
                # The averages are read where the weights are: nothing is
                # assigned, so concurrent calls and training never see a swap.
                with keras.StatelessScope(state_mapping=mapping):
                    return self.sample_tokens(tokens, seed, steps, sampler)

            if keras.backend.backend() == "tensorflow":
                import tensorflow as tf

                fn = tf.function(fn, autograph=False, reduce_retracing=True)
            cache[key] = fn
        return cache[key]

    def _ensure_vocabulary(self):
        if self.vocabulary is None:
            raise ValueError(
                "The model has no vocabulary yet: call adapt(texts) or fit(...) first"
            )

    def _encode_known(self, text, name):
        """Characters -> ids (unknown characters are '[UNK]')."""
        index = {c: i for i, c in enumerate(self.vocabulary) if i >= 2}
        return [index.get(c, OOV_ID) for c in text]

    def generate(self, batch_size=1, length=None, num_steps=None, seed=None, prefix=None,
                 temperature=1.0, top_k=None, return_tokens=False, use_ema=True):
        """Samples texts, `length` characters each (padding dropped).

        Args:
            batch_size: how many texts.
            length: characters per text (default `sequence_length`); longer
                than `sequence_length`: generated in semi-autoregressive
                blocks.
            num_steps: sampler steps per block (default: the block's new
                characters, at most `sequence_length`).
            seed: an int in [0, 2**31) (None: random). The same seed gives
                the same texts, here and in the exported `generate_text`.
            prefix: a string every text starts with (kept fixed).
            temperature: 0 for greedy tokens.
            top_k: sample among the k most likely tokens.
            return_tokens: return the int32 token ids `(B, length)` instead.
            use_ema: sample with the average weights (`model.ema`, once
                updated; see `ema_decay`), else with the last weights.

        Returns:
            a list of `batch_size` strings.
        """
        self._ensure_vocabulary()
        batch_size = _positive_int(batch_size, "batch_size")
        length = self.sequence_length if length is None else _positive_int(length, "length")
        if num_steps is not None:
            num_steps = _positive_int(num_steps, "num_steps")
        seed = random_lib.check_seed(seed)
        known = []
        if prefix is not None:
            if not isinstance(prefix, str):
                raise ValueError(f"`prefix` must be a string, received prefix={prefix!r}")
            if len(prefix) > length:
                raise ValueError(
                    f"`prefix` is longer than `length`: {len(prefix)} characters for "
                    f"length={length}"
                )
            known = self._encode_known(prefix, "prefix")
        fn = self._compiled_sampler(self.sampler(temperature, top_k), use_ema)
        row = np.concatenate([known, np.full(length - len(known), self.mask_id)])
        tokens = ops.convert_to_tensor(np.tile(row.astype("int32")[None, :], (batch_size, 1)))
        done, block = len(known), 0
        self.last_num_calls = 0
        while done < length:  # Semi-autoregressive blocks (one if length <= the context).
            tokens, done, calls = sample_block(fn, tokens, done, block, seed,
                                               self.sequence_length, num_steps)
            done, block = int(done), block + 1
            self.last_num_calls += int(calls)
        tokens = ops.convert_to_numpy(tokens)
        return tokens if return_tokens else self.detokenize(tokens)

    def infill(self, texts, mask_character="_", num_steps=None, seed=None, temperature=1.0,
               top_k=None, use_ema=True):
        """Fills the `mask_character`s of `texts`; the other characters stay.

        Args:
            texts: a list of strings of at most `sequence_length` characters
                (padded to the longest of them with padding tokens, which
                stay fixed).
            mask_character: the placeholder character to fill.
            num_steps, seed, temperature, top_k, use_ema: as in `generate`
                (default steps: the number of placeholders, at least 1).

        Returns:
            the list of filled strings (a position filled with the padding
            token, which data shorter than `sequence_length` teaches, decodes
            to nothing).
        """
        self._ensure_vocabulary()
        if isinstance(texts, str):
            texts = [texts]
        texts = list(texts)
        if not texts:
            raise ValueError("`texts` is empty: pass at least one string to infill")
        longest = max(len(t) for t in texts)
        if longest > self.sequence_length:
            raise ValueError(
                f"`texts` holds a text of {longest} characters, over "
                f"sequence_length={self.sequence_length}"
            )
        z = np.full((len(texts), max(longest, 1)), PAD_ID, "int32")
        for i, text in enumerate(texts):
            ids = self._encode_known(text, "texts")
            for j, (c, tok) in enumerate(zip(text, ids)):
                z[i, j] = self.mask_id if c == mask_character else tok
        if num_steps is None:
            num_steps = max(int(np.max(np.sum(z == self.mask_id, axis=1))), 1)
        num_steps = _positive_int(num_steps, "num_steps")
        seed = random_lib.check_seed(seed)
        fn = self._compiled_sampler(self.sampler(temperature, top_k), use_ema)
        out, _ = fn(ops.convert_to_tensor(z), ops.convert_to_tensor(
            random_lib.sampler_seed(seed, 0)), ops.convert_to_tensor(num_steps, "int32"))
        return self.detokenize(out)

    def text_export_spec(self):
        """What `export_text_saved_model` needs (a protocol: the export never
        imports this class)."""
        self._ensure_vocabulary()
        return {
            "sample_tokens": self.sample_tokens,
            "sampler": self.sampler,
            "vocabulary": list(self.vocabulary),
            "mask_id": self.mask_id,
            "sequence_length": self.sequence_length,
            "layers": [self.denoiser],
            "ema_weights": self.ema_weights,
        }

    # ------------------------------------------------------------------
    # Saving
    # ------------------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "vocabulary": None if self.vocabulary is None else list(self.vocabulary),
                "max_vocabulary_size": self.max_vocabulary_size,
                "schedule": keras.saving.serialize_keras_object(self.schedule),
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio,
                "dropout": self.dropout,
                "time_conditioning": self.time_conditioning,
                "num_eval_samples": self.num_eval_samples,
                "seed": self.seed,
                "process": self.process,
                "ema_decay": self.ema_decay,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Files saved before the model kept an average have no EMA
        # variables (and no "ema_decay"): they load without one.
        config.setdefault("ema_decay", None)
        return super().from_config(config)

    def build(self, input_shape=None):
        self.built = True

    def get_build_config(self):
        return {}

    def build_from_config(self, config):
        self.built = True


@keras.saving.register_keras_serializable(package="keras_diffusion")
class _StandardError(keras.metrics.Metric):
    """The standard error of a (weighted) mean of per-example values:
    `sqrt(weighted variance / (n_eff - 1))`, `n_eff = (sum w)^2 / sum w^2`."""

    def __init__(self, name="stderr", **kwargs):
        super().__init__(name=name, **kwargs)
        self.sums = self.add_variable((4,), initializer="zeros", name="sums")

    def update_state(self, values, sample_weight=None):
        values = ops.cast(ops.reshape(values, (-1,)), "float32")
        w = ops.ones_like(values) if sample_weight is None else ops.cast(
            ops.reshape(sample_weight, (-1,)), "float32")
        self.sums.assign_add(ops.stack(
            [ops.sum(w), ops.sum(w * values), ops.sum(w * values * values), ops.sum(w * w)]))

    def result(self):
        total, first, second, squares = [self.sums[i] for i in range(4)]
        total_ = ops.maximum(total, 1e-12)
        mean = first / total_
        variance = ops.maximum(second / total_ - mean * mean, 0.0)
        n_eff = total * total / ops.maximum(squares, 1e-12)
        return ops.sqrt(variance / ops.maximum(n_eff - 1.0, 1.0))

    def reset_state(self):
        self.sums.assign(ops.zeros((4,)))


def _first(data):
    """The texts / tokens of a batch: the tensor, or the first of a tuple."""
    if isinstance(data, (tuple, list)):
        return data[0]
    if isinstance(data, dict):
        for key in ("text", "texts", "tokens"):
            if key in data:
                return data[key]
        raise ValueError(f"A dict batch needs a 'text' or 'tokens' key, received {list(data)}")
    return data


def _generator_dataset(first, rest):
    import tensorflow as tf

    first = _first(first)
    array = np.asarray(first)
    dtype = tf.string if array.dtype.kind in "USO" else tf.int32
    spec = tf.TensorSpec((None,) + array.shape[1:], dtype)

    def gen():
        yield np.asarray(first)
        for item in rest:
            yield np.asarray(_first(item))

    return tf.data.Dataset.from_generator(gen, output_signature=spec)


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"`{name}` must be an int >= 1, received {name}={value!r}")
    return int(value)
