"""DiT transformer block with adaLN-Zero conditioning."""

import keras
from keras import ops

from keras_diffusion.layers.attention_block import multi_head_attention


def modulate(x, shift, scale):
    """adaLN modulation of `(B, N, D)` tokens by `(B, D)` shift and scale."""
    return x * (1.0 + scale[:, None, :]) + shift[:, None, :]


@keras.saving.register_keras_serializable(package="keras_diffusion")
class DiTBlock(keras.layers.Layer):
    """Transformer block of DiT with adaLN-Zero conditioning.

    Called on `[x, c]` (or `[x, c, context]` when `context_dim` is set): `x`
    tokens `(B, N, hidden_dim)`, `c` the conditioning vector `(B,
    hidden_dim)` (time + class embedding), `context` a sequence `(B, L,
    context_dim)`. `c` regresses the shift, scale and gate of the two
    (non-affine) LayerNorms; the gate projection starts at zero so each block
    starts as the identity (adaLN-Zero). The optional cross-attention sits
    between self-attention and MLP, its output projection zero-initialized.

    Args:
        hidden_dim: width of the tokens.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over `hidden_dim`.
        context_dim: width of the context (None: no cross-attention).
        **kwargs: base layer arguments.

    Example:
    >>> block = DiTBlock(32, 4)
    >>> block([keras.ops.ones((2, 16, 32)), keras.ops.ones((2, 32))]).shape
    (2, 16, 32)

    References:
        Peebles & Xie, Scalable Diffusion Models with Transformers, 2023.
    """

    def __init__(self, hidden_dim, num_heads, mlp_ratio=4.0, context_dim=None, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = int(hidden_dim)
        self.num_heads = int(num_heads)
        self.mlp_ratio = float(mlp_ratio)
        self.context_dim = None if context_dim is None else int(context_dim)
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"`num_heads`={num_heads} does not divide `hidden_dim`={hidden_dim}"
            )
        d = self.hidden_dim
        policy = self.dtype_policy
        ln = lambda name: keras.layers.LayerNormalization(
            epsilon=1e-6, center=False, scale=False, dtype=policy, name=name
        )
        self.norm_1 = ln("norm_1")
        self.qkv = keras.layers.Dense(
            3 * d, kernel_initializer="glorot_uniform", dtype=policy, name="qkv"
        )
        self.proj = keras.layers.Dense(d, dtype=policy, name="proj")
        self.norm_2 = ln("norm_2")
        self.mlp_1 = keras.layers.Dense(int(d * self.mlp_ratio), dtype=policy, name="mlp_1")
        self.mlp_2 = keras.layers.Dense(d, dtype=policy, name="mlp_2")
        self.ada_ln = keras.layers.Dense(
            6 * d, kernel_initializer="zeros", dtype=policy, name="ada_ln"
        )
        if self.context_dim:
            self.cross_norm = keras.layers.LayerNormalization(
                epsilon=1e-6, dtype=policy, name="cross_norm"
            )
            self.cross_q = keras.layers.Dense(d, dtype=policy, name="cross_q")
            self.cross_kv = keras.layers.Dense(2 * d, dtype=policy, name="cross_kv")
            self.cross_proj = keras.layers.Dense(
                d, kernel_initializer="zeros", dtype=policy, name="cross_proj"
            )

    def build(self, input_shape):
        d = self.hidden_dim
        tok = (None, None, d)
        self.norm_1.build(tok)
        self.qkv.build(tok)
        self.proj.build(tok)
        self.norm_2.build(tok)
        self.mlp_1.build(tok)
        self.mlp_2.build((None, None, int(d * self.mlp_ratio)))
        self.ada_ln.build((None, d))
        if self.context_dim:
            self.cross_norm.build(tok)
            self.cross_q.build(tok)
            self.cross_kv.build((None, None, self.context_dim))
            self.cross_proj.build(tok)
        self.built = True

    def call(self, inputs):
        if self.context_dim:
            x, c, context = inputs
        else:
            (x, c), context = inputs, None
        mod = self.ada_ln(ops.silu(c))
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = ops.split(
            mod, 6, axis=-1
        )
        h = modulate(self.norm_1(x), shift_msa, scale_msa)
        q, k, v = ops.split(self.qkv(h), 3, axis=-1)
        h = self.proj(multi_head_attention(q, k, v, self.num_heads))
        x = x + gate_msa[:, None, :] * h
        if context is not None:
            q = self.cross_q(self.cross_norm(x))
            k, v = ops.split(self.cross_kv(ops.cast(context, q.dtype)), 2, axis=-1)
            x = x + self.cross_proj(multi_head_attention(q, k, v, self.num_heads))
        h = modulate(self.norm_2(x), shift_mlp, scale_mlp)
        h = self.mlp_2(ops.gelu(self.mlp_1(h), approximate=True))
        return x + gate_mlp[:, None, :] * h

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio,
                "context_dim": self.context_dim,
            }
        )
        return config
