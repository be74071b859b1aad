"""Final layer of DiT: adaLN modulation and a per-patch linear decoder."""

import keras
from keras import ops

from keras_diffusion.layers.dit_block import modulate


@keras.saving.register_keras_serializable(package="keras_diffusion")
class DiTFinalLayer(keras.layers.Layer):
    """LayerNorm modulated by the conditioning vector, then a linear map of
    each token to `patch_size**2 * output_channels` values (zero-initialized,
    as in DiT).

    Called on `[x, c]`: tokens `(B, N, D)` and conditioning `(B, D)`.
    Output `(B, N, patch_size**2 * output_channels)`, each token laid out as
    `(p, p, output_channels)`.

    Args:
        patch_size: side of the patches.
        output_channels: channels of the image.
        **kwargs: base layer arguments.

    Example:
    >>> layer = DiTFinalLayer(2, 4)
    >>> layer([keras.ops.ones((2, 16, 32)), keras.ops.ones((2, 32))]).shape
    (2, 16, 16)

    References:
        Peebles & Xie, Scalable Diffusion Models with Transformers, 2023.
    """

    def __init__(self, patch_size, output_channels, **kwargs):
        super().__init__(**kwargs)
        self.patch_size = int(patch_size)
        self.output_channels = int(output_channels)
        policy = self.dtype_policy
        self.norm = keras.layers.LayerNormalization(
            epsilon=1e-6, center=False, scale=False, dtype=policy, name="norm"
        )
        self.linear = keras.layers.Dense(
            self.patch_size**2 * self.output_channels,
            kernel_initializer="zeros",
            dtype=policy,
            name="linear",
        )

    def build(self, input_shape):
        x_shape, c_shape = input_shape
        d = x_shape[-1]
        self.ada_ln = keras.layers.Dense(
            2 * d, kernel_initializer="zeros", dtype=self.dtype_policy, name="ada_ln"
        )
        self.ada_ln.build((None, d))
        self.norm.build(x_shape)
        self.linear.build(x_shape)
        self.built = True

    def call(self, inputs):
        x, c = inputs
        shift, scale = ops.split(self.ada_ln(ops.silu(c)), 2, axis=-1)
        return self.linear(modulate(self.norm(x), shift, scale))

    def compute_output_shape(self, input_shape):
        x_shape = input_shape[0]
        return tuple(x_shape[:-1]) + (self.patch_size**2 * self.output_channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {"patch_size": self.patch_size, "output_channels": self.output_channels}
        )
        return config
