"""Latent DiT trained with rectified flow on an image folder.

    python -m training.train --config=training/configs/latent_dit_flow.py \
        --config.data.path=/data/images --workdir=/tmp/ldit

`model.vae` is required: a trained .keras VAE (or "stable_diffusion").
Class labels come from the folder's subfolders (`model.num_classes` must
match their number).
"""

from training.configs.base import get_base_config


def get_config():
    config = get_base_config()
    config.data.name = "image_folder"
    config.data.path = ""  # required: --config.data.path=...
    config.data.image_size = 256
    config.data.channels = 3
    config.data.random_flip = True
    config.data.batch_size = 32
    config.model.kind = "latent"
    # Required: a trained .keras VAE (keras_diffusion.models.VAE with its
    # scaling_factor set), e.g. --config.model.vae=/models/vae.keras, or
    # "stable_diffusion" for SD 1.x's VAE (keras-cv weights).
    config.model.vae = ""
    config.model.denoiser = "dit"
    config.model.denoiser_kwargs = {
        "patch_size": 2,
        "hidden_dim": 384,
        "depth": 12,
        "num_heads": 6,
    }
    config.model.schedule = "rectified_flow"
    config.model.prediction = "flow"
    config.model.time_distribution = "logit_normal"
    config.model.num_classes = 0
    config.optim.lr = 1e-4
    config.optim.warmup_steps = 1000
    config.optim.weight_decay = 0.0
    config.optim.ema_momentum = 0.9999
    config.train.num_steps = 400_000
    config.train.checkpoint_every = 5000
    config.train.sample_every = 5000
    config.sample.sampler = "euler"
    config.sample.num_steps = 50
    config.sample.guidance_scale = 4.0
    return config
