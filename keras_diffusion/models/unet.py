"""UNet denoiser (DDPM / ADM / Stable Diffusion style)."""

import keras
from keras import ops

from keras_diffusion.layers import AttentionBlock
from keras_diffusion.layers import Downsample
from keras_diffusion.layers import GroupNormalization
from keras_diffusion.layers import ResnetBlock
from keras_diffusion.layers import TimestepEmbedding
from keras_diffusion.layers import Upsample
from keras_diffusion.models.presets import UNET_PRESETS
from keras_diffusion.models.denoiser import Denoiser
from keras_diffusion.models.denoiser import add_residuals


@keras.saving.register_keras_serializable(package="keras_diffusion")
class UNet(Denoiser):
    """UNet denoiser: `{"x_t", "t", ...} -> prediction` shaped like x_t.

    Encoder of `len(channel_multipliers)` levels of `num_res_blocks`
    `ResnetBlock`s (with an `AttentionBlock` after each at the resolutions in
    `attention_resolutions`) separated by 2x downsampling, a middle block
    (res, attention, res), and a decoder of `num_res_blocks + 1` blocks per
    level fed with the encoder's skip connections (DDPM's layout). Time goes
    through sinusoids (t scaled by 1000) and an MLP; class labels add an
    embedding (with a null class for classifier-free guidance); a context
    sequence enters through cross-attention in the attention blocks; image
    conditions are concatenated to x_t on channels.

    Inputs (a dict):
        "x_t": `(B, H, W, input_channels)` noisy images; H and W divisible
            by `2 ** (len(channel_multipliers) - 1)`.
        "t": `(B,)` float times in [0, 1].
        "labels": optional int `(B,)` in [0, num_classes] (num_classes is
            the null class, `model.null_label`; missing labels mean null).
        "context": `(B, L, context_dim)`, required iff `context_dim` is set.
        "condition": `(B, H, W, condition_channels)`, required iff
            `condition_channels > 0`.
        "guidance": `(B,)` guidance scales w, required iff
            `guidance_embedding` (an LCM student).
    Output: float32 `(B, H, W, output_channels)`, `output_channels`
    defaulting to `input_channels`, also under mixed precision.

    Args:
        input_channels: channels of x_t.
        output_channels: channels of the output (default: input_channels).
        base_channels: channels of the first level.
        channel_multipliers: per-level multipliers of `base_channels`.
        num_res_blocks: residual blocks per encoder level.
        attention_resolutions: feature-map sizes (in pixels, e.g. 16 for
            16x16) that get attention; resolved against the input size.
        num_heads: attention heads (when `head_channels` is None).
        head_channels: channels per attention head (overrides num_heads).
        dropout: dropout rate in the residual blocks.
        num_groups: GroupNormalization groups.
        time_conditioning: "scale_shift" (ADM) or "additive" (DDPM).
        time_embedding_dim: width of the time embedding (default
            4 * base_channels).
        resample_with_conv: conv (True) or pooling/plain resize (False).
        num_classes: number of classes (None: unconditional).
        context_dim: width of the context sequence (None: no
            cross-attention).
        condition_channels: channels of the image condition (0: none).
        guidance_embedding: condition on a guidance scale w (LCM, Luo et
            al. 2023): sinusoids of w (scaled by 1000, as t) and an MLP,
            through a zero-initialized projection added to the time
            embedding, so a copy of a trained UNet starts as that UNet.
        lora_rank, lora_target: set by `enable_lora`, restored on load.
        **kwargs: `keras.Model` arguments (name, dtype).

    Example:
    >>> model = UNet.from_preset("unet_tiny")
    >>> x = keras.random.normal((2, 16, 16, 3))
    >>> model({"x_t": x, "t": keras.ops.full((2,), 0.5)}).shape
    (2, 16, 16, 3)

    References:
        Ho et al., Denoising Diffusion Probabilistic Models, 2020.
        Dhariwal & Nichol, Diffusion Models Beat GANs on Image Synthesis, 2021.
        Rombach et al., High-Resolution Image Synthesis with Latent Diffusion
        Models, 2022.
    """

    presets = UNET_PRESETS

    def __init__(
        self,
        input_channels=3,
        output_channels=None,
        base_channels=128,
        channel_multipliers=(1, 2, 2, 2),
        num_res_blocks=2,
        attention_resolutions=(16,),
        num_heads=1,
        head_channels=None,
        dropout=0.0,
        num_groups=32,
        time_conditioning="scale_shift",
        time_embedding_dim=None,
        resample_with_conv=True,
        num_classes=None,
        context_dim=None,
        condition_channels=0,
        guidance_embedding=False,
        lora_rank=None,
        lora_target="attention",
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.input_channels = int(input_channels)
        self.output_channels = int(output_channels or input_channels)
        self.base_channels = int(base_channels)
        self.channel_multipliers = tuple(int(m) for m in channel_multipliers)
        self.num_res_blocks = int(num_res_blocks)
        self.attention_resolutions = tuple(int(r) for r in attention_resolutions)
        self.num_heads = int(num_heads)
        self.head_channels = None if head_channels is None else int(head_channels)
        self.dropout = float(dropout)
        self.num_groups = int(num_groups)
        self.time_conditioning = time_conditioning
        self.time_embedding_dim = int(time_embedding_dim or 4 * base_channels)
        self.resample_with_conv = bool(resample_with_conv)
        self.num_classes = None if num_classes is None else int(num_classes)
        self.context_dim = None if context_dim is None else int(context_dim)
        self.condition_channels = int(condition_channels or 0)
        self.guidance_embedding = bool(guidance_embedding)
        self.lora_rank = lora_rank
        self.lora_target = lora_target
        if time_conditioning not in ("scale_shift", "additive"):
            raise ValueError(
                "`time_conditioning` must be 'scale_shift' or 'additive', "
                f"received time_conditioning={time_conditioning!r}"
            )
        for c in (base_channels * m for m in self.channel_multipliers):
            if c % self.num_groups:
                raise ValueError(
                    f"`num_groups`={num_groups} does not divide the {c} channels "
                    "of a level"
                )

    def _divisor(self):
        return 2 ** (len(self.channel_multipliers) - 1), "2**(num levels - 1)"

    def build(self, input_shape):
        x_shape = self._check_input_shapes(input_shape, *self._divisor())
        b, hw, c, skips = self._build_encoder(x_shape)
        self._build_decoder(b, hw, c, skips)
        self.built = True
        self._maybe_restore_lora()

    def _res_block(self, c, name):
        return ResnetBlock(
            c,
            dropout=self.dropout,
            num_groups=self.num_groups,
            time_conditioning=self.time_conditioning,
            dtype=self.dtype_policy,
            name=name,
        )

    def _attn_block(self, name):
        return AttentionBlock(
            num_heads=self.num_heads,
            head_channels=self.head_channels,
            num_groups=self.num_groups,
            context_dim=self.context_dim,
            dtype=self.dtype_policy,
            name=name,
        )

    def _build_attn(self, layer, shape):
        if self.context_dim:
            layer.build([shape, (None, None, self.context_dim)])
        else:
            layer.build(shape)

    def _build_encoder(self, x_shape):
        """Builds the embeddings, the down blocks and the middle block;
        returns `(batch, (h, w), channels, skip channels)` at the middle."""
        policy = self.dtype_policy
        emb_dim = self.time_embedding_dim
        emb_shape = (None, emb_dim)
        self.time_embed = TimestepEmbedding(
            emb_dim, frequency_dim=self.base_channels, dtype=policy, name="time_embed"
        )
        self.time_embed.build((None,))
        if self.num_classes is not None:
            self.label_embed = keras.layers.Embedding(
                self.num_classes + 1, emb_dim, dtype=policy, name="label_embed"
            )
            self.label_embed.build((None,))
        self._build_guidance_embedding(emb_dim, self.base_channels)

        res_block, attn_block, build_attn = self._res_block, self._attn_block, self._build_attn
        b, size = x_shape[0], x_shape[1]
        in_c = self.input_channels + self.condition_channels
        c = self.base_channels
        self.conv_in = keras.layers.Conv2D(c, 3, padding="same", dtype=policy, name="conv_in")
        self.conv_in.build((b, x_shape[1], x_shape[2], in_c))
        hw = (x_shape[1], x_shape[2])
        levels = len(self.channel_multipliers)
        self._attention_levels = []
        self.down_res, self.down_attn, self.downsamplers = [], [], []
        skips = [c]
        for level, mult in enumerate(self.channel_multipliers):
            out_c = self.base_channels * mult
            attend = size in self.attention_resolutions
            self._attention_levels.append(attend)
            for i in range(self.num_res_blocks):
                block = res_block(out_c, f"down_{level}_res_{i}")
                block.build([(b,) + hw + (c,), emb_shape])
                self.down_res.append(block)
                c = out_c
                if attend:
                    attn = attn_block(f"down_{level}_attn_{i}")
                    build_attn(attn, (b,) + hw + (c,))
                    self.down_attn.append(attn)
                skips.append(c)
            if level != levels - 1:
                ds = Downsample(c, use_conv=self.resample_with_conv, dtype=policy, name=f"down_{level}_downsample")
                ds.build((b,) + hw + (c,))
                self.downsamplers.append(ds)
                hw = (hw[0] // 2, hw[1] // 2)
                size //= 2
                skips.append(c)
        self.mid_res_1 = res_block(c, "mid_res_1")
        self.mid_res_1.build([(b,) + hw + (c,), emb_shape])
        self.mid_attn = attn_block("mid_attn")
        build_attn(self.mid_attn, (b,) + hw + (c,))
        self.mid_res_2 = res_block(c, "mid_res_2")
        self.mid_res_2.build([(b,) + hw + (c,), emb_shape])
        return b, hw, c, skips

    def _build_decoder(self, b, hw, c, skips):
        policy = self.dtype_policy
        emb_shape = (None, self.time_embedding_dim)
        res_block, attn_block, build_attn = self._res_block, self._attn_block, self._build_attn
        levels = len(self.channel_multipliers)
        self.up_res, self.up_attn, self.upsamplers = [], [], []
        for level in reversed(range(levels)):
            out_c = self.base_channels * self.channel_multipliers[level]
            for i in range(self.num_res_blocks + 1):
                block = res_block(out_c, f"up_{level}_res_{i}")
                block.build([(b,) + hw + (c + skips.pop(),), emb_shape])
                self.up_res.append(block)
                c = out_c
                if self._attention_levels[level]:
                    attn = attn_block(f"up_{level}_attn_{i}")
                    build_attn(attn, (b,) + hw + (c,))
                    self.up_attn.append(attn)
            if level != 0:
                us = Upsample(c, use_conv=self.resample_with_conv, dtype=policy, name=f"up_{level}_upsample")
                us.build((b,) + hw + (c,))
                self.upsamplers.append(us)
                hw = (hw[0] * 2, hw[1] * 2)
        self.norm_out = GroupNormalization(
            self.num_groups, epsilon=1e-5, activation="silu", dtype=policy, name="norm_out"
        )
        self.norm_out.build((b,) + hw + (c,))
        self.conv_out = keras.layers.Conv2D(
            self.output_channels, 3, padding="same", dtype=policy, name="conv_out"
        )
        self.conv_out.build((b,) + hw + (c,))

    accepts_residuals = True

    def call(self, inputs, training=None, residuals=None):
        """The prediction; `residuals` (optional, e.g. from `ControlNet`s) is a
        list of tensors added to the skip connections, in encoder order, and
        (the last one) to the middle block's output."""
        x, t, labels, context = self._unpack(inputs)
        hs, h, emb = self._encode(x, t, labels, context, training,
                                  guidance=inputs.get("guidance"))
        if residuals is not None:
            hs, h = add_residuals(hs, h, residuals)
        return self._decode(hs, h, emb, context, training)

    def _encode(self, x, t, labels, context, training, hint=None, guidance=None):
        """The down blocks and the middle block: `(skips, middle, emb)`;
        `hint` (a ControlNet's) is added after `conv_in`, `guidance` (w)
        to the time embedding."""
        emb = self.time_embed(t)
        if labels is not None:
            emb = emb + ops.cast(self.label_embed(labels), emb.dtype)
        emb = self._add_guidance_embedding(emb, guidance)

        def attend(layer, h):
            return layer([h, context]) if self.context_dim else layer(h)

        h = self.conv_in(x)
        if hint is not None:
            h = h + ops.cast(hint, h.dtype)
        hs = [h]
        res, attn, ds = iter(self.down_res), iter(self.down_attn), iter(self.downsamplers)
        levels = len(self.channel_multipliers)
        for level in range(levels):
            for _ in range(self.num_res_blocks):
                h = next(res)([h, emb], training=training)
                if self._attention_levels[level]:
                    h = attend(next(attn), h)
                hs.append(h)
            if level != levels - 1:
                h = next(ds)(h)
                hs.append(h)
        h = self.mid_res_1([h, emb], training=training)
        h = attend(self.mid_attn, h)
        h = self.mid_res_2([h, emb], training=training)
        return hs, h, emb

    def _decode(self, hs, h, emb, context, training):
        def attend(layer, h):
            return layer([h, context]) if self.context_dim else layer(h)

        hs = list(hs)
        levels = len(self.channel_multipliers)
        res, attn, us = iter(self.up_res), iter(self.up_attn), iter(self.upsamplers)
        for level in reversed(range(levels)):
            for _ in range(self.num_res_blocks + 1):
                h = next(res)([ops.concatenate([h, hs.pop()], axis=-1), emb], training=training)
                if self._attention_levels[level]:
                    h = attend(next(attn), h)
            if level != 0:
                h = next(us)(h)
        h = self.conv_out(self.norm_out(h))
        return ops.cast(h, "float32")

    def compute_output_shape(self, input_shape):
        return tuple(input_shape["x_t"][:-1]) + (self.output_channels,)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "input_channels": self.input_channels,
                "output_channels": self.output_channels,
                "base_channels": self.base_channels,
                "channel_multipliers": list(self.channel_multipliers),
                "num_res_blocks": self.num_res_blocks,
                "attention_resolutions": list(self.attention_resolutions),
                "num_heads": self.num_heads,
                "head_channels": self.head_channels,
                "dropout": self.dropout,
                "num_groups": self.num_groups,
                "time_conditioning": self.time_conditioning,
                "time_embedding_dim": self.time_embedding_dim,
                "resample_with_conv": self.resample_with_conv,
                "num_classes": self.num_classes,
                "context_dim": self.context_dim,
                "condition_channels": self.condition_channels,
                "guidance_embedding": self.guidance_embedding,
            }
        )
        config.update(self._base_config())
        return config
