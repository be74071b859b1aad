"""One round of progressive distillation on CIFAR-10 (Salimans & Ho, 2022: FID 3.00 at 4 steps).

Not reproduced here (no CIFAR-10 download, no GPU). The paper distills a
v-prediction, cosine-schedule teacher sampled with 8192 DDIM steps down to
4 steps, halving each round (50k updates a round at batch 128). Run one round
per call: start with the teacher's `.keras` (trained with
`cifar10_ddpm.py`-like settings but `model.prediction="v"`, cosine) and
`teacher_steps=8192`, then feed each round's saved student back as the
teacher with half the steps:

    for n in 8192 4096 ... 8; do
      python -m training.train --config=training/configs/cifar10_pd.py \
        --config.model.teacher=$TEACHER \
        --config.model.distillation_kwargs.teacher_steps=$n \
        --workdir=/tmp/pd_$n --mode=train
      TEACHER=/tmp/pd_$n/<the saved .keras>
    done
"""

from training.configs.cifar10_ddpm import get_config as get_ddpm_config


def get_config():
    config = get_ddpm_config()
    config.model.kind = "progressive_distillation"
    config.model.teacher = ""  # required: the .keras teacher (or previous student)
    config.model.schedule = "cosine"
    config.model.schedule_kwargs = {}
    config.model.prediction = "v"
    config.model.condition_dropout = 0.0
    config.model.distillation_kwargs = {"teacher_steps": 8192}
    config.data.batch_size = 128
    config.optim.optimizer = "adam"
    config.optim.lr = 1e-4
    config.optim.warmup_steps = 0
    config.optim.ema_momentum = 0.9999
    config.train.num_steps = 50_000
    config.sample.sampler = "ddim"
    config.sample.num_steps = 4
    return config
