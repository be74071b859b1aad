"""LoRA fine-tuning of Stable Diffusion 1.x (keras-cv weights) on captioned images.

    python -m training.train --config=training/configs/sd_lora.py \
        --config.data.path=/data/captioned_images --workdir=/tmp/sd_lora

The folder holds images with captions (`metadata.jsonl` or sidecar `.txt`).
Needs the Stable Diffusion weights keras-cv downloads (network) or its cache.
"""

from training.configs.base import get_base_config


def get_config():
    config = get_base_config()
    config.data.name = "image_folder"
    config.data.path = ""  # required
    config.data.image_size = 512
    config.data.channels = 3
    config.data.labels = False
    config.data.captions = True
    config.data.random_flip = True
    config.data.batch_size = 1
    config.data.cache = False
    config.model.kind = "sd_lora"
    config.model.denoiser = "unet"
    config.model.denoiser_kwargs = {}
    config.model.lora_rank = 4
    config.model.latent_kwargs = {"encode_sample": True}
    config.model.schedule = "scaled_linear"
    config.model.prediction = "epsilon"
    config.model.num_classes = 0
    config.optim.lr = 1e-4
    config.optim.warmup_steps = 0
    config.optim.ema = False
    config.optim.gradient_accumulation_steps = 4
    config.train.num_steps = 2000
    config.train.checkpoint_every = 250
    config.train.sample_every = 500
    config.train.num_sample_images = 4
    config.train.mixed_precision = True
    # Captions are tokenized in Python (tf.numpy_function): no XLA.
    config.train.jit_compile = "false"
    # Inception features are the published protocol; FID on a few images.
    config.eval.num_samples = 64
    config.eval.batch_size = 4
    config.eval.bpd_num_batches = 0
    config.sample.sampler = "ddim"
    config.sample.num_steps = 50
    config.sample.guidance_scale = 7.5
    config.sample.num_images = 4
    return config
