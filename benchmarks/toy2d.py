"""MLPDenoiser on an 8-mode ring: every schedule x prediction pair, every sampler.

For each schedule ("linear", "scaled_linear", "cosine", "ve",
"rectified_flow") and prediction type ("epsilon", "x0", "v", "flow") an
`MLPDenoiser()` (its defaults) is trained by `DiffusionModel.fit` for 1,500
steps (Adam 1e-3, batch 256) on 20,000 points of an 8-mode ring (radius 2,
mode std 0.1). Then `generate(num_images=2000, num_steps=50)` runs with every
sampler ("ddpm", "ddim", "dpm_solver", "euler", "heun", "ode"; the ODE
sampler is adaptive and ignores `num_steps`) on the default grid.

Reported per pair and sampler:
- near: the fraction of samples within 0.3 (3 mode stds) of the ring |x| = 2;
- max |x|: the largest coordinate (a diverging sampler shows here first);
- modes: how many of the 8 modes hold at least half their share (1/16) of
  the samples, and the smallest / largest mode fraction (1/8 = 0.125 is
  exact).
As a reference, each pair is also sampled with DDIM from t = 1 (explicit
`timesteps = 1 - i/50`), the default grid before the grids started at
`samplers.spacing.start_time` on schedules whose log-SNR(1) is about -inf.

`DiffusionModel` keeps its own average of the weights (`ema_decay`, 0.999
after a warm-up, by default), which `generate` samples with; `--ema_decay
none` turns it off, `--ema_decay D` sets it. `--ema_momentum M` trains with `Adam(lr, use_ema=True, ema_momentum=M)`
(Keras' EMA of the weights, which `generate` samples with) instead of the
plain `Adam(lr)` of the issue's setup; `--name toy2d_ema` keeps its table
apart.

Usage:
    python benchmarks/toy2d.py [--schedules cosine,linear]
        [--predictions epsilon,v] [--ema_decay none] [--ema_momentum 0.99]
        [--name toy2d]
        [--merge] [--out benchmarks/results]

`--merge` adds the pairs run to those already in NAME.json (to run the grid
in parts). Writes NAME.json and NAME.md to `--out`.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
from environment import machine  # noqa: E402

from keras_diffusion.models import DiffusionModel  # noqa: E402
from keras_diffusion.models import MLPDenoiser  # noqa: E402
from keras_diffusion.testing.gaussian_mixture import GaussianMixture  # noqa: E402

SCHEDULES = ("linear", "scaled_linear", "cosine", "ve", "rectified_flow")
PREDICTIONS = ("epsilon", "x0", "v", "flow")
SAMPLERS = ("ddpm", "ddim", "dpm_solver", "euler", "heun", "ode")
RADIUS, STD, NUM_MODES = 2.0, 0.1, 8
GOAL = "near >= 0.9, max |x| <= 4 and all 8 modes with >= 1/16 of the samples"


def score(samples, gmm):
    x = np.asarray(samples, np.float64)
    if not np.all(np.isfinite(x)):
        return {"near": 0.0, "max_abs": float("inf"), "modes": 0,
                "min_mode": 0.0, "max_mode": 0.0}
    near = np.abs(np.linalg.norm(x, axis=1) - RADIUS) < 3 * STD
    counts = np.bincount(gmm.classify(x[near]), minlength=NUM_MODES) if near.any() else (
        np.zeros(NUM_MODES))
    fractions = counts / len(x)
    return {
        "near": round(float(near.mean()), 4),
        "max_abs": round(float(np.abs(x).max()), 3),
        "modes": int(np.sum(fractions >= 0.5 / NUM_MODES)),
        "min_mode": round(float(fractions.min()), 4),
        "max_mode": round(float(fractions.max()), 4),
    }


def good(s):
    return s["near"] >= 0.9 and s["max_abs"] <= 4.0 and s["modes"] == NUM_MODES


def sample(model, gmm, args, sampler, **kwargs):
    start = time.time()
    try:
        x = model.generate(args.num_samples, sampler=sampler, num_steps=args.sampler_steps,
                           seed=1, verbose=0, **kwargs)
        result = score(x, gmm)
    except Exception as error:  # NaN / Inf (a tf.errors.InvalidArgumentError in graphs).
        if "NaN" not in str(error):
            raise
        result = score(np.full((1, 2), np.nan), gmm)
        result["error"] = str(error).split("\n")[0][:120]
    result["seconds"] = round(time.time() - start, 2)
    return result


def run(schedule, prediction, data, gmm, args):
    import tensorflow as tf

    keras.utils.set_random_seed(args.seed)
    try:
        model = DiffusionModel(MLPDenoiser(), schedule=schedule, prediction=prediction,
                               seed=args.seed, **model_ema_arguments(args))
    except ValueError as error:  # A pair the library refuses (VE + v / flow).
        return {"schedule": schedule, "prediction": prediction, "refused": str(error),
                "all_good": False}
    model.compile(keras.optimizers.Adam(args.learning_rate, **ema_arguments(args)))
    dataset = (tf.data.Dataset.from_tensor_slices(data)
               .shuffle(len(data), seed=args.seed).repeat().batch(args.batch_size))
    start = time.time()
    history = model.fit(dataset, steps_per_epoch=args.steps, epochs=1, verbose=0)
    result = {
        "schedule": schedule,
        "prediction": prediction,
        "train_steps": args.steps,
        "train_seconds": round(time.time() - start, 1),
        "final_loss": round(float(history.history["loss"][-1]), 4),
        "samplers": {name: sample(model, gmm, args, name) for name in SAMPLERS},
    }
    old_grid = (1.0 - np.arange(args.sampler_steps) / args.sampler_steps).astype("float32")
    result["ddim_from_t1"] = sample(model, gmm, args, "ddim", timesteps=old_grid)
    result["all_good"] = all(good(s) for s in result["samplers"].values())
    return result


def model_ema_arguments(args):
    """`DiffusionModel`'s `ema_decay`: its default unless `--ema_decay` is given."""
    if args.ema_decay is None:
        return {}
    return {"ema_decay": None if args.ema_decay == "none" else float(args.ema_decay)}


def ema_arguments(args):
    if args.ema_momentum is None:
        return {}
    return {"use_ema": True, "ema_momentum": args.ema_momentum}


def meta(args):
    import tensorflow as tf

    return {
        "command": "python benchmarks/toy2d.py " + " ".join(sys.argv[1:]),
        "machine": machine(),
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "numpy": np.__version__,
            "backend": keras.backend.backend(),
        },
        "setup": {
            "data": f"GaussianMixture.ring(num_modes={NUM_MODES}, radius={RADIUS}, std={STD}), "
                    f"{args.num_points} points (seed {args.seed})",
            "model": "DiffusionModel(MLPDenoiser(), schedule=..., prediction=..."
                     + "".join(f", {k}={v}" for k, v in model_ema_arguments(args).items())
                     + ")",
            "training": f"{args.steps} steps, Adam({args.learning_rate}"
                        + "".join(f", {k}={v}" for k, v in ema_arguments(args).items())
                        + f"), batch {args.batch_size}",
            "sampling": f"generate(num_images={args.num_samples}, "
                        f"num_steps={args.sampler_steps}, seed=1), default grid",
            "near": f"fraction within {3 * STD:.1f} of the ring |x| = {RADIUS}",
            "goal": GOAL,
        },
    }


def fmt(s):
    text = f"{s['near']:.3f} / {s['max_abs']:.3g} / {s['modes']} ({s['min_mode']:.3f}-{s['max_mode']:.3f})"
    return text if good(s) else f"**{text}**"


def write_markdown(path, summary):
    m = summary["meta"]
    lines = [
        "# toy2d: every schedule x prediction pair and every sampler, "
        + m["setup"]["training"],
        "",
        f"Command: `{m['command']}` (the grid in parts with `--merge`; see below)",
        "",
        f"Machine: {m['machine']['platform']}, {m['machine']['cpu_count']} CPUs "
        f"({', '.join(m['machine']['devices'])}), shared (wall times are noisy). Versions: "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()),
        "",
        f"Setup: {m['setup']['data']}; {m['setup']['model']}; {m['setup']['training']}; "
        f"{m['setup']['sampling']} (`heun` uses 50 timesteps = 99 evaluations; `ode` is "
        "adaptive, rtol = atol = 1e-5).",
        "",
        "Each cell: near / max |x| / modes (min-max mode fraction). near = "
        f"{m['setup']['near']}; modes = how many of the 8 modes hold >= 1/16 of the "
        f"samples. Goal per cell: {GOAL}; cells that miss it are in bold. "
        "`ddim from t=1` is DDIM on the grid that was the default before (t_i = 1 - i/50).",
        "",
        "| schedule | prediction | " + " | ".join(SAMPLERS) + " | ddim from t=1 | train s |",
        "|---|---|" + "---|" * (len(SAMPLERS) + 2),
    ]
    for r in summary["results"]:
        if "refused" in r:
            lines.append(f"| {r['schedule']} | {r['prediction']} | refused by "
                         "`DiffusionModel`: " + r["refused"].split(". ")[0] + " |" * 8)
            continue
        cells = [fmt(r["samplers"][name]) for name in SAMPLERS]
        lines.append(
            f"| {r['schedule']} | {r['prediction']} | " + " | ".join(cells)
            + f" | {fmt(r['ddim_from_t1'])} | {r['train_seconds']} |"
        )
    met = sum(r["all_good"] for r in summary["results"])
    offered = sum("refused" not in r for r in summary["results"])
    lines += ["", f"Pairs meeting the goal with every sampler: {met} of the {offered} pairs "
              f"`DiffusionModel` trains ({len(summary['results']) - offered} refused)."]
    if summary.get("notes"):
        lines += ["", summary["notes"].strip()]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--schedules", default=",".join(SCHEDULES))
    parser.add_argument("--predictions", default=",".join(PREDICTIONS))
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--sampler_steps", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--num_points", type=int, default=20000)
    parser.add_argument("--num_samples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--ema_momentum", type=float, default=None,
                        help="train with Keras' EMA of the weights at this momentum")
    parser.add_argument("--ema_decay", default=None,
                        help="DiffusionModel's ema_decay (a number, or 'none'; default: "
                             "the library's default)")
    parser.add_argument("--name", default="toy2d", help="stem of the result files")
    parser.add_argument("--merge", action="store_true",
                        help="add to the pairs already in NAME.json")
    parser.add_argument("--notes", default=None, help="a text file appended to NAME.md")
    parser.add_argument("--replot", action="store_true", help="rewrite NAME.md from the json")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    stem = os.path.join(args.out, args.name)
    json_path = stem + ".json"
    previous = []
    if args.merge or args.replot:
        if os.path.exists(json_path):
            with open(json_path) as f:
                saved = json.load(f)
            # Rows of another format (an older version of this script) are dropped.
            previous = [r for r in saved.get("results", []) if "samplers" in r or "refused" in r]
            if args.replot:
                if args.notes:
                    saved["notes"] = open(args.notes).read()
                with open(json_path, "w") as f:
                    json.dump(saved, f, indent=1)
                write_markdown(stem + ".md", saved)
                return

    gmm = GaussianMixture.ring(num_modes=NUM_MODES, radius=RADIUS, std=STD)
    data = gmm.sample(args.num_points, seed=args.seed).astype("float32")
    new = []
    for schedule in args.schedules.split(","):
        for prediction in args.predictions.split(","):
            result = run(schedule, prediction, data, gmm, args)
            print(json.dumps(result), flush=True)
            new.append(result)
            # Written after every pair: a long grid stopped midway keeps its rows.
            write_results(stem, args, previous, new)


def write_results(stem, args, previous, new):
    done = {(r["schedule"], r["prediction"]) for r in new}
    results = [r for r in previous if (r["schedule"], r["prediction"]) not in done] + new
    order = {(s, p): i for i, (s, p) in enumerate(
        (s, p) for s in SCHEDULES for p in PREDICTIONS)}
    results.sort(key=lambda r: order.get((r["schedule"], r["prediction"]), len(order)))
    summary = {"benchmark": "toy2d", "meta": meta(args), "results": results}
    if args.notes:
        summary["notes"] = open(args.notes).read()
    with open(stem + ".json", "w") as f:
        json.dump(summary, f, indent=1)
    write_markdown(stem + ".md", summary)


if __name__ == "__main__":
    main()
