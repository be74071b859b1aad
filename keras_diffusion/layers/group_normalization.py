"""Group normalization fused with the scale/shift conditioning and SiLU of a
diffusion UNet block."""

import keras
from keras import ops

from keras_diffusion.layers import fusion


def group_norm(x, gamma, beta, groups, epsilon, scale=None, shift=None, silu=False):
    """`silu?(GroupNorm(x) * (1 + scale) + shift)` over the last axis of `x`,
    statistics and affine transform in float32, the result in `x.dtype`.

    `gamma`, `beta` are `(C,)` or None; `scale`, `shift` are per-sample
    `(B, C)` or None. All four fold into one float32 scale and shift per
    sample and channel, so the full-size tensor takes one multiply-add.
    """
    shape = ops.shape(x)
    c = x.shape[-1]
    grouped = (shape[0], -1, groups, c // groups)
    per_sample = (shape[0], 1, groups, c // groups)
    xg = ops.reshape(ops.cast(x, "float32"), grouped)
    mean = ops.mean(xg, axis=(1, 3), keepdims=True)
    var = ops.mean(ops.square(xg - mean), axis=(1, 3), keepdims=True)
    g = ops.rsqrt(var + epsilon)
    if gamma is not None:
        g = g * ops.reshape(ops.cast(gamma, "float32"), (1, 1, groups, -1))
    t = 0.0 if beta is None else ops.reshape(ops.cast(beta, "float32"), (1, 1, groups, -1))
    if scale is not None:
        s = 1.0 + ops.reshape(ops.cast(scale, "float32"), per_sample)
        g, t = g * s, t * s
    if shift is not None:
        t = t + ops.reshape(ops.cast(shift, "float32"), per_sample)
    y = xg * g + (t - mean * g)
    if silu:
        y = ops.silu(y)
    return ops.cast(ops.reshape(y, shape), x.dtype)


_fused_group_norm = fusion.fused(group_norm)


@keras.saving.register_keras_serializable(package="keras_diffusion")
class GroupNormalization(keras.layers.GroupNormalization):
    """`keras.layers.GroupNormalization` (channels last) with an optional
    per-sample scale/shift and SiLU, computed as one fused operation.

    Returns `silu(GroupNorm(x) * (1 + scale) + shift)`: the statistics and
    the affine transform in float32 whatever the compute dtype, the output in
    the compute dtype. `gamma`, `beta` and the per-sample `scale`, `shift`
    fold into one scale and one shift per sample and channel. On the
    TensorFlow backend the computation and its gradient run as one XLA
    cluster while the convolutions around it keep TensorFlow's oneDNN kernels
    (`keras_diffusion.layers.fusion`); on JAX, XLA fuses it anyway.

    A drop-in subclass of the Keras layer: the same arguments and weights
    (`gamma`, `beta`) and the same saving path, so `.keras` files written with
    either load into the other.

    Args:
        groups: number of groups; must divide the channels.
        epsilon: added to the variance.
        activation: `None` or `"silu"`, applied after the scale/shift.
        **kwargs: the other `keras.layers.GroupNormalization` arguments
            (`center`, `scale`, initializers, regularizers, constraints) and
            base layer arguments. `axis` must be -1.

    Call arguments:
        inputs: `(B, ..., C)` tensor.
        modulation: optional pair `(scale, shift)` of `(B, C)` tensors
            (either may be None): the normalized features are multiplied by
            `1 + scale` and shifted by `shift` (ADM's scale-shift norm,
            FiLM).

    Example:
    >>> norm = GroupNormalization(groups=8, activation="silu")
    >>> x = keras.ops.ones((2, 4, 4, 16))
    >>> scale, shift = keras.ops.zeros((2, 16)), keras.ops.ones((2, 16))
    >>> norm(x, modulation=(scale, shift)).shape
    (2, 4, 4, 16)

    References:
        Wu & He, Group Normalization, 2018.
        Dhariwal & Nichol, Diffusion Models Beat GANs on Image Synthesis,
        2021 (scale-shift normalization).
    """

    def __init__(self, groups=32, epsilon=1e-3, activation=None, **kwargs):
        axis = kwargs.pop("axis", -1)
        if axis != -1:
            raise ValueError(
                "keras_diffusion's GroupNormalization normalizes the last axis "
                f"(channels last); received axis={axis!r}"
            )
        if activation not in (None, "silu"):
            raise ValueError(
                f"`activation` must be None or 'silu', received activation={activation!r}"
            )
        super().__init__(groups=groups, axis=-1, epsilon=epsilon, **kwargs)
        self.activation = activation

    def call(self, inputs, modulation=None):
        scale, shift = (None, None) if modulation is None else modulation
        return _fused_group_norm(
            ops.cast(inputs, self.compute_dtype),
            None if self.gamma is None else self.gamma.value,
            None if self.beta is None else self.beta.value,
            groups=self.groups,
            epsilon=self.epsilon,
            scale=scale,
            shift=shift,
            silu=self.activation == "silu",
        )

    def get_config(self):
        config = super().get_config()
        config["activation"] = self.activation
        return config
