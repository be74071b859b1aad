"""Presets of the denoisers.

`UNet.from_preset(name)` / `DiT.from_preset(name)` build a randomly
initialized network with a named configuration, in the manner of keras-hub
(no weights are downloaded); see `models.denoiser.Denoiser.from_preset`.
"""

# Parameter counts are those of the networks as built here (the fixed DiT
# position embedding included, as in DiT's own count), next to the papers'.
UNET_PRESETS = {
    # Ho et al. 2020, CIFAR-10: 35.7M parameters in the paper; 35,746,307
    # here (+0.13%). DDPM adds the time embedding (no scale-shift) and uses
    # one attention head. Attention at 16x16 on 32x32 images.
    "ddpm_cifar10": {
        "input_channels": 3,
        "base_channels": 128,
        "channel_multipliers": (1, 2, 2, 2),
        "num_res_blocks": 2,
        "attention_resolutions": (16,),
        "dropout": 0.1,
        "num_heads": 1,
        "time_conditioning": "additive",
    },
    # The throughput benchmark's configuration (diffusers' UNet2DModel with
    # block_out_channels (64, 128, 128, 128): 8.95M parameters).
    "unet_cifar10_small": {
        "input_channels": 3,
        "base_channels": 64,
        "channel_multipliers": (1, 2, 2, 2),
        "num_res_blocks": 2,
        "attention_resolutions": (16,),
        "dropout": 0.0,
        "head_channels": 32,
        "time_conditioning": "additive",
    },
    # Tiny, for tests and examples (e.g. 16x16 or 28x28 inputs).
    "unet_tiny": {
        "input_channels": 3,
        "base_channels": 32,
        "channel_multipliers": (1, 2),
        "num_res_blocks": 1,
        "attention_resolutions": (8,),
        "num_groups": 8,
        "head_channels": 32,
    },
}

_DIT_SIZES = {
    # name: (depth, hidden_dim, num_heads); Peebles & Xie Table 1.
    "s": (12, 384, 6),
    "b": (12, 768, 12),
    "l": (24, 1024, 16),
    "xl": (28, 1152, 16),
}
# Peebles & Xie, Table 4 (256x256 images -> 32x32x4 latents, 1000 classes),
# parameters in millions.
DIT_PAPER_PARAMS = {
    "dit_s_8": 33, "dit_s_4": 33, "dit_s_2": 33,
    "dit_b_8": 131, "dit_b_4": 130, "dit_b_2": 130,
    "dit_l_8": 459, "dit_l_4": 458, "dit_l_2": 458,
    "dit_xl_8": 676, "dit_xl_4": 675, "dit_xl_2": 675,
}
# The paper's networks predict 8 channels (learn_sigma); these presets keep
# the library's contract (output shaped like x_t, 4 channels), which removes
# (hidden_dim + 1) * patch_size**2 * 4 weights from the last layer (18,448
# for DiT-XL/2: 675,111,184 here against 675,129,632 in the reference code,
# the fixed position embedding counted in both). Counts stay within 1% of
# the table for every preset (tests/test_dit.py).
DIT_PRESETS = {
    f"dit_{size}_{p}": {
        "input_channels": 4,
        "patch_size": p,
        "hidden_dim": d,
        "depth": n,
        "num_heads": h,
        "num_classes": 1000,
    }
    for size, (n, d, h) in _DIT_SIZES.items()
    for p in (2, 4, 8)
}
# A recipe measured on the shipped MNIST digits (28x28x1: 7x7 tokens of 4x4
# patches; 1,281,680 parameters): with v prediction, the cosine schedule,
# AdamW(1e-3, clipnorm 1, 500 linear warm-up steps), the weight average 0.999
# and batch 64, 99.8% judge accuracy after 9,199 steps (22 min on 2 CPU
# cores, 1.98x the UNet's time; benchmarks/results/dit_mnist.md) and
# training/configs/dit_mnist.py.
DIT_PRESETS["dit_mnist"] = {
    "input_channels": 1,
    "patch_size": 4,
    "hidden_dim": 128,
    "depth": 4,
    "num_heads": 4,
    "num_classes": 10,
}

# MMDiT (Esser et al. 2024, Sec. 5.3): one knob, the depth d; hidden width
# 64 * d and d heads of 64 channels. SD3's latents have 16 channels, patch
# size 2, and a 4096-wide T5 context. "mmdit_d2" / "mmdit_d4" are CPU-sized
# (MNIST latents, a small TextConditioner).
MMDIT_DEPTHS = (2, 4, 15, 18, 21, 24, 30, 38)
MMDIT_PRESETS = {
    f"mmdit_d{d}": {
        "input_channels": 16 if d >= 15 else 4,
        "patch_size": 2,
        "depth": d,
        "hidden_dim": 64 * d,
        "num_heads": d,
        "context_dim": 4096 if d >= 15 else 64,
    }
    for d in MMDIT_DEPTHS
}
# Parameters in billions of the sizes the SD3 paper names: depth 38 is the
# paper's 8B model (Sec. 5.3: "our largest model ... 8B parameters"); depth
# 24 is its 2B model (SD3 Medium). Counted at 1024x1024 images (128x128x16
# latents) in tests/models/test_mmdit.py.
MMDIT_PAPER_PARAMS = {"mmdit_d24": 2.0, "mmdit_d38": 8.0}
