"""A noise-conditional classifier p(y | x_t, t) for classifier guidance."""

import keras
from keras import ops

from keras_diffusion import objectives
from keras_diffusion import schedules as schedules_lib
from keras_diffusion.layers import Downsample
from keras_diffusion.layers import GroupNormalization
from keras_diffusion.layers import ResnetBlock
from keras_diffusion.layers import TimestepEmbedding
from keras_diffusion.utils.fitting import without_shuffle_warning
from keras_diffusion.utils.tensorflow_ops import has_accelerator


@keras.saving.register_keras_serializable(package="keras_diffusion")
class NoisyClassifier(keras.Model):
    """A classifier of noisy images x_t at time t: logits of p(y | x_t, t).

    The encoder half of a UNet (ADM's classifier, Dhariwal & Nichol 2021,
    section 4): a conv, `len(channel_multipliers)` levels of time-conditioned
    `ResnetBlock`s separated by 2x downsampling, then GroupNorm + SiLU,
    global average pooling and a dense head.

    Called on a dict `{"x_t": (B, H, W, C), "t": (B,)}` it returns the
    logits `(B, num_classes)` (float32). Called on clean images `(B, H, W,
    C)` in [-1, 1] (what `fit` and `evaluate` pass it), it first noises them
    at times drawn by `objectives.sample_time(time_distribution, ...)` with
    `schedule.add_noise`, so `fit` on `(images, labels)` with a sparse
    categorical cross-entropy trains it on x_t at random t. Train it on the
    schedule of the diffusion model it will guide; see
    `keras_diffusion.guidance.classifier_guidance`.

    Args:
        num_classes: number of classes.
        input_channels: channels of the images.
        base_channels: channels of the first level.
        channel_multipliers: per-level multipliers of `base_channels`.
        num_res_blocks: residual blocks per level.
        num_groups: GroupNormalization groups.
        dropout: dropout rate in the residual blocks.
        schedule: the noise schedule (or its name) of training.
        time_distribution: the training time distribution (see
            `objectives.sample_time`).
        seed: seed of the training noise and times.
        **kwargs: `keras.Model` arguments.

    Example:
    >>> classifier = NoisyClassifier(num_classes=10, input_channels=1)
    >>> classifier.compile("adam", keras.losses.SparseCategoricalCrossentropy(
    ...     from_logits=True), metrics=["accuracy"])
    >>> classifier.fit(images, labels, epochs=5)
    >>> logits = classifier({"x_t": x_t, "t": t})

    References:
        Dhariwal & Nichol, Diffusion Models Beat GANs on Image Synthesis, 2021.
    """

    def __init__(
        self,
        num_classes,
        input_channels=3,
        base_channels=32,
        channel_multipliers=(1, 2, 2),
        num_res_blocks=1,
        num_groups=8,
        dropout=0.0,
        schedule="cosine",
        time_distribution="uniform",
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if isinstance(num_classes, bool) or int(num_classes) < 2:
            raise ValueError(
                f"`num_classes` must be an int >= 2, received num_classes={num_classes!r}"
            )
        if time_distribution not in objectives.TIME_DISTRIBUTIONS:
            raise ValueError(
                f"Unknown `time_distribution`: {time_distribution!r}. Valid names: "
                f"{list(objectives.TIME_DISTRIBUTIONS)}"
            )
        self.num_classes = int(num_classes)
        self.input_channels = int(input_channels)
        self.base_channels = int(base_channels)
        self.channel_multipliers = tuple(int(m) for m in channel_multipliers)
        self.num_res_blocks = int(num_res_blocks)
        self.num_groups = int(num_groups)
        self.dropout = float(dropout)
        self.schedule = schedules_lib.get(schedule)
        self.time_distribution = time_distribution
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)
        for c in (self.base_channels * m for m in self.channel_multipliers):
            if c % self.num_groups:
                raise ValueError(
                    f"`num_groups`={num_groups} does not divide the {c} channels of a level"
                )
        policy = self.dtype_policy
        emb_dim = 4 * self.base_channels
        self.time_embed = TimestepEmbedding(
            emb_dim, frequency_dim=self.base_channels, dtype=policy, name="time_embed"
        )
        self.conv_in = keras.layers.Conv2D(
            self.base_channels, 3, padding="same", dtype=policy, name="conv_in"
        )
        self.blocks = []
        levels = len(self.channel_multipliers)
        for level, mult in enumerate(self.channel_multipliers):
            for i in range(self.num_res_blocks):
                self.blocks.append(ResnetBlock(
                    self.base_channels * mult, dropout=self.dropout, num_groups=self.num_groups,
                    dtype=policy, name=f"level_{level}_res_{i}",
                ))
            if level != levels - 1:
                self.blocks.append(Downsample(
                    self.base_channels * mult, dtype=policy, name=f"level_{level}_downsample"
                ))
        self.norm_out = GroupNormalization(
            self.num_groups, epsilon=1e-5, activation="silu", dtype=policy, name="norm_out"
        )
        self.head = keras.layers.Dense(self.num_classes, dtype=policy, name="head")

    def _check_x(self, shape):
        divisor = 2 ** (len(self.channel_multipliers) - 1)
        if len(shape) != 4 or shape[-1] != self.input_channels:
            raise ValueError(
                f"{type(self).__name__} takes images (B, H, W, {self.input_channels}), "
                f"received shape {tuple(shape)}"
            )
        for size in shape[1:3]:
            if size is not None and size % divisor:
                raise ValueError(
                    f"The image size (shape {tuple(shape)}) is not divisible by "
                    f"2**(num levels - 1)={divisor}"
                )

    def compile(self, optimizer="adam", loss="auto", metrics=None, jit_compile="auto",
                **kwargs):
        """`keras.Model.compile`; `loss="auto"` is the sparse categorical
        cross-entropy of the logits, and `jit_compile="auto"` uses XLA only
        when a GPU or TPU is visible (TensorFlow; JAX always compiles)."""
        if isinstance(loss, str) and loss == "auto":
            loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        if jit_compile == "auto":
            jit_compile = True if keras.backend.backend() == "jax" else has_accelerator()
        super().compile(optimizer=optimizer, loss=loss, metrics=metrics,
                        jit_compile=jit_compile, **kwargs)

    def fit(self, x=None, y=None, *args, **kwargs):
        return super().fit(x, y, *args, **without_shuffle_warning(x, args, kwargs))

    def build(self, input_shape):
        shape = input_shape["x_t"] if isinstance(input_shape, dict) else input_shape
        self._check_x(tuple(shape))
        # One forward pass on zeros builds every sublayer.
        self.call({"x_t": ops.zeros((1,) + tuple(shape[1:])), "t": ops.zeros((1,))})
        self.built = True

    def noise(self, images):
        """Clean images -> `(x_t, t)` at training times of the schedule."""
        x0 = ops.cast(images, "float32")
        batch = ops.shape(x0)[0]
        t = objectives.sample_time(
            self.time_distribution, batch, self.schedule, seed=self.seed_generator
        )
        eps = keras.random.normal(ops.shape(x0), seed=self.seed_generator)
        return self.schedule.add_noise(x0, eps, t), t

    def call(self, inputs, training=None):
        if isinstance(inputs, dict):
            unknown = sorted(set(inputs) - {"x_t", "t"})
            if "x_t" not in inputs or "t" not in inputs or unknown:
                raise ValueError(
                    f"{type(self).__name__} is called on a dict with keys 'x_t' and 't' "
                    f"(or on clean images); received keys {sorted(inputs)}"
                )
            x, t = inputs["x_t"], inputs["t"]
        else:
            x, t = self.noise(inputs)
        self._check_x(tuple(x.shape))
        t = ops.cast(ops.convert_to_tensor(t), "float32")
        if len(t.shape) == 0:
            t = ops.broadcast_to(t, (ops.shape(x)[0],))
        emb = self.time_embed(t)
        h = self.conv_in(ops.cast(x, self.compute_dtype))
        for block in self.blocks:
            h = block([h, emb], training=training) if isinstance(block, ResnetBlock) else block(h)
        h = ops.mean(self.norm_out(h), axis=(1, 2))
        return ops.cast(self.head(h), "float32")

    def log_prob(self, x_t, t, labels):
        """log p(labels | x_t, t), `(B,)`."""
        log_p = ops.log_softmax(self({"x_t": x_t, "t": t}), axis=-1)
        labels = ops.reshape(ops.cast(labels, "int32"), (-1, 1))
        return ops.take_along_axis(log_p, labels, axis=1)[:, 0]

    def compute_output_shape(self, input_shape):
        shape = input_shape["x_t"] if isinstance(input_shape, dict) else input_shape
        return (shape[0], self.num_classes)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_classes": self.num_classes,
                "input_channels": self.input_channels,
                "base_channels": self.base_channels,
                "channel_multipliers": list(self.channel_multipliers),
                "num_res_blocks": self.num_res_blocks,
                "num_groups": self.num_groups,
                "dropout": self.dropout,
                "schedule": keras.saving.serialize_keras_object(self.schedule),
                "time_distribution": self.time_distribution,
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        if isinstance(config.get("schedule"), dict):
            config["schedule"] = keras.saving.deserialize_keras_object(config["schedule"])
        return cls(**config)
