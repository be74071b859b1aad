"""Residual block with time conditioning (DDPM / ADM)."""

import keras
from keras import ops

from keras_diffusion.layers.group_normalization import GroupNormalization


@keras.saving.register_keras_serializable(package="keras_diffusion")
class ResnetBlock(keras.layers.Layer):
    """GroupNorm -> SiLU -> conv, time conditioning, GroupNorm -> SiLU ->
    dropout -> conv, plus a (1x1-conv) skip connection. Each normalization,
    with its time conditioning and SiLU, is one fused `GroupNormalization`.

    Called on `[x, emb]`: `x` of shape `(B, H, W, C)` and `emb` of shape
    `(B, E)` (the time / class embedding). The embedding goes through SiLU
    and a Dense layer and either is added after the first conv
    (`time_conditioning="additive"`, DDPM) or scales and shifts the second
    normalization (`"scale_shift"`, ADM's `use_scale_shift_norm`).

    Args:
        output_channels: channels of the output.
        dropout: dropout rate before the second conv.
        num_groups: groups of the GroupNormalization layers.
        time_conditioning: `"scale_shift"` or `"additive"`.
        epsilon: GroupNormalization epsilon.
        **kwargs: base layer arguments.

    Example:
    >>> block = ResnetBlock(64)
    >>> block([keras.ops.ones((2, 8, 8, 32)), keras.ops.ones((2, 128))]).shape
    (2, 8, 8, 64)

    References:
        Ho et al., Denoising Diffusion Probabilistic Models, 2020.
        Dhariwal & Nichol, Diffusion Models Beat GANs on Image Synthesis, 2021.
    """

    def __init__(
        self,
        output_channels,
        dropout=0.0,
        num_groups=32,
        time_conditioning="scale_shift",
        epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if time_conditioning not in ("scale_shift", "additive"):
            raise ValueError(
                "`time_conditioning` must be 'scale_shift' or 'additive', "
                f"received time_conditioning={time_conditioning!r}"
            )
        self.output_channels = int(output_channels)
        self.dropout = float(dropout)
        self.num_groups = int(num_groups)
        self.time_conditioning = time_conditioning
        self.epsilon = float(epsilon)
        policy = self.dtype_policy
        c = self.output_channels
        self.norm_1 = GroupNormalization(
            num_groups, epsilon=epsilon, activation="silu", dtype=policy, name="norm_1"
        )
        self.conv_1 = keras.layers.Conv2D(c, 3, padding="same", dtype=policy, name="conv_1")
        emb_units = 2 * c if time_conditioning == "scale_shift" else c
        self.emb_proj = keras.layers.Dense(emb_units, dtype=policy, name="emb_proj")
        self.norm_2 = GroupNormalization(
            num_groups, epsilon=epsilon, activation="silu", dtype=policy, name="norm_2"
        )
        self.dropout_layer = keras.layers.Dropout(self.dropout, dtype=policy)
        self.conv_2 = keras.layers.Conv2D(c, 3, padding="same", dtype=policy, name="conv_2")
        self.skip = None

    def build(self, input_shape):
        x_shape, emb_shape = input_shape
        in_c = x_shape[-1]
        c = self.output_channels
        self.norm_1.build(x_shape)
        self.conv_1.build(x_shape)
        self.emb_proj.build(emb_shape)
        out_shape = tuple(x_shape[:-1]) + (c,)
        self.norm_2.build(out_shape)
        self.conv_2.build(out_shape)
        if in_c != c:
            self.skip = keras.layers.Conv2D(c, 1, dtype=self.dtype_policy, name="skip")
            self.skip.build(x_shape)
        self.built = True

    def call(self, inputs, training=None):
        x, emb = inputs
        h = self.conv_1(self.norm_1(x))
        e = self.emb_proj(ops.silu(emb))
        if self.time_conditioning == "additive":
            h = self.norm_2(h + e[:, None, None, :])
        else:
            scale, shift = ops.split(e, 2, axis=-1)
            h = self.norm_2(h, modulation=(scale, shift))
        h = self.dropout_layer(h, training=training)
        h = self.conv_2(h)
        if self.skip is not None:
            x = self.skip(x)
        return x + h

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (self.output_channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "output_channels": self.output_channels,
                "dropout": self.dropout,
                "num_groups": self.num_groups,
                "time_conditioning": self.time_conditioning,
                "epsilon": self.epsilon,
            }
        )
        return config
