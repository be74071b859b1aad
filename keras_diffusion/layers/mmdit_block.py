"""MMDiT block: two token streams, one joint attention (Esser et al. 2024)."""

import keras
from keras import ops

from keras_diffusion.layers.attention_block import multi_head_attention
from keras_diffusion.layers.dit_block import modulate


@keras.saving.register_keras_serializable(package="keras_diffusion")
class MMDiTBlock(keras.layers.Layer):
    """The multimodal DiT block of Stable Diffusion 3.

    Called on `[x, context, c]`: image tokens `x` `(B, N, hidden_dim)`, text
    tokens `context` `(B, L, hidden_dim)` and the conditioning vector `c`
    `(B, hidden_dim)` (time + pooled text embedding). Returns `[x, context]`
    with the same shapes.

    Each stream has its own weights: an adaLN-Zero modulation regressed from
    `c` (shift, scale and gate for attention and MLP), a non-affine
    LayerNorm, a q/k/v projection, an output projection and a GELU MLP. The
    two streams' queries, keys and values are concatenated along the
    sequence, `[context, x]`, and go through ONE attention, so text attends to
    the image and the image to the text in every block; the result is split
    back into the two streams. The gates start at zero, so a fresh block is
    the identity on both streams.

    With `text_output=False` (SD3's last block) the text stream only
    contributes keys and values: it has no output projection and no MLP, and
    `context` is returned unchanged.

    Args:
        hidden_dim: width of both streams' tokens.
        num_heads: attention heads.
        mlp_ratio: MLP hidden width over `hidden_dim`.
        text_output: whether the text stream is updated (False: the last
            block's "pre-only" text stream).
        **kwargs: base layer arguments.

    Example:
    >>> block = MMDiTBlock(32, 4)
    >>> x, context = block([keras.ops.ones((2, 16, 32)),
    ...                     keras.ops.ones((2, 5, 32)), keras.ops.ones((2, 32))])
    >>> x.shape, context.shape
    ((2, 16, 32), (2, 5, 32))

    References:
        Esser et al., Scaling Rectified Flow Transformers for High-Resolution
        Image Synthesis, 2024 (Fig. 2b).
        Peebles & Xie, Scalable Diffusion Models with Transformers, 2023.
    """

    def __init__(self, hidden_dim, num_heads, mlp_ratio=4.0, text_output=True, **kwargs):
        super().__init__(**kwargs)
        self.hidden_dim = int(hidden_dim)
        self.num_heads = int(num_heads)
        self.mlp_ratio = float(mlp_ratio)
        self.text_output = bool(text_output)
        if self.num_heads < 1 or self.hidden_dim % self.num_heads:
            raise ValueError(
                f"`num_heads`={num_heads} does not divide `hidden_dim`={hidden_dim}"
            )
        self._make_stream("image", with_output=True)
        self._make_stream("text", with_output=self.text_output)

    def _make_stream(self, prefix, with_output):
        d, policy = self.hidden_dim, self.dtype_policy
        hidden = int(d * self.mlp_ratio)

        def dense(units, name, **kw):
            return keras.layers.Dense(units, dtype=policy, name=f"{prefix}_{name}", **kw)

        def norm(name):
            return keras.layers.LayerNormalization(
                epsilon=1e-6, center=False, scale=False, dtype=policy, name=f"{prefix}_{name}"
            )

        # adaLN-Zero: 6 modulation vectors with an output, 2 (shift, scale)
        # for the pre-only text stream.
        stream = {
            "ada_ln": dense(6 * d if with_output else 2 * d, "ada_ln", kernel_initializer="zeros"),
            "norm_1": norm("norm_1"),
            "qkv": dense(3 * d, "qkv"),
        }
        if with_output:
            stream.update(
                proj=dense(d, "proj"), norm_2=norm("norm_2"),
                mlp_1=dense(hidden, "mlp_1"), mlp_2=dense(d, "mlp_2"),
            )
        for name, layer in stream.items():
            setattr(self, f"{prefix}_{name}", layer)

    def _stream(self, prefix):
        """The stream's layers by short name (`qkv`, `proj`, ...)."""
        names = ("ada_ln", "norm_1", "qkv", "proj", "norm_2", "mlp_1", "mlp_2")
        return {n: getattr(self, f"{prefix}_{n}") for n in names if hasattr(self, f"{prefix}_{n}")}

    def build(self, input_shape):
        d = self.hidden_dim
        tok = (None, None, d)
        for stream in (self._stream("image"), self._stream("text")):
            stream["ada_ln"].build((None, d))
            for name in ("norm_1", "qkv", "proj", "norm_2", "mlp_1"):
                if name in stream:
                    stream[name].build(tok)
            if "mlp_2" in stream:
                stream["mlp_2"].build((None, None, int(d * self.mlp_ratio)))
        self.built = True

    def _pre_attention(self, stream, tokens, c):
        mod = ops.split(stream["ada_ln"](ops.silu(c)), 6 if "proj" in stream else 2, axis=-1)
        h = modulate(stream["norm_1"](tokens), mod[0], mod[1])
        return ops.split(stream["qkv"](h), 3, axis=-1), mod

    def _post_attention(self, stream, tokens, attended, mod):
        _, _, gate_msa, shift_mlp, scale_mlp, gate_mlp = mod
        tokens = tokens + gate_msa[:, None, :] * stream["proj"](attended)
        h = modulate(stream["norm_2"](tokens), shift_mlp, scale_mlp)
        h = stream["mlp_2"](ops.gelu(stream["mlp_1"](h), approximate=True))
        return tokens + gate_mlp[:, None, :] * h

    def call(self, inputs):
        x, context, c = inputs
        context = ops.cast(context, x.dtype)
        image, text = self._stream("image"), self._stream("text")
        (xq, xk, xv), x_mod = self._pre_attention(image, x, c)
        (tq, tk, tv), t_mod = self._pre_attention(text, context, c)
        length = ops.shape(context)[1]
        # One attention over the joint sequence [text, image] (SD3's order).
        joint = multi_head_attention(
            ops.concatenate([tq, xq], axis=1),
            ops.concatenate([tk, xk], axis=1),
            ops.concatenate([tv, xv], axis=1),
            self.num_heads,
        )
        text_attended, image_attended = joint[:, :length], joint[:, length:]
        x = self._post_attention(image, x, image_attended, x_mod)
        if self.text_output:
            context = self._post_attention(text, context, text_attended, t_mod)
        return [x, context]

    def compute_output_shape(self, input_shape):
        return [tuple(input_shape[0]), tuple(input_shape[1])]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "hidden_dim": self.hidden_dim,
                "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio,
                "text_output": self.text_output,
            }
        )
        return config
