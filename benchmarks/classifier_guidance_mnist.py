"""Classifier guidance on MNIST: an unconditional model plus a noisy classifier,
against classifier-free guidance.

The unconditional model is `benchmarks/results/mnist.keras` called with the
null label: the class-conditional UNet of `benchmarks/mnist.py` was trained
with label dropout 0.1, so with the null label it is an unconditional model
(the one classifier-free guidance uses). No separate unconditional model was
trained.

A `models.NoisyClassifier` (p(y | x_t, t), UNet-encoder style) is trained by
`fit` on the base's 4,000 training digits at random t of the base's schedule
for `--classifier_steps` steps of 64. Then, with the same sampler (dpm_solver x20),
the same initial noise and the EMA weights, each configuration draws
`--per_class` samples of each digit:

- unguided: the unconditional model alone (labels requested but not used);
- classifier guidance at several scales s: `base.generate(labels=...,
  classifier=noisy, classifier_scale=s, guidance_scale=0)` (guidance_scale=0:
  the null-label, unconditional model, one network call per step);
- classifier-free guidance at several scales w (w = 1: the conditional
  model): `base.generate(labels=..., guidance_scale=w)`. Scales w < 1 move
  from the unconditional model (w = 0) towards the conditional one: they
  give classifier-free configurations in the Frechet-distance range of the
  classifier-guided ones (the unconditional model's, far above the
  conditional model's), so that the two are compared at equal FD.

Reported per configuration: judge accuracy on the requested labels (overall
and per class) and the Frechet distance between the judge's penultimate
features (`benchmarks/mnist.py`'s classifier(), "features" layer) of the
samples and of the 1,000 held-out real digits, as `benchmarks/mnist.py` does.
The comparison is classifier guidance vs classifier-free guidance at about
the same Frechet distance.

Usage:
    python benchmarks/classifier_guidance_mnist.py [--classifier_steps 1500]
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

import keras_diffusion
from keras_diffusion.models import NoisyClassifier
from keras_diffusion.utils.images import save_image_grid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from mnist import frechet_distance  # noqa: E402
from mnist import StepBudget  # noqa: E402
from mnist import TimeBudget  # noqa: E402
from mnist import load_digits  # noqa: E402
from mnist import trained_judge  # noqa: E402


def parse_scales(text):
    return [float(s) for s in text.split(",") if s]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--base", default=os.path.join(HERE, "results", "mnist.keras"))
    parser.add_argument("--judge", default="",
                        help="a saved mnist.py classifier(); default: train it here")
    parser.add_argument("--classifier_steps", type=int, default=1500)
    parser.add_argument("--classifier_minutes", type=float, default=8.0,
                        help="a wall-time cap on the classifier's training")
    parser.add_argument("--classifier_scales", default="1,3,10")
    parser.add_argument("--cfg_scales", default="0.1,0.25,0.5,1,3")
    parser.add_argument("--per_class", type=int, default=25)
    parser.add_argument("--num_steps", type=int, default=20)
    parser.add_argument("--batch_size", type=int, default=125)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    keras.utils.set_random_seed(args.seed)
    started = time.time()

    x, y = load_digits()
    order = np.random.default_rng(args.seed).permutation(len(x))  # mnist.py's split
    x, y = x[order], y[order]
    x_train, y_train = x[:4000], y[:4000]
    x_held, y_held = x[4000:], y[4000:]

    judge, _, judge_source = trained_judge(x_held, y_held, args.judge)
    features = keras.Model(judge.inputs, judge.get_layer("features").output)
    real_features = features.predict(x_held / 127.5 - 1, verbose=0)
    floor = frechet_distance(features.predict(x_train[:1000] / 127.5 - 1, verbose=0),
                             real_features)

    base = keras_diffusion.load_model(args.base)
    schedule = base.schedule

    # --- the noisy classifier ---------------------------------------------
    noisy = NoisyClassifier(num_classes=10, input_channels=1, base_channels=16,
                            channel_multipliers=(1, 2, 4), num_res_blocks=1, num_groups=8,
                            schedule=schedule, seed=args.seed)
    noisy.compile(keras.optimizers.Adam(1e-3), metrics=["accuracy"])
    start = time.time()
    steps_per_epoch = len(x_train) // 64
    history = noisy.fit(x_train / 127.5 - 1, y_train, batch_size=64, verbose=0,
                        epochs=-(-args.classifier_steps // steps_per_epoch),
                        callbacks=[TimeBudget(60 * args.classifier_minutes),
                                   StepBudget(args.classifier_steps)])
    classifier_seconds = time.time() - start
    classifier_steps = int(noisy.optimizer.iterations)
    accuracy_at_t = {}
    clean = (x_held / 127.5 - 1).astype("float32")
    eps = np.random.default_rng(args.seed).standard_normal(clean.shape).astype("float32")
    for t in (0.1, 0.3, 0.5, 0.7, 0.9):
        tt = np.full((len(clean),), t, "float32")
        x_t = keras.ops.convert_to_numpy(schedule.add_noise(clean, eps, tt))
        logits = noisy.predict({"x_t": x_t, "t": tt}, batch_size=250, verbose=0)
        accuracy_at_t[str(t)] = float(np.mean(np.argmax(logits, -1) == y_held))
    print(f"noisy classifier: {classifier_steps} steps in {classifier_seconds:.0f} s; held-out "
          f"accuracy by t {accuracy_at_t}", flush=True)

    # --- sampling: everything through generate() ---------------------------
    # The same seed gives every configuration the same initial noise; one
    # compiled sampler loop per (kind, scale), reused over the batches.
    common = dict(sampler="dpm_solver", num_steps=args.num_steps, seed=args.seed,
                  batch_size=args.batch_size, verbose=0)

    def sample(kind, labels, scale):
        if kind == "cg" and scale > 0:
            # guidance_scale=0: the base's unconditional model (the null label,
            # one network call per step), guided by the noisy classifier.
            return base.generate(labels=labels, classifier=noisy, classifier_scale=scale,
                                 guidance_scale=0.0, **common)
        if kind == "cg":  # Unguided: the unconditional model alone.
            return base.generate(num_images=len(labels), **common)
        return base.generate(labels=labels, guidance_scale=scale, **common)

    labels = np.repeat(np.arange(10), args.per_class).astype("int32")
    # Interleaved (classifier, classifier-free, ..., unguided last) and
    # written after each one, so that a run cut short still reports pairs.
    cg_list = [(f"classifier guidance s={s:g}", "cg", s)
               for s in parse_scales(args.classifier_scales)]
    cfg_list = [(f"classifier-free guidance w={w:g}", "cfg", w)
                for w in parse_scales(args.cfg_scales)]
    configs = [c for pair in zip(cg_list, cfg_list) for c in pair]
    configs += cg_list[len(cfg_list):] + cfg_list[len(cg_list):]
    configs += [("unguided (unconditional)", "cg", 0.0)]
    results, grids = [], []
    def write_report():
        cg = [r for r in results if r["kind"] == "cg" and r["scale"] > 0]
        cfg = [r for r in results if r["kind"] == "cfg"]
        pairs = []
        for r in cg if cfg else []:
            peer = min(cfg, key=lambda c: abs(c["frechet_distance"] - r["frechet_distance"]))
            pairs.append({"classifier_guidance": r["name"], "nearest_cfg_by_frechet": peer["name"],
                          "frechet": [r["frechet_distance"], peer["frechet_distance"]],
                          "judge_accuracy": [r["judge_accuracy"], peer["judge_accuracy"]],
                          "accuracy_ratio_cg_over_cfg": r["judge_accuracy"] /
                          max(peer["judge_accuracy"], 1e-9)})

        save_image_grid(np.concatenate(grids), os.path.join(args.out,
                                                            "classifier_guidance_mnist.png"),
                        num_rows=len(configs), scale=2)
        report = {
            "benchmark": "classifier_guidance_mnist",
            "command": "python benchmarks/classifier_guidance_mnist.py " + " ".join(
                f"--{k} {v}" for k, v in vars(args).items() if k not in ("out", "base", "judge")),
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs "
                       "(shared with other jobs)",
            "load_average": os.getloadavg()[0],
            "versions": {"keras": keras.__version__, "backend": keras.backend.backend(),
                         "tensorflow": tf.__version__, "python": platform.python_version()},
            "unconditional_model": f"{os.path.relpath(args.base, HERE)} with the null label "
                                   "(CFG-trained with label dropout 0.1; no separate model)",
            "noisy_classifier": {
                "architecture": "NoisyClassifier(base_channels=16, channel_multipliers=(1, 2, 4), "
                                "num_res_blocks=1), Adam(1e-3), batch 64",
                "parameters": int(noisy.count_params()), "train_steps": classifier_steps,
                "train_seconds": round(classifier_seconds, 1),
                "final_train_accuracy": float(history.history["accuracy"][-1]),
                "held_out_accuracy_by_t": accuracy_at_t},
            "sampler": f"dpm_solver x{args.num_steps} (clip_x0 1), EMA weights, same noise for "
                       "every configuration",
            "samples_per_class": args.per_class,
            "judge": judge_source,
            "frechet_floor_real_train_vs_held_out": floor,
            "configurations_done": f"{len(results)} of {len(configs)}",
            "results": results,
            "matched_pairs": pairs,
            "total_seconds": round(time.time() - started, 1),
        }
        with open(os.path.join(args.out, "classifier_guidance_mnist.json"), "w") as f:
            json.dump(report, f, indent=2)
        lines = [
            "# classifier_guidance_mnist: classifier guidance vs classifier-free guidance",
            "",
            f"- unconditional model: {report['unconditional_model']}",
            f"- noisy classifier: {report['noisy_classifier']['architecture']}, "
            f"{report['noisy_classifier']['parameters']} parameters, {classifier_steps} steps in "
            f"{classifier_seconds:.0f} s; held-out accuracy by t: "
            + ", ".join(f"t={k}: {v:.3f}" for k, v in accuracy_at_t.items()),
            f"- sampling: {report['sampler']}; {args.per_class} samples per class",
            f"- judge: {judge_source}; Frechet distance in its 128-d penultimate features vs the "
            f"1,000 held-out digits (floor, real train vs held-out digits: {floor:.1f})",
            "",
            "| configuration | judge accuracy | Frechet distance | per class (0-9) |",
            "|---|---|---|---|",
        ] + [
            f"| {r['name']} | {r['judge_accuracy']:.3f} | {r['frechet_distance']:.1f} | "
            + " ".join(f"{a:.2f}" for a in r["judge_accuracy_per_class"]) + " |"
            for r in results
        ] + [
            "",
            "Classifier guidance against the classifier-free configuration nearest in Frechet "
            "distance:",
            "",
        ] + [
            f"- {p['classifier_guidance']} (FD {p['frechet'][0]:.1f}, accuracy "
            f"{p['judge_accuracy'][0]:.3f}) vs {p['nearest_cfg_by_frechet']} (FD "
            f"{p['frechet'][1]:.1f}, accuracy {p['judge_accuracy'][1]:.3f}): accuracy ratio "
            f"{p['accuracy_ratio_cg_over_cfg']:.2f}"
            for p in pairs
        ] + [
            "",
            f"Configurations done: {len(results)} of {len(configs)}.",
            "Grid (classifier_guidance_mnist.png): one row per configuration (table order), 4 "
            "samples of each digit.",
            f"Machine: {report['machine']}, load average {report['load_average']:.1f}; Keras "
            f"{keras.__version__} ({keras.backend.backend()}); "
            f"{report['total_seconds']:.0f} s in all.",
            f"Rerun: `{report['command']}`",
        ]
        with open(os.path.join(args.out, "classifier_guidance_mnist.md"), "w") as f:
            f.write("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)

    for name, kind, scale in configs:
        start = time.time()
        images = sample(kind, labels, scale)
        predicted = np.argmax(judge.predict(images, verbose=0), -1)
        row = {
            "name": name, "kind": kind, "scale": scale,
            "judge_accuracy": float(np.mean(predicted == labels)),
            "judge_accuracy_per_class": [round(float(np.mean(predicted[labels == c] == c)), 3)
                                         for c in range(10)],
            "frechet_distance": frechet_distance(features.predict(images, verbose=0),
                                                 real_features),
            "seconds": round(time.time() - start, 1),
        }
        print(json.dumps(row), flush=True)
        results.append(row)
        grids.append(np.concatenate([images[labels == c][:4] for c in range(10)]))
        write_report()


if __name__ == "__main__":
    main()
