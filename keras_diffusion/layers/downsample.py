"""2x spatial downsampling."""

import keras


@keras.saving.register_keras_serializable(package="keras_diffusion")
class Downsample(keras.layers.Layer):
    """Halves height and width: a stride-2 3x3 conv, or 2x2 average pooling.

    The conv pads like DDPM (one row/column at the bottom/right, Keras'
    "same" padding for stride 2 on even sizes).

    Args:
        output_channels: channels of the conv (ignored without conv; then the
            channels are kept).
        use_conv: conv (True) or average pooling (False).
        **kwargs: base layer arguments.

    Example:
    >>> Downsample(16)(keras.ops.ones((1, 8, 8, 16))).shape
    (1, 4, 4, 16)
    """

    def __init__(self, output_channels=None, use_conv=True, **kwargs):
        super().__init__(**kwargs)
        self.output_channels = None if output_channels is None else int(output_channels)
        self.use_conv = bool(use_conv)
        self.conv = None
        self.pool = None
        if not self.use_conv:
            self.pool = keras.layers.AveragePooling2D(2, dtype=self.dtype_policy)

    def build(self, input_shape):
        if self.use_conv:
            c = self.output_channels or input_shape[-1]
            self.conv = keras.layers.Conv2D(
                c, 3, strides=2, padding="same", dtype=self.dtype_policy, name="conv"
            )
            self.conv.build(input_shape)
        self.built = True

    def call(self, x):
        return self.conv(x) if self.use_conv else self.pool(x)

    def compute_output_shape(self, input_shape):
        b, h, w, c = input_shape
        if self.use_conv:
            c = self.output_channels or c
        half = lambda n: None if n is None else (n + 1) // 2 if self.use_conv else n // 2
        return (b, half(h), half(w), c)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"output_channels": self.output_channels, "use_conv": self.use_conv}
        )
        return config
