"""DDPM on CIFAR-10 (Ho et al., 2020): tensorflow-datasets' cifar10.

Needs the dataset on disk or network access for tfds to download it; pass
`--config.data.data_dir=DIR` for a dataset prepared elsewhere.
"""

from training.configs.base import get_base_config


def get_config():
    config = get_base_config()
    config.data.name = "tfds"
    config.data.tfds_name = "cifar10"
    config.data.image_size = 32
    config.data.channels = 3
    config.data.random_flip = True
    config.data.batch_size = 128
    config.data.shuffle_buffer = 50_000
    config.model.denoiser = "unet"
    config.model.preset = "ddpm_cifar10"
    config.model.denoiser_kwargs = {}
    config.model.schedule = "linear"
    config.model.schedule_kwargs = {"num_train_timesteps": 1000}
    config.model.prediction = "epsilon"
    config.model.num_classes = 0
    config.optim.optimizer = "adam"
    config.optim.lr = 2e-4
    config.optim.warmup_steps = 5000
    config.optim.clipnorm = 1.0
    config.optim.ema_momentum = 0.9999
    config.train.num_steps = 800_000
    config.train.checkpoint_every = 10_000
    config.train.log_every = 100
    config.train.sample_every = 10_000
    config.train.jit_compile = "auto"
    config.sample.sampler = "ddim"
    config.sample.num_steps = 100
    return config
