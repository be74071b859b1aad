"""ControlNet's hint encoder: a control image -> features at the first level."""

import math

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_diffusion")
class HintEncoder(keras.layers.Layer):
    """Maps a control image to the UNet's first feature resolution.

    A stack of 3x3 convolutions with SiLU, `log2(downsampling)` of them with
    stride 2 (for a control image larger than x_t, e.g. 8x for Stable
    Diffusion's latents), and a last zero-initialized 3x3 convolution to
    `output_channels`, so the encoder's output is 0 at initialization
    (Zhang et al., 2023, section 3.3).

    Args:
        output_channels: channels of the output (the UNet's base channels).
        hidden_channels: channels of the convolutions, per resolution (the
            first one at full resolution; one more per 2x downsampling).
        downsampling: the size ratio control / x_t, a power of 2 (1: same
            size).
        **kwargs: `keras.layers.Layer` arguments.

    Example:
    >>> encoder = HintEncoder(32, downsampling=1)
    >>> encoder(keras.ops.ones((2, 16, 16, 3))).shape
    (2, 16, 16, 32)

    References:
        Zhang et al., Adding Conditional Control to Text-to-Image Diffusion
        Models, 2023.
    """

    def __init__(self, output_channels, hidden_channels=(16, 32), downsampling=1, **kwargs):
        super().__init__(**kwargs)
        downsampling = int(downsampling)
        if downsampling < 1 or downsampling & (downsampling - 1):
            raise ValueError(
                f"`downsampling` must be a power of 2, received downsampling={downsampling}"
            )
        self.output_channels = int(output_channels)
        self.hidden_channels = tuple(int(c) for c in hidden_channels)
        self.downsampling = downsampling
        steps = int(round(math.log2(downsampling)))
        widths = list(self.hidden_channels)
        while len(widths) < steps + 1:
            widths.append(widths[-1])
        policy = self.dtype_policy
        self.convs = [
            keras.layers.Conv2D(widths[0], 3, padding="same", dtype=policy, name="conv_0")
        ]
        for i in range(steps):
            self.convs.append(keras.layers.Conv2D(
                widths[i + 1], 3, strides=2, padding="same", dtype=policy,
                name=f"conv_{i + 1}",
            ))
        self.conv_out = keras.layers.Conv2D(
            self.output_channels, 3, padding="same", kernel_initializer="zeros",
            dtype=policy, name="conv_out",
        )

    def build(self, input_shape):
        shape = tuple(input_shape)
        for conv in self.convs:
            conv.build(shape)
            shape = conv.compute_output_shape(shape)
        self.conv_out.build(shape)
        self.built = True

    def call(self, control):
        h = ops.cast(control, self.compute_dtype)
        for conv in self.convs:
            h = ops.silu(conv(h))
        return self.conv_out(h)

    def compute_output_shape(self, input_shape):
        b, h, w = input_shape[:3]
        f = self.downsampling
        return (b, None if h is None else h // f, None if w is None else w // f,
                self.output_channels)

    def get_config(self):
        config = super().get_config()
        config.update({
            "output_channels": self.output_channels,
            "hidden_channels": list(self.hidden_channels),
            "downsampling": self.downsampling,
        })
        return config
