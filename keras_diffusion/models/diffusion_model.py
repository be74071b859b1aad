"""DiffusionModel: train a denoiser with `model.fit`, sample with any sampler.

`train_step` and `test_step` are TensorFlow-only (tf.GradientTape); the
denoiser, schedule, objectives and samplers are backend-agnostic.
"""

import contextlib
import warnings

import keras
import numpy as np
from keras import ops

from keras_diffusion import objectives
from keras_diffusion import samplers as samplers_lib
from keras_diffusion import schedules as schedules_lib
from keras_diffusion.guidance import classifier_free_guidance
from keras_diffusion.samplers.sampler import step_noise
from keras_diffusion.utils.images import to_float

NAN_POLICIES = ("raise", "skip")
_DATA_KEYS = ("images", "labels", "text", "context", "condition")
# The stateless seed of `test_step`'s noise: the same noise every epoch.
_EVAL_SEED = 20240531


# `generate(seed=...)`: the initial noise is `step_noise(shape, seed,
# INITIAL_NOISE_STEP)` (the samplers' own steps use 0 .. num_steps - 1 with
# another seed), and the sampler of chunk i gets `sampler_seed(seed, i)`. The
# exported SavedModel draws both the same way.
INITIAL_NOISE_STEP = 2**31 - 1
_SEED_MULTIPLIER = 1000003
_SEED_MODULUS = 2**31 - 1


def initial_noise(shape, seed):
    """The initial noise of `generate` for an int seed: `N(0, I)` of `shape`."""
    return step_noise(shape, seed, INITIAL_NOISE_STEP)


def sampler_seed(seed, chunk=0):
    """The seed of the sampler in `generate`'s batch `chunk` for a seed.

    `(seed * 1000003 + chunk) % (2**31 - 1)`: exact Python integers for an int
    seed, int64 ops for a tensor (the exported graph).
    """
    if isinstance(seed, (int, np.integer)):
        return np.int64((int(seed) * _SEED_MULTIPLIER + chunk) % _SEED_MODULUS)
    seed = ops.cast(seed, "int64")
    return ops.mod(seed * _SEED_MULTIPLIER + chunk, _SEED_MODULUS)


def _has_accelerator():
    if keras.backend.backend() != "tensorflow":
        return False
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU") or tf.config.list_physical_devices("TPU"))


def _num_replicas():
    import tensorflow as tf

    return tf.distribute.get_strategy().num_replicas_in_sync


@keras.saving.register_keras_serializable(package="keras_diffusion")
class DiffusionModel(keras.Model):
    """A diffusion model: a denoiser, a noise schedule and a prediction type.

    Train it with `fit` on a dataset of images, sample with `generate`:

    ```python
    model = keras_diffusion.DiffusionModel()   # UNet sized from the data
    model.fit(dataset, epochs=10)              # AdamW if compile() not called
    images = model.generate(16, seed=0)        # float32 in [-1, 1]
    ```

    **Data.** A dataset (or arrays) yields `images`, `(images, labels)`, or a
    dict `{"images": ..., "labels" | "text" | "context" | "condition": ...}`.
    Images are channels-last and should be floats in [-1, 1]; integer images
    (e.g. uint8 in [0, 255]) are rescaled with `x / 127.5 - 1` automatically;
    float images are used as given, and if the first batch `fit` sees leaves
    [-1.05, 1.05] a warning is logged once (for image data `(B, H, W, C)`;
    low-dimensional data is not range-checked). Low-dimensional data `(B, D)`
    works the same way (with e.g. `MLPDenoiser`). `labels` are ints in
    [0, num_classes); `text` is a batch of strings that `text_encoder` maps to
    a context `(B, L, D)`; `context` is such a context precomputed;
    `condition` an image condition `(B, H, W, C)` (concatenated by the UNet).

    **NaN / Inf.** `nan_policy="raise"` (default) stops training with an
    `InvalidArgumentError` whose message names the images when a batch
    contains NaN or Inf. `nan_policy="skip"` drops such examples from the loss
    (they are zeroed before the network sees them, so no NaN reaches the
    gradients) and counts them in the `nonfinite_examples` metric. The model
    is never trained on NaN.

    **Training.** Each step draws `t` from `time_distribution`, noise
    `eps ~ N(0, I)`, forms `x_t = alpha(t) x0 + sigma(t) eps` and regresses
    the denoiser on the `prediction` target (`objectives.from_x0_epsilon`)
    with the squared error averaged over the non-batch axes and weighted by
    `objectives.loss_weight(weighting, ...)`; for `weighting="elbo"` the
    weight is divided by the density of the time distribution, so the loss
    is the continuous-time diffusion ELBO term per dimension in nats
    (Kingma et al., 2021) whatever the distribution. Class labels / contexts
    are replaced by the null label / the empty-prompt context with
    probability `condition_dropout` (classifier-free guidance training).
    Optimizer features come from Keras: EMA with `use_ema=True` (used by
    `generate`), `gradient_accumulation_steps`, `clipnorm`, mixed precision
    (`mixed_float16` loss scaling through `optimizer.scale_loss`), and
    `jit_compile` from `compile()` (default: XLA on GPU/TPU only; on CPU
    oneDNN is faster for convolutions). Under a `tf.distribute` strategy the
    loss is divided by the number of replicas, so the summed gradients are
    those of the global-batch mean.

    **Metrics.** `loss` and `loss_q1` ... `loss_q4`: the loss of the examples
    whose t falls in each quartile of [0, 1] (q1: t < 0.25, the least noisy),
    to see which noise levels lag. `evaluate` / validation data use a fixed
    grid of `num_eval_times` times and fixed noise, so validation losses are
    comparable across epochs.

    Args:
        denoiser: a denoiser model (`UNet`, `DiT`, `MLPDenoiser`, ...)
            following the dict contract; `None` builds a UNet sized from the
            first batch's shape.
        schedule: a schedule or its name (default "cosine").
        prediction: "epsilon", "x0", "v" or "flow".
        weighting: loss weighting: "none", "min_snr" or "elbo".
        time_distribution: "uniform", "logit_normal" or "low_discrepancy".
        num_classes: number of classes for class-conditional training (the
            denoiser must embed `num_classes + 1` labels); inferred from the
            denoiser's `num_classes` when `None`.
        condition_dropout: probability of dropping the condition (labels,
            text/context, image condition) during training, for
            classifier-free guidance.
        text_encoder: optional layer mapping a batch of strings `(B,)` to a
            context `(B, L, D)` (e.g. `TextConditioner`); the empty string's
            context is the null condition.
        image_shape: the data shape without batch, inferred from the first
            batch when `None`.
        condition_shape: shape of the image condition without batch
            (inferred from data when `None`).
        context_shape: shape `(L, D)` of a precomputed context (inferred
            from data when `None`).
        min_snr_gamma: the gamma of the "min_snr" weighting.
        logit_normal_loc, logit_normal_scale: parameters of the
            "logit_normal" time distribution.
        nan_policy: "raise" or "skip" (see above).
        num_eval_times: size of `test_step`'s fixed grid of times (a
            multiple of 4).
        seed: seed of the training randomness (times, noise, dropout of the
            condition).
        **kwargs: `keras.Model` arguments.

    Example:
    >>> model = DiffusionModel(MLPDenoiser(data_dim=2), prediction="v")
    >>> model.fit(points, batch_size=256, epochs=5)
    >>> samples = model.generate(1000, sampler="dpm_solver", num_steps=20, seed=0)

    References:
        Ho et al., Denoising Diffusion Probabilistic Models, 2020.
        Kingma et al., Variational Diffusion Models, 2021.
        Ho & Salimans, Classifier-Free Diffusion Guidance, 2021.
        Hang et al., Efficient Diffusion Training via Min-SNR Weighting, 2023.
        Esser et al., Scaling Rectified Flow Transformers, 2024.
    """

    def __init__(
        self,
        denoiser=None,
        schedule="cosine",
        prediction="epsilon",
        weighting="none",
        time_distribution="uniform",
        num_classes=None,
        condition_dropout=0.1,
        text_encoder=None,
        image_shape=None,
        condition_shape=None,
        context_shape=None,
        min_snr_gamma=5.0,
        logit_normal_loc=0.0,
        logit_normal_scale=1.0,
        nan_policy="raise",
        num_eval_times=8,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.schedule = schedules_lib.get(schedule)
        self.prediction = objectives.validate_prediction(prediction)
        if weighting not in objectives.WEIGHTINGS:
            raise ValueError(
                f"Unknown `weighting`: {weighting!r}. Valid names: "
                f"{list(objectives.WEIGHTINGS)}"
            )
        if time_distribution not in objectives.TIME_DISTRIBUTIONS:
            raise ValueError(
                f"Unknown `time_distribution`: {time_distribution!r}. Valid names: "
                f"{list(objectives.TIME_DISTRIBUTIONS)}"
            )
        if nan_policy not in NAN_POLICIES:
            raise ValueError(
                f"Unknown `nan_policy`: {nan_policy!r}. Valid names: {list(NAN_POLICIES)}"
            )
        if not 0.0 <= float(condition_dropout) <= 1.0:
            raise ValueError(
                "`condition_dropout` must be in [0, 1], received "
                f"condition_dropout={condition_dropout}"
            )
        if int(num_eval_times) < 4 or int(num_eval_times) % 4:
            raise ValueError(
                "`num_eval_times` must be a positive multiple of 4, received "
                f"num_eval_times={num_eval_times}"
            )
        denoiser_classes = getattr(denoiser, "num_classes", None)
        if num_classes is None:
            num_classes = denoiser_classes
        if num_classes is not None:
            if int(num_classes) <= 0:
                raise ValueError(
                    f"`num_classes` must be positive, received num_classes={num_classes}"
                )
            if denoiser is not None and denoiser_classes is not None and int(
                denoiser_classes
            ) != int(num_classes):
                raise ValueError(
                    f"`num_classes`={num_classes} does not match the denoiser's "
                    f"num_classes={denoiser_classes}"
                )
        self.denoiser = denoiser
        self.weighting = weighting
        self.time_distribution = time_distribution
        self.num_classes = None if num_classes is None else int(num_classes)
        self.condition_dropout = float(condition_dropout)
        self.text_encoder = text_encoder
        self.image_shape = None if image_shape is None else tuple(int(d) for d in image_shape)
        self.condition_shape = (
            None if condition_shape is None else tuple(int(d) for d in condition_shape)
        )
        self.context_shape = (
            None if context_shape is None else tuple(int(d) for d in context_shape)
        )
        self.min_snr_gamma = float(min_snr_gamma)
        self.logit_normal_loc = float(logit_normal_loc)
        self.logit_normal_scale = float(logit_normal_scale)
        self.nan_policy = nan_policy
        self.num_eval_times = int(num_eval_times)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.bucket_trackers = [
            keras.metrics.Mean(name=f"loss_q{i + 1}") for i in range(4)
        ]
        self.nonfinite_tracker = keras.metrics.Sum(name="nonfinite_examples")
        self._range_warned = False
        self._generate_fns = {}

    # ------------------------------------------------------------------
    # Properties
    # ------------------------------------------------------------------
    @property
    def null_label(self):
        """The label of the "no class" condition (`num_classes`), or None."""
        return self.num_classes

    @property
    def is_conditional(self):
        return (
            self.num_classes is not None
            or self.text_encoder is not None
            or self.context_shape is not None
            or self.condition_shape is not None
        )

    @property
    def metrics(self):
        metrics = [self.loss_tracker] + list(self.bucket_trackers)
        if self.nan_policy == "skip":
            metrics.append(self.nonfinite_tracker)
        return metrics

    # ------------------------------------------------------------------
    # Building
    # ------------------------------------------------------------------
    def _default_denoiser(self, image_shape):
        if len(image_shape) != 3:
            raise ValueError(
                "The default denoiser is a UNet for images (H, W, C); for data of "
                f"shape {image_shape} pass `denoiser=` (e.g. MLPDenoiser for (B, D))."
            )
        from keras_diffusion.models.unet import UNet

        size, channels = min(image_shape[0], image_shape[1]), image_shape[-1]
        attention = None
        if size <= 8:
            # Tiny images (tests, toy data): two levels, attention only in
            # the middle block; quick to trace and to train.
            base, mults, blocks, attention = 32, (1, 2), 1, ()
        elif size <= 16:
            base, mults, blocks = 32, (1, 2), 1
        elif size <= 32:
            base, mults, blocks = 64, (1, 2, 2), 2
        elif size <= 64:
            base, mults, blocks = 64, (1, 2, 2, 4), 2
        else:
            base, mults, blocks = 128, (1, 1, 2, 2, 4), 2
        factor = 2 ** (len(mults) - 1)
        if image_shape[0] % factor or image_shape[1] % factor:
            raise ValueError(
                f"The default UNet for images of shape {image_shape} needs height and "
                f"width divisible by {factor}; pass your own `denoiser=`."
            )
        context_dim = None
        if self.context_shape is not None:
            context_dim = self.context_shape[-1]
        return UNet(
            input_channels=channels,
            base_channels=base,
            channel_multipliers=mults,
            num_res_blocks=blocks,
            attention_resolutions=(
                (max(size // factor, 1),) if attention is None else attention
            ),
            num_classes=self.num_classes,
            context_dim=context_dim,
            condition_channels=0 if self.condition_shape is None else self.condition_shape[-1],
            name="unet",
        )

    @staticmethod
    def _shape_of(input_shape, key):
        if isinstance(input_shape, dict):
            return input_shape.get(key)
        return None

    def build(self, input_shape=None):
        """Builds the denoiser (creating the default UNet) for a data shape.

        `input_shape` is an image batch shape `(B, ...)`, a dict of shapes
        with "images" (a data batch) or "x_t" (a denoiser input), or `None`
        when `image_shape` was given to the constructor.
        """
        shape = input_shape
        if isinstance(input_shape, dict):
            shape = input_shape.get("images", input_shape.get("x_t"))
            cond = input_shape.get("condition")
            if cond is not None and self.condition_shape is None:
                self.condition_shape = tuple(int(d) for d in cond[1:])
            ctx = input_shape.get("context")
            if ctx is not None and self.context_shape is None and self.text_encoder is None:
                self.context_shape = tuple(int(d) for d in ctx[1:])
        if shape is not None:
            image_shape = tuple(shape[1:])
            if any(d is None for d in image_shape):
                raise ValueError(
                    f"DiffusionModel needs a fully known data shape, received {tuple(shape)}"
                )
            image_shape = tuple(int(d) for d in image_shape)
            if self.image_shape is None:
                self.image_shape = image_shape
            elif image_shape != self.image_shape:
                raise ValueError(
                    f"`images` of shape {image_shape} (without batch) do not match the "
                    f"model's image_shape={self.image_shape}"
                )
        if self.image_shape is None:
            raise ValueError(
                "Cannot build DiffusionModel without a data shape: pass `image_shape=` "
                "or call fit() on data."
            )
        if self.denoiser is None:
            self.denoiser = self._default_denoiser(self.image_shape)
        # Build the networks with one forward pass on a dummy batch.
        cond = self._null_condition(1)
        if self.text_encoder is not None and self.context_shape is None:
            self.context_shape = tuple(int(d) for d in cond["context"].shape[1:])
        self.denoiser(
            {
                "x_t": ops.zeros((1,) + self.image_shape, "float32"),
                "t": ops.full((1,), 0.5, "float32"),
                **cond,
            }
        )
        self.built = True

    def get_build_config(self):
        if self.image_shape is None:
            return None
        return {"image_shape": list(self.image_shape)}

    def build_from_config(self, config):
        if config and config.get("image_shape") is not None:
            if self.image_shape is None:
                self.image_shape = tuple(config["image_shape"])
            self.build(None)

    def _maybe_build_from_data(self, x, y=None):
        """Builds from the first element of fit/evaluate data; warns on range."""
        batch = None
        try:
            if x is None:
                return
            if hasattr(x, "take") and hasattr(x, "element_spec"):  # tf.data
                batch = next(iter(x.take(1)))
            elif isinstance(x, (np.ndarray, dict, list, tuple)) or hasattr(x, "shape"):
                batch = x if y is None else (x, y)
        except Exception:  # Generators, PyDatasets: Keras builds symbolically.
            return
        if batch is None:
            return
        images, _ = _split_data(batch)
        images_np = None
        shape = tuple(images.shape)
        if len(shape) < 2:
            raise ValueError(
                f"`images` must have shape (batch, ...), received shape {shape}"
            )
        if not self.built:
            build_shape = {"images": shape}
            if isinstance(batch, dict):
                for key in ("condition", "context"):
                    if key in batch:
                        build_shape[key] = tuple(batch[key].shape)
            # In the strategy scope the model was created in (fit may be
            # called outside it): distributed variables for the denoiser.
            with self._strategy_scope():
                self.build(build_shape)
        elif self.image_shape is not None and tuple(shape[1:]) != self.image_shape:
            raise ValueError(
                f"`images` of shape {tuple(shape[1:])} (without batch) do not match the "
                f"model's image_shape={self.image_shape}"
            )
        dtype = keras.backend.standardize_dtype(images.dtype)
        if "float" in dtype and len(shape) == 4 and not self._range_warned:
            images_np = np.asarray(ops.convert_to_numpy(images[:64]))
            finite = images_np[np.isfinite(images_np)]
            if finite.size and (finite.min() < -1.05 or finite.max() > 1.05):
                self._range_warned = True
                warnings.warn(
                    "DiffusionModel expects float images in [-1, 1]; the first batch "
                    f"has values in [{finite.min():.3g}, {finite.max():.3g}]. Rescale "
                    "them (e.g. x / 127.5 - 1 for [0, 255]) or pass uint8 images, which "
                    "are rescaled automatically.",
                    stacklevel=3,
                )

    # ------------------------------------------------------------------
    # Compile / fit
    # ------------------------------------------------------------------
    def compile(self, optimizer="auto", loss=None, metrics=None, jit_compile="auto", **kwargs):
        """Configures training; `fit` calls it with the defaults if needed.

        Args:
            optimizer: an optimizer, or "auto" for
                `AdamW(learning_rate=2e-4, weight_decay=0.01, clipnorm=1.0)`.
                Use `use_ema=True`, `gradient_accumulation_steps` and
                `clipnorm` of Keras optimizers for those features.
            loss, metrics: must be None (the model defines its loss and
                metrics).
            jit_compile: "auto" uses XLA when a GPU or TPU is visible, not
                on CPU.
            **kwargs: other `keras.Model.compile` arguments (`run_eagerly`,
                `steps_per_execution`, ...).
        """
        if loss is not None:
            raise ValueError(
                "DiffusionModel computes its own loss from `prediction` and "
                f"`weighting`; compile() received loss={loss!r}"
            )
        if metrics:
            raise ValueError(
                f"DiffusionModel reports its own metrics; compile() received metrics={metrics!r}"
            )
        if optimizer is None or (isinstance(optimizer, str) and optimizer == "auto"):
            optimizer = keras.optimizers.AdamW(
                learning_rate=2e-4, weight_decay=0.01, clipnorm=1.0
            )
        if jit_compile == "auto":
            jit_compile = _has_accelerator()
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)
        self._generate_fns = {}

    def get_compile_config(self):
        config = super().get_compile_config()
        if config is None:
            return None
        return {
            key: config[key]
            for key in ("optimizer", "run_eagerly", "steps_per_execution", "jit_compile")
            if key in config
        }

    def compile_from_config(self, config):
        config = dict(config)
        if isinstance(config.get("optimizer"), dict):
            config["optimizer"] = keras.optimizers.deserialize(config["optimizer"])
        self.compile(**config)
        if self.built:
            # Create the optimizer's variables so that saved state loads.
            self.optimizer.build(self.trainable_variables)

    def _build_optimizer(self):
        """Creates the optimizer's variables eagerly, before `fit` traces.

        Without a distribution strategy Keras (TF backend) builds the
        optimizer inside the traced train function, where creating its
        variables (2-3 per weight, lifted out of the graph one by one) is
        several times slower than doing it here.
        """
        optimizer = getattr(self, "optimizer", None)
        if optimizer is None or optimizer.built or not self.built:
            return
        if self.denoiser is None or not self.denoiser.built:
            return
        with self._strategy_scope():
            optimizer.build(self.trainable_variables)

    def _strategy_scope(self):
        """The scope of the tf.distribute strategy the model was created in."""
        if keras.backend.backend() != "tensorflow":
            return contextlib.nullcontext()
        return self.distribute_strategy.scope()

    def fit(self, x=None, y=None, *args, **kwargs):
        self._maybe_build_from_data(x, y)
        if not self.compiled:
            self.compile()
        self._build_optimizer()
        return super().fit(x, y, *args, **kwargs)

    def evaluate(self, x=None, y=None, *args, **kwargs):
        self._maybe_build_from_data(x, y)
        if not self.compiled:
            self.compile()
        return super().evaluate(x, y, *args, **kwargs)

    # ------------------------------------------------------------------
    # Conditioning
    # ------------------------------------------------------------------
    def encode_text(self, text, training=False):
        """Maps a batch of strings to the denoiser's context with `text_encoder`.

        This is the hook for text conditioning: any layer mapping strings
        `(B,)` to `(B, L, D)` works (e.g. `keras_diffusion.models.TextConditioner`).
        """
        if self.text_encoder is None:
            raise ValueError(
                "`text` was given but the model has no `text_encoder`; pass "
                "DiffusionModel(text_encoder=...)"
            )
        return ops.cast(self.text_encoder(text, training=training), "float32")

    def _null_context(self, batch):
        if self.text_encoder is not None:
            empty = self.encode_text(_string_tensor([""]))
            return ops.repeat(empty, batch, axis=0)
        return ops.zeros((batch,) + self.context_shape, "float32")

    def _null_condition(self, batch):
        """The "no condition" inputs of the denoiser for a batch."""
        cond = {}
        if self.num_classes is not None:
            cond["labels"] = ops.full((batch,), self.num_classes, "int32")
        if self.text_encoder is not None or self.context_shape is not None:
            cond["context"] = self._null_context(batch)
        if self.condition_shape is not None:
            cond["condition"] = ops.zeros((batch,) + self.condition_shape, "float32")
        return cond

    def _prepare_batch(self, data, training):
        """Data -> (images float32, condition dict for the denoiser, valid mask)."""
        images, extras = _split_data(data)
        images = self._standardize_images(images)
        batch = ops.shape(images)[0]
        cond = {}
        if self.num_classes is not None:
            labels = extras.get("labels")
            if labels is None:
                labels = ops.full((batch,), self.num_classes, "int32")
            else:
                labels = self._check_labels_graph(labels)
            cond["labels"] = labels
        elif extras.get("labels") is not None:
            raise ValueError(
                "The data has `labels` but the model is unconditional (num_classes=None); "
                "pass DiffusionModel(num_classes=...)."
            )
        if extras.get("text") is not None:
            cond["context"] = self.encode_text(extras["text"], training=training)
        elif extras.get("context") is not None:
            cond["context"] = ops.cast(extras["context"], "float32")
        elif self.text_encoder is not None or self.context_shape is not None:
            cond["context"] = self._null_context(batch)
        if extras.get("condition") is not None:
            if self.condition_shape is None:
                raise ValueError(
                    "The data has an image `condition` but the model was built without "
                    "one (condition_shape=None)."
                )
            cond["condition"] = ops.cast(extras["condition"], "float32")
        elif self.condition_shape is not None:
            cond["condition"] = ops.zeros((batch,) + self.condition_shape, "float32")
        images, cond, valid = self._apply_nan_policy(images, cond)
        return images, cond, valid

    def _standardize_images(self, images):
        images = to_float(images)
        shape = tuple(images.shape[1:])
        if self.image_shape is not None and shape != self.image_shape:
            raise ValueError(
                f"`images` of shape {shape} (without batch) do not match the model's "
                f"image_shape={self.image_shape}"
            )
        return images

    def _check_labels_graph(self, labels):
        import tensorflow as tf

        labels = tf.cast(labels, "int32")
        if labels.shape.rank != 1:
            labels = tf.reshape(labels, [-1])
        message = (
            f"`labels` must be integers in [0, {self.num_classes}) "
            f"(num_classes={self.num_classes}); received out-of-range labels"
        )
        checks = [
            tf.debugging.assert_non_negative(labels, message=message),
            tf.debugging.assert_less(labels, self.num_classes, message=message),
        ]
        with tf.control_dependencies(checks):
            return tf.identity(labels)

    def _apply_nan_policy(self, images, cond):
        import tensorflow as tf

        batch = tf.shape(images)[0]
        flat = tf.reshape(images, [batch, -1])
        valid = tf.reduce_all(tf.math.is_finite(flat), axis=1)
        for key in ("context", "condition"):
            if key in cond:
                c = tf.reshape(cond[key], [batch, -1])
                valid = tf.logical_and(valid, tf.reduce_all(tf.math.is_finite(c), axis=1))
        if self.nan_policy == "raise":
            message = (
                "The batch contains NaN or Inf in `images` (or in its condition); "
                "nan_policy='raise'. Clean the data or use DiffusionModel("
                "nan_policy='skip') to drop such examples."
            )
            check = tf.debugging.Assert(tf.reduce_all(valid), [message])
            with tf.control_dependencies([check]):
                images = tf.identity(images)
            return images, cond, tf.ones([batch], "float32")
        mask = tf.cast(valid, "float32")

        def zero_invalid(x):
            m = tf.reshape(valid, [batch] + [1] * (x.shape.rank - 1))
            return tf.where(m, x, tf.zeros_like(x))

        images = zero_invalid(images)
        for key in ("context", "condition"):
            if key in cond:
                cond[key] = zero_invalid(cond[key])
        return images, cond, mask

    def _training_seed(self):
        """The seed of a training draw (distinct per replica)."""
        return _ReplicaSeed(self.seed_generator)

    def _drop_condition(self, cond, batch):
        """Classifier-free guidance dropout: condition -> null condition."""
        if not cond or self.condition_dropout == 0.0:
            return cond
        drop = keras.random.uniform((batch,), seed=self._training_seed()) < self.condition_dropout
        null = self._null_condition(batch)
        out = {}
        for key, value in cond.items():
            mask = ops.reshape(drop, (-1,) + (1,) * (len(value.shape) - 1))
            out[key] = ops.where(mask, ops.cast(null[key], value.dtype), value)
        return out

    # ------------------------------------------------------------------
    # The loss
    # ------------------------------------------------------------------
    def per_example_loss(self, images, noise, t, condition=None, training=False):
        """Weighted squared error of the denoiser per example, shape [batch].

        Args:
            images: clean data x0, float32.
            noise: eps, shaped like `images`.
            t: times, shape [batch].
            condition: dict of denoiser condition inputs ("labels",
                "context", "condition").
            training: passed to the denoiser.
        """
        x_t, target = self._noisy_and_target(images, noise, t)
        output = self.denoiser({"x_t": x_t, "t": t, **(condition or {})}, training=training)
        error = ops.square(ops.cast(output, "float32") - target)
        error = ops.mean(ops.reshape(error, (ops.shape(error)[0], -1)), axis=1)
        weight = objectives.loss_weight(
            self.weighting, self.prediction, t, self.schedule, gamma=self.min_snr_gamma
        )
        if self.weighting == "elbo":
            # Clip t off the ends, where the logit-normal density is 0 in
            # float32 and the weight would be inf.
            inner = ops.clip(t, self.schedule.t_min + 1e-5, 1.0 - 1e-5)
            weight = weight / objectives.time_density(
                self.time_distribution,
                inner,
                self.schedule,
                loc=self.logit_normal_loc,
                scale=self.logit_normal_scale,
            )
        return weight * error

    def _noisy_and_target(self, images, noise, t):
        """x_t and the training target, also for a batch of unknown size."""

        def noisy_and_target(x0, eps, times):
            x_t = self.schedule.add_noise(x0, eps, times)
            target = objectives.from_x0_epsilon(self.prediction, x0, eps, times, self.schedule)
            return x_t, target

        if images.shape[0] is not None or keras.backend.backend() != "tensorflow":
            return noisy_and_target(images, noise, t)
        # `schedules.broadcast_like` reshapes t with its static shape, which
        # fails for a dynamic batch (tf.data without drop_remainder): map the
        # same math over examples with a static batch of one.
        import tensorflow as tf

        def one(args):
            x0, eps, times = args
            x_t, target = noisy_and_target(x0[None], eps[None], times[None])
            return x_t[0], target[0]

        return tf.vectorized_map(one, (images, noise, t))

    def _update_metrics(self, losses, t, valid):
        count = ops.maximum(ops.sum(valid), 1.0)
        self.loss_tracker.update_state(ops.sum(losses * valid) / count, sample_weight=count)
        for i, tracker in enumerate(self.bucket_trackers):
            in_bucket = ops.logical_and(t >= i / 4.0, t < (i + 1) / 4.0 if i < 3 else t <= 1.0)
            tracker.update_state(losses, sample_weight=ops.cast(in_bucket, "float32") * valid)
        if self.nan_policy == "skip":
            self.nonfinite_tracker.update_state(ops.sum(1.0 - valid))

    def _sample_time(self, images):
        batch = images.shape[0]
        if batch is None:
            import tensorflow as tf

            batch = tf.shape(images)[0]
            if self.time_distribution == "low_discrepancy":
                # objectives.sample_time with a dynamic batch size: the same
                # draw, one uniform offset shifted by i / batch.
                offset = keras.random.uniform((), seed=self._training_seed())
                steps = tf.cast(tf.range(batch), "float32") / tf.cast(batch, "float32")
                u = tf.math.floormod(offset + steps, 1.0)
                return self.schedule.t_min + (1.0 - self.schedule.t_min) * u
        return objectives.sample_time(
            self.time_distribution,
            batch,
            self.schedule,
            seed=self._training_seed(),
            loc=self.logit_normal_loc,
            scale=self.logit_normal_scale,
        )

    def train_step(self, data):
        import tensorflow as tf

        trainable = self.trainable_variables
        with tf.GradientTape() as tape:
            # Under the tape, so that a trainable text encoder learns too.
            images, cond, valid = self._prepare_batch(data, training=True)
            batch = tf.shape(images)[0]
            t = self._sample_time(images)
            noise = keras.random.normal(tf.shape(images), seed=self._training_seed())
            cond = self._drop_condition(cond, batch)
            losses = self.per_example_loss(images, noise, t, cond, training=True)
            count = tf.maximum(tf.reduce_sum(valid), 1.0)
            loss = tf.reduce_sum(losses * valid) / count
            if self.losses:
                loss = loss + tf.add_n([tf.cast(x, "float32") for x in self.losses])
            # Gradients are summed over replicas: divide by their number.
            scaled = self.optimizer.scale_loss(loss / _num_replicas())
        grads = tape.gradient(scaled, trainable)
        self.optimizer.apply_gradients(zip(grads, trainable))
        self._update_metrics(losses, t, valid)
        return {m.name: m.result() for m in self.metrics}

    def eval_times(self):
        """The fixed grid of times of `test_step` (midpoints of equal bins)."""
        k = self.num_eval_times
        u = (np.arange(k) + 0.5) / k
        t_min = self.schedule.t_min
        return (t_min + (1.0 - t_min) * u).astype("float32")

    def test_step(self, data):
        images, cond, valid = self._prepare_batch(data, training=False)
        batch = ops.shape(images)[0]
        for k, tk in enumerate(self.eval_times()):
            t = ops.full((batch,), float(tk), "float32")
            noise = step_noise(ops.shape(images), _EVAL_SEED, k)
            losses = self.per_example_loss(images, noise, t, cond, training=False)
            self._update_metrics(losses, t, valid)
        return {m.name: m.result() for m in self.metrics}

    def call(self, inputs, training=None):
        """The denoiser's prediction.

        `inputs` is the denoiser's dict {"x_t", "t", ...}. A data batch
        (images, or a dict with "images") is also accepted, for building:
        it returns the prediction at t = 0.5 with the null condition.
        """
        if isinstance(inputs, dict) and "x_t" in inputs:
            return self.denoiser(inputs, training=training)
        images, _ = _split_data(inputs)
        images = self._standardize_images(images)
        batch = ops.shape(images)[0]
        return self.denoiser(
            {"x_t": images, "t": ops.full((batch,), 0.5, "float32"), **self._null_condition(batch)},
            training=training,
        )

    # ------------------------------------------------------------------
    # Sampling
    # ------------------------------------------------------------------
    def model_fn(self, labels=None, context=None, condition=None, guidance_scale=1.0):
        """The sampler's `model_fn(x_t, t)` of this model, with optional guidance.

        Args:
            labels: int labels `(B,)` (class-conditional models).
            context: a context `(B, L, D)` (e.g. from `encode_text`).
            condition: an image condition `(B, H, W, C)`.
            guidance_scale: classifier-free guidance scale (1: plain
                conditional model, 0: unconditional).

        Returns:
            `model_fn(x_t, t) -> prediction` for `sampler.sample`.
        """
        _check_guidance_scale(guidance_scale)
        given = {"labels": labels, "context": context, "condition": condition}
        if labels is not None and self.num_classes is None:
            raise ValueError(
                "`labels` were given but the model is unconditional (num_classes=None)"
            )

        def conditional(x_t, t, cond):
            return self.denoiser({"x_t": x_t, "t": t, **cond}, training=False)

        def batch_of(x):
            return ops.shape(x)[0]

        def resolve(x_t):
            null = self._null_condition(batch_of(x_t))
            cond = {}
            for key, value in null.items():
                cond[key] = value if given[key] is None else given[key]
            return cond, null

        if not self.is_conditional or (
            isinstance(guidance_scale, (int, float)) and guidance_scale == 1
        ):
            def plain(x_t, t):
                cond, _ = resolve(x_t)
                return conditional(x_t, t, cond)

            return plain

        def guided(x_t, t):
            cond, null = resolve(x_t)
            fn = classifier_free_guidance(conditional, cond, null, guidance_scale)
            return fn(x_t, t)

        return guided

    def export(self, filepath, format="tf_saved_model", verbose=None, sampler="dpm_solver",
               overwrite=False, **kwargs):
        """Writes one SavedModel for TF Serving (see `keras_diffusion.export`).

        The sampler loop, guidance, tokenization and VAE decode run in the
        graph; signatures `serving_default`/`generate`, `generate_from_noise`
        and `denoise`. `format` must be "tf_saved_model".
        """
        if format != "tf_saved_model":
            raise ValueError(
                f"`format` must be 'tf_saved_model', received format={format!r}"
            )
        from keras_diffusion.export import export_saved_model

        return export_saved_model(
            self, filepath, sampler=sampler, overwrite=overwrite,
            verbose=bool(verbose), **kwargs,
        )

    def _default_save_signature(self):
        # Keras' SavedModel walk traces every model's default signature; a
        # DiffusionModel has none (use `export`).
        return None

    @contextlib.contextmanager
    def ema_weights(self):
        """Swaps in the optimizer's EMA weights (when it keeps them) inside a `with`.

        Like `keras.callbacks.SwapEMAWeights`: the EMA values are assigned to
        the trainable variables and the training values restored afterwards.
        Yields whether a swap happened.
        """
        optimizer = getattr(self, "optimizer", None)
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)
        averages = getattr(optimizer, "_model_variables_moving_average", None)
        if (
            optimizer is None
            or not getattr(optimizer, "use_ema", False)
            or not averages
            or int(ops.convert_to_numpy(optimizer.iterations)) == 0
        ):
            yield False
            return
        variables = optimizer._trainable_variables
        backup = [ops.convert_to_numpy(v) for v in variables]
        for var, average in zip(variables, averages):
            var.assign(average)
        try:
            yield True
        finally:
            for var, value in zip(variables, backup):
                var.assign(value)

    def generate(
        self,
        num_images=None,
        labels=None,
        text=None,
        condition=None,
        sampler="dpm_solver",
        num_steps=None,
        guidance_scale=1.0,
        seed=None,
        timesteps=None,
        spacing=None,
        batch_size=None,
        clip=None,
        clip_denoised=None,
        use_ema=True,
        jit_compile=None,
        verbose="auto",
    ):
        """Samples from the model.

        The whole sampler loop for a batch runs as one `tf.function` (with
        XLA when `jit_compile`, default: as compiled, XLA on GPU/TPU); with
        `run_eagerly=True` in `compile` it runs step by step in eager mode
        with a progress bar over the model evaluations.

        Args:
            num_images: how many samples; defaults to the number of labels /
                prompts / conditions.
            labels: class labels `(N,)` for class-conditional models.
            text: N prompts (needs a `text_encoder`).
            condition: image conditions `(N, H, W, C)`.
            sampler: a `Sampler` or a name ("dpm_solver", "ddim", "ddpm",
                "euler", "heun", "ode"); falls back to "ddim" when the
                default "dpm_solver" is not available.
            num_steps: number of model-evaluation times (sampler default if
                None).
            guidance_scale: classifier-free guidance scale >= 0 (1: none).
            seed: an int; the same seed gives the same samples. Random if
                None.
            timesteps, spacing: the sampler's time grid options.
            batch_size: samples per sampler call (default: all at once).
            clip: clip the output to [-1, 1]; default True for images
                (rank-3 samples), False for vectors.
            clip_denoised: clip the sampler's x0 estimates to [-1, 1] at every
                step (`clip_x0=1` of a sampler given by name); default as
                `clip`. With "epsilon" prediction and the cosine schedule
                (alpha(1) ~ 5e-5) the first steps amplify the network's eps
                error by alpha_s / alpha_t ~ 1e3 without it.
            use_ema: sample with the optimizer's EMA weights when kept.
            jit_compile: XLA for the sampler graph (None: as `compile`).
            verbose: "auto", 0 or 1: progress bar.

        Returns:
            A numpy float32 array `(N, *image_shape)`.
        """
        if self.image_shape is None or self.denoiser is None:
            raise ValueError(
                "The model is not built: train it with fit() or pass `image_shape=` "
                "before calling generate()."
            )
        if not self.built:
            self.build(None)
        _check_guidance_scale(guidance_scale)
        guidance_scale = float(guidance_scale)
        num = None
        if labels is not None:
            if self.num_classes is None:
                raise ValueError(
                    "generate() received `labels` but the model is unconditional "
                    "(num_classes=None)"
                )
            labels = np.asarray(labels)
            if labels.ndim == 0:
                labels = labels[None]
            if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(
                    "`labels` must be a 1-D sequence of ints, received "
                    f"{labels.dtype} array of shape {labels.shape}"
                )
            if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(
                    f"`labels` must be in [0, {self.num_classes}) (num_classes="
                    f"{self.num_classes}), received values in "
                    f"[{labels.min()}, {labels.max()}]"
                )
            num = len(labels)
        context = None
        if text is not None:
            if isinstance(text, str):
                text = [text]
            text = list(text)
            num = _same_count(num, len(text), "text")
        if condition is not None:
            if self.condition_shape is None:
                raise ValueError(
                    "generate() received `condition` but the model has no image "
                    "condition (condition_shape=None)"
                )
            condition = np.asarray(condition, "float32")
            if tuple(condition.shape[1:]) != self.condition_shape:
                raise ValueError(
                    f"`condition` must have shape (N, {self.condition_shape}), received "
                    f"{condition.shape}"
                )
            num = _same_count(num, len(condition), "condition")
        if num_images is not None:
            if int(num_images) <= 0:
                raise ValueError(
                    f"`num_images` must be positive, received num_images={num_images}"
                )
            num = _same_count(num, int(num_images), "num_images")
        if num is None:
            raise ValueError("generate() needs `num_images`, `labels`, `text` or `condition`")
        if batch_size is not None and int(batch_size) <= 0:
            raise ValueError(f"`batch_size` must be positive, received batch_size={batch_size}")
        batch_size = num if batch_size is None else min(int(batch_size), num)
        if clip is None:
            clip = len(self.image_shape) == 3
        if clip_denoised is None:
            clip_denoised = clip
        sampler = _get_sampler(sampler, clip_denoised)
        if seed is None:
            seed = int(np.random.randint(0, 2**31 - 1))
        seed = int(seed)
        if jit_compile is None:
            jit_compile = bool(self.jit_compile) if self.compiled else _has_accelerator()
        eager = bool(getattr(self, "run_eagerly", False))
        noise = initial_noise((num,) + tuple(self.image_shape), seed)
        noise = np.asarray(ops.convert_to_numpy(noise), "float32")
        times = sampler.timesteps(self.schedule, num_steps, timesteps, spacing)
        times_np = np.asarray(ops.convert_to_numpy(times), "float32")
        if verbose == "auto":
            verbose = 1 if (eager or num > batch_size) else 0
        chunks = list(range(0, num, batch_size))
        progbar = None
        if verbose:
            target = len(times_np) * len(chunks) if eager else len(chunks)
            progbar = keras.utils.Progbar(target, unit_name="step" if eager else "batch")
        outputs = []
        with contextlib.ExitStack() as stack:
            if use_ema:
                stack.enter_context(self.ema_weights())
            if text is not None:  # Encoded with the same (EMA) weights.
                context = ops.convert_to_numpy(self.encode_text(_string_tensor(text)))
            for index, start in enumerate(chunks):
                stop = min(start + batch_size, num)
                inputs = {"noise": noise[start:stop]}
                if labels is not None:
                    inputs["labels"] = labels[start:stop].astype("int32")
                if context is not None:
                    inputs["context"] = context[start:stop]
                if condition is not None:
                    inputs["condition"] = condition[start:stop]
                chunk_seed = sampler_seed(seed, index)
                fn = self._sampling_fn(
                    sampler, times_np, guidance_scale, tuple(sorted(inputs)), eager,
                    jit_compile, progbar,
                )
                x = fn(inputs, chunk_seed)
                outputs.append(np.asarray(ops.convert_to_numpy(x)))
                if progbar is not None and not eager:
                    progbar.update(index + 1)
        images = np.concatenate(outputs, axis=0)
        if clip:
            images = np.clip(images, -1.0, 1.0)
        return images

    def _sampling_fn(self, sampler, times, guidance_scale, keys, eager, jit_compile, progbar):
        def run(inputs, seed):
            x_noise = ops.convert_to_tensor(inputs["noise"])
            model_fn = self.model_fn(
                labels=inputs.get("labels"),
                context=inputs.get("context"),
                condition=inputs.get("condition"),
                guidance_scale=guidance_scale,
            )
            if progbar is not None and eager:
                inner = model_fn

                def model_fn(x_t, t):
                    out = inner(x_t, t)
                    progbar.add(1)
                    return out

            return sampler.sample(
                model_fn,
                x_noise,
                schedule=self.schedule,
                prediction=self.prediction,
                timesteps=times,
                seed=seed,
            )

        if eager or keras.backend.backend() != "tensorflow":
            return run
        key = (repr(sampler), times.tobytes(), guidance_scale, keys, bool(jit_compile))
        if key not in self._generate_fns:
            import tensorflow as tf

            # The sampler loop is an ops.fori_loop already: no AutoGraph.
            run = tf.autograph.experimental.do_not_convert(run)
            self._generate_fns[key] = tf.function(run, jit_compile=bool(jit_compile))
        return self._generate_fns[key]

    # ------------------------------------------------------------------
    # Serialization
    # ------------------------------------------------------------------
    def get_config(self):
        config = {
            "name": self.name,
            "trainable": self.trainable,
            "dtype": keras.saving.serialize_keras_object(self.dtype_policy),
            "denoiser": None
            if self.denoiser is None
            else keras.saving.serialize_keras_object(self.denoiser),
            "schedule": keras.saving.serialize_keras_object(self.schedule),
            "prediction": self.prediction,
            "weighting": self.weighting,
            "time_distribution": self.time_distribution,
            "num_classes": self.num_classes,
            "condition_dropout": self.condition_dropout,
            "text_encoder": None
            if self.text_encoder is None
            else keras.saving.serialize_keras_object(self.text_encoder),
            "image_shape": None if self.image_shape is None else list(self.image_shape),
            "condition_shape": None
            if self.condition_shape is None
            else list(self.condition_shape),
            "context_shape": None if self.context_shape is None else list(self.context_shape),
            "min_snr_gamma": self.min_snr_gamma,
            "logit_normal_loc": self.logit_normal_loc,
            "logit_normal_scale": self.logit_normal_scale,
            "nan_policy": self.nan_policy,
            "num_eval_times": self.num_eval_times,
            "seed": self.seed,
        }
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        for key in ("denoiser", "text_encoder", "schedule", "dtype"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


# ----------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------
class _ReplicaSeed(keras.random.SeedGenerator):
    """The model's seed generator, offset by the replica id under tf.distribute.

    Replicas share the generator's state (a mirrored variable); without the
    offset every replica would draw the same times and noise for its part of
    the global batch.
    """

    def __init__(self, generator):  # No state of its own.
        self._generator = generator

    def next(self, ordered=True):
        seed = self._generator.next(ordered=ordered)
        if keras.backend.backend() != "tensorflow":
            return seed
        import tensorflow as tf

        context = tf.distribute.get_replica_context()
        if context is None:
            return seed
        replica = tf.cast(context.replica_id_in_sync_group, seed.dtype)
        return seed + tf.stack([tf.zeros_like(replica), replica])


def _split_data(data):
    """A data batch -> (images, dict of extras)."""
    if isinstance(data, dict):
        unknown = sorted(k for k in data if k not in _DATA_KEYS)
        if "images" not in data or unknown:
            raise ValueError(
                "A dict data batch needs the key 'images' and may have "
                f"{list(_DATA_KEYS[1:])}; received keys {sorted(data)}"
            )
        return data["images"], {k: v for k, v in data.items() if k != "images"}
    if isinstance(data, (list, tuple)):
        if len(data) == 0 or len(data) > 3:
            raise ValueError(
                "A data batch is images, (images, labels) or a dict; received a "
                f"{type(data).__name__} of length {len(data)}"
            )
        if isinstance(data[0], dict):
            return _split_data(data[0])
        extras = {}
        if len(data) > 1 and data[1] is not None:
            extras["labels"] = data[1]
        return data[0], extras
    return data, {}


def _string_tensor(strings):
    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        return tf.constant(strings)
    return np.asarray(strings, dtype=object)


def _check_guidance_scale(guidance_scale):
    if isinstance(guidance_scale, (int, float, np.number)) and not guidance_scale >= 0:
        raise ValueError(
            f"`guidance_scale` must be >= 0, received guidance_scale={guidance_scale}"
        )


def _same_count(current, new, name):
    if current is not None and current != new:
        raise ValueError(
            f"`{name}` asks for {new} samples but other arguments give {current}"
        )
    return new


def _get_sampler(sampler, clip_denoised=False):
    if isinstance(sampler, str):
        options = {"clip_x0": 1.0} if clip_denoised else {}
        if sampler not in samplers_lib._NAMES and sampler == "dpm_solver":
            sampler = "ddim"  # Until the DPM-Solver sampler is available.
        return samplers_lib.get(sampler, **options)
    return samplers_lib.get(sampler)
