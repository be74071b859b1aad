"""UNet training throughput on a GPU: keras_diffusion (Keras on JAX) vs
diffusers' UNet2DModel (PyTorch), same card, same config, one JSON line per
case.

Config: the preset "unet_cifar10_small" (base 64, mult 1-2-2-2, 2 res blocks,
attention at 16x16, 32x32x3, 8.95M parameters) and diffusers' UNet2DModel of
the same config. Training = one AdamW step on the epsilon loss.

  keras_diffusion: KERAS_BACKEND=jax, mixed_bfloat16 (and float32), the
      whole step (noise, forward, backward, AdamW) in one jax.jit with
      donated buffers.
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
    import jax
    import jax.numpy as jnp
    import keras

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from keras_diffusion.models import UNet
    from keras_diffusion.schedules import CosineSchedule

    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    model = UNet.from_preset("unet_cifar10_small")
    model.build({"x_t": (None, 32, 32, 3), "t": (None,)})
    schedule = CosineSchedule()
    opt = keras.optimizers.AdamW(1e-4)
    opt.build(model.trainable_variables)

    def loss_fn(trainable, non_trainable, x0, key):
        k1, k2 = jax.random.split(key)
        t = jax.random.uniform(k1, (x0.shape[0],), minval=1e-3, maxval=1.0)
        eps = jax.random.normal(k2, x0.shape)
        alpha, sigma = schedule.alpha_sigma(t)
        x_t = alpha[:, None, None, None] * x0 + sigma[:, None, None, None] * eps
        pred, non_trainable = model.stateless_call(
            trainable, non_trainable, {"x_t": x_t, "t": t}, training=True
        )
        return jnp.mean(jnp.square(pred - eps)), non_trainable

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(state, x0, key):
        trainable, non_trainable, opt_vars = state
        (loss, non_trainable), grads = grad_fn(trainable, non_trainable, x0, key)
        trainable, opt_vars = opt.stateless_apply(opt_vars, grads, trainable)
        return loss, (trainable, non_trainable, opt_vars)

    step = jax.jit(step, donate_argnums=0)
    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
        [v.value for v in opt.variables],
    )
    x0 = jax.random.uniform(jax.random.PRNGKey(0), (args.batch, 32, 32, 3), minval=-1, maxval=1)
    key = jax.random.PRNGKey(1)
    t0 = time.perf_counter()
    for i in range(args.warmup):
        loss, state = step(state, x0, jax.random.fold_in(key, i))
    loss.block_until_ready()
    compile_s = time.perf_counter() - t0
    start = time.perf_counter()
    for i in range(args.steps):
        loss, state = step(state, x0, jax.random.fold_in(key, 1000 + i))
    loss.block_until_ready()
    elapsed = time.perf_counter() - start
    emit(
        side="keras_diffusion (Keras on JAX)", task="train", precision=policy,
        batch=args.batch, img_per_s=args.batch * args.steps / elapsed,
        step_ms=1000 * elapsed / args.steps, warmup_s=compile_s,
        params=model.count_params(), loss=float(loss), device=device_name(),
        versions={"jax": jax.__version__, "keras": keras.__version__},
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
