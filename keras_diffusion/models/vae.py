"""KL-regularised autoencoder (the Stable Diffusion "VAE") for latent diffusion.

`VAE.encode_moments`, `encode_mean`, `decode`, `encode_latents` and
`decode_latents` use `keras.ops` only and run on every Keras backend.
`VAE.encode` (a `tensorflow_probability` posterior) and `fit` (the custom
`train_step`) need the TensorFlow backend; TensorFlow and TFP are imported
where they are first used.
"""

import math

import keras
from keras import ops

from keras_diffusion.layers import GroupNormalization
from keras_diffusion.utils.fitting import without_shuffle_warning

RECONSTRUCTION_LOSSES = ("l1", "l2")
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


def _check_groups(channels, num_groups, where):
    if channels % num_groups:
        raise ValueError(
            f"`num_groups`={num_groups} must divide the {channels} channels of "
            f"the VAE's {where}; choose `base_channels` and "
            "`channel_multipliers` accordingly"
        )


@keras.saving.register_keras_serializable(package="keras_diffusion")
class VAEResnetBlock(keras.layers.Layer):
    """GroupNorm -> SiLU -> conv -> GroupNorm -> SiLU -> dropout -> conv, plus a
    (1x1-conv) skip connection; no time conditioning (the SD VAE's block).

    Args:
        output_channels: channels of the output.
        num_groups: groups of the GroupNormalization layers.
        dropout: dropout rate before the second conv.
        epsilon: GroupNormalization epsilon.
        **kwargs: base layer arguments.
    """

    def __init__(self, output_channels, num_groups=32, dropout=0.0, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.output_channels = int(output_channels)
        self.num_groups = int(num_groups)
        self.dropout = float(dropout)
        self.epsilon = float(epsilon)
        policy = self.dtype_policy
        c = self.output_channels
        self.norm_1 = GroupNormalization(
            self.num_groups, epsilon=self.epsilon, activation="silu", dtype=policy,
            name="norm_1",
        )
        self.conv_1 = keras.layers.Conv2D(c, 3, padding="same", dtype=policy, name="conv_1")
        self.norm_2 = GroupNormalization(
            self.num_groups, epsilon=self.epsilon, activation="silu", dtype=policy,
            name="norm_2",
        )
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=policy)
        self.conv_2 = keras.layers.Conv2D(c, 3, padding="same", dtype=policy, name="conv_2")
        self.skip = None

    def build(self, input_shape):
        in_c = input_shape[-1]
        c = self.output_channels
        _check_groups(in_c, self.num_groups, "resnet block input")
        _check_groups(c, self.num_groups, "resnet block output")
        out_shape = tuple(input_shape[:-1]) + (c,)
        self.norm_1.build(input_shape)
        self.conv_1.build(input_shape)
        self.norm_2.build(out_shape)
        self.conv_2.build(out_shape)
        if in_c != c:
            self.skip = keras.layers.Conv2D(c, 1, dtype=self.dtype_policy, name="skip")
            self.skip.build(input_shape)
        self.built = True

    def call(self, x, training=None):
        h = self.conv_1(self.norm_1(x))
        h = self.norm_2(h)
        h = self.conv_2(self.dropout_layer(h, training=training))
        if self.skip is not None:
            x = self.skip(x)
        return x + h

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.output_channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "output_channels": self.output_channels,
                "num_groups": self.num_groups,
                "dropout": self.dropout,
                "epsilon": self.epsilon,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_diffusion")
class VAEAttentionBlock(keras.layers.Layer):
    """Single-head residual self-attention over the pixels (the SD VAE's mid
    block): GroupNorm -> q, k, v (1x1) -> `ops.dot_product_attention` ->
    projection -> residual.

    Args:
        num_groups: groups of the GroupNormalization.
        epsilon: GroupNormalization epsilon.
        **kwargs: base layer arguments.
    """

    def __init__(self, num_groups=32, epsilon=1e-6, **kwargs):
        super().__init__(**kwargs)
        self.num_groups = int(num_groups)
        self.epsilon = float(epsilon)
        self.norm = GroupNormalization(
            self.num_groups, epsilon=self.epsilon, dtype=self.dtype_policy, name="norm"
        )

    def build(self, input_shape):
        c = input_shape[-1]
        _check_groups(c, self.num_groups, "attention block")
        self.norm.build(input_shape)
        policy = self.dtype_policy
        self.q = keras.layers.Dense(c, dtype=policy, name="q")
        self.k = keras.layers.Dense(c, dtype=policy, name="k")
        self.v = keras.layers.Dense(c, dtype=policy, name="v")
        self.proj = keras.layers.Dense(c, dtype=policy, name="proj")
        for layer in (self.q, self.k, self.v, self.proj):
            layer.build((None, None, c))
        self.built = True

    def call(self, x):
        shape = ops.shape(x)
        b, c = shape[0], x.shape[-1]
        h = ops.reshape(self.norm(x), (b, -1, c))
        # One head: (B, L, 1, C).
        q, k, v = (ops.expand_dims(f(h), 2) for f in (self.q, self.k, self.v))
        h = ops.squeeze(ops.dot_product_attention(q, k, v), 2)
        return x + ops.reshape(self.proj(h), shape)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        config = super().get_config()
        config.update({"num_groups": self.num_groups, "epsilon": self.epsilon})
        return config


@keras.saving.register_keras_serializable(package="keras_diffusion")
class VAE(keras.Model):
    """A KL-regularised convolutional autoencoder in the Stable Diffusion manner.

    Encoder: conv -> per level `num_res_blocks` ResNet blocks and a stride-2
    conv (except at the last level) -> mid block (ResNet, single-head
    self-attention, ResNet) -> GroupNorm, SiLU, conv to `2 * latent_channels`
    (mean and log-variance of a diagonal Gaussian posterior). The decoder
    mirrors it with `num_res_blocks + 1` blocks per level and nearest-neighbour
    upsampling. The spatial downsampling factor is
    `2 ** (len(channel_multipliers) - 1)` (4 with three levels, 8 with four,
    as in SD 1.x).

    Calling the model, `vae(images)`, returns the reconstruction (the
    posterior's sample when `training=True`, its mean otherwise).

    Training (`fit`, TensorFlow backend) minimises

        loss = reconstruction + kl_weight * kl

    with `reconstruction` the mean absolute (`"l1"`) or squared (`"l2"`) error
    per pixel value and `kl` = KL(q(z|x) || N(0, I)) summed over the latent
    elements and divided by the number of pixel values, so that `kl_weight`
    has the meaning of Stable Diffusion's (which sums both terms; SD uses
    1e-6). `fit` accepts batches of images, `(images, ...)` tuples (extra
    entries such as labels are ignored) or dicts with an `"images"` key.

    Diffusion runs on `z * scaling_factor`, which has roughly unit variance:
    `estimate_scaling_factor(dataset)` sets `scaling_factor = 1 / std(z)` from
    data (SD 1.x uses 0.18215), and it is saved in the config. `encode_latents`
    and `decode_latents` apply it.

    Args:
        input_channels: channels of the images (3 for RGB, 1 for MNIST).
        latent_channels: channels of the latent.
        base_channels: channels of the first level.
        channel_multipliers: channel multiplier of each level; one fewer
            downsampling than levels.
        num_res_blocks: ResNet blocks per encoder level (decoder: one more).
        num_groups: groups of the GroupNormalization layers (must divide
            every level's channels).
        mid_attention: whether the mid blocks have self-attention.
        dropout: dropout rate inside the ResNet blocks.
        reconstruction_loss: `"l1"` or `"l2"`.
        kl_weight: weight of the KL term.
        scaling_factor: multiplier applied to latents for diffusion.
        seed: seed of the posterior sampling during training.
        **kwargs: base model arguments (`name`, `dtype`, ...).

    Example:
    >>> vae = VAE(input_channels=1, latent_channels=4, base_channels=32,
    ...           channel_multipliers=(1, 2, 2), num_groups=8)
    >>> vae.compile(optimizer=keras.optimizers.Adam(1e-3))
    >>> vae.fit(images, epochs=1)                    # images in [-1, 1]
    >>> vae.estimate_scaling_factor(images)
    >>> posterior = vae.encode(images[:2])           # tfd.Independent(Normal)
    >>> z = posterior.sample()
    >>> reconstruction = vae.decode(z)

    References:
        Kingma & Welling, Auto-Encoding Variational Bayes, 2014.
        Rombach et al., High-Resolution Image Synthesis with Latent Diffusion
        Models, 2022.
    """

    def __init__(
        self,
        input_channels=3,
        latent_channels=4,
        base_channels=128,
        channel_multipliers=(1, 2, 4, 4),
        num_res_blocks=2,
        num_groups=32,
        mid_attention=True,
        dropout=0.0,
        reconstruction_loss="l1",
        kl_weight=1e-6,
        scaling_factor=1.0,
        seed=None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if reconstruction_loss not in RECONSTRUCTION_LOSSES:
            raise ValueError(
                "`reconstruction_loss` must be one of "
                f"{list(RECONSTRUCTION_LOSSES)}, received "
                f"reconstruction_loss={reconstruction_loss!r}"
            )
        channel_multipliers = tuple(int(m) for m in channel_multipliers)
        if not channel_multipliers or min(channel_multipliers) < 1:
            raise ValueError(
                "`channel_multipliers` must be a non-empty sequence of positive "
                f"integers, received channel_multipliers={channel_multipliers}"
            )
        for name, value in (
            ("input_channels", input_channels),
            ("latent_channels", latent_channels),
            ("base_channels", base_channels),
            ("num_res_blocks", num_res_blocks),
        ):
            if int(value) < 1:
                raise ValueError(f"`{name}` must be >= 1, received {name}={value}")
        if not float(kl_weight) >= 0:
            raise ValueError(f"`kl_weight` must be >= 0, received kl_weight={kl_weight}")
        if not float(scaling_factor) > 0:
            raise ValueError(
                f"`scaling_factor` must be > 0, received scaling_factor={scaling_factor}"
            )
        self.input_channels = int(input_channels)
        self.latent_channels = int(latent_channels)
        self.base_channels = int(base_channels)
        self.channel_multipliers = channel_multipliers
        self.num_res_blocks = int(num_res_blocks)
        self.num_groups = int(num_groups)
        self.mid_attention = bool(mid_attention)
        self.dropout = float(dropout)
        self.reconstruction_loss = reconstruction_loss
        self.kl_weight = float(kl_weight)
        self.scaling_factor = float(scaling_factor)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

        policy = self.dtype_policy
        g = self.num_groups
        widths = [self.base_channels * m for m in channel_multipliers]
        for w in widths:
            _check_groups(w, g, "levels")

        def res(c, name):
            return VAEResnetBlock(c, num_groups=g, dropout=self.dropout, dtype=policy, name=name)

        def conv(c, k, name, strides=1):
            return keras.layers.Conv2D(
                c, k, strides=strides, padding="same", dtype=policy, name=name
            )

        def mid(prefix):
            c = widths[-1]
            blocks = [res(c, f"{prefix}_mid_res_1")]
            if self.mid_attention:
                blocks.append(VAEAttentionBlock(g, dtype=policy, name=f"{prefix}_mid_attention"))
            blocks.append(res(c, f"{prefix}_mid_res_2"))
            return blocks

        # Encoder.
        self.encoder_layers = [conv(widths[0], 3, "encoder_conv_in")]
        for level, w in enumerate(widths):
            for i in range(self.num_res_blocks):
                self.encoder_layers.append(res(w, f"encoder_level_{level}_res_{i}"))
            if level < len(widths) - 1:
                self.encoder_layers.append(
                    conv(w, 3, f"encoder_level_{level}_downsample", strides=2)
                )
        self.encoder_layers += mid("encoder")
        self.encoder_norm_out = GroupNormalization(
            g, epsilon=1e-6, activation="silu", dtype=policy, name="encoder_norm_out"
        )
        self.encoder_conv_out = conv(2 * self.latent_channels, 3, "encoder_conv_out")

        # Decoder.
        self.decoder_layers = [conv(widths[-1], 3, "decoder_conv_in")] + mid("decoder")
        self._upsample_positions = set()
        for level in reversed(range(len(widths))):
            for i in range(self.num_res_blocks + 1):
                self.decoder_layers.append(res(widths[level], f"decoder_level_{level}_res_{i}"))
            if level > 0:
                self._upsample_positions.add(len(self.decoder_layers))
                self.decoder_layers.append(
                    conv(widths[level], 3, f"decoder_level_{level}_upsample")
                )
        self.decoder_norm_out = GroupNormalization(
            g, epsilon=1e-6, activation="silu", dtype=policy, name="decoder_norm_out"
        )
        self.decoder_conv_out = conv(self.input_channels, 3, "decoder_conv_out")

        self.loss_tracker = keras.metrics.Mean(name="loss")
        self.reconstruction_tracker = keras.metrics.Mean(name="reconstruction_loss")
        self.kl_tracker = keras.metrics.Mean(name="kl_loss")

    # --- properties ----------------------------------------------------------
    @property
    def downsampling_factor(self):
        """Ratio of image to latent height (and width)."""
        return 2 ** (len(self.channel_multipliers) - 1)

    def latent_shape(self, image_shape):
        """The latent shape `(h, w, latent_channels)` of an `(H, W, C)` image."""
        h, w = image_shape[0], image_shape[1]
        f = self.downsampling_factor
        return (
            None if h is None else -(-h // f),
            None if w is None else -(-w // f),
            self.latent_channels,
        )

    # --- building ------------------------------------------------------------
    def build(self, input_shape):
        input_shape = tuple(input_shape)
        if input_shape[-1] != self.input_channels:
            raise ValueError(
                f"The VAE expects images with input_channels={self.input_channels} "
                f"channels, received input shape {input_shape}"
            )
        x = keras.KerasTensor(input_shape)
        for layer in self.encoder_layers:
            x = layer(x)
        x = self.encoder_conv_out(self.encoder_norm_out(x))
        z = keras.KerasTensor(tuple(x.shape[:-1]) + (self.latent_channels,))
        self._decode_layers(z)
        self.built = True

    # --- encoder / decoder (keras.ops only: every backend) -------------------
    def _check_images(self, images):
        if len(images.shape) != 4 or images.shape[-1] != self.input_channels:
            raise ValueError(
                "`images` must have shape (batch, height, width, "
                f"{self.input_channels}), received shape {tuple(images.shape)}"
            )

    def _check_latents(self, latents, name="latents"):
        if len(latents.shape) != 4 or latents.shape[-1] != self.latent_channels:
            raise ValueError(
                f"`{name}` must have shape (batch, height, width, "
                f"{self.latent_channels}) to match the VAE's "
                f"latent_channels={self.latent_channels}, received shape "
                f"{tuple(latents.shape)}"
            )

    def encode_moments(self, images, training=None):
        """Returns `(mean, logvar)` of the posterior q(z | images).

        `logvar` is clipped to [-30, 20] as in Stable Diffusion.
        """
        x = ops.convert_to_tensor(images)
        self._check_images(x)
        if not self.built:
            self.build(x.shape)
        x = ops.cast(x, self.compute_dtype)
        for layer in self.encoder_layers:
            x = layer(x, training=training) if isinstance(layer, VAEResnetBlock) else layer(x)
        x = self.encoder_conv_out(self.encoder_norm_out(x))
        x = ops.cast(x, "float32")
        mean, logvar = ops.split(x, 2, axis=-1)
        return mean, ops.clip(logvar, LOGVAR_MIN, LOGVAR_MAX)

    def encode_mean(self, images):
        """The posterior mean (the deterministic latent), unscaled."""
        return self.encode_moments(images)[0]

    def encode(self, images):
        """The posterior q(z | images) as a `tfd.Independent(tfd.Normal)` whose
        event is one latent `(h, w, latent_channels)` (TensorFlow backend)."""
        import tensorflow_probability as tfp

        tfd = tfp.distributions
        mean, logvar = self.encode_moments(images)
        return tfd.Independent(
            tfd.Normal(loc=mean, scale=ops.exp(0.5 * logvar)),
            reinterpreted_batch_ndims=3,
        )

    def _decode_layers(self, z, training=None):
        x = z
        for i, layer in enumerate(self.decoder_layers):
            if i in self._upsample_positions:
                x = ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2)
            x = layer(x, training=training) if isinstance(layer, VAEResnetBlock) else layer(x)
        return self.decoder_conv_out(self.decoder_norm_out(x))

    def decode(self, latents, training=None):
        """Maps unscaled latents back to images (roughly in [-1, 1])."""
        z = ops.convert_to_tensor(latents)
        self._check_latents(z)
        if not self.built:
            f = self.downsampling_factor
            b, h, w, _ = z.shape
            scale = lambda n: None if n is None else n * f
            self.build((b, scale(h), scale(w), self.input_channels))
        return self._decode_layers(ops.cast(z, self.compute_dtype), training=training)

    def sample_posterior(self, mean, logvar, seed=None):
        """z = mean + exp(logvar / 2) * noise, with `keras.random`."""
        seed = self.seed_generator if seed is None else seed
        noise = keras.random.normal(ops.shape(mean), dtype=mean.dtype, seed=seed)
        return mean + ops.exp(0.5 * logvar) * noise

    def encode_latents(self, images, sample=False, seed=None):
        """Latents for diffusion: `scaling_factor * z`, with z the posterior
        mean (`sample=False`) or a posterior sample."""
        mean, logvar = self.encode_moments(images)
        z = self.sample_posterior(mean, logvar, seed) if sample else mean
        return z * self.scaling_factor

    def decode_latents(self, latents):
        """Images from diffusion latents: `decode(latents / scaling_factor)`."""
        z = ops.convert_to_tensor(latents)
        self._check_latents(z)
        return self.decode(ops.cast(z, "float32") / self.scaling_factor)

    def call(self, images, training=None):
        mean, logvar = self.encode_moments(images, training=training)
        z = self.sample_posterior(mean, logvar) if training else mean
        return self.decode(z, training=training)

    def compute_output_shape(self, input_shape):
        return tuple(input_shape)

    # --- losses ---------------------------------------------------------------
    def compute_vae_losses(self, images, training=False):
        """Returns `(loss, reconstruction, kl)` for a batch of images."""
        images = ops.convert_to_tensor(images)
        mean, logvar = self.encode_moments(images, training=training)
        z = self.sample_posterior(mean, logvar)
        reconstruction = ops.cast(self.decode(z, training=training), "float32")
        target = ops.cast(images, "float32")
        error = reconstruction - target
        if self.reconstruction_loss == "l1":
            rec = ops.mean(ops.abs(error))
        else:
            rec = ops.mean(ops.square(error))
        # KL(N(m, s^2) || N(0, 1)) = (m^2 + s^2 - 1 - log s^2) / 2.
        kl = 0.5 * (ops.square(mean) + ops.exp(logvar) - 1.0 - logvar)
        pixels_per_example = math.prod(images.shape[1:])
        kl = ops.mean(ops.sum(ops.reshape(kl, (ops.shape(kl)[0], -1)), axis=1))
        kl = kl / pixels_per_example
        return rec + self.kl_weight * kl, rec, kl

    @staticmethod
    def _images_from_batch(data):
        if isinstance(data, dict):
            if "images" not in data:
                raise ValueError(
                    "A dict batch for the VAE must have an 'images' key, "
                    f"received keys {sorted(data)}"
                )
            return data["images"]
        x, _, _ = keras.utils.unpack_x_y_sample_weight(data)
        if isinstance(x, dict):
            return VAE._images_from_batch(x)
        return x

    @property
    def metrics(self):
        return [self.loss_tracker, self.reconstruction_tracker, self.kl_tracker]

    def _update_metrics(self, loss, rec, kl):
        self.loss_tracker.update_state(loss)
        self.reconstruction_tracker.update_state(rec)
        self.kl_tracker.update_state(kl)
        return {m.name: m.result() for m in self.metrics}

    def fit(self, x=None, y=None, *args, **kwargs):
        return super().fit(x, y, *args, **without_shuffle_warning(x, args, kwargs))

    def train_step(self, data):
        """One optimisation step (TensorFlow backend)."""
        if keras.backend.backend() != "tensorflow":
            raise NotImplementedError(
                "VAE.fit needs the TensorFlow backend, the current backend is "
                f"{keras.backend.backend()!r}"
            )
        import tensorflow as tf

        images = self._images_from_batch(data)
        with tf.GradientTape() as tape:
            loss, rec, kl = self.compute_vae_losses(images, training=True)
            scaled = self.optimizer.scale_loss(loss) if self.optimizer else loss
        grads = tape.gradient(scaled, self.trainable_variables)
        self.optimizer.apply(grads, self.trainable_variables)
        return self._update_metrics(loss, rec, kl)

    def test_step(self, data):
        images = self._images_from_batch(data)
        return self._update_metrics(*self.compute_vae_losses(images, training=False))

    # --- scaling factor ---------------------------------------------------------
    def estimate_scaling_factor(self, dataset, num_batches=None, sample=True, batch_size=32):
        """Sets `scaling_factor = 1 / std(z)` from data and returns it.

        The standard deviation is taken over every element of the latents of
        the images in `dataset` (posterior samples, as in Stable Diffusion, or
        the posterior means with `sample=False`), around their global mean.

        Args:
            dataset: a `tf.data.Dataset` or iterable of image batches (or
                `(images, ...)` tuples / `{"images": ...}` dicts), or an
                array of images.
            num_batches: use at most this many batches (default: all).
            sample: whether to use posterior samples rather than means.
            batch_size: batch size when `dataset` is an array.

        Returns:
            The new scaling factor (a Python float).
        """
        import numpy as np

        if hasattr(dataset, "shape") and len(dataset.shape) == 4:
            arr = dataset
            dataset = (arr[i : i + batch_size] for i in range(0, len(arr), batch_size))
        count, total, total_sq = 0, 0.0, 0.0
        for i, batch in enumerate(dataset):
            if num_batches is not None and i >= num_batches:
                break
            images = self._images_from_batch(batch)
            mean, logvar = self.encode_moments(images)
            z = self.sample_posterior(mean, logvar) if sample else mean
            z = np.asarray(ops.convert_to_numpy(z), dtype=np.float64)
            count += z.size
            total += z.sum()
            total_sq += np.square(z).sum()
        if count == 0:
            raise ValueError(
                "`dataset` gave no images to estimate the scaling factor from"
            )
        mean = total / count
        std = math.sqrt(max(total_sq / count - mean**2, 0.0))
        if not std > 0:
            raise ValueError(
                f"The latents have zero standard deviation (std={std}); cannot "
                "estimate a scaling factor"
            )
        self.scaling_factor = 1.0 / std
        return self.scaling_factor

    # --- serialization ------------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "input_channels": self.input_channels,
                "latent_channels": self.latent_channels,
                "base_channels": self.base_channels,
                "channel_multipliers": list(self.channel_multipliers),
                "num_res_blocks": self.num_res_blocks,
                "num_groups": self.num_groups,
                "mid_attention": self.mid_attention,
                "dropout": self.dropout,
                "reconstruction_loss": self.reconstruction_loss,
                "kl_weight": self.kl_weight,
                "scaling_factor": self.scaling_factor,
                "seed": self.seed,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)
