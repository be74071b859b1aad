"""Few-step MNIST: consistency distillation of benchmarks/mnist.py's model.

The teacher is the class-conditional `DiffusionModel` saved at
benchmarks/results/mnist.keras (UNet, cosine schedule, v prediction; guidance
3 with dpm_solver x20 is its reference). The student is a
`ConsistencyModel` initialized from the teacher's (EMA) weights, its network
read as a v predictor (`ConsistencyParameterization(network_prediction="v")`),
distilled with classifier-free guidance folded into the teacher's ODE step
(LCM's recipe: the student is then sampled without guidance), for a wall-time
budget on the CPU.

Judge: benchmarks/mnist.py's `classifier()` trained on the 1,000 held-out
digits (the seeded split of mnist.py; `--judge` loads a saved one). Reported
per method and step count, on `--per_class` samples of every class:
judge accuracy, the Frechet distance between the judge's penultimate-layer
features of the samples and of the held-out digits (mnist.py's
`frechet_distance`), and images/s of `generate` (compiled, warm).

Goal (issue 14): at 1 and 2 steps an FD <= 1.5x and 1.2x the teacher's
20-step FD, and accuracy >= 95% at every step count.

    python benchmarks/few_step_mnist.py --train_minutes 12 --learning_rate 1e-4 --per_class 20

Writes few_step_mnist.{json,md,png} in --out.
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

import keras_diffusion  # noqa: E402
from keras_diffusion.models import ConsistencyModel  # noqa: E402
from keras_diffusion.models import ConsistencyParameterization  # noqa: E402
from keras_diffusion.models.distillation import copy_denoiser  # noqa: E402
from keras_diffusion.utils.images import save_image_grid  # noqa: E402
from mnist import TimeBudget  # noqa: E402
from mnist import frechet_distance  # noqa: E402
from mnist import load_digits  # noqa: E402
from mnist import trained_judge  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def timed_generate(model, labels, **kwargs):
    """Samples (and images/s of a warm, compiled generate)."""
    model.generate(labels=labels[:100], seed=99, batch_size=100, **kwargs)  # compile
    start = time.time()
    samples = model.generate(labels=labels, seed=1, batch_size=100, **kwargs)
    return np.asarray(samples), len(labels) / (time.time() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--teacher", default=os.path.join(HERE, "results", "mnist.keras"))
    parser.add_argument("--judge", default="", help="a saved judge (.keras); default: train it")
    parser.add_argument("--classifier_epochs", type=int, default=60)
    parser.add_argument("--train_minutes", type=float, default=13.0)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--solver", default="heun")
    parser.add_argument("--num_timesteps", type=int, default=12)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--per_class", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teacher_steps", type=lambda s: [int(v) for v in s.split(",")],
                        default=[1, 2, 4, 20])
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    keras.utils.set_random_seed(args.seed)
    begin = time.time()

    x, y = load_digits()
    order = np.random.default_rng(0).permutation(len(x))  # mnist.py's split
    x, y = x[order], y[order]
    x_train, y_train = x[:4000], y[:4000]
    x_held, y_held = x[4000:], y[4000:]
    clf, features, judge_source = trained_judge(x_held, y_held, args.judge,
                                                args.classifier_epochs)
    judge_acc = float(np.mean(np.argmax(clf.predict(x_train / 127.5 - 1, verbose=0), -1)
                              == y_train))
    f_held = features.predict(x_held / 127.5 - 1, verbose=0)
    fd_floor = frechet_distance(features.predict(x_train[:1000] / 127.5 - 1, verbose=0), f_held)
    labels = np.repeat(np.arange(10), args.per_class).astype("int32")
    rows, grids = [], {}

    def score(method, steps, samples, rate, note=""):
        predicted = np.argmax(clf.predict(samples, verbose=0), -1)
        row = {
            "method": method, "steps": steps,
            "accuracy": float(np.mean(predicted == labels)),
            "fd": frechet_distance(features.predict(samples, verbose=0), f_held),
            "images_per_second": float(rate), "note": note,
        }
        rows.append(row)
        grids[(method, steps)] = samples.reshape(10, args.per_class, 28, 28, 1)[:, :8]
        print(row, flush=True)
        # Partial results, in case the run is stopped before the end.
        with open(os.path.join(args.out, "few_step_mnist.partial.json"), "w") as f:
            json.dump({"rows": rows, "args": vars(args), "seconds": time.time() - begin}, f,
                      indent=2)

    teacher = keras_diffusion.load_model(args.teacher)
    for steps in args.teacher_steps:
        samples, rate = timed_generate(teacher, labels, sampler="dpm_solver", num_steps=steps,
                                       guidance_scale=args.guidance)
        score("teacher dpm_solver", steps, samples, rate, f"guidance {args.guidance}")

    network = ConsistencyParameterization(
        copy_denoiser(teacher), teacher.schedule, 0.5, network_prediction=teacher.prediction
    )
    student = ConsistencyModel(
        network, schedule=teacher.schedule, teacher=teacher, solver=args.solver,
        guidance_scale=args.guidance, num_timesteps=args.num_timesteps, num_classes=10,
        image_shape=tuple(teacher.image_shape),
        seed=args.seed, ema_decay=0.99,
    )
    # Before training: the initialization (the teacher's x0 at one step).
    samples, rate = timed_generate(student, labels, num_steps=1)
    score("student before CD", 1, samples, rate, "teacher weights, no training")
    student.compile(keras.optimizers.Adam(args.learning_rate))
    load_before = os.getloadavg()[0]
    start = time.time()
    history = student.fit(x_train, y_train, batch_size=args.batch_size, epochs=1000,
                          callbacks=[TimeBudget(60 * args.train_minutes)], verbose=2)
    train_seconds = time.time() - start
    train_steps = int(student.optimizer.iterations)
    load_after = os.getloadavg()[0]
    for steps in (1, 2, 4):
        samples, rate = timed_generate(student, labels, num_steps=steps)
        score("CD", steps, samples, rate, f"{train_steps} steps, {train_seconds:.0f} s")

    def fd_of(method, steps):
        return next(r["fd"] for r in rows if r["method"] == method and r["steps"] == steps)

    teacher20 = fd_of("teacher dpm_solver", 20)
    goal = {
        "fd_1_over_teacher20": fd_of("CD", 1) / teacher20,
        "fd_2_over_teacher20": fd_of("CD", 2) / teacher20,
        "min_accuracy_cd": min(r["accuracy"] for r in rows if r["method"] == "CD"),
    }
    goal["met"] = bool(goal["fd_1_over_teacher20"] <= 1.5 and goal["fd_2_over_teacher20"] <= 1.2
                       and goal["min_accuracy_cd"] >= 0.95)
    order_keys = [(r["method"], r["steps"]) for r in rows]
    grid = np.concatenate([grids[k].reshape(-1, 28, 28, 1) for k in order_keys])
    save_image_grid(grid, os.path.join(args.out, "few_step_mnist.png"),
                    num_rows=len(order_keys) * 10, scale=1)
    command = "python benchmarks/few_step_mnist.py " + " ".join(sys.argv[1:])
    versions = {"python": platform.python_version(), "keras": keras.__version__,
                "numpy": np.__version__, "backend": keras.backend.backend()}
    try:
        import tensorflow as tf

        versions["tensorflow"] = tf.__version__
    except ImportError:
        pass
    summary = {
        "benchmark": "few_step_mnist", "command": command,
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs (shared), no GPU",
        "versions": versions, "args": vars(args), "judge": judge_source,
        "judge_accuracy_on_real_train_digits": judge_acc,
        "fd_floor_real_vs_real": fd_floor,
        "train_seconds": train_seconds, "train_steps": train_steps,
        "final_loss": float(history.history["loss"][-1]),
        "load_average_before_after": [load_before, load_after],
        "rows": rows, "goal": goal, "total_seconds": time.time() - begin,
    }
    with open(os.path.join(args.out, "few_step_mnist.json"), "w") as f:
        json.dump(summary, f, indent=2)
    met = "met" if goal["met"] else "NOT met"
    lines = [
        "# Few-step MNIST: consistency distillation of the mnist.py model",
        "",
        f"Command: `{command}`. Machine: {summary['machine']}. Versions: {versions}.",
        "",
        f"Teacher: {args.teacher} (UNet, cosine, v prediction), dpm_solver with guidance "
        f"{args.guidance}. Student: ConsistencyModel initialized from the teacher's EMA weights "
        f"(network read as v), teacher step {args.solver} with guidance {args.guidance} folded "
        f"in, N = {args.num_timesteps}, EMA target 0.95, L2, Adam {args.learning_rate} "
        f"(EMA 0.99), batch {args.batch_size}: {train_steps} steps in {train_seconds:.0f} s "
        f"(1-min load {load_before:.1f} before, {load_after:.1f} after).",
        "",
        f"Judge: mnist.py's classifier(), {judge_source}; accuracy {judge_acc:.4f} on the 4,000 "
        f"real training digits. FD: Frechet distance of its features, {len(labels)} samples "
        f"({args.per_class} per class) vs the 1,000 held-out digits (real vs real floor: "
        f"{fd_floor:.2f}). img/s: warm compiled `generate`, batch 100.",
        "",
        f"**Goal (FD@1 <= 1.5x, FD@2 <= 1.2x the teacher's 20-step FD; accuracy >= 95%): {met}.** "
        f"FD@1 / teacher@20 = {goal['fd_1_over_teacher20']:.2f}, FD@2 / teacher@20 = "
        f"{goal['fd_2_over_teacher20']:.2f}, lowest CD accuracy {goal['min_accuracy_cd']:.3f}.",
        "",
        "| method | steps | judge accuracy | FD | FD / teacher@20 | img/s | note |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['method']} | {r['steps']} | {r['accuracy']:.3f} | {r['fd']:.2f} | "
                     f"{r['fd'] / teacher20:.2f} | {r['images_per_second']:.1f} | {r['note']} |")
    lines += ["", "few_step_mnist.png: 8 samples per class (one row per class), blocks in the "
              "table's order.", ""]
    with open(os.path.join(args.out, "few_step_mnist.md"), "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
