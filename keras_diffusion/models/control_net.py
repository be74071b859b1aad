"""ControlNet: a trainable copy of a UNet's encoder driven by a control image."""

import keras

from keras_diffusion.layers import HintEncoder
from keras_diffusion.models.unet import UNet

# The encoder's layers, in the order `UNet._build_encoder` creates them.
_ENCODER_LAYERS = ("time_embed", "label_embed", "conv_in", "down_res", "down_attn",
                   "downsamplers", "mid_res_1", "mid_attn", "mid_res_2")


def check_control_options(control_channels, hint_channels, hint_downsampling):
    """A ControlNet's `(control_channels, hint_channels, hint_downsampling)`
    as ints, or a ValueError naming the argument and the value."""
    if isinstance(control_channels, bool) or int(control_channels) < 1:
        raise ValueError(
            f"`control_channels` must be a positive int, received "
            f"control_channels={control_channels!r}"
        )
    return int(control_channels), tuple(int(c) for c in hint_channels), int(hint_downsampling)


def copy_layer_weights(pairs):
    """Assigns the weights of each `(source, target)` layer pair, source to
    target; a ValueError where their weights' shapes differ."""
    for src, dst in pairs:
        shapes = [tuple(w.shape) for w in src.weights], [tuple(w.shape) for w in dst.weights]
        if shapes[0] != shapes[1]:
            raise ValueError(
                f"The UNet's layer {src.name} does not match the ControlNet's {dst.name}: "
                f"weight shapes {shapes[0]} vs {shapes[1]}"
            )
        for a, b in zip(src.weights, dst.weights):
            # A copy: on JAX, sharing the base's buffer would make the train
            # step donate it twice.
            b.assign(keras.ops.convert_to_numpy(a))


@keras.saving.register_keras_serializable(package="keras_diffusion")
class ControlNet(UNet):
    """A ControlNet for the library's `UNet` (Zhang et al., 2023).

    The encoder of a UNet (embeddings, down blocks and middle block, of the
    base's configuration) takes x_t, t, the base's conditions and a control
    image; a `HintEncoder` maps the control image to the first feature
    resolution and adds it after `conv_in`. The outputs are one zero-
    initialized 1x1 convolution per skip connection of the UNet plus one for
    the middle block: the `residuals` that `UNet.call` adds to the frozen
    base's skips and middle. Build it with `ControlNet.from_unet(base)` and
    use it through `keras_diffusion.models.ControlledUNet`, which copies the
    base's encoder weights into it when it is first built, so that at
    initialization the residuals are exactly 0 and the controlled model is
    the base model.

    Inputs: the UNet's dict plus `"control"`, `(B, H * hint_downsampling,
    W * hint_downsampling, control_channels)` in [-1, 1] (or [0, 1]).
    Output: a list of `len(skips) + 1` float tensors.

    Args:
        control_channels: channels of the control image.
        hint_channels: widths of the hint encoder's convolutions.
        hint_downsampling: control size / x_t size (a power of 2).
        **kwargs: the `UNet` configuration (`from_unet` copies the base's).

    Example:
    >>> control_net = ControlNet.from_unet(unet, control_channels=1)
    >>> denoiser = ControlledUNet(unet, [control_net])

    References:
        Zhang et al., Adding Conditional Control to Text-to-Image Diffusion
        Models, 2023.
    """

    accepts_residuals = False

    def __init__(self, control_channels=3, hint_channels=(16, 32), hint_downsampling=1,
                 **kwargs):
        super().__init__(**kwargs)
        self.control_channels, self.hint_channels, self.hint_downsampling = (
            check_control_options(control_channels, hint_channels, hint_downsampling))
        self.hint_encoder = HintEncoder(
            self.base_channels, self.hint_channels, self.hint_downsampling,
            dtype=self.dtype_policy, name="hint_encoder",
        )

    @classmethod
    def from_unet(cls, unet, control_channels=3, hint_channels=(16, 32), hint_downsampling=1,
                  name=None):
        """A ControlNet of `unet`'s configuration (weights copied on build)."""
        if not isinstance(unet, UNet) or isinstance(unet, ControlNet):
            raise ValueError(
                f"`unet` must be a keras_diffusion UNet, received {type(unet).__name__}"
            )
        config = unet.get_config()
        for key in ("name", "trainable", "lora_rank", "lora_target"):
            config.pop(key, None)
        return cls(control_channels=control_channels, hint_channels=hint_channels,
                   hint_downsampling=hint_downsampling, name=name, **config)

    def build(self, input_shape):
        x_shape = self._check_input_shapes(input_shape, *self._divisor())
        b, hw, c, skips = self._build_encoder(x_shape)
        f = self.hint_downsampling
        self.hint_encoder.build((b, x_shape[1] * f, x_shape[2] * f, self.control_channels))

        def zero_conv(channels, name):
            conv = keras.layers.Conv2D(channels, 1, kernel_initializer="zeros",
                                       dtype=self.dtype_policy, name=name)
            conv.build((None, None, None, channels))
            return conv

        self.zero_convs = [zero_conv(ch, f"zero_conv_{i}") for i, ch in enumerate(skips)]
        self.zero_mid = zero_conv(c, "zero_conv_mid")
        self.built = True

    def call(self, inputs, training=None):
        if inputs.get("control") is None:
            raise ValueError(f"{type(self).__name__} needs a `control` input")
        x, t, labels, context = self._unpack(inputs)
        hint = self.hint_encoder(inputs["control"])
        hs, h, _ = self._encode(x, t, labels, context, training, hint=hint)
        return [conv(a) for conv, a in zip(self.zero_convs, hs)] + [self.zero_mid(h)]

    def copy_encoder_from(self, unet):
        """Assigns `unet`'s encoder weights to this ControlNet's copy."""
        for attribute in _ENCODER_LAYERS:
            if not hasattr(unet, attribute):
                continue
            source, target = getattr(unet, attribute), getattr(self, attribute)
            if not isinstance(source, (list, tuple)):
                source, target = [source], [target]
            copy_layer_weights(zip(source, target))

    def compute_output_shape(self, input_shape):
        raise NotImplementedError("A ControlNet returns a list of residuals")

    def get_config(self):
        config = super().get_config()
        config.update({
            "control_channels": self.control_channels,
            "hint_channels": list(self.hint_channels),
            "hint_downsampling": self.hint_downsampling,
        })
        return config
