"""Consistency distillation on CIFAR-10 (Song et al., 2023: FID 3.55 at 1 step).

Not reproduced here (no CIFAR-10 download, no GPU: the paper trained 800k
steps at batch 512 on 8 A100s). This config would run it with the library's
pieces. Differences from the paper: the teacher is a UNet trained with
`cifar10_ddpm.py`-like settings in v-prediction (pass its `.keras` path as
`--config.model.teacher=PATH`), not the EDM NCSN++; the distance is L2 (the
paper's best is LPIPS, which needs a pretrained VGG this library does not
ship).

    python -m training.train --config=training/configs/cifar10_cd.py \
        --config.model.teacher=/path/teacher.keras --workdir=/tmp/cd --mode=train
"""

from training.configs.cifar10_ddpm import get_config as get_ddpm_config


def get_config():
    config = get_ddpm_config()
    config.model.kind = "consistency"
    config.model.teacher = ""  # the .keras teacher (required for CD)
    config.model.schedule = "cosine"  # must be the teacher's schedule
    config.model.schedule_kwargs = {}
    config.model.prediction = "x0"  # the consistency function predicts x0
    config.model.condition_dropout = 0.0
    config.model.distillation_kwargs = {
        "solver": "heun",
        "num_timesteps": 18,
        "target_ema_decay": 0.95,
        "distance": "l2",
        "sigma_data": 0.5,
    }
    config.data.batch_size = 512
    config.optim.optimizer = "adam"
    config.optim.lr = 4e-4
    config.optim.warmup_steps = 0
    config.optim.ema_momentum = 0.9999
    config.train.num_steps = 800_000
    config.sample.sampler = "consistency"
    config.sample.num_steps = 1
    return config
