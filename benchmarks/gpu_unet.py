"""UNet training throughput on a GPU: keras_diffusion (Keras on JAX) vs
diffusers' UNet2DModel (PyTorch), same card, same config, one JSON line per
case.

Config: the preset "unet_cifar10_small" (base 64, mult 1-2-2-2, 2 res blocks,
attention at 16x16, 32x32x3, 8.95M parameters) and diffusers' UNet2DModel of
the same config. Training = one AdamW step on the epsilon loss (cosine).

  keras_diffusion: KERAS_BACKEND=jax, mixed_bfloat16 (and float32), the
      library's own `DiffusionModel.fit` (its JAX train step: time and noise
      draws, the shared loss, AdamW, metrics) and `generate` (DDIM), timed
      from the outside after a warm-up fit.
  diffusers: bf16 autocast (and float32), channels-last, eager.

Usage:
    KERAS_BACKEND=jax python benchmarks/gpu_unet.py --batch 256
The GPU machines have JAX and PyTorch but no TensorFlow: Keras (and
diffusers) travel as wheels (see benchmarks/README.md).
"""

import argparse
import json
import os
import sys
import time

os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")


def emit(**record):
    print(json.dumps(record), flush=True)


def device_name():
    try:
        import torch

        if torch.cuda.is_available():
            return torch.cuda.get_device_name(0)
    except Exception:
        pass
    import jax

    return str(jax.devices()[0].device_kind)


def run_keras(args, policy):
    """The library's own `DiffusionModel.fit` and `generate`, timed."""
    import jax
    import keras
    import numpy as np

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    import keras_diffusion
    from keras_diffusion.models import UNet

    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    denoiser = UNet.from_preset(args.preset, input_channels=3)
    model = keras_diffusion.DiffusionModel(
        denoiser, schedule="cosine", prediction="epsilon", condition_dropout=0.0, seed=0,
    )
    model.compile(optimizer=keras.optimizers.AdamW(1e-4),
                  steps_per_execution=args.steps_per_execution)
    size = args.image_size
    rng = np.random.default_rng(0)
    images = rng.uniform(-1, 1, (args.batch * args.steps_per_execution, size, size, 3))
    images = images.astype("float32")
    repeats = max(1, args.steps // args.steps_per_execution)
    data = np.concatenate([images] * repeats)
    t0 = time.perf_counter()
    model.fit(images, batch_size=args.batch, epochs=args.warmup, verbose=0, shuffle=False)
    warm = time.perf_counter() - t0
    start = time.perf_counter()
    history = model.fit(data, batch_size=args.batch, epochs=1, verbose=0, shuffle=False)
    elapsed = time.perf_counter() - start
    steps = len(data) // args.batch
    emit(
        side="keras_diffusion DiffusionModel.fit (Keras on JAX)", task="train",
        precision=policy, batch=args.batch, img_per_s=args.batch * steps / elapsed,
        step_ms=1000 * elapsed / steps, warmup_s=warm, params=denoiser.count_params(),
        loss=float(history.history["loss"][-1]), device=device_name(),
        versions={"jax": jax.__version__, "keras": keras.__version__},
    )
    if args.sample_steps:
        n = args.sample_batch
        model.generate(n, sampler="ddim", num_steps=args.sample_steps, seed=0)  # compile
        start = time.perf_counter()
        model.generate(n, sampler="ddim", num_steps=args.sample_steps, seed=1)
        elapsed = time.perf_counter() - start
        emit(
            side="keras_diffusion DiffusionModel.generate (Keras on JAX)",
            task=f"ddim{args.sample_steps}", precision=policy, batch=n,
            img_per_s=n / elapsed, device=device_name(),
        )


def run_diffusers(args, precision):
    import diffusers
    import torch
    from diffusers import DDPMScheduler
    from diffusers import UNet2DModel

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = precision == "float32_tf32"
    torch.backends.cudnn.allow_tf32 = precision == "float32_tf32"
    model = UNet2DModel(
        sample_size=32, in_channels=3, out_channels=3,
        block_out_channels=(64, 128, 128, 128), layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=32, dropout=0.0,
    ).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=dev == "cuda")
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    acp = scheduler.alphas_cumprod.to(dev)
    x0 = (torch.rand(args.batch, 3, 32, 32, device=dev) * 2 - 1).to(memory_format=torch.channels_last)
    bf16 = precision == "bfloat16"

    def step():
        steps = torch.randint(0, 1000, (args.batch,), device=dev)
        eps = torch.randn_like(x0)
        a = acp[steps].sqrt()[:, None, None, None]
        s = (1 - acp[steps]).sqrt()[:, None, None, None]
        x_t = a * x0 + s * eps
        with torch.autocast(dev, dtype=torch.bfloat16, enabled=bf16):
            pred = model(x_t, steps).sample
        loss = torch.mean((pred.float() - eps) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    t0 = time.perf_counter()
    for _ in range(args.warmup):
        loss = step()
    sync()
    warm = time.perf_counter() - t0
    start = time.perf_counter()
    for _ in range(args.steps):
        loss = step()
    sync()
    elapsed = time.perf_counter() - start
    emit(
        side="diffusers UNet2DModel (PyTorch)", task="train", precision=precision,
        batch=args.batch, img_per_s=args.batch * args.steps / elapsed,
        step_ms=1000 * elapsed / args.steps, warmup_s=warm,
        params=sum(p.numel() for p in model.parameters()), loss=float(loss),
        device=device_name(),
        versions={"torch": torch.__version__, "diffusers": diffusers.__version__},
    )


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--steps_per_execution", type=int, default=1)
    parser.add_argument("--preset", default="unet_cifar10_small")
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--sample_steps", type=int, default=50)
    parser.add_argument("--sample_batch", type=int, default=256)
    parser.add_argument("--cases", nargs="+", default=[
        "keras:mixed_bfloat16", "diffusers:bfloat16", "keras:float32", "diffusers:float32",
    ])
    args = parser.parse_args()
    for case in args.cases:
        side, precision = case.split(":")
        try:
            (run_keras if side == "keras" else run_diffusers)(args, precision)
        except Exception as e:  # report and go on with the other cases
            emit(side=side, precision=precision, error=f"{type(e).__name__}: {e}"[:2000])


if __name__ == "__main__":
    main()
