"""DiffusionModel: train a denoiser with `model.fit`, sample with any sampler."""

import contextlib
import itertools
import threading
import warnings

import keras
import numpy as np
from keras import ops

from keras_diffusion import objectives
from keras_diffusion import random as random_lib
from keras_diffusion import samplers as samplers_lib
from keras_diffusion import schedules as schedules_lib
from keras_diffusion.conditioning import ConditionSpec
from keras_diffusion.conditioning import parse_batch
from keras_diffusion.models import train_steps
from keras_diffusion.models.classifier_options import check_classifier_options
from keras_diffusion.models.codecs import PixelCodec
from keras_diffusion.pipelines import image_to_image
from keras_diffusion.pipelines.generation_runner import GenerationRunner
from keras_diffusion.utils.asserts import runtime_check
from keras_diffusion.utils.fitting import without_shuffle_warning
from keras_diffusion.utils.tensorflow_ops import ReplicaSeed
from keras_diffusion.utils.tensorflow_ops import has_accelerator
from keras_diffusion.utils.tensorflow_ops import string_tensor
from keras_diffusion.utils.weight_average import WeightAverage
from keras_diffusion.utils.weight_average import averages_assigned
from keras_diffusion.utils.weight_average import check_decay

NAN_POLICIES = ("raise", "skip")
# "v" is well conditioned at every noise level: its x0 = alpha x_t - sigma v
# never divides by alpha (benchmarks/results/toy2d.md: epsilon on the cosine
# schedule keeps 5-7 of 8 modes of the toy ring, v all 8 with every sampler).
DEFAULT_PREDICTION = "v"


def _check_trainable_pair(schedule, prediction):
    """"v" and "flow" on a variance-exploding schedule are a ValueError.

    With alpha = 1 their targets grow with sigma: v = eps - sigma x0 reaches
    about 100 at the default sigma_max = 50, the flow sigma'(t) eps more. An
    MLP trained on them with the MSE loss samples nothing like the data
    (benchmarks/results/toy2d.md: 8-21% of samples near the ring, against
    89-100% for "epsilon" and "x0" on the same schedule).
    """
    if prediction in ("v", "flow") and bool(ops.convert_to_numpy(schedule.variance_exploding())):
        sigma_1 = float(ops.convert_to_numpy(schedule.sigma(ops.convert_to_tensor(1.0))))
        raise ValueError(
            f"`prediction`={prediction!r} does not train on a variance-exploding schedule "
            f"({type(schedule).__name__}: alpha = 1, so its targets grow with sigma, up to "
            f"{sigma_1:g}). Use prediction='epsilon' or 'x0' (EDM: 'x0' with "
            "EDMPreconditioning), or 'v' / 'flow' on a VP schedule ('cosine', 'linear') or "
            "'rectified_flow'."
        )


@keras.saving.register_keras_serializable(package="keras_diffusion")
class DiffusionModel(keras.Model):
    """A diffusion model: a denoiser, a noise schedule and a prediction type.

    Train it with `fit` on a dataset of images, sample with `generate`:

    ```python
    model = keras_diffusion.DiffusionModel()   # UNet sized from the data
    model.fit(dataset, epochs=10)              # AdamW if compile() not called
    images = model.generate(16, seed=0)        # float32 in [-1, 1]
    ```

    **Data.** A `tf.data.Dataset`, arrays, a Python generator or a
    `keras.utils.PyDataset` yields `images`, `(images, labels)`, or a dict
    `{"images": ..., "labels" | "text" | "context" | "condition": ...}`
    (`keras_diffusion.conditioning`). Images are channels-last and should be
    floats in [-1, 1]; integer images (e.g. uint8 in [0, 255]) are rescaled
    with `x / 127.5 - 1` automatically; float images are used as given, and
    if the first batch `fit` sees is outside [-1.05, 1.05], or inside [0, 1],
    a warning is logged once (for image data `(B, H, W, C)`). Low-dimensional
    data `(B, D)` works the same way (the default denoiser is then an
    `MLPDenoiser`). `labels` are ints in [0, num_classes); `text` is a batch
    of strings that `text_encoder` maps to a context `(B, L, D)`; `context`
    is such a context precomputed; `condition` an image condition
    `(B, H, W, C)` (concatenated by the UNet). An empty dataset is an error.

    **NaN / Inf.** `nan_policy="raise"` (default) stops training with an
    error whose message names the images when a batch contains NaN or Inf.
    `nan_policy="skip"` drops such examples from the loss (they are zeroed
    before the network sees them, so no NaN reaches the gradients) and
    counts them in the `nonfinite_examples` metric; a batch with no finite
    example at all warns. The model is never trained on NaN.

    **Training.** Each step draws `t` from `time_distribution`, noise
    `eps ~ N(0, I)`, and minimizes `objectives.diffusion_loss`: the squared
    error of the `prediction` target averaged over the non-batch axes and
    weighted by `weighting` (for "elbo", the continuous-time ELBO term per
    dimension in nats whatever the time distribution). Class labels /
    contexts are replaced by the null condition with probability
    `condition_dropout` (classifier-free guidance training). `fit` works on
    the TensorFlow backend (tf.distribute, XLA on GPU/TPU) and on JAX (a
    stateless JAX step sharing the same loss).

    **Weight average.** The model keeps an exponential moving average of
    its trainable weights (`model.ema`, a `WeightAverage` from
    `keras_diffusion.utils.weight_average`), updated after each optimizer
    step with decay min(`ema_decay`, n / (n + 9)) at the n-th step: the
    first step copies the weights, a short run averages about its last
    tenth, a long one its last 1 / (1 - `ema_decay`) steps. `generate`,
    `img2img`, `inpaint` and `export` use it once it has been updated
    (`use_ema=False`: the last weights). The last weights of a
    constant-learning-rate run are noisy, and the samples carry that
    noise: on the toy2d benchmark (1,500 Adam steps)
    17 of the 18 schedule x prediction pairs meet the goal with every
    sampler with the average, 12 without (`benchmarks/results/toy2d*.md`).
    It is saved with the model (`.keras`, checkpoints); `ema_decay=None`
    turns it off (files saved before it existed load without one).

    Optimizer features come from Keras: `gradient_accumulation_steps` (the
    average moves only on the steps that apply), `clipnorm`, mixed precision
    (`optimizer.scale_loss`), the optimizer's own EMA (`use_ema=True`; the
    model's average is used first when both are kept), and `jit_compile`
    from `compile()` (default: XLA on GPU/TPU only; on CPU oneDNN is faster
    for convolutions).

    **Metrics.** `loss` and `loss_q1` ... `loss_q4`: the loss of the examples
    whose t falls in each quartile of [0, 1] (q1: t < 0.25, the least noisy),
    to see which noise levels lag. `evaluate` / validation data use a fixed
    grid of `num_eval_times` times and fixed noise, so validation losses are
    comparable across epochs.

    **Sampling.** `generate`, `img2img` and `inpaint` run through one
    `pipelines.GenerationRunner` (compiled once per signature) with the
    average weights passed as values: the model is never mutated, and
    concurrent calls are safe. `export` writes one SavedModel for TF Serving.

    Args:
        denoiser: a denoiser model (`UNet`, `DiT`, `MLPDenoiser`, ...)
            following the dict contract; `None` builds one sized from the
            first batch: a UNet for images, an MLPDenoiser for vectors, with
            the classes, context (of `text_encoder`) and condition the model
            has.
        schedule: a schedule or its name (default "cosine").
        prediction: "v" (default), "epsilon", "x0", "flow" or "score" (train
            a score model with weighting="min_snr" or "elbo": its raw target
            -eps / sigma grows as 1 / sigma at small t). "v" and "flow"
            on a variance-exploding schedule ("ve", "edm") are a ValueError:
            their targets grow with sigma and do not train. Noise predictions
            ("epsilon", "score") sample on grids that start at log-SNR -5
            (`samplers.spacing.start_log_snr_for`).
        weighting: loss weighting: "none", "min_snr", "elbo" or "edm"
            (`objectives.loss_weight`). With "none" a "flow" model's error is
            divided by its target's mean square where that exceeds 1 (small
            t on VP schedules; exactly weight 1 on rectified flow).
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
        image_shape: the shape the denoiser works on without batch (the data
            shape for pixel models), inferred from the first batch when `None`.
        condition_shape: shape of the image condition without batch
            (inferred from data when `None`).
        context_shape: shape `(L, D)` of a precomputed context (inferred
            from data or the text encoder when `None`).
        min_snr_gamma: the gamma of the "min_snr" weighting.
        logit_normal_loc, logit_normal_scale: parameters of the
            "logit_normal" time distribution.
        nan_policy: "raise" or "skip" (see above).
        num_eval_times: size of `test_step`'s fixed grid of times (a
            multiple of 4).
        seed: seed of the training randomness (times, noise, dropout of the
            condition).
        ema_decay: the decay of the weight average after its warm-up, in
            [0, 1) (default 0.999), or None for no average.
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
        prediction=DEFAULT_PREDICTION,
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
        ema_decay=0.999,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.schedule = schedules_lib.get(schedule)
        self.prediction = objectives.validate_prediction(prediction)
        _check_trainable_pair(self.schedule, self.prediction)
        for name, value, valid in (
            ("weighting", weighting, objectives.WEIGHTINGS),
            ("time_distribution", time_distribution, objectives.TIME_DISTRIBUTIONS),
            ("nan_policy", nan_policy, NAN_POLICIES),
        ):
            if value not in valid:
                raise ValueError(
                    f"Unknown `{name}`: {value!r}. Valid names: {list(valid)}"
                )
        if not 0.0 <= float(condition_dropout) <= 1.0:
            raise ValueError(
                "`condition_dropout` must be in [0, 1], received "
                f"condition_dropout={condition_dropout}"
            )
        ema_decay = check_decay(ema_decay, "ema_decay", allow_none=True)
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
        self.image_shape = _tuple(image_shape)
        self.condition_shape = _tuple(condition_shape)
        self.context_shape = _tuple(context_shape)
        self.min_snr_gamma = float(min_snr_gamma)
        self.logit_normal_loc = float(logit_normal_loc)
        self.logit_normal_scale = float(logit_normal_scale)
        self.nan_policy = nan_policy
        self.num_eval_times = int(num_eval_times)
        self.seed = seed
        self.ema_decay = ema_decay
        self.ema = None
        self.codec = PixelCodec()
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.bucket_trackers = [
            keras.metrics.Mean(name=f"loss_q{i + 1}") for i in range(4)
        ]
        self.nonfinite_tracker = keras.metrics.Sum(name="nonfinite_examples")
        self._range_warned = False
        self._runner = None
        self._weights_lock = threading.RLock()

    # The condition key under which the denoiser takes the guidance scale
    # (LCM students); None: classifier-free guidance.
    guidance_input = None

    # ------------------------------------------------------------------
    # Properties
    # ------------------------------------------------------------------
    @property
    def null_label(self):
        """The label of the "no class" condition (`num_classes`), or None."""
        return self.num_classes

    @property
    def conditions(self):
        """The model's `conditioning.ConditionSpec`."""
        control = getattr(self.denoiser, "control_shape_for", None)  # ControlNets
        return ConditionSpec(
            self.num_classes, self.text_encoder, self.context_shape, self.condition_shape,
            control_shape=None if control is None or self.image_shape is None
            else control(self.image_shape),
        )

    @property
    def is_conditional(self):
        return self.conditions.is_conditional

    @property
    def metrics(self):
        metrics = [self.loss_tracker] + list(self.bucket_trackers)
        if self.nan_policy == "skip":
            metrics.append(self.nonfinite_tracker)
        return metrics

    # ------------------------------------------------------------------
    # Building
    # ------------------------------------------------------------------
    def _default_denoiser(self, shape):
        context_dim = None if self.context_shape is None else self.context_shape[-1]
        if len(shape) == 1:
            from keras_diffusion.models.mlp_denoiser import MLPDenoiser

            if context_dim is not None or self.condition_shape is not None:
                raise ValueError(
                    "The default denoiser for vectors (MLPDenoiser) takes no context or "
                    "image condition; pass your own `denoiser=`."
                )
            return MLPDenoiser(data_dim=shape[0], num_classes=self.num_classes, name="mlp")
        if len(shape) != 3:
            raise ValueError(
                "The default denoiser is a UNet for images (H, W, C) or an MLPDenoiser "
                f"for vectors (D,); for data of shape {shape} pass `denoiser=`."
            )
        from keras_diffusion.models.unet import UNet

        size, channels = min(shape[0], shape[1]), shape[-1]
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
        if shape[0] % factor or shape[1] % factor:
            raise ValueError(
                f"The default UNet for images of shape {shape} needs height and "
                f"width divisible by {factor}; pass your own `denoiser=`."
            )
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

    def _set_sample_shape(self, shape):
        shape = tuple(shape)
        if any(d is None for d in shape):
            raise ValueError(
                f"{type(self).__name__} needs a fully known data shape, received "
                f"(batch,) + {shape}"
            )
        shape = tuple(int(d) for d in shape)
        if self.image_shape is None:
            self.image_shape = shape
        elif shape != self.image_shape:
            raise ValueError(
                f"`images` of shape {shape} (without batch) do not match the model's "
                f"image_shape={self.image_shape}"
            )

    def _build_shapes(self, input_shape):
        """Records the shapes of a data batch (or denoiser input) dict."""
        if isinstance(input_shape, dict):
            if input_shape.get("x_t") is not None or input_shape.get("latents") is not None:
                shape = input_shape.get("x_t", input_shape.get("latents"))
                self._set_sample_shape(shape[1:])
            elif input_shape.get("images") is not None:
                self._set_sample_shape(self.codec.sample_shape(input_shape["images"][1:]))
            cond = input_shape.get("condition")
            if cond is not None and self.condition_shape is None:
                encoded = "x_t" in input_shape or "latents" in input_shape
                self.condition_shape = (
                    tuple(int(d) for d in cond[1:]) if encoded
                    else self.codec.condition_shape(cond[1:], self.image_shape)
                )
            ctx = input_shape.get("context")
            if ctx is not None and self.context_shape is None and self.text_encoder is None:
                self.context_shape = tuple(int(d) for d in ctx[1:])
        elif input_shape is not None:
            self._set_sample_shape(self.codec.sample_shape(input_shape[1:]))

    def build(self, input_shape=None):
        """Builds the denoiser (creating the default one) for a data shape.

        `input_shape` is a data batch shape `(B, ...)`, a dict of shapes with
        "images" / "latents" (a data batch) or "x_t" (a denoiser input), or
        `None` when `image_shape` was given to the constructor.
        """
        self._build_shapes(input_shape)
        if self.image_shape is None:
            raise ValueError(
                f"Cannot build {type(self).__name__} without a data shape: pass "
                "`image_shape=` or call fit() on data."
            )
        self._build_codec()
        if self.text_encoder is not None and self.context_shape is None:
            # The context's shape first: the default denoiser is sized for it.
            self.context_shape = tuple(int(d) for d in self._empty_context().shape[1:])
        if self.denoiser is None:
            self.denoiser = self._default_denoiser(self.image_shape)
        # Build the networks with one forward pass on a dummy batch.
        self.denoiser(
            {
                "x_t": ops.zeros((1,) + self.image_shape, "float32"),
                "t": ops.full((1,), 0.5, "float32"),
                **self._null_condition(1),
            }
        )
        # A network made with trainable=False (a frozen one, loaded from its
        # config) gets the flag before its sublayers exist, whose variables
        # are then trainable: freeze them again. (Through True: on
        # TensorFlow, setting an attribute to the value it has is skipped.)
        for layer in self._flatten_layers(include_self=False, recursive=False):
            if not layer.trainable:
                layer.trainable = True
                layer.trainable = False
        if self.ema_decay and self.ema is None:
            # The trainable weights (Keras' rules: a frozen layer's are not,
            # whatever its variables say) that generation reads.
            generation = {id(v) for v in self._generation_variables()}
            self.ema = WeightAverage(
                [v for v in self.trainable_variables if id(v) in generation],
                self.ema_decay, name="ema",
            )
        self.built = True
        self._runner = None

    def _build_codec(self):
        """Builds the codec's networks (nothing for pixels)."""

    def get_build_config(self):
        if self.image_shape is None:
            return None
        return {"image_shape": list(self.image_shape)}

    def build_from_config(self, config):
        if config and config.get("image_shape") is not None:
            if self.image_shape is None:
                self.image_shape = tuple(config["image_shape"])
            self.build(None)

    # ------------------------------------------------------------------
    # Data: the first batch
    # ------------------------------------------------------------------
    def _peek(self, x, y=None):
        """The first batch of fit/evaluate data and the data to pass on.

        A Python generator is re-chained behind its first batch (nothing is
        lost); a `PyDataset` is indexed; a `tf.data.Dataset` is read with
        `take(1)`. An empty source raises a ValueError.
        """
        if x is None:
            return None, x
        empty = ValueError(
            f"The data passed to {type(self).__name__}.fit/evaluate yields no batch "
            "(an empty dataset, generator or array)."
        )
        if hasattr(x, "take") and hasattr(x, "element_spec"):  # tf.data
            for batch in x.take(1):
                return batch, x
            raise empty
        if isinstance(x, keras.utils.PyDataset):
            if x.num_batches == 0:
                raise empty
            return x[0], x
        if hasattr(x, "__next__"):  # A Python generator or iterator.
            try:
                first = next(x)
            except StopIteration:
                raise empty from None
            return first, _chain(first, x)
        if isinstance(x, (np.ndarray, dict, list, tuple)) or hasattr(x, "shape"):
            batch = x if y is None else (x, y)
            images = parse_batch(batch)
            key = "latents" if "latents" in images else "images"
            if np.shape(images[key])[0] == 0:
                raise empty
            return batch, x
        return None, x

    def _check_first_batch(self, batch):
        """Builds from the first batch and warns once on an unusual range."""
        data = parse_batch(batch)
        key = "latents" if "latents" in data else "images"
        images = data[key]
        shape = tuple(images.shape)
        if len(shape) < 2:
            raise ValueError(f"`{key}` must have shape (batch, ...), received shape {shape}")
        if not self.built:
            build_shape = {key: shape}
            for name in ("condition", "context"):
                if name in data:
                    build_shape[name] = tuple(data[name].shape)
            # In the strategy scope the model was created in (fit may be
            # called outside it): distributed variables for the denoiser.
            with self._strategy_scope():
                self.build(build_shape)
        elif key == "latents":
            self._check_latents(shape[1:])
        else:
            sample = self.codec.sample_shape(shape[1:])
            if sample != self.image_shape:
                raise ValueError(
                    f"`images` of shape {shape[1:]} (without batch) do not match the "
                    f"model's image_shape={self.image_shape}"
                )
        dtype = keras.backend.standardize_dtype(images.dtype)
        if key == "images" and "float" in dtype and len(shape) == 4 and not self._range_warned:
            values = np.asarray(ops.convert_to_numpy(images[:64]))
            finite = values[np.isfinite(values)]
            if finite.size and (finite.min() < -1.05 or finite.max() > 1.05):
                self._warn_range(finite, "(e.g. x / 127.5 - 1 for [0, 255])")
            elif finite.size and finite.min() >= 0.0 and 0.0 < finite.max() <= 1.0:
                self._warn_range(finite, "(x * 2 - 1 for [0, 1])")

    def _warn_range(self, finite, hint):
        self._range_warned = True
        warnings.warn(
            f"{type(self).__name__} expects float images in [-1, 1]; the first batch "
            f"has values in [{finite.min():.3g}, {finite.max():.3g}]. Rescale them "
            f"{hint} or pass uint8 images, which are rescaled automatically.",
            stacklevel=4,
        )

    # ------------------------------------------------------------------
    # Compile / fit
    # ------------------------------------------------------------------
    def compile(self, optimizer="auto", loss=None, metrics=None, jit_compile="auto", **kwargs):
        """Configures training; `fit` calls it with the defaults if needed.

        Args:
            optimizer: an optimizer, or "auto" for
                `AdamW(learning_rate=2e-4, weight_decay=0.01, clipnorm=1.0)`.
                Use `gradient_accumulation_steps` and `clipnorm` of Keras
                optimizers for those features (the model keeps its own
                weight average, see `ema_decay`).
            loss, metrics: must be None (the model defines its loss and
                metrics).
            jit_compile: "auto" uses XLA when a GPU or TPU is visible on
                TensorFlow, not on CPU; JAX always compiles with XLA.
            **kwargs: other `keras.Model.compile` arguments (`run_eagerly`,
                `steps_per_execution`, ...).
        """
        if loss is not None:
            raise ValueError(
                f"{type(self).__name__} computes its own loss from `prediction` and "
                f"`weighting`; compile() received loss={loss!r}"
            )
        if metrics:
            raise ValueError(
                f"{type(self).__name__} reports its own metrics; compile() received "
                f"metrics={metrics!r}"
            )
        if optimizer is None or (isinstance(optimizer, str) and optimizer == "auto"):
            optimizer = keras.optimizers.AdamW(
                learning_rate=2e-4, weight_decay=0.01, clipnorm=1.0
            )
        if jit_compile == "auto":
            jit_compile = True if keras.backend.backend() == "jax" else has_accelerator()
        super().compile(optimizer=optimizer, jit_compile=jit_compile, **kwargs)
        self._runner = None

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
        with self._strategy_scope():
            optimizer.build(self.trainable_variables)

    def _strategy_scope(self):
        """The scope of the tf.distribute strategy the model was created in."""
        if keras.backend.backend() != "tensorflow":
            return contextlib.nullcontext()
        return self.distribute_strategy.scope()

    def _prepare_fit(self, x, y):
        batch, x = self._peek(x, y)
        if batch is not None:
            self._check_first_batch(batch)
        if not self.built:
            raise ValueError(
                f"{type(self).__name__} could not read a first batch from the data "
                f"({type(x).__name__}) to build itself; pass `image_shape=` to the "
                "constructor or call build()."
            )
        if not self.compiled:
            self.compile()
        self._build_optimizer()
        return x

    def fit(self, x=None, y=None, *args, **kwargs):
        x = self._prepare_fit(x, y)
        kwargs = without_shuffle_warning(x, args, kwargs)
        history = super().fit(x, y, *args, **kwargs)
        self._unalias_ema_weights()
        return history

    def _unalias_ema_weights(self):
        """On JAX, fit() ends by assigning the EMA arrays to the weights
        (Keras' finalize step), so each weight and its EMA variable share
        one buffer; the next jitted step donates the weights' buffers and
        would delete the EMA values with them. Give the weights copies."""
        if keras.backend.backend() != "jax":
            return
        ema = self._optimizer_averages()
        for variable in self.trainable_variables:
            if id(variable) in ema:
                variable.assign(ops.copy(variable.value))

    def evaluate(self, x=None, y=None, *args, **kwargs):
        x = self._prepare_fit(x, y)
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
                f"{type(self).__name__}(text_encoder=...)"
            )
        return ops.cast(self.text_encoder(text, training=training), "float32")

    def _empty_context(self):
        if self.text_encoder is None:
            return None
        return self.encode_text(string_tensor([""]))

    def _null_condition(self, batch):
        """The "no condition" inputs of the denoiser for a batch."""
        return self.conditions.null(batch, self._empty_context())

    def _prepare_batch(self, data, training):
        """Data -> (x0 float32 in the codec's space, condition dict, valid mask)."""
        data = parse_batch(data)
        if "latents" in data:
            x0 = ops.cast(data["latents"], "float32")
            self._check_latents(tuple(x0.shape[1:]))
        else:
            x0 = self._encode_images(data["images"], training)
        if tuple(x0.shape[1:]) != tuple(self.image_shape):
            raise ValueError(
                f"`images` of shape {tuple(data.get('images', x0).shape[1:])} (without "
                f"batch) do not match the model's image_shape={self.image_shape}"
            )
        spec = self.conditions
        batch = ops.shape(x0)[0]
        cond = {}
        if data.get("labels") is not None:
            cond["labels"] = spec.graph_labels(data["labels"])
        if data.get("text") is not None:
            cond["context"] = self.encode_text(data["text"], training=training)
        elif data.get("context") is not None:
            cond["context"] = ops.cast(data["context"], "float32")
        if data.get("condition") is not None:
            if self.condition_shape is None:
                raise ValueError(
                    "The data has an image `condition` but the model was built without "
                    "one (condition_shape=None)."
                )
            condition = data["condition"]
            if "latents" not in data:
                condition = self.codec.encode_condition(condition, self.image_shape)
            cond["condition"] = ops.cast(condition, "float32")
        if data.get("control") is not None:
            control = ops.cast(data["control"], "float32")
            if spec.control_shape is None or tuple(control.shape[1:]) != spec.control_shape:
                raise ValueError(
                    f"`control` must have shape (batch, {spec.control_shape}) for this "
                    f"model (control_shape={spec.control_shape}), received "
                    f"{tuple(control.shape)}"
                )
            cond["control"] = control
        null = self._null_condition(batch)
        cond = {key: cond.get(key, value) for key, value in null.items()}
        x0, cond, valid = self._apply_nan_policy(x0, cond)
        return x0, cond, valid

    def _encode_images(self, images, training):
        return self.codec.encode(images)

    def _check_latents(self, shape):
        raise ValueError(
            f"{type(self).__name__} works in pixel space: a batch has `images`, not "
            "`latents`"
        )

    def _apply_nan_policy(self, x0, cond):
        batch = ops.shape(x0)[0]

        def finite(x):
            return ops.all(ops.isfinite(ops.reshape(x, (batch, -1))), axis=1)

        valid = finite(x0)
        for key in ("context", "condition", "control"):
            if key in cond:
                valid = ops.logical_and(valid, finite(cond[key]))
        if self.nan_policy == "raise":
            x0 = runtime_check(
                x0, ops.all(valid),
                "The batch contains NaN or Inf in `images` (or in its condition); "
                "nan_policy='raise'. Clean the data or use nan_policy='skip' to drop "
                "such examples.",
            )
            return x0, cond, ops.ones((batch,), "float32")

        def zero_invalid(x):
            mask = ops.reshape(valid, (-1,) + (1,) * (len(x.shape) - 1))
            return ops.where(mask, x, ops.zeros_like(x))

        x0 = zero_invalid(x0)
        for key in ("context", "condition", "control"):
            if key in cond:
                cond[key] = zero_invalid(cond[key])
        return x0, cond, ops.cast(valid, "float32")

    # ------------------------------------------------------------------
    # The loss (backend-neutral) and the steps
    # ------------------------------------------------------------------
    def _training_seed(self):
        """The seed of a training draw (distinct per replica)."""
        return ReplicaSeed(self.seed_generator)

    def per_example_loss(self, images, noise, t, condition=None, training=False):
        """`objectives.diffusion_loss` of the denoiser per example, `[batch]`.

        Args:
            images: clean data x0 (in the denoiser's space), float32.
            noise: eps, shaped like `images`.
            t: times, shape [batch].
            condition: dict of denoiser condition inputs ("labels",
                "context", "condition").
            training: passed to the denoiser.
        """

        def predict(x_t, times):
            return self.denoiser({"x_t": x_t, "t": times, **(condition or {})}, training=training)

        return objectives.diffusion_loss(
            predict, images, noise, t,
            schedule=self.schedule,
            prediction=self.prediction,
            weighting=self.weighting,
            time_distribution=self.time_distribution,
            gamma=self.min_snr_gamma,
            loc=self.logit_normal_loc,
            scale=self.logit_normal_scale,
        )

    def training_loss(self, data):
        """The training step's loss: `(loss, (losses, t, valid))`."""
        x0, cond, valid = self._prepare_batch(data, training=True)
        batch = ops.shape(x0)[0]
        t = objectives.sample_time(
            self.time_distribution, batch, self.schedule, seed=self._training_seed(),
            loc=self.logit_normal_loc, scale=self.logit_normal_scale,
        )
        noise = keras.random.normal(ops.shape(x0), seed=self._training_seed())
        if self.condition_dropout:
            null = self._null_condition(batch)
            cond = ConditionSpec.drop(cond, null, self.condition_dropout, self._training_seed())
        losses = self.per_example_loss(x0, noise, t, cond, training=True)
        count = ops.sum(valid)
        if self.nan_policy == "skip":
            # All examples non-finite: warn (the loss is 0 then, nothing learns).
            count = _warn_if_zero(count, xla=bool(getattr(self, "jit_compile", False)))
        loss = ops.sum(losses * valid) / ops.maximum(count, 1.0)
        if self.losses:
            loss = loss + ops.sum(ops.stack([ops.cast(x, "float32") for x in self.losses]))
        return loss, (losses, t, valid)

    def eval_times(self):
        """The fixed grid of times of `test_step` (midpoints of equal bins)."""
        k = self.num_eval_times
        u = (np.arange(k) + 0.5) / k
        t_min = self.schedule.t_min
        return (t_min + (1.0 - t_min) * u).astype("float32")

    def eval_losses(self, data):
        """Yields `(losses, t, valid)` on the fixed grid of times and noise."""
        x0, cond, valid = self._prepare_batch(data, training=False)
        batch = ops.shape(x0)[0]
        for k, tk in enumerate(self.eval_times()):
            t = ops.full((batch,), float(tk), "float32")
            noise = random_lib.step_noise(ops.shape(x0), random_lib.EVAL_SEED, k)
            yield self.per_example_loss(x0, noise, t, cond, training=False), t, valid

    def update_metrics(self, losses, t, valid):
        count = ops.maximum(ops.sum(valid), 1.0)
        self.loss_tracker.update_state(ops.sum(losses * valid) / count, sample_weight=count)
        for i, tracker in enumerate(self.bucket_trackers):
            in_bucket = ops.logical_and(t >= i / 4.0, t < (i + 1) / 4.0 if i < 3 else t <= 1.0)
            tracker.update_state(losses, sample_weight=ops.cast(in_bucket, "float32") * valid)
        if self.nan_policy == "skip":
            self.nonfinite_tracker.update_state(ops.sum(1.0 - valid))

    def train_step(self, *args):
        return train_steps.train_step(self, *args)

    def test_step(self, *args):
        return train_steps.test_step(self, *args)

    def call(self, inputs, training=None):
        """The denoiser's prediction.

        `inputs` is the denoiser's dict {"x_t", "t", ...}. A data batch
        (images, or a dict with "images") is also accepted, for building:
        it returns the prediction at t = 0.5 with the null condition.
        """
        if isinstance(inputs, dict) and "x_t" in inputs:
            return self.denoiser(inputs, training=training)
        x0, _, _ = self._prepare_batch(inputs, training=False)
        batch = ops.shape(x0)[0]
        return self.denoiser(
            {"x_t": x0, "t": ops.full((batch,), 0.5, "float32"), **self._null_condition(batch)},
            training=training,
        )

    # ------------------------------------------------------------------
    # Weights: EMA without mutation
    # ------------------------------------------------------------------
    def _ema_by_variable(self):
        """{id(variable): its average}: the model's `ema` once it has been
        updated, else the optimizer's EMA weights when it keeps them and has
        taken a step; else {}. (Keras keeps those in the optimizer's
        `_model_variables_moving_average`, as `SwapEMAWeights` reads them.)"""
        if self.ema is not None and self.ema.has_updates():
            return self.ema.by_variable()
        return self._optimizer_averages()

    def _optimizer_averages(self):
        optimizer = getattr(self, "optimizer", None)
        optimizer = getattr(optimizer, "inner_optimizer", optimizer)
        averages = getattr(optimizer, "_model_variables_moving_average", None)
        if (
            optimizer is None
            or not getattr(optimizer, "use_ema", False)
            or not averages
            or int(ops.convert_to_numpy(optimizer.iterations)) == 0
        ):
            return {}
        return {id(v): a for v, a in zip(optimizer._trainable_variables, averages)}

    def _generation_variables(self):
        variables = list(self.denoiser.variables)
        if self.text_encoder is not None:
            variables += list(self.text_encoder.variables)
        return variables

    def weight_values(self, use_ema=True):
        """The values of the generation weights: the EMA weights when kept
        (and `use_ema`), the model's own otherwise. Read as a consistent
        snapshot; nothing is assigned."""
        ema = self._ema_by_variable() if use_ema else {}
        with self._weights_lock:
            return [
                ops.convert_to_tensor(ema.get(id(v), v)) for v in self._generation_variables()
            ]

    @contextlib.contextmanager
    def ema_weights(self):
        """Assigns the EMA weights to the model inside a `with` (for code that
        reads the variables themselves, e.g. saving them); the training
        values are restored afterwards. Yields whether a swap happened.

        `generate`, `img2img`, `inpaint` and `export` need no swap: they use
        the EMA weights as values and never mutate the model.
        """
        with averages_assigned(
            self.trainable_variables, self._ema_by_variable(), self._weights_lock
        ) as swapped:
            yield swapped

    # ------------------------------------------------------------------
    # Sampling
    # ------------------------------------------------------------------
    @property
    def runner(self):
        """The model's `pipelines.GenerationRunner` (created when first used)."""
        if self._runner is None:
            self._ensure_built()

            def network(x_t, t, cond):
                return self.denoiser({"x_t": x_t, "t": t, **cond}, training=False)

            self._runner = GenerationRunner(
                network,
                self._generation_variables(),
                self.schedule,
                self.prediction,
                self._null_condition,
                self.is_conditional,
                codec=self.codec if self.codec.is_latent else None,
                guidance_input=self.guidance_input,
            )
        return self._runner

    def _ensure_built(self):
        if self.image_shape is None or (self.denoiser is None and not self.built):
            raise ValueError(
                "The model is not built: train it with fit() or pass `image_shape=` "
                "before calling generate()."
            )
        if not self.built:
            self.build(None)

    def model_fn(self, labels=None, context=None, condition=None, guidance_scale=1.0,
                 control=None):
        """The sampler's `model_fn(x_t, t)` of this model, with optional guidance.

        Args:
            labels: int labels `(B,)` (class-conditional models).
            context: a context `(B, L, D)` (e.g. from `encode_text`).
            condition: an image condition `(B, H, W, C)` in the denoiser's space.
            guidance_scale: classifier-free guidance scale (1: plain
                conditional model, 0: unconditional).
            control: a ControlNet's control images `(B, *control_shape)`.

        Returns:
            `model_fn(x_t, t) -> prediction` for `sampler.sample`.
        """
        _check_guidance_scale(guidance_scale)
        if labels is not None and self.num_classes is None:
            raise ValueError(
                "`labels` were given but the model is unconditional (num_classes=None)"
            )
        given = {"labels": labels, "context": context, "condition": condition,
                 "control": control}
        return self.runner.model_fn(
            {k: v for k, v in given.items() if v is not None}, guidance_scale
        )

    def _conditions_for(self, num, labels, text, condition, values, control=None):
        """Validated condition inputs of the runner for `num` samples."""
        spec = self.conditions
        out = {}
        if labels is not None:
            out["labels"] = spec.check_labels(labels, num)
        if text is not None:
            prompts = spec.check_text(text, num)
            context = self.runner.call(values, self.encode_text, string_tensor(prompts))
            out["context"] = np.asarray(ops.convert_to_numpy(context), "float32")
        if condition is not None:
            if self.condition_shape is None:
                raise ValueError(
                    "`condition` was given but the model has no image condition "
                    "(condition_shape=None)"
                )
            encoded = self.codec.encode_condition(condition, self.image_shape)
            out["condition"] = spec.check_condition(encoded, num)
        if control is not None:
            out["control"] = spec.check_control(control, num)
        elif spec.control_shape is not None:
            # Without it the ControlNets would see the zero placeholder.
            raise ValueError(
                "This model has ControlNets: pass `control`, control images of shape "
                f"(N, {', '.join(str(d) for d in spec.control_shape)}) (one for all samples "
                "or one per sample); received control=None"
            )
        return out

    def _sampling_options(self, sampler, clip, clip_denoised, num_steps, timesteps, spacing,
                          guidance_scale, jit_compile):
        _check_guidance_scale(guidance_scale)
        if clip is None:
            clip = len(self.codec.data_shape(self.image_shape)) == 3
        if clip_denoised is None:
            clip_denoised = bool(clip) and not self.codec.is_latent
        sampler = _get_sampler(sampler, clip_denoised)
        _check_num_steps(num_steps)
        if jit_compile is None:
            jit_compile = bool(self.jit_compile) if self.compiled else has_accelerator()
        eager = bool(getattr(self, "run_eagerly", False))
        return sampler, bool(clip), float(guidance_scale), bool(jit_compile), eager

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
        return_latents=False,
        control=None,
        classifier=None,
        classifier_scale=None,
    ):
        """Samples from the model.

        The sampler loop (and the decode of a latent model) for a batch runs
        as one compiled function (`tf.function`, with XLA when `jit_compile`;
        `jax.jit` on JAX), traced once per signature; with `run_eagerly=True`
        in `compile` it runs step by step with a progress bar over the model
        evaluations. The EMA weights are used as values: the model is never
        mutated, and concurrent calls from several threads are safe.

        Args:
            num_images: how many samples; defaults to the number of labels /
                prompts / conditions.
            labels: class labels `(N,)` (or one label for all) for
                class-conditional models.
            text: N prompts (or one for all; needs a `text_encoder`).
            condition: image conditions `(N, H, W, C)` (pixel level; a latent
                model encodes them with its codec).
            sampler: a `Sampler` or a name ("dpm_solver", "ddim", "ddpm",
                "euler", "heun", "ode", ...).
            num_steps: a positive int: model-evaluation times (sampler
                default if None).
            guidance_scale: classifier-free guidance scale, finite and >= 0
                (1: none).
            seed: an int in [0, 2**31); the same seed gives the same samples
                (and the same as the exported SavedModel). Random if None.
            timesteps, spacing: the sampler's time grid options.
            batch_size: samples per sampler call (default: all at once).
            clip: clip the output to [-1, 1]; default True for images
                (rank-3 samples), False for vectors.
            clip_denoised: clip the sampler's x0 estimates to [-1, 1] at every
                step (`clip_x0=1` of a sampler given by name); default as
                `clip` for pixel models, False for latent models. (The
                default grids start where log-SNR is -10.5 on schedules that
                go below it, -5 for epsilon and score models,
                `samplers.spacing.start_log_snr_for`, so that the first steps
                do not amplify the model's error hundreds of times.)
            use_ema: sample with the average weights (the model's `ema`, else
                the optimizer's EMA) when kept.
            jit_compile: XLA for the sampler graph (None: as `compile`).
            verbose: "auto", 0 or 1: progress bar.
            return_latents: also return the sampled latents (latent models).
            control: control images `(N, *control_shape)` (or one for all)
                of a model with ControlNets (`models.ControlledUNet`).
            classifier: a noise-conditional classifier for classifier
                guidance (Dhariwal & Nichol 2021), e.g. a trained
                `models.NoisyClassifier`: a Keras model called on
                `{"x_t": x_t, "t": t}` returning logits `(B, num_classes)`,
                trained on the model's schedule. It must take the sampled
                shape (a latent model's latents). The model function becomes
                `guidance.classifier_guidance` around the (classifier-free
                guided) one, with the gradient of log p(labels | x_t, t)
                from the backend's autodiff; it works with every sampler.
                Needs `labels` (in the classifier's classes); they also
                condition a class-conditional model, so `guidance_scale=0`
                guides its unconditional model (one network call per step)
                and `guidance_scale > 1` combines both guidances.
            classifier_scale: the classifier guidance scale s, finite and
                >= 0 (default 1.0 with a classifier; 0: no guidance). Only
                with `classifier`.

        Returns:
            A numpy float32 array `(N, *data_shape)` (and the latents with
            `return_latents=True`).

        Example:
        >>> classifier = keras_diffusion.models.NoisyClassifier(
        ...     num_classes=10, input_channels=1, schedule=model.schedule)
        >>> classifier.compile()
        >>> classifier.fit(images, labels, epochs=5)   # on x_t at random t
        >>> digits = model.generate(labels=[3] * 8, classifier=classifier,
        ...                         classifier_scale=4.0, seed=0)
        """
        self._ensure_built()
        sampler, clip, guidance_scale, jit_compile, eager = self._sampling_options(
            sampler, clip, clip_denoised, num_steps, timesteps, spacing, guidance_scale,
            jit_compile,
        )
        num = self.conditions.count(num_images, labels, text, condition, control)
        guide = check_classifier_options(
            classifier, classifier_scale, labels, num, self.image_shape, self.schedule,
            is_latent=self.codec.is_latent,
        )
        if classifier is not None and self.num_classes is None:
            labels = None  # An unconditional model: the labels are the classifier's.
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer))
            or batch_size <= 0
        ):
            raise ValueError(
                f"`batch_size` must be a positive int, received batch_size={batch_size!r}"
            )
        batch_size = num if batch_size is None else min(int(batch_size), num)
        seed = random_lib.check_seed(seed)
        times = np.asarray(
            ops.convert_to_numpy(
                sampler.timesteps(self.schedule, num_steps, timesteps, spacing, self.prediction)
            ),
            "float32",
        )
        if not eager:  # Eager runs reach `sampler.sample` with these concrete times.
            sampler.check_timesteps(self.schedule, times)
        values = self.weight_values(use_ema)
        cond = self._conditions_for(num, labels, text, condition, values, control)
        noise = np.asarray(
            ops.convert_to_numpy(random_lib.initial_noise((num,) + self.image_shape, seed)),
            "float32",
        )
        chunks = list(range(0, num, batch_size))
        if verbose == "auto":
            verbose = 1 if (eager or num > batch_size) else 0
        progbar = None
        if verbose:
            target = len(times) * len(chunks) if eager else len(chunks)
            progbar = keras.utils.Progbar(target, unit_name="step" if eager else "batch")
        hook = None
        if progbar is not None and eager:
            def hook(model_fn):
                def counted(x_t, t):
                    out = model_fn(x_t, t)
                    progbar.add(1)
                    return out

                return counted

        decode = not return_latents
        outputs = []
        for index, start in enumerate(chunks):
            stop = min(start + batch_size, num)
            guided = {} if guide is None else dict(
                classifier=classifier, classifier_labels=guide[0][start:stop],
                classifier_scale=guide[1],
            )
            x = self.runner.generate(
                values, noise[start:stop], {k: v[start:stop] for k, v in cond.items()},
                sampler=sampler, timesteps=times, guidance_scale=guidance_scale,
                seed=random_lib.sampler_seed(seed, index), decode=decode,
                jit_compile=jit_compile, eager=eager, model_fn_hook=hook, **guided,
            )
            outputs.append(np.asarray(ops.convert_to_numpy(x), "float32"))
            if progbar is not None and not eager:
                progbar.update(index + 1)
        out = np.concatenate(outputs, axis=0)
        if not return_latents:
            return np.clip(out, -1.0, 1.0) if clip else out
        images = self.decode(out)
        return (np.clip(images, -1.0, 1.0) if clip else images), out

    def decode(self, x, batch_size=64):
        """Samples in the denoiser's space -> data (numpy float32, not clipped)."""
        x = np.asarray(ops.convert_to_numpy(x), "float32")
        if not self.codec.is_latent:
            return x
        return np.concatenate(
            [
                np.asarray(ops.convert_to_numpy(self.codec.decode(x[i : i + batch_size])))
                for i in range(0, len(x), batch_size)
            ]
        ).astype("float32")

    def _edit(self, images, mask, strength, labels, text, condition, sampler, num_steps,
              guidance_scale, seed, timesteps, spacing, renoise, use_ema, jit_compile, clip,
              control=None):
        self._ensure_built()
        strength = image_to_image.check_strength(strength)
        sampler, clip, guidance_scale, jit_compile, eager = self._sampling_options(
            sampler, clip, None, num_steps, timesteps, spacing, guidance_scale, jit_compile,
        )
        pixels = image_to_image._check_images(images)
        data_shape = self.codec.data_shape(self.image_shape)
        if tuple(pixels.shape[1:]) != tuple(data_shape):
            raise ValueError(
                f"`images` of shape {tuple(pixels.shape[1:])} (without batch) do not "
                f"match the model's data shape {tuple(data_shape)}"
            )
        if mask is not None and len(pixels.shape) != 4:
            raise ValueError(
                f"`images` must have shape (batch, H, W, C), received {tuple(pixels.shape)}"
            )
        pixel_mask = None if mask is None else image_to_image.check_mask(mask, pixels)
        if mask is not None:
            from keras_diffusion.guidance import check_renoise

            check_renoise(renoise)
        num = int(pixels.shape[0])
        seed = random_lib.check_seed(seed)
        values = self.weight_values(use_ema)
        cond = self._conditions_for(num, labels, text, condition, values, control)
        tail = image_to_image.strength_timesteps(
            sampler, self.schedule, strength, num_steps, timesteps, spacing, self.prediction
        )
        if tail.size == 0:
            out = np.asarray(ops.convert_to_numpy(pixels), "float32")
            return np.clip(out, -1.0, 1.0) if clip else out
        x = self.codec.encode(pixels)
        noise = random_lib.step_noise(tuple(x.shape), seed, random_lib.IMG2IMG_NOISE)
        x_mask = None if pixel_mask is None else self.codec.mask(pixel_mask)
        out = self.runner.edit(
            values, x, noise, x_mask, cond, sampler=sampler, timesteps=tail,
            guidance_scale=guidance_scale, seed=seed, renoise=renoise,
            decode=True, jit_compile=jit_compile, eager=eager,
        )
        out = np.asarray(ops.convert_to_numpy(out), "float32")
        if pixel_mask is not None and self.codec.is_latent:
            # Keep the known pixels exactly (the VAE round trip is lossy).
            m = np.asarray(ops.convert_to_numpy(pixel_mask))
            out = m * out + (1.0 - m) * np.asarray(ops.convert_to_numpy(pixels))
        return np.clip(out, -1.0, 1.0) if clip else out

    def img2img(self, images, strength=0.8, labels=None, text=None, condition=None,
                sampler="ddim", num_steps=None, guidance_scale=1.0, seed=None,
                timesteps=None, spacing=None, use_ema=True, jit_compile=None, clip=True,
                control=None):
        """SDEdit: noise `images` to t = strength and denoise them.

        See `keras_diffusion.pipelines.image_to_image`. The time grid (from
        `num_steps` / `spacing` / `timesteps`) is the full grid; its times
        `<= strength` are run. A latent model encodes the images with its
        codec, samples in latent space and decodes.

        Args:
            images: `(N, *data_shape)` in [-1, 1] (uint8 rescaled).
            strength: in [0, 1]: 0 returns the images, 1 is generation.
            labels, text, condition: as for `generate` (one per image; a
                single label or prompt is repeated).
            sampler: a sampler or its name (default "ddim", deterministic).
            num_steps, timesteps, spacing: the full time grid.
            guidance_scale: classifier-free guidance scale.
            seed: an int seed in [0, 2**31) (noise and stochastic samplers).
            use_ema: use the average weights (the model's `ema`, else the
                optimizer's EMA) when kept.
            jit_compile: XLA for the sampling graph.
            clip: clip the output to [-1, 1] (pixel models: also the
                sampler's x0 estimates when `sampler` is a name).
            control: control images (models with ControlNets), as for
                `generate`.

        Returns:
            A numpy float32 array shaped like `images`.
        """
        return self._edit(images, None, strength, labels, text, condition, sampler,
                          num_steps, guidance_scale, seed, timesteps, spacing, "fresh",
                          use_ema, jit_compile, clip, control)

    def inpaint(self, images, mask, strength=1.0, labels=None, text=None, condition=None,
                sampler="ddim", num_steps=None, guidance_scale=1.0, seed=None,
                timesteps=None, spacing=None, renoise="fresh", use_ema=True,
                jit_compile=None, clip=True, control=None):
        """Fills the region `mask == 1` of `images` by replacement sampling.

        `mask` (1 = generate, 0 = keep) is at pixel resolution; a latent model
        max-pools it to the latent grid, samples in latent space, decodes and
        pastes the known pixels back. `renoise`: "fresh" (default) or
        "fixed" (see `guidance.replace_known`). Other arguments as for
        `img2img`.
        """
        if mask is None:
            raise ValueError("`mask` is required for inpainting, received mask=None")
        return self._edit(images, mask, strength, labels, text, condition, sampler,
                          num_steps, guidance_scale, seed, timesteps, spacing, renoise,
                          use_ema, jit_compile, clip, control)

    # ------------------------------------------------------------------
    # Export
    # ------------------------------------------------------------------
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

    def export_spec(self):
        """What `keras_diffusion.export` needs of this model (a protocol)."""
        self._ensure_built()
        return {
            "runner": self.runner,
            "sample_shape": tuple(self.image_shape),
            "data_shape": tuple(self.codec.data_shape(self.image_shape)),
            "is_latent": self.codec.is_latent,
            "conditions": self.conditions,
            "encode_text": self.encode_text if self.text_encoder is not None else None,
            "null_condition": self._null_condition,
            "denoise": lambda inputs: self.denoiser(inputs, training=False),
            "layers": [
                layer
                for layer in (self.denoiser, self.text_encoder, getattr(self.codec, "vae", None))
                if layer is not None
            ],
            "ema_weights": self.ema_weights,
            "prediction": self.prediction,
            "schedule": self.schedule,
        }

    def _default_save_signature(self):
        # Keras' SavedModel walk traces every model's default signature; a
        # DiffusionModel has none (use `export`).
        return None

    # ------------------------------------------------------------------
    # Serialization
    # ------------------------------------------------------------------
    def get_config(self):
        return {
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
            "image_shape": _list(self.image_shape),
            "condition_shape": _list(self.condition_shape),
            "context_shape": _list(self.context_shape),
            "min_snr_gamma": self.min_snr_gamma,
            "logit_normal_loc": self.logit_normal_loc,
            "logit_normal_scale": self.logit_normal_scale,
            "nan_policy": self.nan_policy,
            "num_eval_times": self.num_eval_times,
            "seed": self.seed,
            "ema_decay": self.ema_decay,
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        # Files saved before the model kept its own average have no EMA
        # variables (and no "ema_decay"): they load without one.
        config.setdefault("ema_decay", None)
        for key in ("denoiser", "text_encoder", "schedule", "dtype", "vae"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(**config)


# ----------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------
def _chain(first, rest):
    """A generator (the type Keras' data adapters take) of `first`, then
    `rest`; batches that are not tuples are yielded as `(batch,)`, as Keras
    requires of generators."""
    for batch in itertools.chain([first], rest):
        yield batch if isinstance(batch, tuple) else (batch,)


def _tuple(shape):
    return None if shape is None else tuple(int(d) for d in shape)


def _list(shape):
    return None if shape is None else list(shape)


def _warn_if_zero(count, xla=False):
    """Warns (once per trace on graphs, each time eagerly) when no example
    of a batch is finite under nan_policy='skip'."""
    message = (
        "nan_policy='skip': every example of a batch holds NaN or Inf; the batch "
        "is skipped (loss 0)."
    )
    try:
        if float(ops.convert_to_numpy(count)) == 0.0:
            warnings.warn(message, stacklevel=2)
        return count
    except Exception:  # Traced: report at run time.
        pass
    if keras.backend.backend() == "tensorflow" and not xla:  # XLA has no print.
        import tensorflow as tf

        def report():
            tf.print("WARNING:", message)
            return count

        return tf.cond(tf.equal(count, 0.0), report, lambda: count)
    if keras.backend.backend() == "jax":
        import jax

        jax.debug.callback(
            lambda c: warnings.warn(message) if float(c) == 0.0 else None, count
        )
    return count


def _check_guidance_scale(guidance_scale):
    if isinstance(guidance_scale, (bool, str)) or (
        isinstance(guidance_scale, (int, float, np.number))
        and not (np.isfinite(guidance_scale) and guidance_scale >= 0)
    ):
        raise ValueError(
            "`guidance_scale` must be a finite number >= 0, received "
            f"guidance_scale={guidance_scale!r}"
        )


def _check_num_steps(num_steps):
    if num_steps is None:
        return
    if isinstance(num_steps, bool) or not isinstance(num_steps, (int, np.integer)):
        raise ValueError(
            f"`num_steps` must be a positive int, received num_steps={num_steps!r}"
        )
    if num_steps < 1:
        raise ValueError(f"`num_steps` must be >= 1, received num_steps={num_steps}")


def _get_sampler(sampler, clip_denoised=False):
    if isinstance(sampler, str):
        options = {"clip_x0": 1.0} if clip_denoised else {}
        return samplers_lib.get(sampler, **options)
    return samplers_lib.get(sampler)
