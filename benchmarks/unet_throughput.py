"""UNet training / sampling throughput: keras_diffusion vs diffusers, CPU.

Config: base 64, multipliers (1, 2, 2, 2) (channels 64-128-128-128), 2 res
blocks per level, attention at 16x16, 32x32x3 images: the preset
"unet_cifar10_small" (8,952,067 parameters, the same as diffusers'
UNet2DModel with that config).

  training: images/s of one AdamW step on the epsilon loss, batch 32
  sampling: images/s of a 50-step DDIM loop (keras_diffusion.samplers
            .DDIMSampler, cosine schedule), batch 16

Keras runs on the TensorFlow backend in float32 and mixed_bfloat16, with
jit_compile off and on; diffusers' UNet2DModel (PyTorch, CPU) in float32
and bfloat16 autocast. Each side runs in its own subprocess (so the two
frameworks' thread pools do not meet) with 2 intra-op threads, one after
the other in the same run.

Usage (from the repository root):
    python benchmarks/unet_throughput.py            # all cases, writes results
    python benchmarks/unet_throughput.py --quick    # fewer timed steps
Writes benchmarks/results/unet_throughput.{json,md}.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BATCH_TRAIN = 32
BATCH_SAMPLE = 16
SAMPLE_STEPS = 50
CONFIG = dict(
    base=64, mult=(1, 2, 2, 2), blocks=2, attention="16x16", image=(32, 32, 3)
)


def _emit(**record):
    print("RESULT " + json.dumps(record), flush=True)


# --------------------------------------------------------------------- keras
def keras_training(policy, jit=False):
    """The UNet under `policy`, its AdamW step on the epsilon loss (a
    tf.function, XLA when `jit`) and a training batch."""
    import keras
    import tensorflow as tf

    from keras_diffusion.models import UNet
    from keras_diffusion.schedules import CosineSchedule

    schedule = CosineSchedule()
    keras.config.set_dtype_policy(policy)
    keras.utils.set_random_seed(0)
    model = UNet.from_preset("unet_cifar10_small")
    model.build({"x_t": (None, 32, 32, 3), "t": (None,)})
    opt = keras.optimizers.AdamW(1e-4)
    opt.build(model.trainable_variables)

    @tf.function(jit_compile=jit)
    def train_step(x0):
        t = tf.random.uniform((tf.shape(x0)[0],), 1e-3, 1.0)
        eps = tf.random.normal(tf.shape(x0))
        alpha, sigma = schedule.alpha_sigma(t)
        x_t = alpha[:, None, None, None] * x0 + sigma[:, None, None, None] * eps
        with tf.GradientTape() as tape:
            pred = model({"x_t": x_t, "t": t}, training=True)
            loss = tf.reduce_mean(tf.square(pred - eps))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply(grads, model.trainable_variables)
        return loss

    return model, train_step, tf.random.uniform((BATCH_TRAIN, 32, 32, 3), -1, 1)


def run_keras(args):
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)

    from keras_diffusion.samplers import DDIMSampler
    from keras_diffusion.schedules import CosineSchedule

    schedule = CosineSchedule()
    for policy in args.policies:
        for jit in args.jit:
            model, train_step, x0 = keras_training(policy, jit)
            params = model.count_params()
            for _ in range(args.warmup):
                train_step(x0).numpy()
            start = time.perf_counter()
            for _ in range(args.steps):
                loss = train_step(x0)
            loss.numpy()
            elapsed = time.perf_counter() - start
            _emit(
                side="keras_diffusion (TF)", task="train", precision=policy,
                jit_compile=jit, img_per_s=BATCH_TRAIN * args.steps / elapsed,
                params=params, steps=args.steps,
            )

            if jit not in args.sample_jit:
                continue
            sampler = DDIMSampler()

            def model_fn(x, t):
                return model({"x_t": x, "t": t}, training=False)

            @tf.function(jit_compile=jit)
            def sample(noise):
                return sampler.sample(
                    model_fn, noise, schedule=schedule, prediction="epsilon",
                    num_steps=SAMPLE_STEPS, seed=0,
                )

            noise = tf.random.normal((BATCH_SAMPLE, 32, 32, 3))
            sample(noise).numpy()  # trace + warm-up (one whole 50-step run)
            start = time.perf_counter()
            for _ in range(args.sample_runs):
                out = sample(noise)
            out.numpy()
            elapsed = time.perf_counter() - start
            _emit(
                side="keras_diffusion (TF)", task="sample_ddim50", precision=policy,
                jit_compile=jit, img_per_s=BATCH_SAMPLE * args.sample_runs / elapsed,
                params=params,
            )


# --------------------------------------------------------------------- torch
def diffusers_unet():
    from diffusers import UNet2DModel

    return UNet2DModel(
        sample_size=32,
        in_channels=3,
        out_channels=3,
        block_out_channels=(64, 128, 128, 128),
        layers_per_block=2,
        down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=32,
        dropout=0.0,
    )


def torch_training(precision):
    """diffusers' UNet2DModel, its AdamW step on the epsilon loss, the DDIM
    scheduler and the autocast context (bf16 when `precision` is
    "bfloat16")."""
    import torch
    from diffusers import DDIMScheduler

    model = diffusers_unet()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scheduler = DDIMScheduler(num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2")
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bfloat16")
    x0 = torch.rand(BATCH_TRAIN, 3, 32, 32) * 2 - 1

    def train_step():
        steps = torch.randint(0, 1000, (BATCH_TRAIN,))
        eps = torch.randn_like(x0)
        x_t = scheduler.add_noise(x0, eps, steps)
        with autocast:
            pred = model(x_t, steps).sample
        loss = torch.mean((pred.float() - eps) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    return model, train_step, scheduler, autocast


def run_torch(args):
    import torch

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for precision in args.torch_precisions:
        model, train_step, scheduler, autocast = torch_training(precision)
        params = sum(p.numel() for p in model.parameters())
        model.train()
        for _ in range(args.warmup):
            train_step()
        start = time.perf_counter()
        for _ in range(args.steps):
            train_step()
        elapsed = time.perf_counter() - start
        _emit(
            side="diffusers UNet2DModel (PyTorch)", task="train", precision=precision,
            jit_compile=False, img_per_s=BATCH_TRAIN * args.steps / elapsed,
            params=params, steps=args.steps,
        )

        model.eval()

        @torch.inference_mode()
        def sample():
            scheduler.set_timesteps(SAMPLE_STEPS)
            x = torch.randn(BATCH_SAMPLE, 3, 32, 32)
            for t in scheduler.timesteps:
                with autocast:
                    eps = model(x, t).sample
                x = scheduler.step(eps.float(), t, x).prev_sample
            return x

        # Warm-up: two forward passes (eager PyTorch has nothing to compile).
        with torch.inference_mode(), autocast:
            for _ in range(2):
                model(torch.randn(BATCH_SAMPLE, 3, 32, 32), 10)
        start = time.perf_counter()
        for _ in range(args.sample_runs):
            sample()
        elapsed = time.perf_counter() - start
        _emit(
            side="diffusers UNet2DModel (PyTorch)", task="sample_ddim50",
            precision=precision, jit_compile=False,
            img_per_s=BATCH_SAMPLE * args.sample_runs / elapsed, params=params,
        )


# ------------------------------------------------------------------- driver
def _versions():
    out = {"python": platform.python_version()}
    for name in ("tensorflow", "keras", "torch", "diffusers", "numpy"):
        try:
            from importlib.metadata import version

            out[name] = version(name)
        except Exception:
            out[name] = None
    return out


def _machine():
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {"cpu": cpu, "logical_cpus": os.cpu_count(), "platform": platform.platform()}


def _run_side(side, argv, script=__file__):
    cmd = [sys.executable, os.path.abspath(script), "--side", side] + argv
    proc = subprocess.run(cmd, capture_output=True, text=True)
    records = [
        json.loads(line[len("RESULT "):])
        for line in proc.stdout.splitlines()
        if line.startswith("RESULT ")
    ]
    if proc.returncode:
        sys.stderr.write(proc.stderr[-4000:])
    for r in records:
        print(json.dumps(r), flush=True)
    return records


def _markdown(results, meta):
    def find(side, task, precision, jit=False):
        for r in results:
            if r["side"].startswith(side) and r["task"] == task and r["precision"] == precision and r["jit_compile"] == jit:
                return r["img_per_s"]
        return None

    lines = [
        "# UNet throughput: keras_diffusion vs diffusers (CPU)",
        "",
        f"Machine: {meta['machine']['cpu']}, {meta['threads']} threads per side "
        f"({meta['machine']['logical_cpus']} logical CPUs, shared with other work).",
        f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}.",
        f"Command: `{meta['command']}`",
        "",
        "Config: base 64, mult 1-2-2-2, 2 res blocks, attention at 16x16, 32x32x3 "
        f"({results[0]['params']:,} parameters). Training: AdamW step on the "
        "epsilon loss, batch 32. Sampling: 50-step DDIM, batch 16.",
        "",
        f"Load average during the run: {meta.get('load', '?')} (the 2 cores were shared "
        "with other jobs: absolute numbers are far below an idle machine's; the "
        "ratios come from the same run).",
        "",
        "| task | precision | diffusers img/s | keras_diffusion img/s (jit off) | ratio | keras_diffusion img/s (jit on) | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for task in ("train", "sample_ddim50"):
        for kp, tp in (("float32", "float32"), ("mixed_bfloat16", "bfloat16")):
            d = find("diffusers", task, tp)
            off = find("keras", task, kp, False)
            on = find("keras", task, kp, True)
            fmt = lambda v: "-" if v is None else f"{v:.3g}"
            ratio = lambda v: "-" if v is None or not d else f"{v / d:.2f}x"
            lines.append(f"| {task} | {kp} | {fmt(d)} | {fmt(off)} | {ratio(off)} | {fmt(on)} | {ratio(on)} |")
    return "\n".join(lines) + "\n"


def side_parser(steps):
    """The options both sides of a CPU comparison script take; `--side`
    runs one side (the driver runs each in a subprocess)."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--side", choices=["keras", "torch"], default=None)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=steps)
    parser.add_argument("--policies", nargs="+", default=["float32", "mixed_bfloat16"])
    parser.add_argument("--torch-precisions", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    return parser


def side_argv(args, steps=None):
    """`side_parser`'s options, for the subprocesses."""
    return [
        "--threads", str(args.threads), "--warmup", str(args.warmup),
        "--steps", str(args.steps if steps is None else steps),
        "--policies", *args.policies, "--torch-precisions", *args.torch_precisions,
    ]


def main():
    parser = side_parser(steps=5)
    parser.add_argument("--sample-runs", type=int, default=1)
    parser.add_argument("--jit", nargs="+", type=lambda s: s.lower() in ("1", "true", "on"), default=[False, True])
    parser.add_argument("--sample-jit", nargs="+", type=lambda s: s.lower() in ("1", "true", "on"), default=[False],
                        help="jit_compile settings for which sampling is measured")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    if args.side == "keras":
        return run_keras(args)
    if args.side == "torch":
        return run_torch(args)
    argv = side_argv(args, steps=3 if args.quick else None) + [
        "--sample-runs", str(args.sample_runs),
        "--jit", *[str(j) for j in args.jit], "--sample-jit", *[str(j) for j in args.sample_jit],
    ]
    run_and_write(__file__, argv, args, "unet_throughput", _markdown)


def run_and_write(script, argv, args, name, markdown):
    """Runs `script`'s torch side, then its keras side (each in its own
    subprocess), and writes `args.out`/`name`.{json,md}."""
    results = _run_side("torch", argv, script) + _run_side("keras", argv, script)
    meta = {
        "machine": _machine(),
        "versions": _versions(),
        "threads": args.threads,
        "command": "python " + " ".join(sys.argv),
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "load": " ".join(f"{x:.1f}" for x in os.getloadavg()),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=2)
    text = markdown(results, meta)
    with open(os.path.join(args.out, name + ".md"), "w") as f:
        f.write(text)
    print(text)

if __name__ == "__main__":
    main()
