"""keras-cv's Stable Diffusion 1.x UNet, run layer by layer.

keras-cv's `DiffusionModel` is a Functional model: its skip connections
cannot take residuals. `unet_parts` sorts its layers by kind, and
`run_encoder` / `run_decoder` run them in the order keras-cv's constructor
wires them (the same computation), with a hint added after conv_in and
residuals added to the skips and the middle block: what
`StableDiffusionDenoiser` and `StableDiffusionControlNet` need for
ControlNets. `sd_timestep_embedding` is the UNet's time input.
"""

import math

from keras import ops

NUM_TRAIN_TIMESTEPS = 1000
TIMESTEP_EMBEDDING_DIM = 320


def sd_timestep_embedding(t, num_train_timesteps=NUM_TRAIN_TIMESTEPS, dim=TIMESTEP_EMBEDDING_DIM,
                          max_period=10000):
    """keras-cv's SD timestep embedding of continuous times `t` `[batch]`.

    k = t * T - 1 (step k at t = (k + 1) / T), then
    `[cos(k * f), sin(k * f)]` with f_i = exp(-log(max_period) * i / (dim / 2)),
    exactly `StableDiffusion._get_timestep_embedding` for integer k.
    """
    t = ops.reshape(ops.cast(t, "float32"), (-1,))
    k = t * float(num_train_timesteps) - 1.0
    half = dim // 2
    freqs = ops.exp(-math.log(max_period) * ops.arange(0, half, dtype="float32") / half)
    args = k[:, None] * freqs[None, :]
    return ops.concatenate([ops.cos(args), ops.sin(args)], axis=-1)


# keras-cv's SD 1.x UNet, level by level: (channels, attention head size or
# None for no SpatialTransformer); 8 heads everywhere, a 2x downsampling
# after every level but the last, 2 ResBlocks per level going down, 3 up.
UNET_LEVELS = ((320, 40), (640, 80), (1280, 160), (1280, None))
UNET_MIDDLE = (1280, 160)  # ResBlock, SpatialTransformer, ResBlock
UNET_HEADS = 8


def unet_parts(unet):
    """The layers of keras-cv's SD 1.x `DiffusionModel` (a Functional
    model), sorted by kind, each list in the order the forward pass uses
    them: `dense` (the 2 time-embedding layers), `activation` (their swish,
    then the output's), `conv` (`PaddedConv2D`: conv_in, the 3
    downsamplers, conv_out), `res` (22 ResBlocks: 8 down, 2 middle, 12 up),
    `attn` (16 SpatialTransformers: 6, 1, 9), `concat` (12), `up` (3
    Upsample), `norm` (1). `run_encoder` and `run_decoder` run them."""
    parts = {}
    for layer in unet.layers:
        kind = {"Dense": "dense", "Activation": "activation", "PaddedConv2D": "conv",
                "ResBlock": "res", "SpatialTransformer": "attn", "Concatenate": "concat",
                "Upsample": "up", "GroupNormalization": "norm", "InputLayer": None}.get(
            type(layer).__name__, "unknown")
        if kind is not None:
            parts.setdefault(kind, []).append(layer)
    counts = {k: len(v) for k, v in parts.items()}
    expected = {"dense": 2, "activation": 2, "conv": 5, "res": 22, "attn": 16, "concat": 12,
                "up": 3, "norm": 1}
    if counts != expected:
        raise ValueError(
            f"keras-cv's UNet does not have SD 1.x's layers: found {counts}, expected "
            f"{expected}"
        )
    return parts


def run_encoder(parts, x, emb, context, hint=None):
    """The time embedding, conv_in (+ `hint`), the down blocks and the
    middle block of `parts` (`unet_parts`, or a ControlNet's copy of the
    encoder); returns `(t_emb, skips, h)`: the 12 skip tensors and the
    middle block's output."""
    dense, res, attn, conv = parts["dense"], iter(parts["res"]), iter(parts["attn"]), \
        iter(parts["conv"])
    t_emb = dense[1](parts["activation"][0](dense[0](emb)))
    x = next(conv)(x)
    if hint is not None:
        x = x + ops.cast(hint, x.dtype)
    skips = [x]
    for level, (_, head_size) in enumerate(UNET_LEVELS):
        for _ in range(2):
            x = next(res)([x, t_emb])
            if head_size is not None:
                x = next(attn)([x, context])
            skips.append(x)
        if level < len(UNET_LEVELS) - 1:
            x = next(conv)(x)
            skips.append(x)
    x = next(res)([x, t_emb])
    x = next(attn)([x, context])
    return t_emb, skips, next(res)([x, t_emb])


def run_decoder(parts, t_emb, skips, h, context):
    """The up blocks and the output of `parts` (`unet_parts`) from
    `run_encoder`'s skips and middle output."""
    res, attn, concat = iter(parts["res"][10:]), iter(parts["attn"][7:]), iter(parts["concat"])
    skips, x = list(skips), h
    for level, (_, head_size) in enumerate(reversed(UNET_LEVELS)):
        for _ in range(3):
            x = next(res)([next(concat)([x, skips.pop()]), t_emb])
            if head_size is not None:
                x = next(attn)([x, context])
        if level < len(UNET_LEVELS) - 1:
            x = parts["up"][level](x)
    return parts["conv"][-1](parts["activation"][1](parts["norm"][0](x)))
