"""What the model's weight average costs in training: fit with and without.

`DiffusionModel(ema_decay=0.999)` (the default) updates an average of every
trainable weight after each optimizer step; `ema_decay=None` does not. Both
models (the same UNet and data) are fitted in one process, alternating
rounds of `--steps` steps after a warm-up fit that traces the step. The
fastest and the median round's time per step of each are reported with
their ratios (on a shared machine the rounds are noisy: the fastest is the
least disturbed).

Usage:
    python benchmarks/ema_overhead.py [--rounds 10] [--steps 20] [--batch_size 32]

Writes ema_overhead.json and ema_overhead.md to `--out`.
"""

import argparse
import json
import os
import platform
import sys
import time

import keras
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from environment import machine  # noqa: E402

from keras_diffusion import DiffusionModel  # noqa: E402
from keras_diffusion.models import UNet  # noqa: E402


def build(ema_decay, args):
    unet = UNet(input_channels=1, base_channels=args.base_channels, channel_multipliers=(1, 2),
                num_res_blocks=1, attention_resolutions=(7,), num_groups=8)
    model = DiffusionModel(unet, prediction="v", seed=0, ema_decay=ema_decay)
    model.compile(keras.optimizers.AdamW(2e-4, weight_decay=0.0, clipnorm=1.0))
    return model


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--base_channels", type=int, default=32)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()

    images = np.random.default_rng(0).uniform(-1, 1, (args.batch_size * args.steps, 28, 28, 1))
    images = images.astype("float32")
    models = {"ema_decay=0.999": build(0.999, args), "ema_decay=None": build(None, args)}
    for model in models.values():  # trace and build the optimizer
        model.fit(images[: 2 * args.batch_size], batch_size=args.batch_size, verbose=0)
    times = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            start = time.perf_counter()
            model.fit(images, batch_size=args.batch_size, epochs=1, verbose=0)
            times[name].append((time.perf_counter() - start) / args.steps)
    median = {name: float(np.median(t)) for name, t in times.items()}
    fastest = {name: float(np.min(t)) for name, t in times.items()}
    params = int(sum(np.prod(v.shape) for v in models["ema_decay=None"].trainable_variables))
    ratio = median["ema_decay=0.999"] / median["ema_decay=None"]
    fastest_ratio = fastest["ema_decay=0.999"] / fastest["ema_decay=None"]
    summary = {
        "command": "python benchmarks/ema_overhead.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "versions": {"python": platform.python_version(), "keras": keras.__version__,
                     "backend": keras.backend.backend()},
        "setup": f"UNet(base_channels={args.base_channels}, channel_multipliers=(1, 2)), "
                 f"{params} trainable parameters, 28x28x1, batch {args.batch_size}, "
                 f"{args.rounds} alternating rounds of {args.steps} steps",
        "seconds_per_step": {name: [round(x, 4) for x in t] for name, t in times.items()},
        "median_seconds_per_step": {k: round(v, 4) for k, v in median.items()},
        "fastest_seconds_per_step": {k: round(v, 4) for k, v in fastest.items()},
        "median_ratio_with_to_without": round(ratio, 3),
        "fastest_ratio_with_to_without": round(fastest_ratio, 3),
    }
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "ema_overhead.json"), "w") as f:
        json.dump(summary, f, indent=1)
    m = summary["machine"]
    lines = [
        "# The weight average's cost in training",
        "",
        f"Command: `{summary['command']}`",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs ({', '.join(m['devices'])}). "
        "Versions: " + ", ".join(f"{k} {v}" for k, v in summary["versions"].items()),
        "",
        f"Setup: {summary['setup']}.",
        "",
        "| model | fastest round, s / step | median round, s / step |",
        "|---|---|---|",
    ]
    for name in median:
        lines.append(f"| {name} | {fastest[name]:.4f} | {median[name]:.4f} |")
    lines += ["", f"Ratio with / without the average: {fastest_ratio:.3f} (fastest rounds), "
              f"{ratio:.3f} (median rounds). Every round: `ema_overhead.json`."]
    with open(os.path.join(args.out, "ema_overhead.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
