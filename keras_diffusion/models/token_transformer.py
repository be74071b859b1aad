"""A bidirectional Transformer over token sequences: the text denoiser."""

import keras
from keras import ops

from keras_diffusion.layers import DiTBlock
from keras_diffusion.layers import TimestepEmbedding


@keras.saving.register_keras_serializable(package="keras_diffusion")
class TokenTransformer(keras.Model):
    """Bidirectional Transformer: `{"x_t": tokens, "t": times} -> logits`.

    Token and learned position embeddings, `num_layers` of DiT's adaLN-Zero
    blocks (`keras_diffusion.layers.DiTBlock`, full self-attention, no causal
    mask), a final LayerNorm and a linear head to `vocabulary_size` logits.
    With `time_conditioning` the blocks are modulated by an embedding of t
    (as DiT); without it (MDLM's finding: masked diffusion needs no time,
    the number of masks tells it) they are modulated by a learned constant,
    and the output depends on the tokens alone, which lets the sampler skip
    the network when no token changed.

    Inputs (a dict):
        "x_t": int `(B, L)` token ids in [0, vocabulary_size), L <=
            `max_length`.
        "t": float `(B,)` times in [0, 1] (unused without time
            conditioning; may be omitted then).
    Output: float32 logits `(B, L, vocabulary_size)`.

    Args:
        vocabulary_size: the number of token ids (the mask token included).
        max_length: the longest sequence (rows of the position embedding).
        hidden_dim: width of the tokens.
        num_layers: Transformer blocks.
        num_heads: attention heads.
        mlp_ratio: MLP width over `hidden_dim`.
        time_conditioning: modulate the blocks by the time.
        dropout: dropout on the embeddings (training only).
        **kwargs: `keras.Model` arguments.

    Example:
    >>> net = TokenTransformer(vocabulary_size=30, max_length=16, hidden_dim=32,
    ...                        num_layers=2, num_heads=4)
    >>> net({"x_t": keras.ops.zeros((2, 16), "int32"),
    ...      "t": keras.ops.full((2,), 0.5)}).shape
    (2, 16, 30)

    References:
        Sahoo et al., Simple and Effective Masked Diffusion Language Models,
        2024 (a DiT-style bidirectional Transformer on tokens).
        Peebles & Xie, Scalable Diffusion Models with Transformers, 2023.
    """

    def __init__(
        self,
        vocabulary_size,
        max_length=128,
        hidden_dim=256,
        num_layers=4,
        num_heads=4,
        mlp_ratio=4.0,
        time_conditioning=False,
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = int(vocabulary_size)
        self.max_length = int(max_length)
        self.hidden_dim = int(hidden_dim)
        self.num_layers = int(num_layers)
        self.num_heads = int(num_heads)
        self.mlp_ratio = float(mlp_ratio)
        self.time_conditioning = bool(time_conditioning)
        self.dropout = float(dropout)
        for name in ("vocabulary_size", "max_length", "hidden_dim", "num_layers", "num_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"`{name}` must be >= 1, received {name}={getattr(self, name)}")
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"`num_heads`={num_heads} must divide hidden_dim={hidden_dim}"
            )
        d = self.hidden_dim
        policy = self.dtype_policy
        self.token_embedding = keras.layers.Embedding(
            self.vocabulary_size, d, dtype=policy, name="token_embedding"
        )
        self.position_embedding = keras.layers.Embedding(
            self.max_length, d, dtype=policy, name="position_embedding"
        )
        self.embedding_dropout = keras.layers.Dropout(self.dropout, dtype=policy)
        if self.time_conditioning:
            self.time_embedding = TimestepEmbedding(d, dtype=policy, name="time_embedding")
        self.blocks = [
            DiTBlock(d, self.num_heads, self.mlp_ratio, dtype=policy, name=f"block_{i}")
            for i in range(self.num_layers)
        ]
        self.final_norm = keras.layers.LayerNormalization(
            epsilon=1e-6, dtype=policy, name="final_norm"
        )
        self.head = keras.layers.Dense(self.vocabulary_size, dtype=policy, name="head")

    def build(self, input_shape=None):
        d = self.hidden_dim
        self.token_embedding.build((None, None))
        self.position_embedding.build((None,))
        if self.time_conditioning:
            self.time_embedding.build((None,))
        for block in self.blocks:
            block.build([(None, None, d), (None, d)])
        self.final_norm.build((None, None, d))
        self.head.build((None, None, d))
        self.built = True

    def call(self, inputs, training=None):
        if isinstance(inputs, dict):
            tokens, t = inputs["x_t"], inputs.get("t")
        else:
            tokens, t = inputs, None
        tokens = ops.cast(tokens, "int32")
        length = ops.shape(tokens)[1]
        if isinstance(length, int) and length > self.max_length:
            raise ValueError(
                f"The sequence length {length} is over `max_length`={self.max_length} "
                "of this TokenTransformer"
            )
        positions = self.position_embedding(ops.arange(length))
        x = self.token_embedding(tokens) + positions[None]
        x = self.embedding_dropout(x, training=training)
        batch = ops.shape(tokens)[0]
        if self.time_conditioning:
            if t is None:
                raise ValueError("`t` is required: this TokenTransformer is time-conditioned")
            t = ops.broadcast_to(ops.reshape(ops.cast(t, "float32"), (-1,)), (batch,))
            c = self.time_embedding(t)
        else:
            c = ops.zeros((batch, self.hidden_dim), x.dtype)
        for block in self.blocks:
            x = block([x, ops.cast(c, x.dtype)])
        return ops.cast(self.head(self.final_norm(x)), "float32")

    def compute_output_shape(self, input_shape):
        shape = input_shape["x_t"] if isinstance(input_shape, dict) else input_shape
        return tuple(shape) + (self.vocabulary_size,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "max_length": self.max_length,
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio,
                "time_conditioning": self.time_conditioning,
                "dropout": self.dropout,
            }
        )
        return config
