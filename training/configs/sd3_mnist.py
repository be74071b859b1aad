"""The Stable Diffusion 3 recipe on the shipped MNIST digits with captions.

A `LatentDiffusionModel`: a trained VAE (factor 4: 32x32 digits -> 8x8x4
latents), a `TextConditioner` trained jointly on the digits' captions ("a
handwritten seven", "the digit 7", ...), an MMDiT (joint attention over text
and image tokens, sized by depth: hidden 64 * d), rectified flow with
SD3's time shift, logit-normal training times, the flow (velocity)
prediction, 10% caption dropout and classifier-free guidance at sampling.

    # 1. a VAE for the digits (~2.5 CPU-minutes), saved as .keras:
    python benchmarks/sd3_mnist.py --vae_only --vae_out=/tmp/mnist_vae.keras
    # 2. train, sample from the prompts, export (the SavedModel takes text):
    python -m training.train --config=training/configs/sd3_mnist.py \
        --config.model.vae=/tmp/mnist_vae.keras --workdir=/tmp/sd3_mnist
    python -m training.train --workdir=/tmp/sd3_mnist --mode=sample
    python -m training.train --workdir=/tmp/sd3_mnist --mode=export

`--config.model.denoiser=dit` trains a DiT with cross-attention to the same
text context instead (`denoiser_kwargs` as below work for both).
"""

from training.configs.base import get_base_config

# SD3 Sec. 5.3.2: moving from a base resolution n to m pixels, shift the
# times by alpha = sqrt(m / n) (t' = alpha t / (1 + (alpha - 1) t)); SD3 uses
# 3.0 at 1024^2. This config trains at its base resolution (32x32): 1.0.
# Pass --config.model.schedule_kwargs.shift=... when sampling or fine-tuning
# at another size.
BASE_RESOLUTION = 32


def resolution_shift(image_size, base=BASE_RESOLUTION):
    """SD3's time shift sqrt(m / n) for square images of side `image_size`."""
    return float(image_size) / float(base)


def get_config():
    config = get_base_config()
    config.data.name = "mnist"
    config.data.image_size = 32  # 28 padded: the VAE halves twice (32 -> 8)
    config.data.channels = 1
    config.data.captions = True
    config.data.labels = False
    config.data.batch_size = 64
    config.data.shuffle_buffer = 5000
    config.model.kind = "latent"
    # Required: a trained .keras VAE with its scaling_factor set (step 1 above).
    config.model.vae = ""
    config.model.text_encoder = "text_conditioner"
    config.model.text_encoder_kwargs = {
        "sequence_length": 8,
        "embedding_dim": 64,
        "num_layers": 1,
        "num_heads": 4,
        "vocabulary_size": 64,
    }
    config.model.denoiser = "mmdit"
    # The paper's sizing at depth 2: hidden 64 * 2, 2 heads of 64 (1.3M
    # parameters); 16 image tokens of 2x2 latent patches + 8 text tokens.
    config.model.denoiser_kwargs = {
        "patch_size": 2,
        "hidden_dim": 128,
        "depth": 2,
        "num_heads": 2,
    }
    config.model.schedule = "rectified_flow"
    config.model.schedule_kwargs = {"shift": resolution_shift(config.data.image_size)}
    config.model.prediction = "flow"
    config.model.time_distribution = "logit_normal"  # SD3's lognorm(0, 1)
    config.model.num_classes = 0
    config.model.condition_dropout = 0.1
    config.optim.lr = 5e-4
    config.optim.warmup_steps = 200
    config.optim.lr_schedule = "cosine"
    config.optim.weight_decay = 0.0
    config.optim.ema_momentum = 0.995
    config.train.num_steps = 2000
    config.train.checkpoint_every = 250
    config.train.log_every = 50
    config.train.sample_every = 1000
    config.train.num_sample_images = 20
    config.sample.sampler = "euler"  # SD3 samples the flow ODE with Euler
    config.sample.num_steps = 20
    config.sample.guidance_scale = 3.0
    config.sample.num_images = 100
    config.sample.prompts = tuple(
        f"a handwritten {name}"
        for name in ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                     "nine")
    )
    config.eval.feature_extractor = ""
    config.eval.bpd_num_batches = 0
    config.export.sampler = "euler"
    return config
