"""Patchify + fixed 2-D sin-cos position embedding (ViT / DiT)."""

import keras
import numpy as np
from keras import ops


def sincos_position_embedding_2d(dim, grid_h, grid_w):
    """The fixed 2-D sin-cos position embedding of MAE / DiT as a numpy
    array of shape `(grid_h * grid_w, dim)` (half the width for each axis)."""
    if dim % 4:
        raise ValueError(f"`hidden_dim` must be divisible by 4, received {dim}")

    def one_d(d, pos):
        omega = 1.0 / 10000 ** (np.arange(d // 2, dtype=np.float64) / (d / 2.0))
        out = np.einsum("m,d->md", pos.reshape(-1), omega)
        return np.concatenate([np.sin(out), np.cos(out)], axis=1)

    gw, gh = np.meshgrid(np.arange(grid_w, dtype=np.float64), np.arange(grid_h, dtype=np.float64))
    emb = np.concatenate([one_d(dim // 2, gw), one_d(dim // 2, gh)], axis=1)
    return emb.astype("float32")


@keras.saving.register_keras_serializable(package="keras_diffusion")
class PatchEmbedding(keras.layers.Layer):
    """Cuts a `(B, H, W, C)` image into `patch_size` x `patch_size` patches,
    projects each to `hidden_dim` and adds the fixed 2-D sin-cos position
    embedding: output `(B, (H / p) * (W / p), hidden_dim)`, patches in
    row-major order.

    The position embedding is a non-trainable weight (as in DiT, where it is
    counted among the parameters).

    Args:
        hidden_dim: width of the tokens.
        patch_size: side of the square patches.
        **kwargs: base layer arguments.

    Example:
    >>> PatchEmbedding(32, 2)(keras.ops.ones((1, 8, 8, 4))).shape
    (1, 16, 32)

    References:
        Dosovitskiy et al., An Image is Worth 16x16 Words, 2021.
        Peebles & Xie, Scalable Diffusion Models with Transformers, 2023.
    """

    def __init__(self, hidden_dim, patch_size, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = int(hidden_dim)
        self.patch_size = int(patch_size)
        self.proj = keras.layers.Conv2D(
            self.hidden_dim,
            self.patch_size,
            strides=self.patch_size,
            dtype=self.dtype_policy,
            name="proj",
        )

    def build(self, input_shape):
        _, h, w, _ = input_shape
        p = self.patch_size
        if h is None or w is None:
            raise ValueError(
                f"PatchEmbedding needs a static image size, received input_shape={input_shape}"
            )
        if h % p or w % p:
            raise ValueError(
                f"The image size {h}x{w} is not divisible by `patch_size`={p}"
            )
        self.grid = (h // p, w // p)
        self.proj.build(input_shape)
        value = sincos_position_embedding_2d(self.hidden_dim, *self.grid)
        self.position_embedding = self.add_weight(
            name="position_embedding",
            shape=value.shape,
            initializer=keras.initializers.Constant(value),
            trainable=False,
        )
        self.built = True

    def call(self, x):
        x = self.proj(x)
        x = ops.reshape(x, (ops.shape(x)[0], -1, self.hidden_dim))
        return x + ops.cast(self.position_embedding, x.dtype)[None]

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        p = self.patch_size
        return (b, (h // p) * (w // p), self.hidden_dim)

    def get_config(self):
        config = super().get_config()
        config.update({"hidden_dim": self.hidden_dim, "patch_size": self.patch_size})
        return config


def unpatchify(tokens, height, width, patch_size, channels):
    """The inverse of `PatchEmbedding`'s cut: `(B, (H/p) * (W/p), p*p*C)`
    tokens, each laid out as `(p, p, C)` in row-major patch order, to a
    `(B, H, W, C)` image."""
    b, p = ops.shape(tokens)[0], patch_size
    out = ops.reshape(tokens, (b, height // p, width // p, p, p, channels))
    out = ops.transpose(out, (0, 1, 3, 2, 4, 5))
    return ops.reshape(out, (b, height, width, channels))
