"""MMDiT denoiser: the multimodal diffusion transformer of Stable Diffusion 3."""

import keras
from keras import ops

from keras_diffusion.layers import DiTFinalLayer
from keras_diffusion.layers import MMDiTBlock
from keras_diffusion.layers import PatchEmbedding
from keras_diffusion.layers import TimestepEmbedding
from keras_diffusion.layers.patch_embedding import unpatchify
from keras_diffusion.models.denoiser import Denoiser
from keras_diffusion.models.presets import MMDIT_PRESETS

POOLINGS = ("mean", "first")


@keras.saving.register_keras_serializable(package="keras_diffusion")
class MMDiT(Denoiser):
    """Multimodal Diffusion Transformer: `{"x_t", "t", "context", ...} ->
    prediction` shaped like x_t.

    The image is patchified (fixed 2-D sin-cos positions) into image tokens;
    the text context `(B, L, context_dim)` is projected to `hidden_dim` text
    tokens. `depth` `MMDiTBlock`s keep the two streams in their own weights
    and mix them with one joint attention per block. Every block is
    modulated (adaLN-Zero) by `c = time embedding + MLP(pooled text)`
    (+ class embedding), where the pooled text is the context's mean over
    its tokens (`pooling="mean"`) or its first token (`"first"`: the start
    token of `TextConditioner`). The last block's text stream is "pre-only"
    (keys and values, no output), as in SD3, and a final adaLN layer maps the
    image tokens back to patches. A fresh network outputs zeros.

    Use it wherever a text-conditional DiT or UNet goes:
    `LatentDiffusionModel(vae, MMDiT(...), text_encoder=TextConditioner(...))`;
    the empty prompt's context is the null condition of classifier-free
    guidance.

    Inputs (a dict):
        "x_t": `(B, H, W, input_channels)`, H and W divisible by
            `patch_size`.
        "t": `(B,)` float times in [0, 1].
        "context": `(B, L, context_dim)` (required).
        "labels": optional int `(B,)` in [0, num_classes] (null: num_classes).
        "condition": `(B, H, W, condition_channels)`, iff
            `condition_channels > 0` (concatenated on channels).
        "guidance": `(B,)` guidance scales w, required iff
            `guidance_embedding` (an LCM student).
    Output: float32 `(B, H, W, input_channels)`.

    Args:
        input_channels: channels of x_t (16 for SD3's latents).
        context_dim: width of the text context (required).
        patch_size: side of the patches.
        hidden_dim: width of both streams (the paper: 64 * depth).
        depth: number of MMDiT blocks.
        num_heads: attention heads (the paper: depth, i.e. 64 channels each).
        mlp_ratio: MLP width over hidden_dim.
        frequency_dim: sinusoidal features of the time embedding.
        pooling: "mean" or "first": how the pooled text vector is taken from
            the context.
        num_classes: optional class labels besides the text (None: none).
        condition_channels: channels of the image condition (0: none).
        guidance_embedding: condition on a guidance scale w (LCM, Luo et
            al. 2023): sinusoids of w (scaled by 1000, as t) and an MLP,
            through a zero-initialized projection added to `c`, so a copy
            of a trained MMDiT starts as that MMDiT.
        lora_rank, lora_target: set by `enable_lora`, restored on load.
        **kwargs: `keras.Model` arguments.

    Example:
    >>> model = MMDiT(input_channels=4, context_dim=32, patch_size=2,
    ...               hidden_dim=64, depth=2, num_heads=2)
    >>> out = model({"x_t": keras.random.normal((2, 8, 8, 4)),
    ...              "t": keras.ops.full((2,), 0.5),
    ...              "context": keras.random.normal((2, 6, 32))})
    >>> out.shape
    (2, 8, 8, 4)
    >>> big = MMDiT.from_preset("mmdit_d24")  # SD3's 2B sizing (unbuilt)

    References:
        Esser et al., Scaling Rectified Flow Transformers for High-Resolution
        Image Synthesis, 2024.
        Peebles & Xie, Scalable Diffusion Models with Transformers, 2023.
    """

    presets = MMDIT_PRESETS

    def __init__(
        self,
        input_channels=16,
        context_dim=None,
        patch_size=2,
        hidden_dim=1536,
        depth=24,
        num_heads=24,
        mlp_ratio=4.0,
        frequency_dim=256,
        pooling="mean",
        num_classes=None,
        condition_channels=0,
        guidance_embedding=False,
        lora_rank=None,
        lora_target="attention",
        **kwargs,
    ):
        super().__init__(**kwargs)
        if context_dim is None or int(context_dim) < 1:
            raise ValueError(
                "MMDiT is text-conditional: `context_dim` must be the width of the "
                f"context (e.g. TextConditioner's embedding_dim), received "
                f"context_dim={context_dim}"
            )
        if pooling not in POOLINGS:
            raise ValueError(
                f"Unknown `pooling`: {pooling!r}. Valid names: {list(POOLINGS)}"
            )
        if int(num_heads) < 1 or int(hidden_dim) % int(num_heads):
            raise ValueError(
                f"`num_heads`={num_heads} does not divide `hidden_dim`={hidden_dim}"
            )
        self.input_channels = int(input_channels)
        self.context_dim = int(context_dim)
        self.patch_size = int(patch_size)
        self.hidden_dim = int(hidden_dim)
        self.depth = int(depth)
        self.num_heads = int(num_heads)
        self.mlp_ratio = float(mlp_ratio)
        self.frequency_dim = int(frequency_dim)
        self.pooling = pooling
        self.num_classes = None if num_classes is None else int(num_classes)
        self.condition_channels = int(condition_channels or 0)
        self.guidance_embedding = bool(guidance_embedding)
        self.lora_rank = lora_rank
        self.lora_target = lora_target

    def _divisor(self):
        return self.patch_size, "patch_size"

    def build(self, input_shape):
        x_shape = self._check_input_shapes(input_shape, *self._divisor())
        policy = self.dtype_policy
        d = self.hidden_dim
        b, h, w = x_shape[:3]
        self.patch_embed = PatchEmbedding(d, self.patch_size, dtype=policy, name="patch_embed")
        self.patch_embed.build((b, h, w, self.input_channels + self.condition_channels))
        self.context_embed = keras.layers.Dense(d, dtype=policy, name="context_embed")
        self.context_embed.build((None, None, self.context_dim))
        self.time_embed = TimestepEmbedding(
            d, frequency_dim=self.frequency_dim, dtype=policy, name="time_embed"
        )
        self.time_embed.build((None,))
        self.pooled_embed_1 = keras.layers.Dense(d, dtype=policy, name="pooled_embed_1")
        self.pooled_embed_1.build((None, self.context_dim))
        self.pooled_embed_2 = keras.layers.Dense(d, dtype=policy, name="pooled_embed_2")
        self.pooled_embed_2.build((None, d))
        if self.num_classes is not None:
            self.label_embed = keras.layers.Embedding(
                self.num_classes + 1,
                d,
                embeddings_initializer=keras.initializers.RandomNormal(stddev=0.02),
                dtype=policy,
                name="label_embed",
            )
            self.label_embed.build((None,))
        self._build_guidance_embedding(d, self.frequency_dim)
        self.blocks = []
        tok = (b, None, d)
        for i in range(self.depth):
            block = MMDiTBlock(
                d, self.num_heads, self.mlp_ratio, text_output=i < self.depth - 1,
                dtype=policy, name=f"block_{i}",
            )
            block.build([tok, tok, (b, d)])
            self.blocks.append(block)
        self.final_layer = DiTFinalLayer(
            self.patch_size, self.input_channels, dtype=policy, name="final_layer"
        )
        self.final_layer.build([tok, (b, d)])
        self.built = True
        self._maybe_restore_lora()

    def call(self, inputs, training=None):
        x, t, labels, context = self._unpack(inputs)
        h, w = x.shape[1], x.shape[2]
        tokens = self.patch_embed(x)
        text = self.context_embed(context)
        pooled = context[:, 0] if self.pooling == "first" else ops.mean(context, axis=1)
        c = self.time_embed(t)
        c = c + self.pooled_embed_2(ops.silu(self.pooled_embed_1(pooled)))
        if labels is not None:
            c = c + ops.cast(self.label_embed(labels), c.dtype)
        c = self._add_guidance_embedding(c, inputs.get("guidance"))
        for block in self.blocks:
            tokens, text = block([tokens, text, c])
        out = self.final_layer([tokens, c])
        out = unpatchify(out, h, w, self.patch_size, self.input_channels)
        return ops.cast(out, "float32")

    def _lora_targets(self, target):
        if target != "attention":
            return super()._lora_targets(target)
        names = ("qkv", "proj")
        return [
            getattr(block, f"{stream}_{name}")
            for block in self._flatten_layers(include_self=False)
            if isinstance(block, MMDiTBlock)
            for stream in ("image", "text")
            for name in names
            if hasattr(block, f"{stream}_{name}")
        ]

    def compute_output_shape(self, input_shape):
        return tuple(input_shape["x_t"])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "input_channels": self.input_channels,
                "context_dim": self.context_dim,
                "patch_size": self.patch_size,
                "hidden_dim": self.hidden_dim,
                "depth": self.depth,
                "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio,
                "frequency_dim": self.frequency_dim,
                "pooling": self.pooling,
                "num_classes": self.num_classes,
                "condition_channels": self.condition_channels,
                "guidance_embedding": self.guidance_embedding,
            }
        )
        config.update(self._base_config())
        return config
