"""LatentDiffusionModel: a DiffusionModel in the latent space of a frozen VAE.

Like `DiffusionModel`, `train_step` is TensorFlow-only; encoding, decoding
and sampling use `keras.ops`.
"""

import keras
import numpy as np
from keras import ops

from keras_diffusion import image_to_image
from keras_diffusion.models.diffusion_model import DiffusionModel
from keras_diffusion.models.diffusion_model import _split_data
from keras_diffusion.utils.images import to_float

CONDITION_ENCODINGS = ("none", "resize", "vae")


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
    """Latent diffusion (Rombach et al., 2022): a frozen VAE + a DiffusionModel.

    The diffusion model runs on the VAE's latents `vae.encode_latents(x)`
    (the posterior mean, or a posterior sample with `encode_sample=True`,
    times `vae.scaling_factor`); `generate` samples latents with any sampler
    (guidance, conditions as for `DiffusionModel`) and decodes them with
    `vae.decode_latents` to images in [-1, 1]. Everything of `DiffusionModel`
    applies: prediction types, weightings, time distributions, classifier-free
    guidance dropout, EMA, `.keras` saving (the VAE is saved inside the model).
    `image_shape` is the *latent* shape (what the denoiser sees), and
    `pixel_shape` the images'.

    ```python
    vae = keras_diffusion.models.VAE(...)     # trained, scaling_factor set
    model = keras_diffusion.LatentDiffusionModel(vae, text_encoder=conditioner)
    model.fit(dataset, epochs=10)             # batches of pixels: encoded on the fly
    images = model.generate(text=["a handwritten seven"], seed=0)
    ```

    **Data.** `fit` takes the same data as `DiffusionModel` (pixels, encoded
    on the fly by the frozen VAE), or cached latents: batches that are dicts
    with a `"latents"` key instead of `"images"`, such as
    `model.encode_dataset(ds)` returns (latents of the wrong shape for the VAE
    raise a ValueError).

    **Image conditions** (`"condition"`, concatenated on channels by the
    UNet) are given at pixel resolution and turned into a latent-resolution
    condition by `condition_encoding`: `"none"` (used as given: already
    latent-sized), `"resize"` (block-averaged / bilinearly resized to the
    latent grid: super-resolution from a low-resolution image, as in SD's x4
    upscaler) or `"vae"` (the first `vae.input_channels` channels encoded
    with the VAE, the others, e.g. a mask, resized: SD's inpainting model,
    with `image_to_image.inpainting_condition(images, mask)`).

    **Image-to-image.** `img2img(images, strength)` and `inpaint(images,
    mask)` (see `keras_diffusion.image_to_image`) with every sampler.

    Works with `keras_diffusion.models.VAE` and with the Stable Diffusion
    adapter `pretrained.stable_diffusion.StableDiffusionVAE` (any object with
    `encode_latents`, `decode_latents`, `latent_shape`, `latent_channels`,
    `input_channels`, `downsampling_factor`).

    Args:
        vae: the autoencoder (frozen: `trainable` is set to False), or the path
            of a saved `.keras` VAE.
        denoiser: the latent-space denoiser; `None` builds a UNet sized from
            the latent shape.
        encode_sample: train on posterior samples (`True`, as Stable
            Diffusion) rather than posterior means.
        condition_encoding: "none", "resize" or "vae" (see above).
        pixel_shape: the image shape `(H, W, C)` (inferred from data when
            `None`); H and W must be multiples of the VAE's downsampling
            factor.
        decode_batch_size: images decoded per VAE call in `generate`.
        **kwargs: `DiffusionModel` arguments (`schedule`, `prediction`,
            `weighting`, `num_classes`, `text_encoder`, `condition_dropout`,
            `seed`, ...). `image_shape` (the latent shape) and
            `condition_shape` (latent-level) are derived.

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
            vae = keras.saving.load_model(vae, compile=False)
        if isinstance(vae, dict):
            vae = keras.saving.deserialize_keras_object(vae)
        for attr in ("encode_latents", "decode_latents", "latent_shape", "latent_channels"):
            if not hasattr(vae, attr):
                raise ValueError(
                    f"`vae` must have `{attr}` (like keras_diffusion.models.VAE), received "
                    f"{type(vae).__name__}"
                )
        if condition_encoding not in CONDITION_ENCODINGS:
            raise ValueError(
                f"`condition_encoding` must be one of {list(CONDITION_ENCODINGS)}, "
                f"received condition_encoding={condition_encoding!r}"
            )
        if int(decode_batch_size) <= 0:
            raise ValueError(
                f"`decode_batch_size` must be positive, received decode_batch_size="
                f"{decode_batch_size}"
            )
        super().__init__(denoiser=denoiser, **kwargs)
        _freeze(vae)
        self.vae = vae
        self.encode_sample = bool(encode_sample)
        self.condition_encoding = condition_encoding
        self.decode_batch_size = int(decode_batch_size)
        self.pixel_shape = None
        if pixel_shape is not None:
            self._set_pixel_shape(tuple(int(d) for d in pixel_shape))
        self._decode_fn = None

    # ------------------------------------------------------------------
    # Shapes
    # ------------------------------------------------------------------
    @property
    def downsampling_factor(self):
        return int(self.vae.downsampling_factor)

    def _set_pixel_shape(self, pixel_shape):
        f = self.downsampling_factor
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
        if self.pixel_shape is not None and pixel_shape != self.pixel_shape:
            raise ValueError(
                f"`images` of shape {pixel_shape} (without batch) do not match the "
                f"model's pixel_shape={self.pixel_shape}"
            )
        self.pixel_shape = pixel_shape
        latent = tuple(int(d) for d in self.vae.latent_shape(pixel_shape))
        if self.image_shape is not None and latent != self.image_shape:
            raise ValueError(
                f"pixel_shape={pixel_shape} gives latents of shape {latent}, which do "
                f"not match the model's latent image_shape={self.image_shape}"
            )
        self.image_shape = latent

    def _check_latent_shape(self, shape):
        shape = tuple(int(d) for d in shape)
        expected = self.image_shape
        if expected is None and self.pixel_shape is not None:
            expected = tuple(self.vae.latent_shape(self.pixel_shape))
        channels = int(self.vae.latent_channels)
        if len(shape) != 3 or shape[-1] != channels or (
            expected is not None and shape != tuple(expected)
        ):
            raise ValueError(
                f"`latents` of shape {shape} (without batch) do not match the VAE: "
                f"expected {tuple(expected) if expected else f'(h, w, {channels})'} "
                f"(latent_channels={channels}, downsampling factor "
                f"{self.downsampling_factor})"
            )
        return shape

    def _latent_condition_shape(self, shape):
        """The denoiser's condition shape for a pixel-level condition shape."""
        shape = tuple(int(d) for d in shape)
        if self.condition_encoding == "none":
            return shape
        h, w = self.image_shape[:2]
        if self.condition_encoding == "resize":
            return (h, w, shape[-1])
        channels = int(self.vae.input_channels)
        if shape[-1] < channels:
            raise ValueError(
                f"condition_encoding='vae' needs a `condition` with at least the "
                f"VAE's {channels} image channels, received shape {shape}"
            )
        return (h, w, int(self.vae.latent_channels) + shape[-1] - channels)

    def build(self, input_shape=None):
        """Builds from pixel shapes (`{"images": ...}`, an image batch shape),
        latent shapes (`{"latents": ...}`, `{"x_t": ...}`) or `None`."""
        condition = context = None
        latent_input = False
        if isinstance(input_shape, dict):
            condition = input_shape.get("condition")
            context = input_shape.get("context")
            if input_shape.get("latents") is not None or input_shape.get("x_t") is not None:
                latent_input = True
                shape = input_shape.get("latents", input_shape.get("x_t"))
                latent = self._check_latent_shape(shape[1:])
                if self.image_shape is None:
                    self.image_shape = latent
            elif input_shape.get("images") is not None:
                self._set_pixel_shape(tuple(input_shape["images"][1:]))
        elif input_shape is not None:
            self._set_pixel_shape(tuple(input_shape[1:]))
        if self.image_shape is None:
            raise ValueError(
                "Cannot build LatentDiffusionModel without a data shape: pass "
                "`pixel_shape=` or call fit() on data."
            )
        if self.pixel_shape is None:
            f = self.downsampling_factor
            h, w = self.image_shape[:2]
            self.pixel_shape = (h * f, w * f, int(self.vae.input_channels))
        if not self.vae.built:
            self.vae.build((None,) + self.pixel_shape)
        _freeze(self.vae)
        if condition is not None and self.condition_shape is None:
            if latent_input:
                self.condition_shape = tuple(int(d) for d in condition[1:])
            else:
                self.condition_shape = self._latent_condition_shape(condition[1:])
        shapes = {"images": (None,) + self.image_shape}
        if context is not None:
            shapes["context"] = tuple(context)
        super().build(shapes)

    def get_build_config(self):
        if self.image_shape is None:
            return None
        return {"image_shape": list(self.image_shape), "pixel_shape": list(self.pixel_shape)}

    def build_from_config(self, config):
        if config and config.get("pixel_shape") is not None and self.pixel_shape is None:
            self.pixel_shape = tuple(config["pixel_shape"])
        super().build_from_config(config)

    def _maybe_build_from_data(self, x, y=None):
        # Built already: `_prepare_batch` checks the shapes (and peeking at a
        # cached dataset would discard its partial cache).
        if isinstance(x, dict) and "latents" in x:
            self._check_latent_shape(tuple(x["latents"].shape[1:]))
        if self.built or x is None:
            return
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
        if isinstance(batch, dict) and "latents" in batch:
            self._check_latent_shape(tuple(batch["latents"].shape[1:]))
            shapes = {"latents": tuple(batch["latents"].shape)}
        else:
            images, extras = _split_data(batch)
            if len(images.shape) != 4:
                raise ValueError(
                    "`images` must have shape (batch, height, width, channels), "
                    f"received shape {tuple(images.shape)}"
                )
            shape = tuple(int(d) for d in images.shape[1:])
            if self.pixel_shape is not None and shape != self.pixel_shape:
                raise ValueError(
                    f"`images` of shape {shape} (without batch) do not match the "
                    f"model's pixel_shape={self.pixel_shape}"
                )
            shapes = {"images": tuple(images.shape)}
            batch = extras
        if not self.built:
            for key in ("condition", "context"):
                if isinstance(batch, dict) and batch.get(key) is not None:
                    shapes[key] = tuple(batch[key].shape)
            self.build(shapes)

    # ------------------------------------------------------------------
    # Encoding and decoding (keras.ops)
    # ------------------------------------------------------------------
    def encode_images(self, images, sample=False, seed=None):
        """Pixels `(B, *pixel_shape)` in [-1, 1] (uint8 rescaled) -> diffusion
        latents `(B, *image_shape)` (scaled, no gradient)."""
        images = to_float(images)
        shape = tuple(images.shape[1:])
        if self.pixel_shape is not None and shape != tuple(self.pixel_shape):
            raise ValueError(
                f"`images` of shape {shape} (without batch) do not match the model's "
                f"pixel_shape={self.pixel_shape}"
            )
        if sample:
            z = self.vae.encode_latents(
                images, sample=True, seed=self.seed_generator if seed is None else seed
            )
        else:
            z = self.vae.encode_latents(images)
        return ops.stop_gradient(ops.cast(z, "float32"))

    def decode_to_images(self, latents):
        """Diffusion latents -> images (float32, not clipped)."""
        z = ops.cast(ops.convert_to_tensor(latents), "float32")
        self._check_latent_shape(tuple(z.shape[1:]))
        return ops.cast(self.vae.decode_latents(z), "float32")

    def encode_condition(self, condition):
        """A pixel-level image condition -> the denoiser's condition
        (`condition_encoding`)."""
        condition = to_float(condition)
        if len(condition.shape) != 4:
            raise ValueError(
                "`condition` must have shape (batch, height, width, channels), "
                f"received shape {tuple(condition.shape)}"
            )
        if self.condition_encoding == "none":
            return condition
        h, w = self.image_shape[:2]
        if self.condition_encoding == "resize":
            return image_to_image.resize_to(condition, (h, w))
        channels = int(self.vae.input_channels)
        if condition.shape[-1] < channels or tuple(condition.shape[1:3]) != tuple(
            self.pixel_shape[:2]
        ):
            raise ValueError(
                "condition_encoding='vae' needs a `condition` of shape (batch, "
                f"{self.pixel_shape[0]}, {self.pixel_shape[1]}, >= {channels}), "
                f"received shape {tuple(condition.shape)}"
            )
        z = ops.stop_gradient(ops.cast(self.vae.encode_latents(condition[..., :channels]), "float32"))
        if condition.shape[-1] == channels:
            return z
        rest = image_to_image.resize_to(condition[..., channels:], (h, w))
        return ops.concatenate([z, rest], axis=-1)

    def latent_mask(self, mask):
        """A pixel mask `(B|1, H, W, ·)` (1 = generate) -> the latent grid:
        max over each factor x factor block, one channel."""
        mask = ops.cast(ops.convert_to_tensor(mask), "float32")
        mask = ops.max(mask, axis=-1, keepdims=True)
        return image_to_image.resize_to(mask, self.image_shape[:2], reduce="max")

    def _latent_batch(self, data, training):
        """A data batch (pixels or cached latents) -> a latent data dict."""
        if isinstance(data, dict) and "latents" in data:
            unknown = sorted(k for k in data if k not in ("latents", "labels", "text", "context", "condition"))
            if unknown or "images" in data:
                raise ValueError(
                    "A cached latent batch has the key 'latents' and may have "
                    f"['labels', 'text', 'context', 'condition']; received keys {sorted(data)}"
                )
            latents = ops.cast(data["latents"], "float32")
            self._check_latent_shape(tuple(latents.shape[1:]))
            return {"images": latents, **{k: v for k, v in data.items() if k != "latents"}}
        images, extras = _split_data(data)
        latents = self.encode_images(images, sample=self.encode_sample and training)
        if extras.get("condition") is not None:
            extras["condition"] = self.encode_condition(extras["condition"])
        return {"images": latents, **extras}

    def _prepare_batch(self, data, training):
        return super()._prepare_batch(self._latent_batch(data, training), training)

    def call(self, inputs, training=None):
        """The denoiser's prediction for `{"x_t", "t", ...}`; for a data batch
        (pixels or `{"latents": ...}`), the prediction at t = 0.5."""
        if isinstance(inputs, dict) and "x_t" in inputs:
            return self.denoiser(inputs, training=training)
        return super().call(self._latent_batch(inputs, False)["images"], training=training)

    def encode_dataset(self, dataset, batch_size=32, cache=True):
        """Cached latents for `fit`: pixels -> `{"latents": ..., ...}`.

        Args:
            dataset: a `tf.data.Dataset` of batches (images, `(images,
                labels)` or dicts with "images"), or a numpy array of images,
                or a dict of arrays with "images".
            batch_size: batch size of the encoder for arrays.
            cache: for a dataset, `.cache()` the encoded batches (encoded
                once, in the first epoch; shuffle before batching upstream
                is then fixed to that first order: shuffle the cached
                dataset's batches with `.shuffle` if needed).

        Returns:
            A dataset of dicts `{"latents", "labels"?, "text"?, "condition"?}`
            for a dataset; a dict of numpy arrays for arrays. Latents are the
            posterior means (times the scaling factor); image conditions are
            encoded with `condition_encoding`.
        """
        if hasattr(dataset, "element_spec"):
            import tensorflow as tf

            self._maybe_build_from_data(dataset)

            def encode(*element):
                data = element[0] if len(element) == 1 else element
                out = self._latent_batch(data, training=False)
                out["latents"] = out.pop("images")
                return out

            encode = tf.autograph.experimental.do_not_convert(encode)
            encoded = dataset.map(encode)
            return encoded.cache() if cache else encoded
        data = dataset if isinstance(dataset, dict) else {"images": dataset}
        if "images" not in data:
            raise ValueError(
                f"`dataset` as a dict needs the key 'images', received keys {sorted(data)}"
            )
        images = np.asarray(data["images"])
        if not self.built:
            self._maybe_build_from_data(data)
        out = {k: np.asarray(v) for k, v in data.items() if k not in ("images", "condition")}
        latents, conditions = [], []
        for start in range(0, len(images), int(batch_size)):
            stop = start + int(batch_size)
            latents.append(ops.convert_to_numpy(self.encode_images(images[start:stop])))
            if data.get("condition") is not None:
                conditions.append(
                    ops.convert_to_numpy(self.encode_condition(data["condition"][start:stop]))
                )
        out["latents"] = np.concatenate(latents).astype("float32")
        if conditions:
            out["condition"] = np.concatenate(conditions).astype("float32")
        return out

    # ------------------------------------------------------------------
    # Sampling
    # ------------------------------------------------------------------
    def decode(self, latents, batch_size=None):
        """Decodes latents to images in batches (numpy float32, not clipped)."""
        latents = np.asarray(ops.convert_to_numpy(latents), "float32")
        self._check_latent_shape(latents.shape[1:])
        batch_size = int(batch_size or self.decode_batch_size)
        if self._decode_fn is None:
            fn = self.decode_to_images
            if keras.backend.backend() == "tensorflow":
                import tensorflow as tf

                fn = tf.function(tf.autograph.experimental.do_not_convert(fn))
            self._decode_fn = fn
        return np.concatenate(
            [
                np.asarray(ops.convert_to_numpy(self._decode_fn(latents[i : i + batch_size])))
                for i in range(0, len(latents), batch_size)
            ]
        ).astype("float32")

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
        clip=True,
        clip_denoised=False,
        use_ema=True,
        jit_compile=None,
        verbose="auto",
        return_latents=False,
    ):
        """Samples latents with a sampler and decodes them to images.

        Arguments as for `DiffusionModel.generate`, except: `condition` is
        pixel-level (encoded with `condition_encoding`); `clip` clips the
        decoded images to [-1, 1]; `clip_denoised` (clip the sampler's x0
        estimates, i.e. latents, to [-1, 1]) is off by default; prompts in
        `text` must be non-empty and fit the text encoder (else ValueError).

        Returns:
            Images `(N, *pixel_shape)` float32 (and the latents with
            `return_latents=True`).
        """
        if text is not None:
            text = image_to_image._check_prompts(text, self.text_encoder)
        if condition is not None:
            if self.condition_shape is None:
                raise ValueError(
                    "generate() received `condition` but the model has no image "
                    "condition (condition_shape=None)"
                )
            condition = ops.convert_to_numpy(self.encode_condition(condition))
        latents = super().generate(
            num_images=num_images,
            labels=labels,
            text=text,
            condition=condition,
            sampler=sampler,
            num_steps=num_steps,
            guidance_scale=guidance_scale,
            seed=seed,
            timesteps=timesteps,
            spacing=spacing,
            batch_size=batch_size,
            clip=False,
            clip_denoised=bool(clip_denoised),
            use_ema=use_ema,
            jit_compile=jit_compile,
            verbose=verbose,
        )
        images = self.decode(latents)
        if clip:
            images = np.clip(images, -1.0, 1.0)
        return (images, latents) if return_latents else images

    def img2img(self, images, strength=0.8, **kwargs):
        """SDEdit in latent space; see `image_to_image.model_img2img`."""
        return image_to_image.model_img2img(self, images, strength, **kwargs)

    def inpaint(self, images, mask, strength=1.0, **kwargs):
        """Inpainting in latent space; see `image_to_image.model_inpaint`."""
        return image_to_image.model_inpaint(self, images, mask, strength, **kwargs)

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
        if isinstance(config.get("vae"), dict):
            config["vae"] = keras.saving.deserialize_keras_object(config["vae"])
        condition_shape = config.pop("latent_condition_shape", None)
        for key in ("denoiser", "text_encoder", "schedule", "dtype"):
            if isinstance(config.get(key), dict):
                config[key] = keras.saving.deserialize_keras_object(config[key])
        return cls(condition_shape=condition_shape, **config)
