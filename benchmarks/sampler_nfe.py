"""Sampler error against the exact probability-flow ODE solution, per NFE.

A 64-dimensional Gaussian mixture has an exact denoiser (E[x0 | x_t] in
closed form), so every sampler can be run with a "perfect model" and compared
with the ODE solution from the same noise (ODESampler, Dormand-Prince with a
tight tolerance, integrated from t = 1 to t_min, then the DDIM step to 0).
The error is the per-sample L2 distance, averaged over the batch.

Usage:
    python benchmarks/sampler_nfe.py [--batch 256] [--out benchmarks/results]

Writes sampler_nfe.json, sampler_nfe.md and sampler_nfe.png.
"""

import argparse
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import keras  # noqa: E402

from keras_diffusion import samplers  # noqa: E402
from keras_diffusion import schedules  # noqa: E402
from keras_diffusion.testing import GaussianMixture  # noqa: E402

NFES = (5, 10, 20, 50)
SPACINGS = ("uniform", "log_snr", "karras")


def sampler_table():
    """name -> (sampler, evaluations per timestep: NFE(N))."""
    one = lambda n: n  # noqa: E731
    return {
        "DDIM": (samplers.DDIMSampler(), one),
        "Euler": (samplers.EulerSampler(), one),
        "Heun": (samplers.HeunSampler(), samplers.HeunSampler.nfe),
        "DPM-Solver++(1M)": (samplers.DPMSolverSampler(order=1), one),
        "DPM-Solver++(2M)": (samplers.DPMSolverSampler(order=2), one),
        "DPM-Solver++(3M)": (samplers.DPMSolverSampler(order=3), one),
        "DPM-Solver++(3M, diffusers)": (
            samplers.DPMSolverSampler(order=3, third_order="diffusers"),
            one,
        ),
        "DPM-Solver(2M)": (samplers.DPMSolverSampler(order=2, algorithm="dpmsolver"), one),
        "DPM-Solver(3M)": (samplers.DPMSolverSampler(order=3, algorithm="dpmsolver"), one),
    }


def steps_for(nfe, nfe_fn):
    """The most timesteps N with nfe_fn(N) <= nfe."""
    n = 1
    while nfe_fn(n + 1) <= nfe:
        n += 1
    return n


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--modes", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    parser.add_argument("--replot", action="store_true",
                        help="rewrite the .md and .png from the saved .json")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.replot:
        with open(os.path.join(args.out, "sampler_nfe.json")) as f:
            saved = json.load(f)
        write_markdown(os.path.join(args.out, "sampler_nfe.md"), saved["results"],
                       saved["summary"], saved["meta"])
        plot(os.path.join(args.out, "sampler_nfe.png"), saved["results"], saved["meta"])
        return

    import tensorflow as tf
    import tensorflow_probability as tfp

    schedule = schedules.CosineSchedule()
    gmm = GaussianMixture.random(num_modes=args.modes, dim=args.dim, seed=0)
    model_fn = gmm.denoiser(schedule, "epsilon")
    noise = np.random.default_rng(0).normal(size=(args.batch, args.dim)).astype("float32")

    start = time.time()
    reference, info = samplers.ODESampler(rtol=args.tol, atol=args.tol).solve(
        model_fn, noise, schedule=schedule, prediction="epsilon"
    )
    reference = np.asarray(reference, np.float64)
    looser, _ = samplers.ODESampler(rtol=10 * args.tol, atol=10 * args.tol).solve(
        model_fn, noise, schedule=schedule, prediction="epsilon"
    )
    ref_check = float(np.mean(np.linalg.norm(np.asarray(looser) - reference, axis=1)))
    print(f"reference: nfe={int(info['nfe'])}, {time.time() - start:.1f}s, "
          f"|ref(10 tol) - ref| = {ref_check:.2e}")

    rows = []
    for name, (sampler, nfe_fn) in sampler_table().items():
        for spacing in SPACINGS:
            for nfe in NFES:
                n = steps_for(nfe, nfe_fn)
                run = tf.function(
                    lambda x, s=sampler, sp=spacing, n=n: s.sample(
                        model_fn, x, schedule=schedule, prediction="epsilon",
                        num_steps=n, spacing=sp,
                    ),
                    autograph=False,
                )
                x = np.asarray(run(noise), np.float64)
                error = float(np.mean(np.linalg.norm(x - reference, axis=1)))
                rows.append(dict(sampler=name, spacing=spacing, nfe=nfe_fn(n),
                                 nfe_budget=nfe, num_steps=n, error=error))
                print(f"{name:28s} {spacing:8s} NFE {nfe_fn(n):3d}  error {error:.3e}")

    def error_of(name, spacing, budget):
        return next(r["error"] for r in rows
                    if r["sampler"] == name and r["spacing"] == spacing
                    and r["nfe_budget"] == budget)

    baseline = error_of("DPM-Solver++(2M)", "uniform", 10)
    at10 = [r for r in rows if r["nfe_budget"] == 10]
    best = min(at10, key=lambda r: r["error"])
    summary = {
        "baseline": "DPM-Solver++(2M), uniform spacing, 10 NFE",
        "baseline_error": baseline,
        "best_at_10_nfe": {k: best[k] for k in ("sampler", "spacing", "nfe", "error")},
        "ratio_baseline_over_best": baseline / best["error"],
    }
    print(json.dumps(summary, indent=1))

    meta = {
        "command": "python " + " ".join(sys.argv),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "devices": [d.device_type for d in tf.config.list_physical_devices()],
        },
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "tensorflow_probability": tfp.__version__,
            "numpy": np.__version__,
            "backend": keras.backend.backend(),
        },
        "setup": {
            "data": f"GaussianMixture.random(num_modes={args.modes}, dim={args.dim}, seed=0)",
            "denoiser": "exact (closed-form posterior mean), prediction='epsilon'",
            "schedule": repr(schedule),
            "batch": args.batch,
            "error": "mean over samples of ||x - x_ode||_2",
            "reference": (f"ODESampler(rtol={args.tol}, atol={args.tol}) from t=1 to "
                          "t_min, then the DDIM step to 0"),
            "reference_nfe": int(info["nfe"]),
            "reference_check": ("mean L2 between the reference and a 10x looser "
                                f"solve: {ref_check:.2e}"),
            "nfe_note": ("Heun with N timesteps uses 2N - 1 evaluations: the "
                         "largest N within the budget is used and its actual "
                         "NFE reported."),
        },
    }
    with open(os.path.join(args.out, "sampler_nfe.json"), "w") as f:
        json.dump({"meta": meta, "summary": summary, "results": rows}, f, indent=1)
    write_markdown(os.path.join(args.out, "sampler_nfe.md"), rows, summary, meta)
    plot(os.path.join(args.out, "sampler_nfe.png"), rows, meta)


def write_markdown(path, rows, summary, meta):
    names = list(dict.fromkeys(r["sampler"] for r in rows))
    lines = [
        "# Sampler error vs NFE (64-D Gaussian mixture, exact denoiser)",
        "",
        f"Command: `{meta['command']}`",
        "",
        f"Machine: {meta['machine']['platform']}, {meta['machine']['cpu_count']} CPUs "
        f"({', '.join(meta['machine']['devices'])}). Versions: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "",
        f"Setup: {meta['setup']['data']}, {meta['setup']['schedule']}, "
        f"{meta['setup']['denoiser']}, batch {meta['setup']['batch']}. Error: "
        f"{meta['setup']['error']}; reference: {meta['setup']['reference']} "
        f"({meta['setup']['reference_nfe']} NFE; {meta['setup']['reference_check']}).",
        "",
        f"**At 10 NFE the best is {summary['best_at_10_nfe']['sampler']} with "
        f"{summary['best_at_10_nfe']['spacing']} spacing: error "
        f"{summary['best_at_10_nfe']['error']:.3e}, "
        f"{summary['ratio_baseline_over_best']:.1f}x below DPM-Solver++(2M) with "
        f"uniform spacing ({summary['baseline_error']:.3e}).**",
        "",
        "| sampler | spacing | " + " | ".join(f"NFE {n}" for n in NFES) + " |",
        "|---|---|" + "---|" * len(NFES),
    ]
    for name in names:
        for spacing in SPACINGS:
            cells = []
            for budget in NFES:
                r = next(r for r in rows if r["sampler"] == name
                         and r["spacing"] == spacing and r["nfe_budget"] == budget)
                mark = f" ({r['nfe']})" if r["nfe"] != budget else ""
                cells.append(f"{r['error']:.2e}{mark}")
            lines.append(f"| {name} | {spacing} | " + " | ".join(cells) + " |")
    lines += ["", meta["setup"]["nfe_note"], "", "Best per NFE budget:", ""]
    for budget in NFES:
        best = min((r for r in rows if r["nfe_budget"] == budget), key=lambda r: r["error"])
        base = next(r for r in rows if r["sampler"] == "DPM-Solver++(2M)"
                    and r["spacing"] == "uniform" and r["nfe_budget"] == budget)
        lines.append(f"- {budget} NFE: {best['sampler']} / {best['spacing']}, "
                     f"{best['error']:.2e} ({base['error'] / best['error']:.2f}x below "
                     "DPM-Solver++(2M) / uniform)")
    lines += [
        "",
        "Notes: the mixture is hard for few steps (8 modes in 64-D with component "
        "stds 0.05-0.3), so all errors at 5-10 NFE are large and close together; "
        "the margin of the best sampler over DPM-Solver++(2M) at 10 NFE is small. "
        "The log_snr and karras grids start at t = 1, where the cosine schedule's "
        "clipped last beta puts log-SNR near -20, so on this schedule they spend "
        "their first steps at pure noise and lose at low NFE; they win at 50 NFE. "
        "'3M' is the third-order Taylor update (default); '3M, diffusers' is the "
        "update of diffusers / the DPM-Solver reference code (half the D2 term, "
        "formally second order).",
        "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def plot(path, rows, meta):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["sampler"] for r in rows))
    fig, axes = plt.subplots(1, len(SPACINGS), figsize=(5 * len(SPACINGS), 4.5), sharey=True)
    for ax, spacing in zip(axes, SPACINGS):
        for name in names:
            pts = [(r["nfe"], r["error"]) for r in rows
                   if r["sampler"] == name and r["spacing"] == spacing]
            ax.loglog(*zip(*pts), marker="o", label=name)
        ax.set_title(f"spacing: {spacing}")
        ax.set_xlabel("NFE")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("mean L2 error to ODE solution")
    axes[-1].legend(fontsize=7)
    fig.suptitle("64-D Gaussian mixture, exact denoiser, cosine schedule")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
