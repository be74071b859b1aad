"""A ControlNet for the Stable Diffusion bridge's UNet (keras-cv's SD 1.x)."""

import keras
from keras import ops

from keras_diffusion.layers import HintEncoder
from keras_diffusion.models.control_net import check_control_options
from keras_diffusion.models.control_net import copy_layer_weights
from keras_diffusion.models.denoiser import Denoiser
from keras_diffusion.pretrained.stable_diffusion_unet import TIMESTEP_EMBEDDING_DIM
from keras_diffusion.pretrained.stable_diffusion_unet import UNET_HEADS
from keras_diffusion.pretrained.stable_diffusion_unet import UNET_LEVELS
from keras_diffusion.pretrained.stable_diffusion_unet import UNET_MIDDLE
from keras_diffusion.pretrained.stable_diffusion_unet import run_encoder
from keras_diffusion.pretrained.stable_diffusion_unet import sd_timestep_embedding

# The encoder's layers by kind (`unet_parts`), how many of each the copy has.
_ENCODER_COUNTS = {"dense": 2, "activation": 1, "conv": 4, "res": 10, "attn": 7}


def _keras_cv_layers():
    try:
        from keras_cv.src.models.stable_diffusion.diffusion_model import ResBlock
        from keras_cv.src.models.stable_diffusion.diffusion_model import SpatialTransformer
        from keras_cv.src.models.stable_diffusion.padded_conv2d import PaddedConv2D
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "StableDiffusionControlNet needs keras-cv 0.9's Stable Diffusion layers "
            f"(pip install keras-cv): {e}"
        ) from e
    return ResBlock, SpatialTransformer, PaddedConv2D


@keras.saving.register_keras_serializable(package="keras_diffusion")
class StableDiffusionControlNet(Denoiser):
    """A ControlNet for `StableDiffusionDenoiser` (Zhang et al., 2023).

    A trainable copy of the SD 1.x UNet's encoder (time embedding, conv_in,
    the 4 down levels and the middle block, about 360M parameters against
    the UNet's 860M) made of keras-cv's own layers, a `HintEncoder` that
    maps the control image (pixel size: 8x the latent's by default) to
    conv_in's 320 channels, and 13 zero-initialized 1x1 convolutions whose
    outputs are the residuals `StableDiffusionDenoiser.call(...,
    residuals=...)` adds to the frozen UNet's 12 skip connections and its
    middle block. Use it through `keras_diffusion.models.ControlledUNet`,
    which copies the base's encoder weights into it when it is built, so
    that at initialization the controlled model is the base model.

    Inputs: the bridge denoiser's dict plus `"control"`, `(B, H/8 *
    hint_downsampling, W/8 * hint_downsampling, control_channels)` for
    `H x W` images. Output: a list of 13 tensors.

    Args:
        control_channels: channels of the control image.
        hint_channels: widths of the hint encoder's convolutions (the first
            at the control's resolution, one per 2x downsampling after it).
        hint_downsampling: control size / latent size (8: the control image
            has the pixel size of SD's images).
        max_text_length: the context length L (77 for SD's CLIP).
        **kwargs: `keras.Model` arguments.

    Example:
    >>> unet = StableDiffusionDenoiser(512, 512)   # download_weights=True for SD 1.4
    >>> denoiser = ControlledUNet(unet)    # or: [unet.control_net(...), ...]
    >>> model = LatentDiffusionModel(StableDiffusionVAE(512, 512), denoiser,
    ...                              text_encoder=StableDiffusionTextEncoder(),
    ...                              schedule=unet.schedule(), prediction="epsilon")
    >>> model.fit(dataset_of_images_control_and_text)   # trains the ControlNet only

    References:
        Zhang et al., Adding Conditional Control to Text-to-Image Diffusion
        Models, 2023.
    """

    input_channels = 4
    context_dim = 768

    def __init__(self, control_channels=3, hint_channels=(16, 32, 96, 256), hint_downsampling=8,
                 max_text_length=77, **kwargs):
        super().__init__(**kwargs)
        self.control_channels, self.hint_channels, self.hint_downsampling = (
            check_control_options(control_channels, hint_channels, hint_downsampling))
        self.max_text_length = int(max_text_length)
        self.hint_encoder = HintEncoder(UNET_LEVELS[0][0], self.hint_channels,
                                        self.hint_downsampling, name="hint_encoder")
        ResBlock, SpatialTransformer, PaddedConv2D = _keras_cv_layers()
        self.time_dense = [keras.layers.Dense(1280), keras.layers.Dense(1280)]
        self.time_activation = keras.layers.Activation("swish")
        self.convs = [PaddedConv2D(UNET_LEVELS[0][0], kernel_size=3, padding=1)]
        self.res_blocks, self.transformers, skip_channels = [], [], [UNET_LEVELS[0][0]]
        for level, (channels, head_size) in enumerate(UNET_LEVELS):
            for _ in range(2):
                self.res_blocks.append(ResBlock(channels))
                if head_size is not None:
                    self.transformers.append(
                        SpatialTransformer(UNET_HEADS, head_size, fully_connected=False))
                skip_channels.append(channels)
            if level < len(UNET_LEVELS) - 1:
                self.convs.append(PaddedConv2D(channels, 3, strides=2, padding=1))
                skip_channels.append(channels)
        mid, mid_head_size = UNET_MIDDLE
        self.res_blocks.append(ResBlock(mid))
        self.transformers.append(SpatialTransformer(UNET_HEADS, mid_head_size))
        self.res_blocks.append(ResBlock(mid))
        self.zero_convs = [
            keras.layers.Conv2D(c, 1, kernel_initializer="zeros", name=f"zero_conv_{i}")
            for i, c in enumerate(skip_channels)
        ]
        self.zero_mid = keras.layers.Conv2D(mid, 1, kernel_initializer="zeros",
                                            name="zero_conv_mid")

    @property
    def parts(self):
        """The encoder's layers by kind, as `run_encoder` takes them."""
        return {"dense": self.time_dense, "activation": [self.time_activation],
                "conv": self.convs, "res": self.res_blocks, "attn": self.transformers}

    def build(self, input_shape):
        x = self._check_input_shapes(input_shape)
        # keras-cv's layers build when first called: one symbolic call.
        x_t = keras.KerasTensor((1,) + tuple(x[1:]))
        emb = keras.KerasTensor((1, TIMESTEP_EMBEDDING_DIM))
        context = keras.KerasTensor((1, self.max_text_length, self.context_dim))
        f = self.hint_downsampling
        control = (1, x[1] * f, x[2] * f, self.control_channels)
        self.hint_encoder.build(control)
        _, skips, h = run_encoder(self.parts, x_t, emb, context,
                                  hint=keras.KerasTensor(self.hint_encoder.compute_output_shape(
                                      control)))
        for conv, skip in zip(self.zero_convs, skips):
            conv.build(skip.shape)
        self.zero_mid.build(h.shape)
        self.built = True

    def call(self, inputs, training=None):
        self.check_inputs(inputs)
        t = inputs["t"]
        if len(t.shape) == 0:
            t = ops.broadcast_to(t, (ops.shape(inputs["x_t"])[0],))
        hint = self.hint_encoder(inputs["control"])
        _, skips, h = run_encoder(self.parts, inputs["x_t"], sd_timestep_embedding(t),
                                  inputs["context"], hint=hint)
        return [conv(s) for conv, s in zip(self.zero_convs, skips)] + [self.zero_mid(h)]

    def copy_encoder_from(self, denoiser):
        """Assigns `denoiser`'s (a `StableDiffusionDenoiser`) encoder weights
        to this ControlNet's copy."""
        source = getattr(denoiser, "parts", None)
        if not isinstance(source, dict):
            raise ValueError(
                "`denoiser` must be a StableDiffusionDenoiser, received "
                f"{type(denoiser).__name__}"
            )
        target = self.parts
        for kind, count in _ENCODER_COUNTS.items():
            copy_layer_weights(zip(source[kind][:count], target[kind]))

    def compute_output_shape(self, input_shape):
        raise NotImplementedError("A ControlNet returns a list of residuals")

    def get_config(self):
        config = super().get_config()
        config.update({
            "control_channels": self.control_channels,
            "hint_channels": list(self.hint_channels),
            "hint_downsampling": self.hint_downsampling,
            "max_text_length": self.max_text_length,
        })
        return config
