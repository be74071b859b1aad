"""Sampler frontier on MNIST: Frechet distance per sampler and spacing at 5 NFE.

The model is benchmarks/mnist.py's class-conditional `DiffusionModel` saved at
benchmarks/results/mnist.keras (UNet 0.72M, cosine schedule, v prediction),
sampled with classifier-free guidance 3 (its reference setting; `--guidance`).
Every configuration draws the same labels (`--per_class` of each class) from
the same seed (`generate(seed=...)`), so configurations differ only by the
sampler and its time grid. x0 is clipped to [-1, 1] at every step in all of
them (`clip_x0=1`, what `generate` does for a pixel model with a sampler given
by name; `--clip_x0 0` turns it off everywhere).

Configurations:

- the sweep at 5 model evaluations (NFE): every deterministic sampler of
  `sampler_nfe.sampler_table()` named in `SWEEP` on every spacing of
  `sampler_nfe.spacings_for(schedule)`; Heun and EDM take the most timesteps
  within 5 NFE (3 timesteps, 2N - 1 = 5 evaluations), as sampler_nfe.py
  counts them;
- the references: DPM-Solver++(2M) on diffusers' default grid
  (DPMSolverMultistepScheduler: order 2, "linspace", lower_order_final; the
  library's `DPMSolverSampler(order=2)` matches it to round-off, see
  sampler_nfe.py) at 3, 5 and 10 NFE, DDIM with 50 steps (its default
  "uniform" grid), and the best 5-NFE configuration at 3 and 10 NFE;
- the noise check: the best 5-NFE configuration, DPM-Solver++(2M)-default at 5
  NFE and DDIM-50 again with a second seed (`--seed + 1`). The best of ~90
  configurations on one seed is biased low (it is the minimum of noisy
  numbers); its ratios on the second seed are the fresh estimate.

Judge: benchmarks/mnist.py's `classifier()`, `trained_judge` on the 1,000
held-out digits of mnist.py's seeded split (`--judge` loads a saved one).
FD: mnist.py's `frechet_distance` between the judge's penultimate-layer
features of the samples and of the held-out digits; the floor is that of as
many real training digits as there are samples (the small-sample bias).

Goal (issue 17): at 5 NFE the best configuration's FD <= 0.8x that of
DPM-Solver++(2M) on diffusers' default grid, and <= 1.2x the FD of DDIM-50.

Usage:
    python benchmarks/sampler_mnist.py --judge /tmp/s3/judge.keras
    python benchmarks/sampler_mnist.py --quick  # a smoke run, ~2 minutes

Writes sampler_mnist.json, sampler_mnist.md and sampler_mnist.png in --out
(a `--quick` run writes sampler_mnist_quick.*).
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, ".."))

import keras  # noqa: E402

import keras_diffusion  # noqa: E402
from mnist import frechet_distance  # noqa: E402
from mnist import load_digits  # noqa: E402
from mnist import trained_judge  # noqa: E402
from environment import machine  # noqa: E402
from sampler_nfe import sampler_table  # noqa: E402
from sampler_nfe import spacings_for  # noqa: E402
from sampler_nfe import steps_for  # noqa: E402

GOAL_NFE = 5
REFERENCE_NFES = (3, 5, 10)
PEER = ("DPM-Solver++(2M)", "linspace")  # diffusers' DPMSolverMultistepScheduler default
SWEEP = (
    "DDIM",
    "Euler",
    "Heun",
    "EDM (Heun in sigma)",
    "DPM-Solver++(2M)",
    "DPM-Solver++(3M)",
    "DPM-Solver++ singlestep 2",
    "DPM-Solver++ singlestep 3",
    "UniPC-2 bh1",
    "UniPC-2 bh2",
    "UniPC-3 bh1",
    "UniPC-3 bh2",
    "DEIS-2",
    "DEIS-3",
    "iPNDM",
)
QUICK_SWEEP = ("DDIM", "DPM-Solver++(2M)", "UniPC-3 bh2")
QUICK_SPACINGS = ("linspace", "log_snr")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default=os.path.join(HERE, "results", "mnist.keras"))
    parser.add_argument("--judge", default="", help="a saved judge (.keras); default: train it")
    parser.add_argument("--classifier_epochs", type=int, default=60)
    parser.add_argument("--guidance", type=float, default=3.0)
    parser.add_argument("--per_class", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--clip_x0", type=float, default=1.0, help="0: no x0 clipping")
    parser.add_argument("--ddim_steps", type=int, default=50)
    parser.add_argument("--samplers", default=",".join(SWEEP),
                        help="comma-separated names of sampler_nfe.sampler_table()")
    parser.add_argument("--spacings", default="", help="comma-separated; default: all")
    parser.add_argument("--grid_per_class", type=int, default=4)
    parser.add_argument("--quick", action="store_true",
                        help="smoke run: 3 per class, 3 samplers x 2 spacings")
    parser.add_argument("--out", default=os.path.join(HERE, "results"))
    args = parser.parse_args()
    if args.quick:
        args.per_class = min(args.per_class, 3)
        args.samplers = ",".join(QUICK_SWEEP)
        args.spacings = args.spacings or ",".join(QUICK_SPACINGS)
    if args.per_class < 2:
        raise ValueError(f"`--per_class` must be at least 2, received {args.per_class}")
    name = "sampler_mnist_quick" if args.quick else "sampler_mnist"
    os.makedirs(args.out, exist_ok=True)
    begin = time.time()
    load_before = os.getloadavg()[0]

    table = sampler_table()
    sweep = [s for s in args.samplers.split(",") if s]
    unknown = [s for s in sweep + [PEER[0], "DDIM"] if s not in table]
    if unknown:
        raise ValueError(f"Unknown `--samplers` {unknown}; valid: {list(table)}")

    x, y = load_digits()
    order = np.random.default_rng(0).permutation(len(x))  # mnist.py's split
    x, y = x[order], y[order]
    x_train, x_held, y_held = x[:4000], x[4000:], y[4000:]
    _, features, judge_source = trained_judge(x_held, y_held, args.judge,
                                              args.classifier_epochs)
    f_held = features.predict(x_held / 127.5 - 1, verbose=0)
    labels = np.repeat(np.arange(10), args.per_class).astype("int32")
    num = len(labels)
    fd_floor = frechet_distance(features.predict(x_train[:num] / 127.5 - 1, verbose=0), f_held)

    model = keras_diffusion.load_model(args.model)
    spacings = spacings_for(model.schedule)
    if args.spacings:
        spacings = [s for s in args.spacings.split(",") if s]
        bad = [s for s in spacings if s not in spacings_for(model.schedule)]
        if bad:
            raise ValueError(f"Unknown `--spacings` {bad}; valid: {spacings_for(model.schedule)}")
    print(f"judge {judge_source}; {num} samples; FD floor {fd_floor:.2f}; "
          f"{time.time() - begin:.0f}s", flush=True)

    rows, grids = [], {}

    def run(sampler_name, spacing, budget, role, seed=args.seed):
        base, nfe_fn = table[sampler_name]
        clip = args.clip_x0 if args.clip_x0 > 0 else None
        sampler = type(base).from_config({**base.get_config(), "clip_x0": clip})
        n = steps_for(budget, nfe_fn)
        start = time.time()
        try:
            samples = model.generate(
                labels=labels, sampler=sampler, num_steps=n, spacing=spacing,
                guidance_scale=args.guidance, seed=seed, batch_size=num, verbose=0,
            )
        except Exception as error:  # A non-finite sample (the sampler's finite check).
            print(f"{sampler_name} / {spacing}: {type(error).__name__}: {error}", flush=True)
            samples = None
        seconds = time.time() - start
        fd = (float("nan") if samples is None
              else frechet_distance(features.predict(samples, verbose=0), f_held))
        row = dict(sampler=sampler_name, spacing=spacing, nfe=nfe_fn(n), nfe_budget=budget,
                   num_steps=n, seed=seed, role=role, fd=fd, seconds=round(seconds, 2))
        rows.append(row)
        if seed == args.seed and samples is not None:
            grids[(sampler_name, spacing, budget)] = (row["nfe"], samples.reshape(
                10, args.per_class, 28, 28, 1)[:, :args.grid_per_class])
        print(f"{role:9s} {sampler_name:26s} {spacing:9s} NFE {row['nfe']:3d} seed {seed}: "
              f"FD {fd:7.2f} ({seconds:5.1f}s; total {time.time() - begin:.0f}s)", flush=True)
        with open(os.path.join(args.out, name + ".partial.json"), "w") as f:
            json.dump({"rows": rows, "args": vars(args)}, f, indent=1)
        return row

    # The peer and DDIM-50 first: a stopped run still has the denominators.
    run(PEER[0], PEER[1], GOAL_NFE, "sweep")
    run("DDIM", "uniform", args.ddim_steps, "reference")
    todo = [(a, b) for a in sweep for b in spacings if (a, b) != PEER]
    for k, (sampler_name, spacing) in enumerate(todo):
        row = run(sampler_name, spacing, GOAL_NFE, "sweep")
        mean = np.mean([r["seconds"] for r in rows if r["role"] == "sweep"][1:])
        print(f"  sweep {k + 1} of {len(todo)}: about {mean * (len(todo) - k - 1):.0f} s "
              f"left in the sweep ({row['seconds']:.1f} s for this one)", flush=True)
    best = min((r for r in rows if r["role"] == "sweep"), key=_fd_key)
    for budget in REFERENCE_NFES:
        if budget != GOAL_NFE:
            run(PEER[0], PEER[1], budget, "reference")
            if (best["sampler"], best["spacing"]) != PEER:
                run(best["sampler"], best["spacing"], budget, "reference")
    second = args.seed + 1
    run(best["sampler"], best["spacing"], GOAL_NFE, "noise", second)
    if (best["sampler"], best["spacing"]) != PEER:
        run(PEER[0], PEER[1], GOAL_NFE, "noise", second)
    run("DDIM", "uniform", args.ddim_steps, "noise", second)

    summary = summarize(rows, best, args)
    meta = metadata(args, judge_source, fd_floor, num, begin, load_before)
    with open(os.path.join(args.out, name + ".json"), "w") as f:
        json.dump({"meta": meta, "summary": summary, "results": rows}, f, indent=1)
    write_markdown(os.path.join(args.out, name + ".md"), rows, summary, meta, name)
    plot_grid(os.path.join(args.out, name + ".png"), grids, best, args)
    os.remove(os.path.join(args.out, name + ".partial.json"))
    print(json.dumps(summary, indent=1))


def _fd_key(row):
    return row["fd"] if np.isfinite(row["fd"]) else np.inf


def _find(rows, sampler, spacing, budget, seed):
    return next(r for r in rows if r["sampler"] == sampler and r["spacing"] == spacing
                and r["nfe_budget"] == budget and r["seed"] == seed)


def summarize(rows, best, args):
    """The goal's two ratios, on the main seed and on the second one."""
    out = {"best": {k: best[k] for k in ("sampler", "spacing", "nfe", "num_steps", "fd")}}
    for label, seed in (("seed", args.seed), ("second_seed", args.seed + 1)):
        fd_best = _find(rows, best["sampler"], best["spacing"], GOAL_NFE, seed)["fd"]
        fd_peer = _find(rows, PEER[0], PEER[1], GOAL_NFE, seed)["fd"]
        fd_ddim = _find(rows, "DDIM", "uniform", args.ddim_steps, seed)["fd"]
        out[label] = {
            "seed": seed, "fd_best_5": fd_best, "fd_peer_5": fd_peer, "fd_ddim": fd_ddim,
            "best_over_peer": fd_best / fd_peer, "best_over_ddim": fd_best / fd_ddim,
            "peer_goal_met": bool(fd_best <= 0.8 * fd_peer),
            "ddim_goal_met": bool(fd_best <= 1.2 * fd_ddim),
        }
    out["goal"] = (f"at {GOAL_NFE} NFE, the best sampler's FD <= 0.8x DPM-Solver++(2M) on "
                   f"diffusers' default grid and <= 1.2x DDIM-{args.ddim_steps}")
    return out


def metadata(args, judge_source, fd_floor, num, begin, load_before):
    import tensorflow as tf

    return {
        "command": "python benchmarks/sampler_mnist.py " + " ".join(sys.argv[1:]),
        "total_seconds": round(time.time() - begin),
        "load_average_before_after": [load_before, os.getloadavg()[0]],
        "machine": machine(),
        "versions": {
            "python": platform.python_version(), "tensorflow": tf.__version__,
            "keras": keras.__version__, "numpy": np.__version__,
            "backend": keras.backend.backend(),
        },
        "args": vars(args),
        "judge": judge_source,
        "samples": num,
        "fd_floor_real_vs_real": fd_floor,
    }


def write_markdown(path, rows, summary, meta, name):
    args = meta["args"]
    main_rows = [r for r in rows if r["seed"] == args["seed"]]
    peer = _find(rows, PEER[0], PEER[1], GOAL_NFE, args["seed"])["fd"]
    ddim = _find(rows, "DDIM", "uniform", args["ddim_steps"], args["seed"])["fd"]
    best = summary["best"]
    s1, s2 = summary["seed"], summary["second_seed"]

    def verdict(ok):
        return "met" if ok else "NOT met"

    clip = f"clip_x0={args['clip_x0']}" if args["clip_x0"] > 0 else "no x0 clipping"
    m = meta["machine"]
    lines = [
        "# Sampler frontier on MNIST (benchmarks/mnist.py's model, 5 NFE)",
        "",
        f"Command: `{meta['command']}` ({meta['total_seconds']} s; 1-min load average "
        f"{meta['load_average_before_after'][0]:.1f} before, "
        f"{meta['load_average_before_after'][1]:.1f} after).",
        "",
        f"Machine: {m['platform']}, {m['cpu_count']} CPUs ({', '.join(m['devices'])}). "
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".",
        "",
        f"Model: `{os.path.basename(args['model'])}` (class-conditional DiffusionModel, UNet "
        f"0.72M, cosine, v prediction), classifier-free guidance {args['guidance']} (its "
        f"reference setting), {clip} in every configuration, {meta['samples']} samples "
        f"({args['per_class']} per class), the same labels and seed {args['seed']} in every "
        "configuration. Heun / EDM: the most timesteps N within the NFE budget, 2N - 1 "
        "evaluations. DPM-Solver++(2M) / linspace is diffusers' DPMSolverMultistepScheduler "
        "default (order 2, 'linspace' grid, lower_order_final), the library's implementation.",
        "",
        f"Judge: mnist.py's classifier(), {meta['judge']}. FD: Frechet distance of its "
        f"penultimate features, samples vs the 1,000 held-out digits. Floor (real vs real, "
        f"{meta['samples']} training digits): **{meta['fd_floor_real_vs_real']:.2f}**.",
        "",
        f"**Goal ({summary['goal']}).** Best at {GOAL_NFE} NFE: {best['sampler']} / "
        f"{best['spacing']} ({best['nfe']} NFE, {best['num_steps']} timesteps), FD "
        f"{best['fd']:.2f}.",
        "",
        f"- FD / DPM-Solver++(2M)-default@5: {s1['best_over_peer']:.3f} (goal <= 0.8: "
        f"**{verdict(s1['peer_goal_met'])}**); second seed {s2['seed']}: "
        f"{s2['best_over_peer']:.3f} ({verdict(s2['peer_goal_met'])}).",
        f"- FD / DDIM-{args['ddim_steps']}: {s1['best_over_ddim']:.3f} (goal <= 1.2: "
        f"**{verdict(s1['ddim_goal_met'])}**); second seed {s2['seed']}: "
        f"{s2['best_over_ddim']:.3f} ({verdict(s2['ddim_goal_met'])}).",
        "",
        f"Noise: with seed {s2['seed']} instead of {s1['seed']}, DDIM-{args['ddim_steps']} "
        f"FD {s1['fd_ddim']:.2f} -> {s2['fd_ddim']:.2f}, DPM-Solver++(2M)-default@5 "
        f"{s1['fd_peer_5']:.2f} -> {s2['fd_peer_5']:.2f}, the best@5 {s1['fd_best_5']:.2f} -> "
        f"{s2['fd_best_5']:.2f}. Configurations share the seed, so their differences are "
        "less noisy than a change of seed; the best of the sweep on one seed is biased low "
        "(the minimum of many noisy numbers): the second seed's ratios are the fresh estimate.",
        "",
    ]
    header = [f"| sampler | spacing | NFE | FD | FD / DPM++(2M)-default@5 | FD / DDIM-"
              f"{args['ddim_steps']} | seconds |", "|---|---|---|---|---|---|---|"]

    def line(r):
        return (f"| {r['sampler']} | {r['spacing']} | {r['nfe']} | {r['fd']:.2f} | "
                f"{r['fd'] / peer:.3f} | {r['fd'] / ddim:.3f} | {r['seconds']:.1f} |")

    sweep = sorted((r for r in main_rows if r["role"] == "sweep"), key=_fd_key)
    lines += [f"Sweep at {GOAL_NFE} NFE (seed {args['seed']}), best first:", ""] + header
    lines += [line(r) for r in sweep]
    lines += ["", f"References (seed {args['seed']}):", ""] + header
    refs = sorted((r for r in main_rows if r["role"] == "reference"),
                  key=lambda r: (r["sampler"], r["spacing"], r["nfe"]))
    lines += [line(r) for r in refs]
    lines += ["", f"{name}.png: {args['grid_per_class']} samples per class (one row of 10 "
              "classes per configuration, the same noise in every row): the best "
              "configuration and DPM-Solver++(2M)-default at 3, 5 and 10 NFE, and "
              f"DDIM-{args['ddim_steps']}.", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def plot_grid(path, grids, best, args):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [(best["sampler"], best["spacing"], b) for b in REFERENCE_NFES]
    if (best["sampler"], best["spacing"]) != PEER:
        keys += [(PEER[0], PEER[1], b) for b in REFERENCE_NFES]
    keys.append(("DDIM", "uniform", args.ddim_steps))
    fig, axes = plt.subplots(len(keys), 1, figsize=(12, 1.05 * len(keys) + 0.3))
    for ax, key in zip(np.atleast_1d(axes), keys):
        if key not in grids:  # a failed (non-finite) configuration
            ax.set_axis_off()
            continue
        nfe, block = grids[key]  # block: (10 classes, k, 28, 28, 1)
        k = block.shape[1]
        padded = np.pad(block[..., 0], ((0, 0), (0, 0), (1, 1), (1, 1)), constant_values=-1)
        strip = padded.transpose(2, 0, 1, 3).reshape(30, 10 * k * 30)
        ax.imshow((strip + 1) / 2, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{key[0]} / {key[1]}, {nfe} NFE", fontsize=8, loc="left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
