"""LatentDiffusionModel: a DiffusionModel whose codec is a frozen VAE."""

import keras
import numpy as np
from keras import ops

from keras_diffusion.conditioning import parse_batch
from keras_diffusion.models.codecs import VAECodec
from keras_diffusion.models.diffusion_model import DiffusionModel
from keras_diffusion.utils import saving


def _freeze(model):
    """Freezes a model and every sublayer and variable (`trainable = False` on
    the model alone does not reach sublayers kept in lists once its own flag
    is already False, as after deserialization)."""
    model.trainable = False
    for layer in model._flatten_layers(include_self=False, recursive=True):
        layer.trainable = False
    for variable in model.weights:
        variable.trainable = False


@keras.saving.register_keras_serializable(package="keras_diffusion")
class LatentDiffusionModel(DiffusionModel):
    """Latent diffusion (Rombach et al., 2022): a `DiffusionModel` with a VAE codec.

    The diffusion model runs on the VAE's latents `vae.encode_latents(x)`
    (the posterior mean, or a posterior sample with `encode_sample=True`,
    times `vae.scaling_factor`); `generate` samples latents with any sampler
    and decodes them in the same compiled function to images in [-1, 1].
    Everything of `DiffusionModel` applies (prediction types, weightings,
    guidance, EMA, `.keras` saving with the VAE inside, img2img, inpainting,
    export). `image_shape` is the *latent* shape (what the denoiser sees),
    `pixel_shape` the images'.

    ```python
    vae = keras_diffusion.models.VAE(...)     # trained, scaling_factor set
    model = keras_diffusion.LatentDiffusionModel(vae, text_encoder=conditioner)
    model.fit(dataset, epochs=10)             # batches of pixels: encoded on the fly
    images = model.generate(text=["a handwritten seven"], seed=0)
    ```

    **Data.** The data of `DiffusionModel` (pixels, encoded on the fly by
    the frozen VAE), or cached latents: dicts with `"latents"` instead of
    `"images"`, such as `encode_dataset(ds)` returns.

    **Image conditions** are given at pixel resolution and encoded by
    `condition_encoding` (see `models.codecs.VAECodec`): "none", "resize"
    (super-resolution from a low-resolution image) or "vae" (SD's inpainting
    model, with `pipelines.inpainting_condition(images, mask)`).

    Works with `keras_diffusion.models.VAE` and with the Stable Diffusion
    adapter `pretrained.stable_diffusion.StableDiffusionVAE`.

    Args:
        vae: the autoencoder (frozen: `trainable` is set to False), or the path
            of a saved `.keras` VAE.
        denoiser: the latent-space denoiser; `None` builds a UNet sized from
            the latent shape (and the text encoder's context).
        encode_sample: train on posterior samples (`True`, as Stable
            Diffusion) rather than posterior means.
        condition_encoding: "none", "resize" or "vae".
        pixel_shape: the image shape `(H, W, C)` (inferred from data when
            `None`); H and W must be multiples of the VAE's downsampling
            factor.
        decode_batch_size: images decoded per VAE call in `decode`.
        **kwargs: `DiffusionModel` arguments.

    Example:
    >>> vae = VAE(input_channels=1, latent_channels=4, base_channels=32,
    ...           channel_multipliers=(1, 2, 2), num_groups=8)   # trained
    >>> model = LatentDiffusionModel(vae, prediction="v", num_classes=10)
    >>> model.fit(ds, epochs=5)
    >>> digits = model.generate(labels=[7, 7], guidance_scale=3.0, seed=0)

    References:
        Rombach et al., High-Resolution Image Synthesis with Latent Diffusion
        Models, 2022.
    """

    def __init__(
        self,
        vae=None,
        denoiser=None,
        encode_sample=False,
        condition_encoding="none",
        pixel_shape=None,
        decode_batch_size=64,
        **kwargs,
    ):
        if vae is None:
            raise ValueError(
                "LatentDiffusionModel needs a trained `vae` (e.g. "
                "keras_diffusion.models.VAE or pretrained.stable_diffusion."
                "StableDiffusionVAE, or the path of a saved .keras VAE), received vae=None"
            )
        if isinstance(vae, str):
            vae = saving.load_model(vae, compile=False)
        if isinstance(vae, dict):
            vae = keras.saving.deserialize_keras_object(vae)
        codec = VAECodec(vae, condition_encoding)
        if int(decode_batch_size) <= 0:
            raise ValueError(
                f"`decode_batch_size` must be positive, received decode_batch_size="
                f"{decode_batch_size}"
            )
        super().__init__(denoiser=denoiser, **kwargs)
        _freeze(vae)
        self.vae = vae
        self.codec = codec
        self.encode_sample = bool(encode_sample)
        self.condition_encoding = condition_encoding
        self.decode_batch_size = int(decode_batch_size)
        self.pixel_shape = None
        if pixel_shape is not None:
            self._set_pixel_shape(pixel_shape)

    @property
    def downsampling_factor(self):
        return self.codec.factor

    def _set_pixel_shape(self, pixel_shape):
        pixel_shape = self.codec.check_pixel_shape(pixel_shape)
        if self.pixel_shape is not None and pixel_shape != self.pixel_shape:
            raise ValueError(
                f"`images` of shape {pixel_shape} (without batch) do not match the "
                f"model's pixel_shape={self.pixel_shape}"
            )
        latent = self.codec.sample_shape(pixel_shape)
        if self.image_shape is not None and latent != self.image_shape:
            raise ValueError(
                f"pixel_shape={pixel_shape} gives latents of shape {latent}, which do "
                f"not match the model's latent image_shape={self.image_shape}"
            )
        self.pixel_shape = pixel_shape
        self.image_shape = latent

    def _build_shapes(self, input_shape):
        images = None
        if isinstance(input_shape, dict):
            images = input_shape.get("images")
            if input_shape.get("latents") is not None:
                self.codec.check_latent_shape(input_shape["latents"][1:], self.image_shape)
        elif input_shape is not None:
            images = input_shape
        if images is not None:
            self._set_pixel_shape(images[1:])
        super()._build_shapes(input_shape)

    def _build_codec(self):
        if self.pixel_shape is None:
            self.pixel_shape = self.codec.data_shape(self.image_shape)
        if not self.vae.built:
            self.vae.build((None,) + tuple(self.pixel_shape))
        _freeze(self.vae)

    def get_build_config(self):
        if self.image_shape is None:
            return None
        return {"image_shape": list(self.image_shape), "pixel_shape": list(self.pixel_shape)}

    def build_from_config(self, config):
        if config and config.get("pixel_shape") is not None and self.pixel_shape is None:
            self.pixel_shape = tuple(config["pixel_shape"])
        super().build_from_config(config)

    # ------------------------------------------------------------------
    # Encoding and decoding
    # ------------------------------------------------------------------
    def _encode_images(self, images, training):
        return self.encode_images(images, sample=self.encode_sample and training)

    def _check_latents(self, shape):
        self.codec.check_latent_shape(shape, self.image_shape)

    def encode_images(self, images, sample=False, seed=None):
        """Pixels `(B, *pixel_shape)` in [-1, 1] (uint8 rescaled) -> diffusion
        latents `(B, *image_shape)` (scaled, no gradient)."""
        shape = tuple(images.shape[1:])
        if self.pixel_shape is not None and shape != tuple(self.pixel_shape):
            raise ValueError(
                f"`images` of shape {shape} (without batch) do not match the model's "
                f"pixel_shape={self.pixel_shape}"
            )
        return self.codec.encode(
            images, sample=sample, seed=self.seed_generator if seed is None else seed
        )

    def decode_to_images(self, latents):
        """Diffusion latents -> images (float32, not clipped)."""
        z = ops.cast(ops.convert_to_tensor(latents), "float32")
        self._check_latents(tuple(z.shape[1:]))
        return self.codec.decode(z)

    def encode_condition(self, condition):
        """A pixel-level image condition -> the denoiser's condition."""
        return self.codec.encode_condition(condition, self.image_shape)

    def latent_mask(self, mask):
        """A pixel mask (1 = generate) -> the latent grid (block max)."""
        return self.codec.mask(mask)

    def decode(self, latents, batch_size=None):
        """Decodes latents to images in batches (numpy float32, not clipped)."""
        latents = np.asarray(ops.convert_to_numpy(latents), "float32")
        self._check_latents(latents.shape[1:])
        return super().decode(latents, batch_size=int(batch_size or self.decode_batch_size))

    def encode_dataset(self, dataset, batch_size=32, cache=True):
        """Cached latents for `fit`: pixels -> `{"latents": ..., ...}`.

        Args:
            dataset: a `tf.data.Dataset` of batches (images, `(images,
                labels)` or dicts with "images"), or a numpy array of images,
                or a dict of arrays with "images".
            batch_size: batch size of the encoder for arrays.
            cache: for a dataset, `.cache()` the encoded batches (encoded
                once, in the first epoch).

        Returns:
            A dataset of dicts `{"latents", "labels"?, "text"?, "condition"?}`
            for a dataset; a dict of numpy arrays for arrays. Latents are the
            posterior means (times the scaling factor); image conditions are
            encoded with `condition_encoding`.
        """
        def encode(data):
            data = dict(parse_batch(data))
            data["latents"] = self.encode_images(data.pop("images"))
            if data.get("condition") is not None:
                data["condition"] = self.encode_condition(data["condition"])
            return data

        if hasattr(dataset, "element_spec"):
            import tensorflow as tf

            batch, _ = self._peek(dataset)
            self._check_first_batch(batch)

            def encode_element(*element):
                return encode(element[0] if len(element) == 1 else element)

            encoded = dataset.map(tf.autograph.experimental.do_not_convert(encode_element))
            return encoded.cache() if cache else encoded
        data = dataset if isinstance(dataset, dict) else {"images": dataset}
        if "images" not in data:
            raise ValueError(
                f"`dataset` as a dict needs the key 'images', received keys {sorted(data)}"
            )
        if not self.built:
            self._check_first_batch({k: np.asarray(v) for k, v in data.items()})
        out = {k: np.asarray(v) for k, v in data.items() if k not in ("images", "condition")}
        parts = []
        images = np.asarray(data["images"])
        for start in range(0, len(images), int(batch_size)):
            chunk = {"images": images[start : start + int(batch_size)]}
            if data.get("condition") is not None:
                chunk["condition"] = np.asarray(data["condition"])[start : start + int(batch_size)]
            parts.append({k: np.asarray(ops.convert_to_numpy(v)) for k, v in encode(chunk).items()})
        out["latents"] = np.concatenate([p["latents"] for p in parts]).astype("float32")
        if data.get("condition") is not None:
            out["condition"] = np.concatenate([p["condition"] for p in parts]).astype("float32")
        return out

    # ------------------------------------------------------------------
    # Serialization
    # ------------------------------------------------------------------
    def get_config(self):
        config = super().get_config()
        config.pop("image_shape", None)
        config.pop("condition_shape", None)
        config.update(
            {
                "vae": keras.saving.serialize_keras_object(self.vae),
                "encode_sample": self.encode_sample,
                "condition_encoding": self.condition_encoding,
                "pixel_shape": None if self.pixel_shape is None else list(self.pixel_shape),
                "decode_batch_size": self.decode_batch_size,
                "latent_condition_shape": None
                if self.condition_shape is None
                else list(self.condition_shape),
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        condition_shape = config.pop("latent_condition_shape", None)
        for key in ("vae", "denoiser", "text_encoder", "schedule", "dtype"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(condition_shape=condition_shape, **config)
