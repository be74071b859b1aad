"""Improved consistency training on CIFAR-10 (Song & Dhariwal, 2023: FID 2.51 at 1 step).

Not reproduced here (no CIFAR-10 download, no GPU: 400k steps at batch
1024). iCT's recipe as `ConsistencyModel`'s training defaults: pseudo-Huber
distance (c = 0.00054 sqrt(d)), the 1 / (sigma_{n+1} - sigma_n) weighting,
the lognormal draw of noise levels (P_mean -1.1, P_std 2.0), the curriculum
N from 10 to 1280 doubling over the run, no EMA target; dropout 0.3 and an
EMA of the student (0.99993) for sampling. The network is the library's
UNet (`ddpm_cifar10` preset), not NCSN++.

    python -m training.train --config=training/configs/cifar10_ict.py \
        --workdir=/tmp/ict --mode=train
"""

from training.configs.cifar10_ddpm import get_config as get_ddpm_config

NUM_STEPS = 400_000


def get_config():
    config = get_ddpm_config()
    config.model.kind = "consistency"
    config.model.teacher = ""  # none: consistency training
    config.model.schedule = "cosine"
    config.model.schedule_kwargs = {}
    config.model.prediction = "x0"
    config.model.condition_dropout = 0.0
    config.model.denoiser_kwargs = {"dropout": 0.3}
    config.model.distillation_kwargs = {
        "num_timesteps": 10,
        "final_timesteps": 1280,
        "total_steps": NUM_STEPS,
        "lognormal_mean": -1.1,
        "lognormal_std": 2.0,
    }
    config.data.batch_size = 1024
    config.optim.optimizer = "adam"
    config.optim.lr = 1e-4
    config.optim.warmup_steps = 0
    config.optim.ema_momentum = 0.99993
    config.train.num_steps = NUM_STEPS
    config.sample.sampler = "consistency"
    config.sample.num_steps = 1
    return config
