"""Codecs: the map between data (pixels) and the space the denoiser works in.

A diffusion model trains and samples in its codec's space: `PixelCodec` is
the identity (pixel-space diffusion), `VAECodec` a frozen autoencoder's
latents (latent diffusion, Rombach et al., 2022). The generation runner and
the export only call `decode`; `fit`, img2img and inpainting call `encode`,
`encode_condition` and `mask`.
"""

from keras import ops

from keras_diffusion.pipelines.image_to_image import resize_to
from keras_diffusion.utils.images import to_float

CONDITION_ENCODINGS = ("none", "resize", "vae")


class PixelCodec:
    """The identity codec of pixel-space diffusion.

    Example:
    >>> codec = PixelCodec()
    >>> codec.sample_shape((28, 28, 1))
    (28, 28, 1)
    """

    is_latent = False

    def sample_shape(self, data_shape):
        """The denoiser's sample shape for a data shape (without batch)."""
        return tuple(int(d) for d in data_shape)

    def data_shape(self, sample_shape):
        return tuple(int(d) for d in sample_shape)

    def encode(self, images, sample=False, seed=None):
        return to_float(images)

    def decode(self, x):
        return ops.cast(x, "float32")

    def encode_condition(self, condition, sample_shape=None):
        return to_float(condition)

    def condition_shape(self, shape, sample_shape):
        return tuple(int(d) for d in shape)

    def mask(self, mask):
        return mask


class VAECodec:
    """A frozen autoencoder's latent space.

    Args:
        vae: an object with `encode_latents(images, sample=False, seed=None)`,
            `decode_latents(z)`, `latent_shape(pixel_shape)`,
            `latent_channels`, `input_channels` and `downsampling_factor`
            (`keras_diffusion.models.VAE`, the Stable Diffusion adapter).
        condition_encoding: how a pixel-level image condition becomes the
            denoiser's: "none" (used as given, already latent-sized),
            "resize" (block-averaged or bilinearly resized to the latent
            grid) or "vae" (the first `input_channels` channels encoded, the
            rest, e.g. a mask, resized).

    Example:
    >>> codec = VAECodec(vae)
    >>> z = codec.encode(images)          # (B, h, w, latent_channels)
    >>> pixels = codec.decode(z)
    """

    is_latent = True

    def __init__(self, vae, condition_encoding="none"):
        for attr in ("encode_latents", "decode_latents", "latent_shape", "latent_channels"):
            if not hasattr(vae, attr):
                raise ValueError(
                    f"`vae` must have `{attr}` (like keras_diffusion.models.VAE), "
                    f"received {type(vae).__name__}"
                )
        if condition_encoding not in CONDITION_ENCODINGS:
            raise ValueError(
                f"`condition_encoding` must be one of {list(CONDITION_ENCODINGS)}, "
                f"received condition_encoding={condition_encoding!r}"
            )
        self.vae = vae
        self.condition_encoding = condition_encoding

    @property
    def factor(self):
        return int(self.vae.downsampling_factor)

    def check_pixel_shape(self, pixel_shape):
        pixel_shape = tuple(int(d) for d in pixel_shape)
        f = self.factor
        channels = getattr(self.vae, "input_channels", None)
        if (
            len(pixel_shape) != 3
            or pixel_shape[0] % f
            or pixel_shape[1] % f
            or (channels is not None and pixel_shape[-1] != channels)
        ):
            raise ValueError(
                f"`images` of shape {pixel_shape} (without batch) do not fit the VAE: "
                f"expected (H, W, {channels}) with H and W multiples of its "
                f"downsampling factor {f}"
            )
        return pixel_shape

    def sample_shape(self, data_shape):
        return tuple(int(d) for d in self.vae.latent_shape(self.check_pixel_shape(data_shape)))

    def data_shape(self, sample_shape):
        h, w = sample_shape[:2]
        return (h * self.factor, w * self.factor, int(self.vae.input_channels))

    def check_latent_shape(self, shape, expected=None):
        shape = tuple(int(d) for d in shape)
        channels = int(self.vae.latent_channels)
        if len(shape) != 3 or shape[-1] != channels or (
            expected is not None and shape != tuple(expected)
        ):
            raise ValueError(
                f"`latents` of shape {shape} (without batch) do not match the VAE: "
                f"expected {tuple(expected) if expected else f'(h, w, {channels})'} "
                f"(latent_channels={channels}, downsampling factor {self.factor})"
            )
        return shape

    def encode(self, images, sample=False, seed=None):
        """Pixels in [-1, 1] (uint8 rescaled) -> scaled latents, no gradient."""
        images = to_float(images)
        if sample:
            z = self.vae.encode_latents(images, sample=True, seed=seed)
        else:
            z = self.vae.encode_latents(images)
        return ops.stop_gradient(ops.cast(z, "float32"))

    def decode(self, x):
        """Latents -> images (float32, not clipped)."""
        return ops.cast(self.vae.decode_latents(ops.cast(x, "float32")), "float32")

    def condition_shape(self, shape, sample_shape):
        """The denoiser's condition shape for a pixel-level one."""
        shape = tuple(int(d) for d in shape)
        if self.condition_encoding == "none":
            return shape
        h, w = sample_shape[:2]
        if self.condition_encoding == "resize":
            return (h, w, shape[-1])
        channels = int(self.vae.input_channels)
        if shape[-1] < channels:
            raise ValueError(
                f"condition_encoding='vae' needs a `condition` with at least the "
                f"VAE's {channels} image channels, received shape {shape}"
            )
        return (h, w, int(self.vae.latent_channels) + shape[-1] - channels)

    def encode_condition(self, condition, sample_shape=None):
        """A pixel-level image condition -> the denoiser's condition."""
        condition = to_float(condition)
        if len(condition.shape) != 4:
            raise ValueError(
                "`condition` must have shape (batch, height, width, channels), "
                f"received shape {tuple(condition.shape)}"
            )
        if self.condition_encoding == "none":
            return condition
        h, w = int(condition.shape[1]) // self.factor, int(condition.shape[2]) // self.factor
        if sample_shape is not None:
            h, w = sample_shape[:2]
        if self.condition_encoding == "resize":
            return resize_to(condition, (h, w))
        channels = int(self.vae.input_channels)
        if condition.shape[-1] < channels or (h * self.factor, w * self.factor) != tuple(
            condition.shape[1:3]
        ):
            raise ValueError(
                "condition_encoding='vae' needs a `condition` of shape (batch, "
                f"{h * self.factor}, {w * self.factor}, >= {channels}), received shape "
                f"{tuple(condition.shape)}"
            )
        z = self.encode(condition[..., :channels])
        if condition.shape[-1] == channels:
            return z
        rest = resize_to(condition[..., channels:], (h, w))
        return ops.concatenate([z, rest], axis=-1)

    def mask(self, mask):
        """A pixel mask `(B|1, H, W, ·)` (1 = generate) -> the latent grid:
        max over each factor x factor block, one channel."""
        mask = ops.cast(ops.convert_to_tensor(mask), "float32")
        mask = ops.max(mask, axis=-1, keepdims=True)
        h, w = int(mask.shape[1]) // self.factor, int(mask.shape[2]) // self.factor
        return resize_to(mask, (h, w), reduce="max")
