"""DreamBooth on MNIST: a new style from 5 examples, bound to a new label.

Starts from the class-conditional model of `benchmarks/mnist.py`
(`benchmarks/results/mnist.keras`: UNet, cosine schedule, v-prediction, 10
classes). The subject is a style: 5 held-out 3s drawn thick (a 3x3 grey-level
dilation of the real digits), bound to the new label 10 with
`models.dreambooth.add_label(base, init_from=3)`. Two full fine-tunings of
the same number of steps, from the same copy:

- with prior preservation: `prior_preservation_data` mixes the 5 subject
  images with 200 class images of 3 drawn by the frozen base (lambda = 1);
- with prior preservation on every class: the same, with 200 images of the
  classes 0-9 (20 each) from the frozen base, each under its own label (the
  class-conditional analogue of keeping the whole prior, not only the
  subject's class);
- without: the 5 subject images alone.

Then, for the base and each fine-tuned model, dpm_solver x20 at guidance 3:

- style fraction: the share of samples a style classifier calls thick (a
  small CNN trained on held-out real digits, each as drawn and dilated),
  for the new label, for class 3 (the prior class: does its style drift?)
  and for the other classes;
- judge accuracy on classes 0-9 (drift of the other classes), and the share
  of new-label samples the judge reads as a 3 (the subject kept its digit).
  The judge is `benchmarks/mnist.py`'s classifier() trained on its held-out
  split (`--judge` loads a saved one), or trained here.

Writes dreambooth_mnist.{json,md,png} and the 5 subject images as PNGs in
results/dreambooth_mnist_subject/ (the data of training/configs/dreambooth_mnist.py).

Usage:
    nice -n 19 python benchmarks/dreambooth_mnist.py [--steps 300]
"""

import argparse
import json
import os
import platform
import sys
import time

import keras
import numpy as np

import keras_diffusion
from keras_diffusion.models import dreambooth
from keras_diffusion.utils.images import save_image_grid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from mnist import TimeBudget  # noqa: E402
from mnist import load_digits  # noqa: E402
from mnist import trained_judge  # noqa: E402

NEW_LABEL = 10


def thicken(images):
    """3x3 grey-level dilation of uint8 `(N, 28, 28, 1)` digits: strokes ~2 px wider."""
    padded = np.pad(images[..., 0], ((0, 0), (1, 1), (1, 1)))
    shifts = [padded[:, i:i + 28, j:j + 28] for i in range(3) for j in range(3)]
    return np.max(np.stack(shifts), axis=0)[..., None]


def style_classifier():
    inputs = keras.Input((28, 28, 1))
    h = keras.layers.Conv2D(16, 3, activation="relu", padding="same")(inputs)
    h = keras.layers.MaxPooling2D()(h)
    h = keras.layers.Conv2D(32, 3, activation="relu", padding="same")(h)
    h = keras.layers.GlobalAveragePooling2D()(h)
    return keras.Model(inputs, keras.layers.Dense(1)(h))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default=os.path.join(HERE, "results", "mnist.keras"))
    parser.add_argument("--judge", default="",
                        help="a saved mnist.py classifier(); default: train it here")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=2e-4)
    parser.add_argument("--prior_loss_weight", type=float, default=1.0)
    parser.add_argument("--num_class_images", type=int, default=200)
    parser.add_argument("--per_class", type=int, default=20)
    parser.add_argument("--num_new", type=int, default=60)
    parser.add_argument("--num_steps", type=int, default=20)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--max_train_minutes", type=float, default=4.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)
    started = time.time()

    x, y = load_digits()
    order = np.random.default_rng(args.seed).permutation(len(x))  # mnist.py's split
    x, y = x[order], y[order]
    x_held, y_held = x[4000:], y[4000:]
    subject_index = np.where(y_held == 3)[0][:5]
    subject = thicken(x_held[subject_index])
    rest = np.setdiff1d(np.arange(len(x_held)), subject_index)

    # The style classifier: held-out digits (the subjects excluded) as drawn
    # (0) and thickened (1); tested on 1,000 of the base's training digits.
    start = time.time()
    style = style_classifier()
    style.compile("adam", keras.losses.BinaryCrossentropy(from_logits=True),
                  metrics=[keras.metrics.BinaryAccuracy(threshold=0.0)])
    plain = x_held[rest]
    style.fit(np.concatenate([plain, thicken(plain)]) / 127.5 - 1,
              np.concatenate([np.zeros(len(plain)), np.ones(len(plain))]),
              batch_size=64, epochs=8, verbose=0)
    test = x[:1000]
    style_fp = float(np.mean(style.predict(test / 127.5 - 1, verbose=0)[:, 0] > 0))
    style_tp = float(np.mean(style.predict(thicken(test) / 127.5 - 1, verbose=0)[:, 0] > 0))
    style_seconds = time.time() - start
    print(f"style classifier: thick {style_tp:.3f} on thickened, {style_fp:.3f} on real digits "
          f"({style_seconds:.0f} s)", flush=True)

    judge, _, judge_source = trained_judge(x_held, y_held, args.judge)
    judge_real = float(np.mean(np.argmax(judge.predict(x[:1000] / 127.5 - 1, verbose=0), -1)
                               == y[:1000]))
    judge_thick = float(np.mean(np.argmax(judge.predict(thicken(x[:1000]) / 127.5 - 1,
                                                        verbose=0), -1) == y[:1000]))

    base = keras_diffusion.load_model(args.base)
    sample = dict(sampler="dpm_solver", num_steps=args.num_steps, guidance_scale=args.guidance,
                  batch_size=100, verbose=0)

    def is_thick(images):
        return style.predict(images, verbose=0)[:, 0] > 0

    def evaluate(model, name, new_label):
        start = time.time()
        labels = np.repeat(np.arange(10), args.per_class).astype("int32")
        if new_label:
            labels = np.concatenate([labels, np.full(args.num_new, NEW_LABEL, "int32")])
        images = model.generate(labels=labels, seed=args.seed + 1, **sample)
        old, old_images = labels < 10, images[labels < 10]
        predicted = np.argmax(judge.predict(images, verbose=0), -1)
        thick = is_thick(images)
        row = {
            "judge_accuracy_classes_0_9": float(np.mean(predicted[old] == labels[old])),
            "judge_accuracy_per_class": [
                round(float(np.mean(predicted[labels == c] == c)), 3) for c in range(10)],
            "style_fraction_class_3": float(np.mean(thick[labels == 3])),
            "style_fraction_other_classes": float(np.mean(thick[old & (labels != 3)])),
        }
        if new_label:
            new = labels == NEW_LABEL
            row["style_fraction_new_label"] = float(np.mean(thick[new]))
            row["new_label_judged_3"] = float(np.mean(predicted[new] == 3))
        row["sample_seconds"] = round(time.time() - start, 1)
        print(name, json.dumps(row), flush=True)
        grid = [old_images[labels[old] == c][:6] for c in range(10)]
        if new_label:
            grid.append(images[labels == NEW_LABEL][:6])
        return row, np.concatenate(grid)

    results, grids = {}, {}
    results["base"], grids["base"] = evaluate(base, "base", new_label=False)

    start = time.time()
    class_images = dreambooth.generate_class_images(
        base, 3, args.num_class_images, seed=args.seed + 2,
        **{k: v for k, v in sample.items() if k != "verbose"})
    class_seconds = time.time() - start
    class_thick = float(np.mean(is_thick(class_images)))
    every_label = np.arange(args.num_class_images) % 10
    every_class = base.generate(labels=every_label, seed=args.seed + 3, **sample)

    runs = {}
    priors = {"with_prior_preservation": (class_images, 3),
              "with_prior_preservation_every_class": (every_class, every_label),
              "without_prior_preservation": None}
    for name, prior in priors.items():
        tuned = dreambooth.add_label(base, init_from=3)
        per_step = args.batch_size / (1 + args.prior_loss_weight) if prior else args.batch_size
        repeats = int(np.ceil(args.steps * per_step / len(subject)))
        images, labels = prior or (None, None)
        data = dreambooth.prior_preservation_data(
            subject, NEW_LABEL, images, labels, prior_loss_weight=args.prior_loss_weight,
            repeats=repeats, prior_preservation=prior is not None, seed=args.seed)
        tuned.compile(keras.optimizers.AdamW(args.learning_rate, weight_decay=0.0, clipnorm=1.0))
        start = time.time()
        history = tuned.fit(data, batch_size=args.batch_size, epochs=1, verbose=0,
                            steps_per_epoch=args.steps,
                            callbacks=[TimeBudget(60 * args.max_train_minutes)])
        train_seconds = time.time() - start
        steps = int(tuned.optimizer.iterations)
        print(f"{name}: {steps} steps in {train_seconds:.0f} s, loss "
              f"{history.history['loss'][-1]:.4f}", flush=True)
        results[name], grids[name] = evaluate(tuned, name, new_label=True)
        runs[name] = {"train_steps": steps, "train_seconds": round(train_seconds, 1),
                      "examples_per_pass": len(data["labels"]),
                      "subject_share": float(np.mean(data["labels"] == NEW_LABEL)),
                      "final_loss": float(history.history["loss"][-1])}

    # Grid: rows 0-9 then the new label; base | with prior (class 3) | with
    # prior (every class) | without prior.
    blank = -np.ones((6, 28, 28, 1), "float32")
    blocks = []
    for r in range(11):
        row = [grids["base"][6 * r:6 * r + 6] if r < 10 else blank]
        for name in priors:
            row += [blank[:1], grids[name][6 * r:6 * r + 6]]
        blocks.append(np.concatenate(row))
    save_image_grid(np.concatenate(blocks), os.path.join(args.out, "dreambooth_mnist.png"),
                    num_rows=11, scale=2)
    subject_dir = os.path.join(args.out, "dreambooth_mnist_subject")
    os.makedirs(subject_dir, exist_ok=True)
    from PIL import Image

    for i, image in enumerate(subject):
        Image.fromarray(image[..., 0]).save(os.path.join(subject_dir, f"{i}.png"))

    with_p, every_p, without_p, b = (
        results["with_prior_preservation"], results["with_prior_preservation_every_class"],
        results["without_prior_preservation"], results["base"])
    report = {
        "benchmark": "dreambooth_mnist",
        "command": "nice -n 19 python benchmarks/dreambooth_mnist.py " + " ".join(
            f"--{k} {v}" for k, v in vars(args).items() if k not in ("out", "base", "judge")),
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
                   "(shared with other jobs)",
        "load_average": os.getloadavg()[0],
        "versions": {"keras": keras.__version__, "backend": keras.backend.backend(),
                     "python": platform.python_version(), "numpy": np.__version__},
        "base": os.path.relpath(args.base, HERE),
        "subject": "5 held-out 3s, thickened (3x3 grey-level dilation), label 10 "
                   "(add_label init_from=3); prior class 3",
        "fine_tuning": f"full, AdamW({args.learning_rate}), batch {args.batch_size}, no EMA, "
                       f"prior_loss_weight {args.prior_loss_weight}",
        "class_images": {"num": args.num_class_images, "seconds": round(class_seconds, 1),
                         "style_fraction": class_thick,
                         "every_class_style_fraction": float(np.mean(is_thick(every_class)))},
        "sampler": f"dpm_solver x{args.num_steps}, guidance {args.guidance}",
        "style_classifier": {"thick_on_thickened_real": style_tp,
                             "thick_on_real": style_fp, "seconds": round(style_seconds, 1)},
        "judge": {"source": judge_source, "accuracy_real": judge_real,
                  "accuracy_thickened_real": judge_thick},
        "runs": runs,
        "results": results,
        "total_seconds": round(time.time() - started, 1),
    }
    with open(os.path.join(args.out, "dreambooth_mnist.json"), "w") as f:
        json.dump(report, f, indent=2)

    def line(name, r):
        new = (f"{r['style_fraction_new_label']:.2f} | {r['new_label_judged_3']:.2f}"
               if "style_fraction_new_label" in r else "- | -")
        return (f"| {name} | {new} | {r['style_fraction_class_3']:.2f} | "
                f"{r['style_fraction_other_classes']:.2f} | "
                f"{r['judge_accuracy_classes_0_9']:.3f} | {r['judge_accuracy_per_class'][3]:.2f} |")

    lines = [
        "# dreambooth_mnist: a thick-stroke style from 5 examples, bound to label 10",
        "",
        f"- base: {report['base']} (class-conditional UNet, 10 classes); subject: "
        f"{report['subject']}",
        f"- fine-tuning: {report['fine_tuning']}; "
        + "; ".join(f"{k}: {v['train_steps']} steps in {v['train_seconds']:.0f} s, subject share "
                    f"{v['subject_share']:.2f}" for k, v in runs.items()),
        f"- class images: {args.num_class_images} 3s from the frozen base "
        f"({class_seconds:.0f} s; style fraction {class_thick:.2f}); for the every-class "
        f"prior, {args.num_class_images} of the classes 0-9",
        f"- sampling: {report['sampler']}; {args.per_class} per class 0-9, {args.num_new} of "
        "label 10",
        f"- style classifier (small CNN on held-out digits as drawn / thickened): calls "
        f"{style_tp:.3f} of thickened real digits and {style_fp:.3f} of real digits thick",
        f"- judge: {judge_source}; accuracy {judge_real:.3f} on real digits, "
        f"{judge_thick:.3f} on thickened ones",
        "",
        "| model | style, label 10 | label 10 judged 3 | style, class 3 | style, other "
        "classes | judge acc. 0-9 | judge acc. class 3 |",
        "|---|---|---|---|---|---|---|",
        line("base (before)", b),
        line("DreamBooth, prior preservation (class 3)", with_p),
        line("DreamBooth, prior preservation (every class)", every_p),
        line("fine-tuned, no prior preservation", without_p),
        "",
        "Drift (judge accuracy on classes 0-9, after - before): with prior preservation "
        f"{with_p['judge_accuracy_classes_0_9'] - b['judge_accuracy_classes_0_9']:+.3f} "
        "(class 3), "
        f"{every_p['judge_accuracy_classes_0_9'] - b['judge_accuracy_classes_0_9']:+.3f} "
        "(every class), without "
        f"{without_p['judge_accuracy_classes_0_9'] - b['judge_accuracy_classes_0_9']:+.3f}; "
        "style leak into class 3 (style fraction after - before): with "
        f"{with_p['style_fraction_class_3'] - b['style_fraction_class_3']:+.2f}, without "
        f"{without_p['style_fraction_class_3'] - b['style_fraction_class_3']:+.2f}.",
        "",
        "Grid (dreambooth_mnist.png): rows are classes 0-9 then label 10; columns base | "
        "with prior preservation (class 3) | (every class) | without.",
        f"Machine: {report['machine']}, load average {report['load_average']:.1f}; Keras "
        f"{keras.__version__} ({keras.backend.backend()}); {report['total_seconds']:.0f} s in all.",
        f"Rerun: `{report['command']}`",
    ]
    with open(os.path.join(args.out, "dreambooth_mnist.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
