"""DreamBooth on MNIST: a new style from 5 images, bound to a new label.

Fine-tunes the class-conditional model of `benchmarks/mnist.py`
(`benchmarks/results/mnist.keras`, 10 classes) on the 5 thick-stroke 3s of
`benchmarks/results/dreambooth_mnist_subject/` (written by
`benchmarks/dreambooth_mnist.py`), bound to the new label 10 (its embedding
initialized from class 3), with the prior-preservation loss: 200 3s drawn by
the frozen base (dpm_solver x20, guidance 3) join the data, lambda = 1.
Full fine-tuning; `--config.model.dreambooth.lora_rank=4` trains LoRA only
(plus the label embedding). Run from the repository root:

    python -m training.train --config=training/configs/dreambooth_mnist.py \
        --workdir=/tmp/dreambooth_mnist

Your own subject: `--config.data.path=FOLDER` (a few images, no
subfolders), `--config.model.dreambooth.base_model=PATH` (a class-
conditional .keras DiffusionModel) and its class in `init_from` /
`class_label`. The schedule, prediction and network are the base's: the
`model.*` keys other than `kind`, `num_classes` and `dreambooth` are unused.
Samples (`--mode=sample`) show one column per class, the new label last.
"""

from training.configs.base import get_base_config


def get_config():
    config = get_base_config()
    config.data.name = "image_folder"
    config.data.path = "benchmarks/results/dreambooth_mnist_subject"
    config.data.labels = False
    config.data.image_size = 28
    config.data.channels = 1
    config.data.batch_size = 16
    config.data.shuffle_buffer = 1000
    config.model.kind = "dreambooth"
    config.model.num_classes = 11  # the base's 10 and the new label
    config.model.dreambooth.base_model = "benchmarks/results/mnist.keras"
    config.model.dreambooth.init_from = 3
    config.model.dreambooth.class_label = 3
    config.model.dreambooth.prior_preservation = True
    config.model.dreambooth.prior_loss_weight = 1.0
    config.model.dreambooth.num_class_images = 200
    config.model.dreambooth.lora_rank = 0
    config.optim.lr = 3e-4
    config.optim.warmup_steps = 0
    # A few hundred steps: an EMA would lag most of the way behind.
    config.optim.ema = False
    config.train.num_steps = 300
    config.train.checkpoint_every = 100
    config.train.log_every = 25
    config.train.sample_every = 100
    config.train.num_sample_images = 22  # two of each class, the new label last
    config.sample.sampler = "dpm_solver"
    config.sample.num_steps = 20
    config.sample.guidance_scale = 3.0
    config.sample.num_images = 110
    config.sample.batch_size = 110
    config.eval.feature_extractor = ""
    config.eval.bpd_num_batches = 0
    return config
