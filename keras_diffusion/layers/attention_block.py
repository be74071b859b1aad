"""Self-attention (and optional cross-attention) block for feature maps."""

import keras
from keras import ops

from keras_diffusion.layers.group_normalization import GroupNormalization


def multi_head_attention(q, k, v, num_heads):
    """Scaled dot-product attention on `(B, L, C)` tensors with `num_heads`
    heads. Returns `(B, Lq, C)`.

    On JAX and PyTorch this is `keras.ops.dot_product_attention` (fused
    kernels where the backend has them). TensorFlow has none; there the
    scale goes on `q` rather than on the `(B, heads, Lq, Lk)` logits (the
    same math on a tensor `Lk / head_size` times smaller, one pass over the
    logits fewer each way) and the products are batched matmuls (oneDNN),
    with the softmax in float32 as in Keras.
    """
    b = ops.shape(q)[0]
    c = q.shape[-1]
    d = c // num_heads

    def heads(x):
        return ops.reshape(x, (b, -1, num_heads, d))

    if keras.backend.backend() != "tensorflow":
        out = ops.dot_product_attention(heads(q), heads(k), heads(v))
        return ops.reshape(out, (b, -1, c))
    q = ops.transpose(heads(q * ops.cast(d**-0.5, q.dtype)), (0, 2, 1, 3))
    logits = ops.matmul(q, ops.transpose(heads(k), (0, 2, 3, 1)))
    probs = ops.cast(ops.softmax(ops.cast(logits, "float32"), axis=-1), v.dtype)
    out = ops.matmul(probs, ops.transpose(heads(v), (0, 2, 1, 3)))
    return ops.reshape(ops.transpose(out, (0, 2, 1, 3)), (b, -1, c))


def split_heads_channels(channels, num_heads, head_channels):
    """Number of heads for `channels` from `num_heads` or `head_channels`."""
    if head_channels:
        if channels % head_channels:
            raise ValueError(
                f"`head_channels`={head_channels} does not divide the "
                f"{channels} channels of the attention block"
            )
        return channels // head_channels
    if channels % num_heads:
        raise ValueError(
            f"`num_heads`={num_heads} does not divide the {channels} channels "
            "of the attention block"
        )
    return num_heads


@keras.saving.register_keras_serializable(package="keras_diffusion")
class AttentionBlock(keras.layers.Layer):
    """Residual multi-head self-attention over the pixels of a feature map,
    with optional cross-attention to a context sequence.

    Called on `x` of shape `(B, H, W, C)`, or on `[x, context]` with `context`
    of shape `(B, L, context_dim)` when `context_dim` is set. Self-attention:
    GroupNorm -> fused q/k/v projection -> `ops.dot_product_attention` ->
    output projection -> residual (DDPM). Cross-attention (Stable Diffusion):
    LayerNorm -> q from x, k/v from context -> attention -> projection ->
    residual.

    Args:
        num_heads: number of heads (used when `head_channels` is None).
        head_channels: channels per head; overrides `num_heads`.
        num_groups: groups of the GroupNormalization.
        context_dim: width of the context sequence (None: no cross-attention).
        epsilon: normalization epsilon.
        **kwargs: base layer arguments.

    Example:
    >>> AttentionBlock(num_heads=2, num_groups=8)(keras.ops.ones((1, 4, 4, 16))).shape
    (1, 4, 4, 16)

    References:
        Ho et al., Denoising Diffusion Probabilistic Models, 2020.
        Rombach et al., High-Resolution Image Synthesis with Latent Diffusion
        Models, 2022.
    """

    def __init__(
        self,
        num_heads=1,
        head_channels=None,
        num_groups=32,
        context_dim=None,
        epsilon=1e-5,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.num_heads = int(num_heads)
        self.head_channels = None if head_channels is None else int(head_channels)
        self.num_groups = int(num_groups)
        self.context_dim = None if context_dim is None else int(context_dim)
        self.epsilon = float(epsilon)
        policy = self.dtype_policy
        self.norm = GroupNormalization(num_groups, epsilon=epsilon, dtype=policy, name="norm")
        if self.context_dim:
            self.cross_norm = keras.layers.LayerNormalization(
                epsilon=epsilon, dtype=policy, name="cross_norm"
            )

    def build(self, input_shape):
        if self.context_dim:
            x_shape, context_shape = input_shape
        else:
            x_shape = input_shape
        c = x_shape[-1]
        self.heads = split_heads_channels(c, self.num_heads, self.head_channels)
        policy = self.dtype_policy
        self.norm.build(x_shape)
        self.qkv = keras.layers.Dense(3 * c, dtype=policy, name="qkv")
        self.qkv.build((None, None, c))
        self.proj = keras.layers.Dense(c, dtype=policy, name="proj")
        self.proj.build((None, None, c))
        if self.context_dim:
            self.cross_norm.build((None, None, c))
            self.cross_q = keras.layers.Dense(c, dtype=policy, name="cross_q")
            self.cross_q.build((None, None, c))
            self.cross_kv = keras.layers.Dense(2 * c, dtype=policy, name="cross_kv")
            self.cross_kv.build((None, None, self.context_dim))
            self.cross_proj = keras.layers.Dense(c, dtype=policy, name="cross_proj")
            self.cross_proj.build((None, None, c))
        self.built = True

    def call(self, inputs):
        if self.context_dim:
            x, context = inputs
        else:
            x, context = inputs, None
        shape = ops.shape(x)
        b, c = shape[0], x.shape[-1]
        h = ops.reshape(self.norm(x), (b, -1, c))
        q, k, v = ops.split(self.qkv(h), 3, axis=-1)
        h = self.proj(multi_head_attention(q, k, v, self.heads))
        tokens = ops.reshape(x, (b, -1, c)) + h
        if context is not None:
            q = self.cross_q(self.cross_norm(tokens))
            k, v = ops.split(self.cross_kv(ops.cast(context, q.dtype)), 2, axis=-1)
            tokens = tokens + self.cross_proj(multi_head_attention(q, k, v, self.heads))
        return ops.reshape(tokens, shape)

    def compute_output_shape(self, input_shape):
        return input_shape[0] if self.context_dim else input_shape

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "head_channels": self.head_channels,
                "num_groups": self.num_groups,
                "context_dim": self.context_dim,
                "epsilon": self.epsilon,
            }
        )
        return config
