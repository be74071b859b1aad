"""DiT denoiser (Peebles & Xie)."""

import keras
from keras import ops

from keras_diffusion.layers import DiTBlock
from keras_diffusion.layers import DiTFinalLayer
from keras_diffusion.layers import PatchEmbedding
from keras_diffusion.layers import TimestepEmbedding
from keras_diffusion.layers.patch_embedding import unpatchify
from keras_diffusion.models.presets import DIT_PRESETS
from keras_diffusion.models.denoiser import Denoiser


@keras.saving.register_keras_serializable(package="keras_diffusion")
class DiT(Denoiser):
    """Diffusion Transformer: `{"x_t", "t", ...} -> prediction` shaped like x_t.

    Patchify (`patch_size` 2/4/8) with a fixed 2-D sin-cos position
    embedding, `depth` adaLN-Zero transformer blocks conditioned on the time
    (+ class) embedding, optional cross-attention to a context sequence, and
    a final adaLN layer whose per-patch outputs are un-patchified. The
    adaLN-Zero initialization makes the freshly built network output zeros.

    Inputs (a dict):
        "x_t": `(B, H, W, input_channels)`, H and W divisible by
            `patch_size`.
        "t": `(B,)` float times in [0, 1] (scaled by 1000 for the sinusoids).
        "labels": optional int `(B,)` in [0, num_classes]; num_classes is
            the null class (`model.null_label`); missing labels mean null.
        "context": `(B, L, context_dim)`, required iff `context_dim` is set.
        "condition": `(B, H, W, condition_channels)`, required iff
            `condition_channels > 0` (concatenated on channels).
        "guidance": `(B,)` guidance scales w, required iff
            `guidance_embedding` (an LCM student).
    Output: float32 `(B, H, W, input_channels)`, also under mixed precision.

    Args:
        input_channels: channels of x_t (4 for Stable Diffusion latents).
        patch_size: side of the patches.
        hidden_dim: width of the tokens.
        depth: number of DiT blocks.
        num_heads: attention heads.
        mlp_ratio: MLP width over hidden_dim.
        frequency_dim: sinusoidal features of the time embedding.
        num_classes: number of classes (None: unconditional).
        context_dim: width of the context (None: no cross-attention).
        condition_channels: channels of the image condition (0: none).
        guidance_embedding: condition on a guidance scale w (LCM, Luo et
            al. 2023): sinusoids of w (scaled by 1000, as t) and an MLP,
            through a zero-initialized projection added to the time
            embedding, so a copy of a trained DiT starts as that DiT.
        learn_sigma: DiT's / improved DDPM's learned variance: the final
            layer predicts `2 * input_channels` channels, the prediction and
            the interpolation `v` of the log-variance between the posterior's
            and beta (Nichol & Dhariwal, Eq. 15). Calling the model returns
            the prediction alone, so `fit`, `generate` and the export use the
            first `input_channels`; `model(inputs, return_variance=True)`
            returns `(prediction, v)`. The library's losses do not train `v`
            (it has no L_vlb term): the option matches the papers' networks
            (DiT-XL/2: 675,129,632 parameters) for fine-tuning and loading.
        lora_rank, lora_target: set by `enable_lora`, restored on load.
        **kwargs: `keras.Model` arguments.

    Example:
    >>> model = DiT(input_channels=4, patch_size=2, hidden_dim=32, depth=2,
    ...             num_heads=4, num_classes=10)
    >>> x = keras.random.normal((2, 8, 8, 4))
    >>> model({"x_t": x, "t": keras.ops.full((2,), 0.5),
    ...        "labels": keras.ops.array([1, 10])}).shape
    (2, 8, 8, 4)

    References:
        Peebles & Xie, Scalable Diffusion Models with Transformers, 2023.
        Nichol & Dhariwal, Improved Denoising Diffusion Probabilistic Models,
        2021 (the learned variance).
    """

    presets = DIT_PRESETS

    def __init__(
        self,
        input_channels=4,
        patch_size=2,
        hidden_dim=1152,
        depth=28,
        num_heads=16,
        mlp_ratio=4.0,
        frequency_dim=256,
        num_classes=None,
        context_dim=None,
        condition_channels=0,
        lora_rank=None,
        lora_target="attention",
        learn_sigma=False,
        guidance_embedding=False,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.input_channels = int(input_channels)
        self.patch_size = int(patch_size)
        self.hidden_dim = int(hidden_dim)
        self.depth = int(depth)
        self.num_heads = int(num_heads)
        self.mlp_ratio = float(mlp_ratio)
        self.frequency_dim = int(frequency_dim)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.context_dim = None if context_dim is None else int(context_dim)
        self.condition_channels = int(condition_channels or 0)
        self.learn_sigma = bool(learn_sigma)
        self.guidance_embedding = bool(guidance_embedding)
        self.lora_rank = lora_rank
        self.lora_target = lora_target
        if self.hidden_dim % self.num_heads:
            raise ValueError(
                f"`num_heads`={num_heads} does not divide `hidden_dim`={hidden_dim}"
            )

    def _divisor(self):
        return self.patch_size, "patch_size"

    def build(self, input_shape):
        x_shape = self._check_input_shapes(input_shape, *self._divisor())
        policy = self.dtype_policy
        d = self.hidden_dim
        b, h, w = x_shape[:3]
        self.patch_embed = PatchEmbedding(d, self.patch_size, dtype=policy, name="patch_embed")
        self.patch_embed.build((b, h, w, self.input_channels + self.condition_channels))
        self.time_embed = TimestepEmbedding(
            d, frequency_dim=self.frequency_dim, dtype=policy, name="time_embed"
        )
        self.time_embed.build((None,))
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
            block = DiTBlock(
                d, self.num_heads, self.mlp_ratio, context_dim=self.context_dim,
                dtype=policy, name=f"block_{i}",
            )
            shapes = [tok, (b, d)]
            if self.context_dim:
                shapes.append((b, None, self.context_dim))
            block.build(shapes)
            self.blocks.append(block)
        self.final_layer = DiTFinalLayer(
            self.patch_size, self.output_channels, dtype=policy, name="final_layer"
        )
        self.final_layer.build([tok, (b, d)])
        self.built = True
        self._maybe_restore_lora()

    @property
    def output_channels(self):
        """Channels of the final layer: 2 * input_channels with learn_sigma."""
        return self.input_channels * (2 if self.learn_sigma else 1)

    def call(self, inputs, training=None, return_variance=False):
        x, t, labels, context = self._unpack(inputs)
        h, w = x.shape[1], x.shape[2]
        tokens = self.patch_embed(x)
        c = self.time_embed(t)
        if labels is not None:
            c = c + ops.cast(self.label_embed(labels), c.dtype)
        c = self._add_guidance_embedding(c, inputs.get("guidance"))
        for block in self.blocks:
            tokens = block([tokens, c, context] if self.context_dim else [tokens, c])
        out = self.final_layer([tokens, c])
        out = ops.cast(
            unpatchify(out, h, w, self.patch_size, self.output_channels), "float32"
        )
        if not self.learn_sigma:
            if return_variance:
                raise ValueError(
                    "`return_variance=True` needs a DiT built with learn_sigma=True, "
                    "received learn_sigma=False"
                )
            return out
        prediction, v = out[..., : self.input_channels], out[..., self.input_channels :]
        return (prediction, v) if return_variance else prediction

    def compute_output_shape(self, input_shape):
        return tuple(input_shape["x_t"])

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "input_channels": self.input_channels,
                "patch_size": self.patch_size,
                "hidden_dim": self.hidden_dim,
                "depth": self.depth,
                "num_heads": self.num_heads,
                "mlp_ratio": self.mlp_ratio,
                "frequency_dim": self.frequency_dim,
                "num_classes": self.num_classes,
                "context_dim": self.context_dim,
                "condition_channels": self.condition_channels,
                "learn_sigma": self.learn_sigma,
                "guidance_embedding": self.guidance_embedding,
            }
        )
        config.update(self._base_config())
        return config
