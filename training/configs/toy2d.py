"""2-D toy data (a Gaussian mixture) with an MLP denoiser: seconds on a CPU.

    python -m training.train --config=training/configs/toy2d.py --workdir=/tmp/toy
"""

from training.configs.base import get_base_config


def get_config():
    config = get_base_config()
    config.data.name = "toy2d"
    config.data.toy2d_dataset = "gaussian_mixture"
    config.data.toy2d_num_points = 4096
    config.data.image_size = 0
    config.data.labels = False
    config.data.batch_size = 128
    config.data.shuffle_buffer = 4096
    config.model.denoiser = "mlp"
    config.model.denoiser_kwargs = {"hidden_dim": 128, "num_layers": 3}
    config.model.schedule = "cosine"
    # "v": x0 = alpha x_t - sigma v stays bounded near t = 1, where the
    # cosine schedule's alpha is ~0 and an epsilon model's x0 blows up.
    config.model.prediction = "v"
    config.model.num_classes = 0
    config.optim.lr = 1e-3
    config.optim.warmup_steps = 0
    config.optim.ema_momentum = 0.99
    config.train.num_steps = 2000
    config.train.checkpoint_every = 500
    config.train.log_every = 100
    config.train.sample_every = 0
    config.train.num_sample_images = 512
    config.sample.num_images = 2048
    config.sample.batch_size = 2048
    config.sample.num_steps = 50
    config.eval.batch_size = 512
    # 2-D points are their own features; the bpd of the continuous density
    # (Gaussian decoder) with the cosine schedule's T = 1000.
    config.eval.feature_extractor = "identity"
    config.eval.num_samples = 2048
    return config
