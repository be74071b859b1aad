"""Few-step generation with an exact teacher: CD, CT, progressive distillation, reflow.

On the 2-D 8-mode ring (`GaussianMixture.ring()`: radius 2, mode std 0.1)
and the 64-D mixture of benchmarks/sampler_nfe.py
(`GaussianMixture.random(num_modes=8, dim=64, seed=0)`), the teacher is the
exact mixture denoiser (what a perfectly trained network computes), on the
cosine schedule (rectified flow for reflow). Students are `MLPDenoiser`s
(hidden 256, 3 layers) trained by `fit` for `--steps` steps (Adam, batch
512, on fresh mixture samples):

- CD: `ConsistencyModel(teacher=exact, solver="heun")`, N = 18, EMA target
  0.95, L2;
- CT: `ConsistencyModel()` (iCT: pseudo-Huber, lognormal draw, the
  curriculum 10 -> 1280 over the run, no EMA target);
- PD: `ProgressiveDistillationModel` from the exact teacher at 8 DDIM
  steps, then `next_round()`: 8 -> 4 -> 2 -> 1, `--steps` / 2 per round;
- reflow: (noise, sample) pairs from the exact rectified flow (DPM-Solver++
  20 steps), `ReflowModel` trained on them (Euler sampling), and its 1-step
  distillation (`ReflowModel(distill=True)`), with the straightness
  (Liu et al.) of the exact flow and of the reflowed one.

Reported at 1, 2 and 4 steps: the sliced Wasserstein distance (256
projections) between 4,000 samples and 4,000 fresh data points, and the
mode weights (the share of samples whose most likely component is each
mode), summarized by their total-variation distance to the true weights.
Beside them: the exact teacher with DPM-Solver++ (order 2) at 1, 2, 4, 10
and 20 steps, and the floor (SW between two data samples).
Goal: CD at 2 steps beats the exact teacher's DPM-Solver++ at 10 steps.

The consistency models are also sampled at greedily chosen times ("CD,
greedy times"), as Song et al. (2023) choose theirs: starting from
`spacing.start_time`, each further step takes the time among
`GREEDY_FRACTIONS` x start (below the previous one) that gives the lowest
SW on validation data (other noise, other reference points); the rows
report those times on the test noise and reference.

Usage:
    python benchmarks/few_step.py [--datasets ring,gmm64] [--steps 600]
        [--methods CD,CT,PD,reflow] [--name few_step] [--out benchmarks/results] [--merge]

(The results were written in two parts, `--datasets ring` then
`--datasets gmm64 --merge`, each under ~12 minutes on the shared CPU.)
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

from keras_diffusion import samplers  # noqa: E402
from keras_diffusion import schedules  # noqa: E402
from keras_diffusion.models import ConsistencyModel  # noqa: E402
from keras_diffusion.models import MLPDenoiser  # noqa: E402
from keras_diffusion.models import ProgressiveDistillationModel  # noqa: E402
from keras_diffusion.models import ReflowModel  # noqa: E402
from keras_diffusion.models.reflow import generate_pairs  # noqa: E402
from keras_diffusion.models.reflow import straightness  # noqa: E402
from keras_diffusion.random import initial_noise  # noqa: E402
from keras_diffusion.samplers.spacing import start_time  # noqa: E402
from keras_diffusion.testing.gaussian_mixture import GaussianMixture  # noqa: E402
from keras_diffusion.testing.gaussian_mixture import sliced_wasserstein  # noqa: E402
from environment import machine  # noqa: E402

STEPS = (1, 2, 4)
TEACHER_STEPS = (1, 2, 4, 10, 20)
NUM_EVAL = 4000
BATCH = 512
GREEDY_FRACTIONS = (0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1, 0.05, 0.02, 0.01)
METHODS = ("CD", "CT", "PD", "reflow")


def datasets():
    return {
        "ring": GaussianMixture.ring(),
        "gmm64": GaussianMixture.random(num_modes=8, dim=64, seed=0),
    }


def metrics(gmm, x, reference):
    x = np.asarray(x, np.float64)
    if not np.all(np.isfinite(x)):
        return {"sw": float("nan"), "mode_tv": float("nan"), "modes": None}
    weights = np.bincount(gmm.classify(x), minlength=len(gmm.weights)) / len(x)
    return {
        "sw": sliced_wasserstein(x, reference),
        "mode_tv": float(0.5 * np.abs(weights - gmm.weights).sum()),
        "modes": [round(float(w), 4) for w in weights],
    }


def data_stream(gmm, seed):
    rng = np.random.default_rng(seed)

    def gen():
        while True:
            yield (gmm.sample(BATCH, seed=int(rng.integers(2**31))).astype("float32"),)

    return gen()


def mlp(dim):
    return MLPDenoiser(data_dim=dim, hidden_dim=256, num_layers=3)


def optimizer(steps):
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, steps, alpha=0.05)
    return keras.optimizers.Adam(schedule)


def train(model, gmm, steps, seed):
    model.compile(optimizer(steps))
    start = time.time()
    model.fit(data_stream(gmm, seed), steps_per_epoch=steps, epochs=1, verbose=0)
    return time.time() - start


def greedy_times(model, gmm, schedule, max_steps):
    """Multistep times chosen greedily on validation data: {steps: times}."""
    validation = gmm.sample(NUM_EVAL, seed=54321)
    times, chosen = [start_time(schedule)], {}
    for n in range(2, max_steps + 1):
        best = None
        for fraction in GREEDY_FRACTIONS:
            t = fraction * times[0]
            if t >= times[-1]:
                continue
            x = model.generate(NUM_EVAL, timesteps=times + [t], seed=8, verbose=0)
            sw = sliced_wasserstein(x, validation)
            if best is None or sw < best[0]:
                best = (sw, t)
        if best is None:  # No candidate below the last time: stop here.
            break
        times.append(best[1])
        chosen[n] = list(times)
    return chosen


def run_consistency(label, model, gmm, schedule, seconds, samples, add):
    for n in STEPS:
        x = model.generate(NUM_EVAL, num_steps=n, seed=7, verbose=0)
        samples[(label, n)] = x
        add(label, n, x, train_s=round(seconds, 1))
    for n, times in greedy_times(model, gmm, schedule, max(STEPS)).items():
        if n in STEPS:
            x = model.generate(NUM_EVAL, timesteps=times, seed=7, verbose=0)
            add(f"{label}, greedy times", n, x, train_s=round(seconds, 1),
                times=[round(float(t), 4) for t in times])


def run_dataset(name, gmm, steps, log, methods=METHODS):
    cosine = schedules.get("cosine")
    flow = schedules.get("rectified_flow")
    dim = gmm.dim
    reference = gmm.sample(NUM_EVAL, seed=12345)
    rows = []

    def add(method, num_steps, x, **extra):
        row = {"dataset": name, "method": method, "steps": num_steps,
               **metrics(gmm, x, reference), **extra}
        rows.append(row)
        log(f"[{name}] {method:18s} {num_steps:2d} steps: SW {row['sw']:.4f}, "
            f"mode TV {row['mode_tv']:.4f}")
        return row

    add("data (floor)", 0, gmm.sample(NUM_EVAL, seed=999))
    noise = np.asarray(initial_noise((NUM_EVAL, dim), 7), "float32")
    exact = gmm.denoiser(cosine, "x0")
    sampler = samplers.DPMSolverSampler(order=2)
    for n in TEACHER_STEPS:
        x = sampler.sample(exact, noise, schedule=cosine, prediction="x0", num_steps=n)
        add("teacher DPM-Solver++", n, keras.ops.convert_to_numpy(x))
    samples = {}

    if "CD" in methods:
        keras.utils.set_random_seed(0)
        cd = ConsistencyModel(mlp(dim), schedule=cosine, teacher=exact,
                              teacher_prediction="x0", solver="heun", num_timesteps=18, seed=0)
        seconds = train(cd, gmm, steps, 1)
        run_consistency("CD", cd, gmm, cosine, seconds, samples, add)
    if "CT" in methods:
        keras.utils.set_random_seed(0)
        ct = ConsistencyModel(mlp(dim), schedule=cosine, total_steps=steps, seed=0)
        seconds = train(ct, gmm, steps, 2)
        run_consistency("CT", ct, gmm, cosine, seconds, samples, add)
    if "PD" in methods:
        run_progressive(gmm, exact, cosine, steps, samples, add)
    if "reflow" in methods:
        run_reflow(name, gmm, flow, noise, steps, samples, add, log)
    return rows, samples


def run_progressive(gmm, exact, cosine, steps, samples, add):
    keras.utils.set_random_seed(0)
    pd = ProgressiveDistillationModel(mlp(dim), teacher=exact, teacher_prediction="x0",
                                      teacher_steps=8, schedule=cosine, seed=0)
    total = train(pd, gmm, steps // 2, 3)
    for _ in range(3):  # students of 4, 2, 1 steps
        if pd.student_steps in STEPS:
            x = pd.generate(NUM_EVAL, seed=7, verbose=0)
            samples[("PD", pd.student_steps)] = x
            add("PD", pd.student_steps, x, train_s=round(total, 1))
        if pd.student_steps == 1:
            break
        pd = pd.next_round()
        total += train(pd, gmm, steps // 2, 4 + pd.student_steps)


def run_reflow(name, gmm, flow, noise, steps, samples, add, log):
    dim = gmm.dim
    exact_flow = gmm.denoiser(flow, "flow")
    pair_noise, pair_samples = generate_pairs(
        exact_flow, steps * BATCH // 4, seed=11, sampler="dpm_solver", num_steps=20,
        schedule=flow, prediction="flow", shape=(dim,))
    straight_teacher = straightness(exact_flow, noise[:1000], flow, "flow")
    log(f"[{name}] straightness of the exact flow: {straight_teacher:.4f}")
    pairs = {"images": pair_samples, "noise": pair_noise}
    keras.utils.set_random_seed(0)
    reflow = ReflowModel(mlp(dim), seed=0)
    reflow.compile(optimizer(steps))
    start = time.time()
    reflow.fit(pairs, batch_size=BATCH, epochs=4, verbose=0)
    seconds = time.time() - start
    straight = straightness(reflow.model_fn(), noise[:1000], flow, "flow")
    log(f"[{name}] straightness after reflow: {straight:.4f}")
    for n in STEPS:
        x = reflow.generate(NUM_EVAL, sampler="euler", num_steps=n, seed=7, verbose=0)
        samples[("reflow", n)] = x
        add("reflow", n, x, train_s=round(seconds, 1), straightness=straight,
            straightness_teacher=straight_teacher)
    keras.utils.set_random_seed(0)
    distilled = ReflowModel(mlp(dim), distill=True, seed=0)
    distilled.compile(optimizer(steps // 2))
    start = time.time()
    distilled.fit(pairs, batch_size=BATCH, epochs=2, verbose=0)
    x = distilled.generate(NUM_EVAL, sampler="euler", num_steps=1, seed=7, verbose=0)
    samples[("reflow+distill", 1)] = x
    add("reflow+distill", 1, x, train_s=round(time.time() - start, 1))


def summarize(rows):
    out = {}
    for name in sorted({r["dataset"] for r in rows}):
        def sw(method, n):
            for r in rows:
                if r["dataset"] == name and r["method"] == method and r["steps"] == n:
                    return r["sw"]
            return None

        cd2, teacher10 = sw("CD", 2), sw("teacher DPM-Solver++", 10)
        greedy = sw("CD, greedy times", 2)
        if greedy is not None and (cd2 is None or greedy < cd2):
            cd2 = greedy
        out[name] = {
            "cd2_sw": cd2, "cd2_greedy_times": greedy is not None and cd2 == greedy,
            "teacher_dpm10_sw": teacher10,
            "ratio_cd2_over_teacher10": None if not teacher10 else cd2 / teacher10,
            "goal_cd2_beats_teacher10": bool(cd2 is not None and teacher10 is not None
                                             and cd2 < teacher10),
        }
    return out


def write_markdown(path, rows, summary, meta):
    lines = [
        "# Few-step generation with an exact teacher",
        "",
        f"Command: `{meta['command']}` (last part {meta['wall_s']} s). Machine: {meta['machine']}. "
        f"Versions: {meta['versions']}.",
        "",
        meta["setup"],
        "",
        f"Methods run: {', '.join(meta.get('methods', METHODS))}. Greedy times: each added "
        f"step takes the best of {len(GREEDY_FRACTIONS)} fractions of the start time "
        f"({min(GREEDY_FRACTIONS)}-{max(GREEDY_FRACTIONS)}) on validation data; the search "
        "stops once it has taken the smallest, so a 4-step row is missing then.",
        "",
        "SW: sliced Wasserstein distance (256 projections) of 4,000 samples to 4,000 data "
        "points; mode TV: total-variation distance of the mode weights to the true ones "
        "(0 is exact). Lower is better for both. `train s`: wall seconds of `fit`; the "
        f"1-minute load average before / after the run: {meta.get('load_average_before_after')}.",
        "",
    ]
    for name, s in summary.items():
        if s["cd2_sw"] is None:
            continue
        met = "met" if s["goal_cd2_beats_teacher10"] else "NOT met"
        which = " (greedy times)" if s["cd2_greedy_times"] else ""
        lines.append(
            f"**{name}: goal CD@2 < teacher DPM-Solver++@10: {met}** (SW {s['cd2_sw']:.4f}"
            f"{which} vs {s['teacher_dpm10_sw']:.4f}, ratio "
            f"{s['ratio_cd2_over_teacher10']:.2f})."
        )
    lines.append("")
    for name in sorted({r["dataset"] for r in rows}):
        lines += [f"## {name}", "", "| method | steps | SW | mode TV | train s | note |",
                  "|---|---|---|---|---|---|"]
        for r in rows:
            if r["dataset"] != name:
                continue
            note = ""
            if "times" in r:
                note = "times " + ", ".join(f"{t:g}" for t in r["times"])
            if "straightness" in r:
                note = (f"straightness {r['straightness']:.4f} (exact flow "
                        f"{r['straightness_teacher']:.4f})")
            lines.append(f"| {r['method']} | {r['steps']} | {r['sw']:.4f} | "
                         f"{r['mode_tv']:.4f} | {r.get('train_s', '')} | {note} |")
        lines.append("")
    lines += [
        "## Published anchors (not reproduced here)",
        "",
        "On CIFAR-10 the papers report FID 3.55 at 1 step for CD (Song et al., 2023, LPIPS), "
        "2.51 at 1 step for iCT (Song & Dhariwal, 2023) and 3.00 at 4 steps for progressive "
        "distillation (Salimans & Ho, 2022). They cannot be reproduced here: no CIFAR-10 "
        "download and no GPU (they took hundreds of GPU-days). "
        "`training/configs/cifar10_cd.py`, `cifar10_ict.py` and `cifar10_pd.py` hold the "
        "settings that would run them.",
        "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def plot(path, samples, gmm):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = sorted(samples, key=lambda k: (k[0], k[1]))
    cols = 4
    rows = (len(keys) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3 * cols, 3 * rows))
    for ax in axes.ravel():
        ax.axis("off")
    for ax, key in zip(axes.ravel(), keys):
        x = samples[key]
        ax.scatter(x[:2000, 0], x[:2000, 1], s=1, alpha=0.4)
        ax.scatter(gmm.means[:, 0], gmm.means[:, 1], s=12, c="red")
        ax.set_xlim(-3, 3)
        ax.set_ylim(-3, 3)
        ax.set_title(f"{key[0]}, {key[1]} step{'s' if key[1] > 1 else ''}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", default="ring,gmm64")
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--name", default="few_step",
                        help="stem of the result files (<name>.json / .md / .png)")
    parser.add_argument("--merge", action="store_true",
                        help="keep the other datasets' rows of few_step.json (run in parts)")
    args = parser.parse_args()
    import tensorflow as tf

    start = time.time()
    load_before = round(os.getloadavg()[0], 2)

    def log(message):
        print(f"{time.time() - start:6.0f}s {message}", flush=True)

    rows, commands = [], []
    methods = args.methods.split(",")
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {list(METHODS)}")
    path = os.path.join(args.out, f"{args.name}.json")
    if args.merge and os.path.exists(path):
        with open(path) as f:
            saved = json.load(f)
        run = set(args.datasets.split(","))
        rows = [r for r in saved["results"] if r["dataset"] not in run]
        commands = [c for c in saved["meta"].get("commands", [saved["meta"]["command"]])
                    if not any(f"--datasets {d}" in c for d in run)]
    for name in args.datasets.split(","):
        gmm = datasets()[name]
        new_rows, samples = run_dataset(name, gmm, args.steps, log, methods)
        rows += new_rows
        if gmm.dim == 2:
            plot(os.path.join(args.out, f"{args.name}.png"), samples, gmm)
    command = "python " + " ".join(sys.argv)
    meta = {
        "command": " && ".join(commands + [command]),
        "commands": commands + [command],
        "methods": methods,
        "wall_s": round(time.time() - start),
        "machine": machine(),
        "load_average_before_after": [load_before, round(os.getloadavg()[0], 2)],
        "versions": {"python": platform.python_version(), "tensorflow": tf.__version__,
                     "keras": keras.__version__, "numpy": np.__version__,
                     "backend": keras.backend.backend()},
        "setup": (f"Exact mixture denoiser as the teacher (cosine schedule; rectified flow "
                  f"for reflow). Students: MLPDenoiser(hidden_dim=256, num_layers=3), Adam "
                  f"2e-3 with cosine decay, batch {BATCH}, {args.steps} steps per model "
                  f"(half of it per round for PD; reflow: 4 epochs over {args.steps * BATCH // 4} "
                  f"pairs, its 1-step distillation 2 epochs). CD: Heun teacher step, "
                  f"N = 18, EMA target 0.95, L2. CT: iCT defaults with the curriculum over "
                  f"the run. PD: 8 -> 4 -> 2 -> 1 DDIM steps from the exact teacher."),
    }
    summary = summarize(rows)
    with open(path, "w") as f:
        json.dump({"meta": meta, "summary": summary, "results": rows}, f, indent=1)
    write_markdown(os.path.join(args.out, f"{args.name}.md"), rows, summary, meta)
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
