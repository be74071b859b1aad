"""Bridge to keras-cv's Stable Diffusion 1.x parts (TensorFlow backend).

keras-cv 0.9 (`keras_cv.models.stable_diffusion`) works with Keras 3.15: its
UNet (`DiffusionModel`, 860M parameters), VAE encoder (`ImageEncoder`) and
decoder (`Decoder`), CLIP text encoder (`TextEncoder`) and BPE tokenizer
(`SimpleTokenizer`) build and run. This module adapts them to the library's
contracts:

- `StableDiffusionDenoiser`: the dict contract `{"x_t", "t", "context"} ->
  epsilon`. keras-cv's UNet takes `[latent, timestep_embedding, context]`,
  with a 320-dim sinusoidal embedding (`[cos, sin]`, max period 10000) of the
  integer DDPM step k in [0, 999]. The adapter maps continuous `t` in [0, 1]
  to k = t * 1000 - 1 (the library's convention for a discrete schedule:
  step k sits at t = (k + 1) / T), so it is trained and sampled with
  `ScaledLinearSchedule()` (betas 0.00085 to 0.012, T = 1000) and
  `prediction="epsilon"`.
- `StableDiffusionVAE`: `encode_moments` / `encode` (a TFP posterior) /
  `encode_latents` / `decode` / `decode_latents` like `keras_diffusion.models.VAE`,
  with `scaling_factor = 0.18215`. keras-cv's `ImageEncoder` keeps only the
  posterior mean (times 0.18215); the adapter runs its layers up to the
  8-channel moments so the log-variance is available too.
- `StableDiffusionTextEncoder`: CLIP ViT-L/14 text encoder; prompts are
  tokenized with keras-cv's `SimpleTokenizer` (Python, outside the graph),
  padded with the end-of-text token to `max_length` (77 for SD);
  prompts with more tokens raise a `ValueError`.
- `enable_lora(model, rank, targets)` (and the denoiser's
  `enable_lora(rank, target)`, the text encoder's `enable_lora(rank,
  targets)`): LoRA through Keras' own `layer.enable_lora` on `targets`:
  "attention" (the default) is the attention projections (UNet: `to_q`,
  `to_k`, `to_v`, `out_proj` of every cross/self-attention, 128 `Dense`
  layers; CLIP: `q_proj`, `k_proj`, `v_proj`, `out_proj`); "all" is every
  `Dense` and `Conv2D` (UNet: 184 and 98, LCM-LoRA's choice); a tuple names
  the projections' attributes. Every other variable is frozen, so `fit`
  trains the LoRA factors only. The denoiser keeps `lora_rank` /
  `lora_target` in its config, so a saved model gets its factors back.
- ControlNet: `models.ControlledUNet(denoiser)` freezes the UNet and adds a
  `StableDiffusionControlNet` (`denoiser.control_net(...)`, module
  `stable_diffusion_control_net`): a trainable copy of the UNet's encoder
  whose zero-initialized residuals `StableDiffusionDenoiser.call(...,
  residuals=...)` adds to the skips and the middle block (the UNet's layers
  then run one by one, `stable_diffusion_unet`).
- LCM-LoRA: `LatentConsistencyModel.from_teacher(teacher, guidance_embedding=False,
  lora_rank=4, lora_target="all" | "attention", guidance_range=w)` on a
  `LatentDiffusionModel` teacher whose denoiser is a `StableDiffusionDenoiser`
  copies the UNet (another 3.4 GB) and trains only its LoRA factors. Keras'
  LoRA adds `a @ b` to the full kernel at each call, and the training step
  keeps these kernels for the backward pass: with "all" that is about
  another UNet's worth of memory or more per step (on a CPU, 64x64 images,
  teacher and student: 13.8 GB peak as a tf.function, more with
  `run_eagerly=True`; about 9.7 GB for "attention" run eagerly).

**Real weights.** With network access, pass `download_weights=True` (the
default of keras-cv): keras-cv fetches the SD 1.4 weights converted by
keras-cv from Hugging Face (`fchollet/stable-diffusion`: `kcv_diffusion_model.h5`,
`vae_encoder.h5`, `kcv_decoder.h5`, `kcv_encoder.h5`) into `~/.keras/datasets`
and checks their hashes; the tokenizer fetches OpenAI's
`bpe_simple_vocab_16e6.txt.gz`. Offline, download those files elsewhere, put
them into `~/.keras/datasets/` (keras' cache; `keras.utils.get_file` then
finds them), or call `adapter.unet.load_weights(path)` /
`adapter.image_encoder.load_weights(path)` / ... directly, and give the
tokenizer's file with `bpe_path=`:

```python
from keras_diffusion.pretrained import stable_diffusion as sd

text = sd.StableDiffusionTextEncoder(bpe_path="bpe_simple_vocab_16e6.txt.gz",
                                     download_weights=True)
unet = sd.StableDiffusionDenoiser(512, 512, download_weights=True)
vae = sd.StableDiffusionVAE(512, 512, download_weights=True)
sd.enable_lora(unet, rank=4)               # fine-tune only LoRA factors
# or, as LCM-LoRA (teacher: a LatentDiffusionModel with this unet and vae):
# lcm = LatentConsistencyModel.from_teacher(teacher, guidance_embedding=False,
#                                           lora_rank=4, guidance_range=7.5)
```

Everything here needs TensorFlow and keras-cv; they are imported when an
adapter is built. Building the UNet takes about 100 s and 6 GB of RAM on a CPU.
"""

import keras
from keras import ops

from keras_diffusion.models.denoiser import Denoiser
from keras_diffusion.models.denoiser import add_residuals
from keras_diffusion.models.denoiser import dense_and_conv_layers
from keras_diffusion.pretrained.stable_diffusion_unet import run_decoder
from keras_diffusion.pretrained.stable_diffusion_unet import run_encoder
from keras_diffusion.pretrained.stable_diffusion_unet import sd_timestep_embedding
from keras_diffusion.pretrained.stable_diffusion_unet import unet_parts
from keras_diffusion.utils.untracked import Untracked

SCALING_FACTOR = 0.18215
UNET_LORA_TARGETS = ("to_q", "to_k", "to_v", "out_proj")
CLIP_LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "out_proj")


def _keras_cv_sd():
    try:
        from keras_cv.models import stable_diffusion
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "The Stable Diffusion bridge needs keras-cv (pip install keras-cv); "
            f"importing keras_cv.models.stable_diffusion failed: {e}"
        ) from e
    return stable_diffusion


def _all_layers(model):
    return model._flatten_layers(include_self=False, recursive=True)


def _lora_layers(model, targets, attention, argument="targets"):
    """The layers of `model` that `targets` names (see `enable_lora`);
    `attention`: the attribute names "attention" stands for; `argument`: the
    name of the caller's argument, for the error."""
    if targets is None or (isinstance(targets, str) and targets == "attention"):
        targets = attention
    if isinstance(targets, str) and targets == "all":
        return dense_and_conv_layers(model)
    if isinstance(targets, str) or not isinstance(targets, (tuple, list)) or not targets or (
        not all(isinstance(name, str) and name for name in targets)
    ):
        raise ValueError(
            f"`{argument}` must be 'attention', 'all' or a non-empty tuple of attribute "
            f"names of the projections (e.g. {UNET_LORA_TARGETS}), received "
            f"{argument}={targets!r}"
        )
    layers = []
    for layer in _all_layers(model):
        for name in targets:
            dense = getattr(layer, name, None)
            if isinstance(dense, keras.layers.Dense) and dense not in layers:
                layers.append(dense)
    return layers


def enable_lora(model, rank, targets=None, freeze_others=True):
    """LoRA on the layers of a keras-cv SD part, via Keras' `enable_lora`.

    Calls `layer.enable_lora(rank)` (Keras' own LoRA: `lora_kernel_a`,
    `lora_kernel_b`, the second zero-initialized, so the output is unchanged
    until training) on the layers `targets` names, after freezing every
    variable of `model` (`freeze_others=True`), so that only the LoRA
    factors train. Layers that already have LoRA are left as they are.

    Args:
        model: a `StableDiffusionDenoiser`, `StableDiffusionTextEncoder`, or
            any Keras model made of keras-cv SD layers.
        rank: the LoRA rank (a positive integer).
        targets: "attention" (or None, the default): the attention
            projections, the UNet's (`to_q`, `to_k`, `to_v`, `out_proj` of
            every self- and cross-attention) and CLIP's (`q_proj`, `k_proj`,
            `v_proj`, `out_proj`); "all": every `Dense`, `EinsumDense` and
            `Conv2D` of `model` (LCM-LoRA's choice; on the UNet also the
            convolutions of the ResBlocks, up/downsamplers, the input and
            output convolutions, the transformers' `proj1`/`proj2`, GEGLU and
            feed-forward layers and the time embedding); or a tuple of
            attribute names: every `Dense` a layer holds under one of them.
        freeze_others: whether to freeze all non-LoRA variables (LoRA
            factors of an earlier call keep training).

    Returns:
        The list of layers LoRA was enabled on.
    """
    if isinstance(rank, bool) or int(rank) != rank or int(rank) < 1:
        raise ValueError(f"`rank` must be a positive integer, received rank={rank}")
    layers = _lora_layers(model, targets, UNET_LORA_TARGETS + CLIP_LORA_TARGETS)
    if not layers:
        raise ValueError(
            f"No layer for LoRA targets={targets!r} was found in {model.name}; nothing "
            "to enable LoRA on"
        )
    if freeze_others:
        for variable in model.weights:
            if "lora_kernel" not in variable.path:
                variable.trainable = False
    enabled = []
    for layer in layers:
        if not layer.lora_enabled:
            layer.enable_lora(int(rank))
            enabled.append(layer)
    if not enabled:
        raise ValueError(
            f"LoRA is already enabled on every layer of {model.name} that "
            f"targets={targets!r} names"
        )
    return enabled


def lora_weights(model):
    """The LoRA factors (`lora_kernel_a`, `lora_kernel_b`) of `model`."""
    return [w for w in model.weights if "lora_kernel" in w.path]


@keras.saving.register_keras_serializable(package="keras_diffusion")
class StableDiffusionDenoiser(Denoiser):
    """keras-cv's SD 1.x UNet behind the dict contract, predicting epsilon.

    Called on `{"x_t": (B, H/8, W/8, 4), "t": (B,), "context": (B, L, 768)}`
    it returns epsilon of the shape of `x_t`. Use it with
    `schedule=ScaledLinearSchedule()` and `prediction="epsilon"` (see
    `schedule()`).

    Args:
        image_height, image_width: image size in pixels (multiples of 8);
            the latent is 8 times smaller.
        max_text_length: context length L (77 for SD's CLIP).
        download_weights: fetch keras-cv's pretrained weights (needs network).
        lora_rank, lora_target: set by `enable_lora(rank, target)` (the
            `Denoiser` method) and kept in `get_config`, so that a saved
            model gets its LoRA factors back on load. `target`: "attention"
            (the `to_q`, `to_k`, `to_v`, `out_proj` of the 16 transformers'
            self- and cross-attention, 128 `Dense` layers), "all" (every
            `Dense` and `Conv2D` of the UNet, 184 and 98: LCM-LoRA's choice)
            or a tuple of attribute names (as the module's `enable_lora`).
        **kwargs: base model arguments.

    Example:
    >>> unet = StableDiffusionDenoiser(64, 64, max_text_length=8, download_weights=False)
    >>> eps = unet({"x_t": ops.zeros((1, 8, 8, 4)), "t": ops.ones((1,)),
    ...             "context": ops.zeros((1, 8, 768))})
    """

    prediction = "epsilon"
    input_channels = 4
    context_dim = 768

    def __init__(self, image_height=512, image_width=512, max_text_length=77,
                 download_weights=False, lora_rank=None, lora_target="attention", **kwargs):
        super().__init__(**kwargs)
        for name, value in (("image_height", image_height), ("image_width", image_width)):
            if int(value) <= 0 or int(value) % 8:
                raise ValueError(
                    f"`{name}` must be a positive multiple of 8, received {name}={value}"
                )
        self.image_height = int(image_height)
        self.image_width = int(image_width)
        self.max_text_length = int(max_text_length)
        self.download_weights = bool(download_weights)
        self.unet = _keras_cv_sd().DiffusionModel(
            self.image_height,
            self.image_width,
            self.max_text_length,
            download_weights=self.download_weights,
        )
        # keras-cv's UNet is built when made: LoRA of a saved model (its
        # config's lora_rank / lora_target) is restored before its weights load.
        self.built = True
        self.lora_rank, self.lora_target = lora_rank, lora_target
        self._maybe_restore_lora()

    @property
    def latent_shape(self):
        return (self.image_height // 8, self.image_width // 8, 4)

    @staticmethod
    def schedule():
        """The schedule SD 1.x was trained with: `ScaledLinearSchedule()`."""
        from keras_diffusion.schedules import ScaledLinearSchedule

        return ScaledLinearSchedule()

    accepts_residuals = True

    def call(self, inputs, training=None, residuals=None):
        """Epsilon; `residuals` (optional, from `StableDiffusionControlNet`s)
        holds 13 tensors added to the 12 skip connections and the middle
        block's output (then the UNet's layers run one by one, the same
        computation as keras-cv's Functional model)."""
        self.check_inputs(inputs)
        x_t, context = inputs["x_t"], inputs["context"]
        if tuple(x_t.shape[1:]) != self.latent_shape:
            raise ValueError(
                f"`x_t` must have shape (batch,) + {self.latent_shape} for "
                f"{self.image_height}x{self.image_width} images, received shape "
                f"{tuple(x_t.shape)}"
            )
        if tuple(context.shape[1:]) != (self.max_text_length, 768):
            raise ValueError(
                f"`context` must have shape (batch, {self.max_text_length}, 768), "
                f"received shape {tuple(context.shape)}"
            )
        t = inputs["t"]
        if len(t.shape) == 0:
            t = ops.broadcast_to(t, (ops.shape(x_t)[0],))
        emb = sd_timestep_embedding(t)
        if residuals is None:
            return self.unet([x_t, emb, context], training=training)
        parts = self.parts
        t_emb, skips, h = run_encoder(parts, x_t, emb, context)
        skips, h = add_residuals(skips, h, residuals)
        return run_decoder(parts, t_emb, skips, h, context)

    def control_net(self, **kwargs):
        """A `StableDiffusionControlNet` for this UNet (its encoder weights
        are copied from this UNet when `ControlledUNet` builds).

        Args:
            **kwargs: `StableDiffusionControlNet` arguments
                (`control_channels`, `hint_channels`, `hint_downsampling`,
                `name`); the context length is this UNet's.
        """
        from keras_diffusion.pretrained.stable_diffusion_control_net import (
            StableDiffusionControlNet,
        )

        return StableDiffusionControlNet(max_text_length=self.max_text_length, **kwargs)

    @property
    def parts(self):
        """keras-cv's UNet's layers by kind (`unet_parts`)."""
        if getattr(self, "_parts", None) is None:
            self._parts = Untracked(unet_parts(self.unet))
        return self._parts.value

    def _lora_targets(self, target):
        # Denoiser.enable_lora(rank, target) enables LoRA on these layers.
        return _lora_layers(self, target, UNET_LORA_TARGETS, argument="target")

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_height": self.image_height,
                "image_width": self.image_width,
                "max_text_length": self.max_text_length,
                # A saved model carries its weights: do not download on load.
                "download_weights": False,
                **self._base_config(),
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_diffusion")
class StableDiffusionVAE(keras.Model):
    """keras-cv's SD 1.x VAE with `keras_diffusion.models.VAE`'s interface.

    `decode` takes unscaled latents z, `decode_latents` diffusion latents
    `z * 0.18215` (what keras-cv's `Decoder` takes). Images in [-1, 1].

    Args:
        image_height, image_width: the decoder's fixed image size.
        download_weights: fetch keras-cv's pretrained weights (needs network).
        **kwargs: base model arguments.
    """

    input_channels = 3
    latent_channels = 4
    downsampling_factor = 8

    def __init__(self, image_height=512, image_width=512, download_weights=False, **kwargs):
        super().__init__(**kwargs)
        sd = _keras_cv_sd()
        self.image_height = int(image_height)
        self.image_width = int(image_width)
        self.download_weights = bool(download_weights)
        self.scaling_factor = SCALING_FACTOR
        self.image_encoder = sd.ImageEncoder(download_weights=self.download_weights)
        self.decoder = sd.Decoder(
            self.image_height, self.image_width, download_weights=self.download_weights
        )
        self.seed_generator = keras.random.SeedGenerator()

    def latent_shape(self, image_shape=None):
        h, w = (image_shape or (self.image_height, self.image_width))[:2]
        return (h // 8, w // 8, 4)

    def build(self, input_shape=None):
        self.built = True

    def encode_moments(self, images):
        """`(mean, logvar)` of the posterior (unscaled), logvar clipped to [-30, 20]."""
        x = ops.convert_to_tensor(images)
        if len(x.shape) != 4 or x.shape[-1] != 3:
            raise ValueError(
                f"`images` must have shape (batch, height, width, 3), received shape {tuple(x.shape)}"
            )
        # All ImageEncoder layers but the final Lambda (mean * 0.18215).
        for layer in self.image_encoder.layers[:-1]:
            x = layer(x)
        mean, logvar = ops.split(ops.cast(x, "float32"), 2, axis=-1)
        return mean, ops.clip(logvar, -30.0, 20.0)

    def encode_mean(self, images):
        return self.encode_moments(images)[0]

    def encode(self, images):
        """The posterior as `tfd.Independent(tfd.Normal)` (TensorFlow)."""
        import tensorflow_probability as tfp

        tfd = tfp.distributions
        mean, logvar = self.encode_moments(images)
        return tfd.Independent(tfd.Normal(mean, ops.exp(0.5 * logvar)), reinterpreted_batch_ndims=3)

    def encode_latents(self, images, sample=False, seed=None):
        mean, logvar = self.encode_moments(images)
        if sample:
            noise = keras.random.normal(
                ops.shape(mean), seed=self.seed_generator if seed is None else seed
            )
            mean = mean + ops.exp(0.5 * logvar) * noise
        return mean * self.scaling_factor

    def decode_latents(self, latents):
        z = ops.convert_to_tensor(latents)
        expected = self.latent_shape()
        if tuple(z.shape[1:]) != expected:
            raise ValueError(
                f"`latents` must have shape (batch,) + {expected} for the decoder's "
                f"{self.image_height}x{self.image_width} images, received shape "
                f"{tuple(z.shape)}"
            )
        return self.decoder(z)

    def decode(self, latents):
        return self.decode_latents(ops.convert_to_tensor(latents) * self.scaling_factor)

    def call(self, images, training=None):
        return self.decode(self.encode_mean(images))

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "image_height": self.image_height,
                "image_width": self.image_width,
                "download_weights": False,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="keras_diffusion")
class StableDiffusionTextEncoder(keras.Model):
    """keras-cv's CLIP ViT-L/14 text encoder (SD 1.x) with its BPE tokenizer.

    Called on a batch of prompts (a list of strings, tokenized in Python with
    `SimpleTokenizer`) or on token ids `(B, max_length)`, it returns the
    context `(B, max_length, 768)`; `encode` also gives `pooled`, the state of
    the first end-of-text token (CLIP's pooled output, before projection).
    The empty prompt is the unconditional input (as in SD).

    Args:
        max_length: token sequence length (77 for SD).
        bpe_path: path of the tokenizer's merges file
            (`bpe_simple_vocab_16e6.txt.gz`); `None` lets keras-cv download it.
        download_weights: fetch keras-cv's pretrained weights (needs network).
        **kwargs: base model arguments.
    """

    def __init__(self, max_length=77, bpe_path=None, download_weights=False, **kwargs):
        super().__init__(**kwargs)
        self.max_length = int(max_length)
        self.bpe_path = bpe_path
        self.download_weights = bool(download_weights)
        self.encoder = _keras_cv_sd().TextEncoder(
            self.max_length, download_weights=self.download_weights
        )
        self._tokenizer = None

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = _keras_cv_sd().SimpleTokenizer(self.bpe_path)
        return self._tokenizer

    def tokenize(self, prompts):
        """Token ids `(B, max_length)` int32, padded with end-of-text."""
        import numpy as np

        if isinstance(prompts, str):
            prompts = [prompts]
        rows = []
        end = self.tokenizer.end_of_text
        for prompt in prompts:
            prompt = prompt.decode() if isinstance(prompt, bytes) else str(prompt)
            ids = self.tokenizer.encode(prompt)
            if len(ids) > self.max_length:
                raise ValueError(
                    f"The prompt {prompt!r} has {len(ids)} tokens (with the start and "
                    f"end tokens), more than max_length={self.max_length}"
                )
            rows.append(ids + [end] * (self.max_length - len(ids)))
        return np.asarray(rows, dtype="int32")

    def build(self, input_shape=None):
        self.built = True

    def encode(self, prompts):
        """`{"context": (B, L, 768), "pooled": (B, 768)}` of prompts or ids."""
        if isinstance(prompts, str) or (
            isinstance(prompts, (list, tuple)) and prompts and isinstance(prompts[0], (str, bytes))
        ):
            ids = self.tokenize(prompts)
        else:
            ids = prompts
        ids = ops.cast(ids, "int32")
        positions = ops.repeat(
            ops.arange(self.max_length, dtype="int32")[None], ops.shape(ids)[0], axis=0
        )
        context = self.encoder([ids, positions])
        end = self._tokenizer.end_of_text if self._tokenizer is not None else 49407
        first_end = ops.argmax(ops.cast(ops.equal(ids, end), "int32"), axis=1)
        pooled = ops.take_along_axis(context, first_end[:, None, None], axis=1)[:, 0]
        return {"context": context, "pooled": pooled}

    def __call__(self, inputs, *args, **kwargs):
        if isinstance(inputs, str) or (
            isinstance(inputs, (list, tuple)) and inputs and isinstance(inputs[0], (str, bytes))
        ):
            inputs = self.tokenize(inputs)
        return super().__call__(inputs, *args, **kwargs)

    def call(self, token_ids, training=None):
        positions = ops.repeat(
            ops.arange(self.max_length, dtype="int32")[None], ops.shape(token_ids)[0], axis=0
        )
        return self.encoder([ops.cast(token_ids, "int32"), positions], training=training)

    def enable_lora(self, rank, targets="attention"):
        """LoRA on CLIP's layers; freezes everything else.

        Args:
            rank: the LoRA rank (a positive integer).
            targets: "attention" (the default): `q_proj`, `k_proj`,
                `v_proj`, `out_proj` of every layer; "all": every `Dense`;
                or a tuple of attribute names (see `enable_lora`).
        """
        if targets is None or (isinstance(targets, str) and targets == "attention"):
            targets = CLIP_LORA_TARGETS
        return enable_lora(self, rank, targets)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "max_length": self.max_length,
                "bpe_path": self.bpe_path,
                "download_weights": False,
            }
        )
        return config
