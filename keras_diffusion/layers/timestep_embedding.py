"""Sinusoidal embedding of continuous time followed by an MLP."""

import math

import keras
from keras import ops


def sinusoidal_embedding(t, dim, scale=1000.0, max_period=10000.0):
    """Sinusoidal features of `t` (shape `(B,)`), `[cos, sin]` order.

    `t` in [0, 1] is multiplied by `scale` first, so with `scale=1000` the
    continuous time t = (k + 1) / 1000 lands next to DDPM's integer step k
    and networks see the familiar frequency range. Computed in float32.

    Returns a float32 tensor of shape `(B, dim)`.
    """
    t = ops.cast(t, "float32") * scale
    half = dim // 2
    freqs = ops.exp(
        -math.log(max_period) * ops.arange(half, dtype="float32") / float(half)
    )
    args = t[:, None] * freqs[None, :]
    emb = ops.concatenate([ops.cos(args), ops.sin(args)], axis=-1)
    if dim % 2:
        emb = ops.pad(emb, [[0, 0], [0, 1]])
    return emb


@keras.saving.register_keras_serializable(package="keras_diffusion")
class TimestepEmbedding(keras.layers.Layer):
    """Embeds continuous time t in [0, 1]: sinusoids -> Dense -> SiLU -> Dense.

    As in DDPM / ADM / DiT. Time is scaled by `scale` (1000, DDPM's number of
    steps) before the sinusoids, so `t = (k + 1) / 1000` maps near DDPM's
    integer step `k`.

    Args:
        output_dim: width of the embedding (and of the hidden layer).
        frequency_dim: number of sinusoidal features.
        scale: multiplier applied to `t` before the sinusoids.
        max_period: the longest period of the sinusoids.
        **kwargs: base layer arguments.

    Example:
    >>> layer = TimestepEmbedding(64)
    >>> layer(keras.ops.ones((2,))).shape
    (2, 64)

    References:
        Ho et al., Denoising Diffusion Probabilistic Models, 2020.
        Vaswani et al., Attention Is All You Need, 2017.
    """

    def __init__(
        self, output_dim, frequency_dim=256, scale=1000.0, max_period=10000.0, **kwargs
    ):
        super().__init__(**kwargs)
        self.output_dim = int(output_dim)
        self.frequency_dim = int(frequency_dim)
        self.scale = float(scale)
        self.max_period = float(max_period)
        # Keep `t` in float32 under mixed precision: bfloat16 would round
        # t * 1000 to steps of 4.
        self._convert_input_args = False
        self.dense_1 = keras.layers.Dense(
            self.output_dim, dtype=self.dtype_policy, name="dense_1"
        )
        self.dense_2 = keras.layers.Dense(
            self.output_dim, dtype=self.dtype_policy, name="dense_2"
        )

    def build(self, input_shape):
        self.dense_1.build((None, self.frequency_dim))
        self.dense_2.build((None, self.output_dim))
        self.built = True

    def call(self, t):
        emb = sinusoidal_embedding(t, self.frequency_dim, self.scale, self.max_period)
        return self.dense_2(ops.silu(self.dense_1(emb)))

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.output_dim)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "output_dim": self.output_dim,
                "frequency_dim": self.frequency_dim,
                "scale": self.scale,
                "max_period": self.max_period,
            }
        )
        return config
