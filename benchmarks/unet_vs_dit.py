"""UNet vs DiT on MNIST pixels (28x28) at equal training compute.

For each size, a class-conditional UNet and DiT (same schedule, prediction,
CFG dropout, EMA, batch) train on the same 4,000 shipped digits for the same
number of training FLOPs. FLOPs are counted from the networks themselves:
TensorFlow's graph profiler (`tf.compat.v1.profiler`, float operations of
every op in the traced graph) on one gradient step of the network
(forward + backward of an MSE on its output), per image. No formula is typed
in; the profiled backward/forward ratio is reported next to the counts.

Reported per run: validation loss (the model's fixed time grid and fixed
noise on 500 held-out digits) against training FLOPs, judge accuracy of CFG
samples and the Frechet distance of the judge's features (the judge of
benchmarks/mnist.py: a CNN trained on the 1,000 digits the diffusion models
never see), train and sample images/s, and a least-squares slope of
log(validation loss) against log(FLOPs) per run and per architecture.

    python benchmarks/unet_vs_dit.py --unet_minutes 5 [--sizes 0.5M,2M]

Each size's compute budget is what the UNet of that size does in
`--unet_minutes` of wall time on this CPU (`--flops` fixes it instead); a
DiT run stops at the same FLOPs or at 2x the UNet's wall time, whichever
comes first (the goal's time limit), and reports the FLOPs it reached.
Training time excludes the first step (tracing) and the evaluations.
Writes benchmarks/results/unet_vs_dit.{json,md,png}; results are rewritten
after every run.
"""

import argparse
import json
import os
import platform
import sys
import time

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from mnist import classifier  # noqa: E402
from mnist import frechet_distance  # noqa: E402
from mnist import load_digits  # noqa: E402
from mnist import warmup_then_constant  # noqa: E402

from keras_diffusion.models import DiffusionModel  # noqa: E402
from keras_diffusion.models import DiT  # noqa: E402
from keras_diffusion.models import UNet  # noqa: E402

UNET_BASE = dict(input_channels=1, num_res_blocks=1, attention_resolutions=(7,), num_groups=8,
                 num_classes=10)
DIT_BASE = dict(input_channels=1, num_heads=4, num_classes=10)
# name: (size, kind, network kwargs, AdamW lr, warm-up steps)
RUNS = {
    "unet_0.5M": ("0.5M", "unet", dict(UNET_BASE, base_channels=16, channel_multipliers=(1, 2, 4)),
                  1e-3, 0),
    "dit_p2_0.5M": ("0.5M", "dit", dict(DIT_BASE, patch_size=2, hidden_dim=96, depth=3),
                    5e-4, 100),
    "dit_p4_0.5M": ("0.5M", "dit", dict(DIT_BASE, patch_size=4, hidden_dim=96, depth=3),
                    5e-4, 100),
    "unet_2M": ("2M", "unet", dict(UNET_BASE, base_channels=32, channel_multipliers=(1, 2, 3)),
                1e-3, 0),
    "dit_p2_2M": ("2M", "dit", dict(DIT_BASE, patch_size=2, hidden_dim=160, depth=4),
                  5e-4, 100),
    "unet_8M": ("8M", "unet", dict(UNET_BASE, base_channels=64, channel_multipliers=(1, 2, 3)),
                1e-3, 0),
    "dit_p2_8M": ("8M", "dit", dict(DIT_BASE, patch_size=2, hidden_dim=320, depth=4,
                                    num_heads=8), 3e-4, 100),
}


def build_network(kind, kwargs):
    return (UNet if kind == "unet" else DiT)(**kwargs)


def train_flops_per_image(network, batch=8):
    """Float operations of one gradient step per image, from the traced graph."""
    x = tf.TensorSpec((batch, 28, 28, 1), tf.float32)
    t = tf.TensorSpec((batch,), tf.float32)
    labels = tf.TensorSpec((batch,), tf.int32)

    @tf.function
    def forward(x, t, labels):
        return network({"x_t": x, "t": t, "labels": labels})

    @tf.function
    def step(x, t, labels):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(network({"x_t": x, "t": t, "labels": labels})))
        return tape.gradient(loss, network.trainable_variables)

    counts = []
    for fn in (forward, step):
        options = tf.compat.v1.profiler.ProfileOptionBuilder.float_operation()
        options["output"] = "none"
        graph = fn.get_concrete_function(x, t, labels).graph
        counts.append(tf.compat.v1.profiler.profile(graph, options=options).total_float_ops / batch)
    return counts  # (forward, train step)


class Schedule(keras.callbacks.Callback):
    """Stops at `max_steps` or `max_seconds` of training time and records the
    validation loss at `eval_steps` (evaluation time excluded)."""

    def __init__(self, max_steps, max_seconds, eval_steps, validation):
        super().__init__()
        self.max_steps, self.max_seconds = max_steps, max_seconds
        self.eval_steps = set(eval_steps)
        self.validation = validation
        self.curve = []
        self.train_seconds = 0.0
        self.eval_seconds = 0.0

    def on_train_begin(self, logs=None):
        self.tick = time.time()

    def _evaluate(self, step):
        start = time.time()
        x, y = self.validation
        loss = self.model.evaluate(x, y, batch_size=250, verbose=0, return_dict=True)["loss"]
        self.curve.append((step, float(loss)))
        self.eval_seconds += time.time() - start

    def on_train_batch_end(self, batch, logs=None):
        step = int(self.model.optimizer.iterations)
        if step > 1:  # the first step traces and compiles: not timed
            self.train_seconds += time.time() - self.tick
        done = step >= self.max_steps or self.train_seconds >= self.max_seconds
        if step in self.eval_steps or done:
            self._evaluate(step)
        if done:
            self.model.stop_training = True
        self.tick = time.time()


def slope(curve, flops_per_step):
    points = [(s * flops_per_step, loss) for s, loss in curve if s > 0]
    if len(points) < 2:
        return float("nan")
    f, loss = np.log(np.array(points)).T
    return float(np.polyfit(f, loss, 1)[0])


def run_one(name, args, data, judge, budget_flops=None, max_seconds=None):
    size, kind, kwargs, lr, warmup = RUNS[name]
    x_train, y_train, x_val, y_val = data
    keras.utils.set_random_seed(args.seed)
    network = build_network(kind, kwargs)
    network({"x_t": np.zeros((1, 28, 28, 1), "float32"), "t": np.zeros((1,), "float32"),
             "labels": np.zeros((1,), "int32")})
    forward_flops, step_flops = train_flops_per_image(network)
    flops_per_step = step_flops * args.batch_size
    model = DiffusionModel(network, schedule="cosine", prediction="v", seed=args.seed,
                           ema_decay=args.ema_momentum)
    model.compile(keras.optimizers.AdamW(warmup_then_constant(lr, warmup), weight_decay=0.0, clipnorm=1.0))
    if budget_flops is None:  # the UNet of the size: its wall time sets the budget
        max_steps, max_seconds = 10**9, 60 * args.unet_minutes
    else:
        max_steps = int(np.ceil(budget_flops / flops_per_step))
    expected = max_steps if budget_flops is not None else None
    if expected is None:
        eval_steps = [0] + [int(s) for s in np.geomspace(25, 4000, 12)]
    else:
        eval_steps = sorted({0, *np.unique(np.geomspace(25, expected, 10).astype(int))})
    schedule = Schedule(max_steps, max_seconds, eval_steps, (x_val, y_val))
    schedule.set_model(model)
    schedule._evaluate(0)
    load = [os.getloadavg()[0]]
    model.fit(x_train, y_train, batch_size=args.batch_size, epochs=10**6, verbose=0,
              callbacks=[schedule])
    load.append(os.getloadavg()[0])
    steps = int(model.optimizer.iterations)

    labels = np.repeat(np.arange(10), args.per_class).astype("int32")
    model.generate(labels=labels[:10], guidance_scale=args.guidance, sampler="dpm_solver",
                   num_steps=args.sampler_steps, seed=1, batch_size=100, verbose=0)  # compile
    start = time.time()
    samples = model.generate(labels=labels, guidance_scale=args.guidance, sampler="dpm_solver",
                             num_steps=args.sampler_steps, seed=args.seed, batch_size=100,
                             verbose=0)
    sample_seconds = time.time() - start
    clf, features, f_held = judge
    predicted = np.argmax(clf.predict(samples, verbose=0), -1)
    accuracy = float(np.mean(predicted == labels))
    fd = frechet_distance(features.predict(samples, verbose=0), f_held)
    from keras_diffusion.utils.images import save_image_grid

    grid = samples.reshape(10, args.per_class, 28, 28, 1)[:, :10].reshape(-1, 28, 28, 1)
    save_image_grid(grid, os.path.join(args.out, f"unet_vs_dit_{name}.png"), num_rows=10)
    return {
        "size": size, "kind": kind, "network": {k: v for k, v in kwargs.items()},
        "parameters": int(network.count_params()),
        "forward_flops_per_image": forward_flops, "train_flops_per_image": step_flops,
        "backward_over_forward": step_flops / forward_flops - 1.0,
        "learning_rate": lr, "warmup_steps": warmup,
        "steps": steps, "train_flops": steps * flops_per_step,
        "train_seconds": round(schedule.train_seconds, 1),
        "eval_seconds": round(schedule.eval_seconds, 1),
        "train_images_per_second": round(
            (steps - 1) * args.batch_size / max(schedule.train_seconds, 1e-9), 1),
        "sample_images_per_second": round(len(samples) / sample_seconds, 2),
        "validation_curve": [{"step": s, "flops": s * flops_per_step, "loss": v}
                             for s, v in schedule.curve],
        "final_validation_loss": schedule.curve[-1][1],
        "slope_log_loss_vs_log_flops": slope(schedule.curve, flops_per_step),
        "judge_accuracy": accuracy,
        "judge_accuracy_per_class": [float(np.mean(predicted[labels == k] == k))
                                     for k in range(10)],
        "frechet_distance": fd,
        "load_average_1min": load,
    }


def write(results, args, meta):
    out = os.path.join(args.out, "unet_vs_dit")
    with open(out + ".json", "w") as f:
        json.dump({**meta, "runs": results}, f, indent=2)
    lines = [
        "# UNet vs DiT on MNIST 28x28 pixels at equal training FLOPs (CPU)", "",
        f"Machine: {meta['machine']}; {meta['versions']}. Command: `{meta['command']}`.",
        f"Data: 4,000 shipped digits train the diffusion models, 500 of the other 1,000 give "
        f"the validation loss; the judge (benchmarks/mnist.py's CNN, trained on those 1,000) "
        f"scores {meta['judge_accuracy_on_real']:.3f} on real training digits; the Frechet "
        f"distance of real training vs held-out digits is {meta['fd_floor']:.2f}. Both "
        f"architectures: cosine schedule, v prediction, CFG dropout 0.1, AdamW (clipnorm 1), "
        f"EMA {args.ema_momentum}, batch {args.batch_size}; samples: DPM-Solver++ "
        f"{args.sampler_steps} steps, guidance {args.guidance}, {args.per_class} per class.",
        "FLOPs: TensorFlow's graph profiler on one traced gradient step of the network "
        "(float ops per image, forward + backward).", "",
        "| run | params | train MFLOP/img | steps | train PFLOP | train s | train img/s | "
        "sample img/s | val loss | slope | judge acc | FD |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        lines.append(
            f"| {name} | {r['parameters']:,} | {r['train_flops_per_image'] / 1e6:.0f} | "
            f"{r['steps']} | {r['train_flops'] / 1e15:.3f} | {r['train_seconds']:.0f} | "
            f"{r['train_images_per_second']:.0f} | {r['sample_images_per_second']:.1f} | "
            f"{r['final_validation_loss']:.4f} | {r['slope_log_loss_vs_log_flops']:.3f} | "
            f"{r['judge_accuracy']:.3f} | {r['frechet_distance']:.2f} |")
    lines += ["", "slope: least-squares slope of log(validation loss) against log(training "
              "FLOPs) over the run's evaluation points (more negative: the loss falls faster "
              "with compute).", ""]
    for text in meta.get("conclusions", []):
        lines.append(f"- {text}")
    lines.append("\nLoss curves: unet_vs_dit.png; samples: unet_vs_dit_<run>.png (a row per "
                 "class).")
    with open(out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(7, 4.5))
        for name, r in results.items():
            curve = [(p["flops"], p["loss"]) for p in r["validation_curve"] if p["step"] > 0]
            if curve:
                f_, l_ = zip(*curve)
                ax.loglog(f_, l_, "-o" if r["kind"] == "unet" else "--s", ms=3, label=name)
        ax.set_xlabel("training FLOPs (profiled)")
        ax.set_ylabel("validation loss (v, fixed grid)")
        ax.legend(fontsize=8)
        ax.grid(True, which="both", alpha=0.3)
        fig.tight_layout()
        fig.savefig(out + ".png", dpi=110)
    except ImportError:
        pass


def conclusions(results):
    notes = []
    for size in ("0.5M", "2M", "8M"):
        unet = results.get(f"unet_{size}")
        dits = {k: v for k, v in results.items() if v["size"] == size and v["kind"] == "dit"}
        if not unet or not dits:
            continue
        for name, d in dits.items():
            notes.append(
                f"{size}: {name} / unet at equal FLOPs ({d['train_flops'] / unet['train_flops']:.2f}x "
                f"the UNet's FLOPs reached, {d['train_seconds'] / unet['train_seconds']:.2f}x its "
                f"time): validation loss ratio {d['final_validation_loss'] / unet['final_validation_loss']:.3f}, "
                f"judge accuracy {d['judge_accuracy']:.3f} vs {unet['judge_accuracy']:.3f}, FD ratio "
                f"{d['frechet_distance'] / unet['frechet_distance']:.2f}; the DiT trains "
                f"{d['train_images_per_second'] / unet['train_images_per_second']:.2f}x the UNet's "
                f"images/s and samples {d['sample_images_per_second'] / unet['sample_images_per_second']:.2f}x.")
    for kind in ("unet", "dit"):
        slopes = [r["slope_log_loss_vs_log_flops"] for r in results.values() if r["kind"] == kind]
        if slopes:
            notes.append(f"mean slope of log loss vs log FLOPs, {kind}: {np.mean(slopes):.3f} "
                         f"({len(slopes)} runs)")
    return notes


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", default="unet_0.5M,dit_p2_0.5M,unet_2M,dit_p2_2M,dit_p4_0.5M")
    parser.add_argument("--unet_minutes", type=float, default=5.0)
    parser.add_argument("--flops", type=float, default=0.0,
                        help="fixed training FLOPs per size instead of the UNet's wall time")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--ema_momentum", type=float, default=0.995)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--per_class", type=int, default=20)
    parser.add_argument("--sampler_steps", type=int, default=20)
    parser.add_argument("--classifier_epochs", type=int, default=30)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--append", action="store_true",
                        help="keep the runs already in the results JSON (with --flops)")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    x, y = load_digits()
    order = np.random.default_rng(args.seed).permutation(len(x))
    x, y = x[order], y[order]
    x_train, y_train = x[:4000], y[:4000]
    x_held, y_held = x[4000:], y[4000:]
    x_val = x_held[:500].astype("float32") / 127.5 - 1.0
    data = (x_train, y_train, x_val, y_held[:500])

    clf, features = classifier()
    clf.compile(keras.optimizers.Adam(1e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True), metrics=["accuracy"])
    clf.fit(x_held / 127.5 - 1, y_held, batch_size=64, epochs=args.classifier_epochs, verbose=0)
    judge_acc = float(clf.evaluate(x_train / 127.5 - 1, y_train, verbose=0)[1])
    f_held = features.predict(x_held / 127.5 - 1, verbose=0)
    fd_floor = frechet_distance(features.predict(x_train[:1000] / 127.5 - 1, verbose=0), f_held)
    print(f"judge: {judge_acc:.4f} on real digits, FD floor {fd_floor:.2f}", flush=True)
    judge = (clf, features, f_held)

    meta = {
        "benchmark": "unet_vs_dit",
        "machine": f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), "
                   f"1-minute load average {os.getloadavg()[0]:.2f} when the judge was ready",
        "versions": f"TensorFlow {tf.__version__}, Keras {keras.__version__}, "
                    f"backend {keras.backend.backend()}",
        "command": "python benchmarks/unet_vs_dit.py " + " ".join(sys.argv[1:]),
        "judge_accuracy_on_real": judge_acc, "fd_floor": fd_floor,
    }
    results = {}
    json_path = os.path.join(args.out, "unet_vs_dit.json")
    if args.append and os.path.exists(json_path):
        with open(json_path) as f:
            previous = json.load(f)
        results = previous["runs"]
        meta["command"] = previous["command"] + "; then " + meta["command"]
    budgets, unet_seconds = {}, {}
    for r in results.values():
        if r["kind"] == "unet":
            budgets[r["size"]], unet_seconds[r["size"]] = r["train_flops"], r["train_seconds"]
    for name in args.runs.split(","):
        size, kind = RUNS[name][0], RUNS[name][1]
        if args.flops:
            budgets.setdefault(size, args.flops)
        if kind == "unet" and size not in budgets:
            r = run_one(name, args, data, judge)
            budgets[size], unet_seconds[size] = r["train_flops"], r["train_seconds"]
        else:
            if size not in budgets:
                raise ValueError(f"run the UNet of size {size} before {name} (or pass --flops)")
            limit = 2 * unet_seconds.get(size, 60 * args.unet_minutes)
            r = run_one(name, args, data, judge, budget_flops=budgets[size], max_seconds=limit)
        results[name] = r
        print(name, json.dumps({k: r[k] for k in ("parameters", "steps", "train_seconds",
                                                  "final_validation_loss", "judge_accuracy",
                                                  "frechet_distance")}), flush=True)
        meta["conclusions"] = conclusions(results)
        write(results, args, meta)


if __name__ == "__main__":
    main()
