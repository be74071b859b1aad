"""2x spatial upsampling."""

import keras
from keras import ops


def upsample_nearest_2x(x):
    """Nearest-neighbour 2x upsampling of a (B, H, W, C) tensor."""
    return ops.repeat(ops.repeat(x, 2, axis=1), 2, axis=2)


@keras.saving.register_keras_serializable(package="keras_diffusion")
class Upsample(keras.layers.Layer):
    """Doubles height and width: nearest-neighbour resize, then (optionally) a
    3x3 conv.

    Args:
        output_channels: channels of the conv (default: keep the channels).
        use_conv: whether a 3x3 conv follows the resize.
        **kwargs: base layer arguments.

    Example:
    >>> Upsample(16)(keras.ops.ones((1, 4, 4, 16))).shape
    (1, 8, 8, 16)
    """

    def __init__(self, output_channels=None, use_conv=True, **kwargs):
        super().__init__(**kwargs)
        self.output_channels = None if output_channels is None else int(output_channels)
        self.use_conv = bool(use_conv)
        self.conv = None

    def build(self, input_shape):
        if self.use_conv:
            c = self.output_channels or input_shape[-1]
            self.conv = keras.layers.Conv2D(
                c, 3, padding="same", dtype=self.dtype_policy, name="conv"
            )
            b, h, w, cin = input_shape
            self.conv.build((b, None if h is None else 2 * h, None if w is None else 2 * w, cin))
        self.built = True

    def call(self, x):
        x = upsample_nearest_2x(x)
        return self.conv(x) if self.use_conv else x

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        if self.use_conv:
            c = self.output_channels or c
        dbl = lambda n: None if n is None else 2 * n
        return (b, dbl(h), dbl(w), c)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"output_channels": self.output_channels, "use_conv": self.use_conv}
        )
        return config
