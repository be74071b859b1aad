"""Sampler error against the exact probability-flow ODE solution, per NFE.

A 64-dimensional Gaussian mixture has an exact denoiser (E[x0 | x_t] in
closed form), so every sampler can be run with a "perfect model" and compared
with the ODE solution from the same noise (ODESampler, Dormand-Prince with a
tight tolerance, integrated from t = 1 to t_min, then the DDIM step to 0).
The error is the per-sample L2 distance, averaged over the batch.

Every deterministic sampler of the library runs on every spacing of
`keras_diffusion.samplers.SPACINGS` that the schedule supports, at 3, 5, 10
and 20 model evaluations (NFE), on the linear, cosine and EDM schedules. The
stochastic samplers (SDE-DPM-Solver++, Euler ancestral, EDM with churn) do
not approximate the ODE solution and are left out of this error. When
diffusers and torch are installed (benchmarks/requirements.txt), diffusers'
DPMSolverMultistepScheduler (DPM-Solver++(2M)) and UniPCMultistepScheduler
with their default configurations and grids run on the same model and noise
(on the EDM schedule: EDMDPMSolverMultistepScheduler; diffusers has no EDM
UniPC).

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
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import keras  # noqa: E402
from environment import machine  # noqa: E402

from keras_diffusion import samplers  # noqa: E402
from keras_diffusion import schedules  # noqa: E402
from keras_diffusion.testing import GaussianMixture  # noqa: E402

NFES = (3, 5, 10, 20)
GOAL_NFES = (5, 10)
SCHEDULES = ("linear", "cosine", "edm")
DIFFUSERS = ("diffusers DPM-Solver++(2M)", "diffusers UniPC")


def sampler_table():
    """name -> (sampler, NFE(N): evaluations used by N timesteps)."""
    one = lambda n: n  # noqa: E731
    two = samplers.HeunSampler.nfe
    return {
        "DDIM": (samplers.DDIMSampler(), one),
        "Euler": (samplers.EulerSampler(), one),
        "Heun": (samplers.HeunSampler(), two),
        "EDM (Heun in sigma)": (samplers.EDMSampler(), two),
        "DPM-Solver++(2M)": (samplers.DPMSolverSampler(order=2), one),
        "DPM-Solver++(3M)": (samplers.DPMSolverSampler(order=3), one),
        "DPM-Solver++(3M, diffusers)": (
            samplers.DPMSolverSampler(order=3, third_order="diffusers"), one),
        "DPM-Solver(3M)": (samplers.DPMSolverSampler(order=3, algorithm="dpmsolver"), one),
        "DPM-Solver++ singlestep 2": (samplers.DPMSolverSinglestepSampler(order=2), one),
        "DPM-Solver++ singlestep 3": (samplers.DPMSolverSinglestepSampler(order=3), one),
        "UniPC-1 bh2": (samplers.UniPCSampler(order=1), one),
        "UniPC-2 bh1": (samplers.UniPCSampler(order=2, solver_type="bh1"), one),
        "UniPC-2 bh2": (samplers.UniPCSampler(order=2), one),
        "UniPC-3 bh1": (samplers.UniPCSampler(order=3, solver_type="bh1"), one),
        "UniPC-3 bh2": (samplers.UniPCSampler(order=3), one),
        "UniP-3 bh2 (no corrector)": (samplers.UniPCSampler(order=3, corrector=False), one),
        "DEIS-2": (samplers.DEISSampler(order=2), one),
        "DEIS-3": (samplers.DEISSampler(order=3), one),
        "iPNDM": (samplers.IPNDMSampler(), one),
    }


def steps_for(nfe, nfe_fn):
    """The most timesteps N with nfe_fn(N) <= nfe."""
    n = 1
    while nfe_fn(n + 1) <= nfe:
        n += 1
    return n


def spacings_for(schedule):
    return [sp for sp in samplers.SPACINGS
            if schedule.num_train_timesteps is not None
            or sp not in ("leading", "trailing", "linspace")]


def run_diffusers(name, schedule_name, schedule, model_fn, noise, nfe):
    """diffusers' scheduler with its default grid on our model; returns x0."""
    import diffusers
    import torch
    from keras import ops

    def predict(x, t):  # the model's prediction (epsilon)
        batch_t = np.full((len(x),), t, "float32")
        out = model_fn(x.astype("float32"), batch_t)
        return np.asarray(ops.convert_to_numpy(out), np.float32)

    if schedule_name == "edm":
        if name != DIFFUSERS[0]:
            return None
        sched = diffusers.EDMDPMSolverMultistepScheduler(
            sigma_min=schedule.sigma_min, sigma_max=schedule.sigma_max,
            sigma_data=schedule.sigma_data, rho=schedule.rho)
        sched.set_timesteps(nfe)
        sigmas = sched.sigmas.numpy().astype(np.float64)
        x = torch.tensor(sigmas[0] * noise)
        sd = schedule.sigma_data
        for i, timestep in enumerate(sched.timesteps):
            sigma = sigmas[i]
            t = (sigma / schedule.sigma_max) ** (1.0 / schedule.rho)
            xn = x.numpy()
            eps = predict(xn, t)  # the model predicts epsilon here
            denoised = xn - sigma * eps
            c_skip = sd**2 / (sigma**2 + sd**2)
            c_out = sigma * sd / (sigma**2 + sd**2) ** 0.5
            f = (denoised - c_skip * xn) / c_out  # the raw network output F
            x = sched.step(torch.tensor(f, dtype=torch.float32), timestep, x).prev_sample
        return x.numpy().astype(np.float64)
    betas = {"linear": "linear", "cosine": "squaredcos_cap_v2"}[schedule_name]
    cls = (diffusers.DPMSolverMultistepScheduler if name == DIFFUSERS[0]
           else diffusers.UniPCMultistepScheduler)
    sched = cls(num_train_timesteps=1000, beta_schedule=betas)
    sched.set_timesteps(nfe)
    x = torch.tensor(noise) * sched.init_noise_sigma
    for k in sched.timesteps:
        eps = predict(x.numpy(), (int(k) + 1) / 1000.0)
        x = sched.step(torch.tensor(eps), k, x).prev_sample
    return x.numpy().astype(np.float64)


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--modes", type=int, default=8)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--tol", type=float, default=1e-6)
    parser.add_argument("--schedules", default=",".join(SCHEDULES))
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

    try:
        import diffusers
        import torch

        peers = {"diffusers": diffusers.__version__, "torch": torch.__version__}
    except ImportError:
        peers = None
    gmm = GaussianMixture.random(num_modes=args.modes, dim=args.dim, seed=0)
    noise = np.random.default_rng(0).normal(size=(args.batch, args.dim)).astype("float32")
    rows, references = [], {}
    start_all = time.time()
    for schedule_name in args.schedules.split(","):
        schedule = schedules.get(schedule_name)
        model_fn = gmm.denoiser(schedule, "epsilon")
        start = time.time()
        x1 = schedule.prior_std * noise
        span = [1.0, schedule.t_min]  # The ODE from t = 1 (the default starts later).
        reference, info = samplers.ODESampler(rtol=args.tol, atol=args.tol).solve(
            model_fn, noise, schedule=schedule, prediction="epsilon", timesteps=span)
        reference = np.asarray(reference, np.float64)
        looser, _ = samplers.ODESampler(rtol=10 * args.tol, atol=10 * args.tol).solve(
            model_fn, noise, schedule=schedule, prediction="epsilon", timesteps=span)
        check = float(np.mean(np.linalg.norm(np.asarray(looser) - reference, axis=1)))
        references[schedule_name] = {"schedule": repr(schedule), "nfe": int(info["nfe"]),
                                     "check": check}
        print(f"[{schedule_name}] reference: nfe={int(info['nfe'])}, "
              f"{time.time() - start:.1f}s, |ref(10 tol) - ref| = {check:.2e}", flush=True)
        del x1

        def error_of(x):
            x = np.asarray(x, np.float64)
            if not np.all(np.isfinite(x)):
                return float("nan")
            return float(np.mean(np.linalg.norm(x - reference, axis=1)))

        for name, (sampler, nfe_fn) in sampler_table().items():
            for budget in NFES:
                n = steps_for(budget, nfe_fn)
                run = tf.function(
                    lambda ts, s=sampler, mf=model_fn, sch=schedule: s.sample(
                        mf, noise, schedule=sch, prediction="epsilon", timesteps=ts),
                    input_signature=[tf.TensorSpec([n], tf.float32)], autograph=False)
                for spacing in spacings_for(schedule):
                    times = samplers.make_timesteps(schedule, n, spacing)
                    try:
                        error = error_of(run(times))
                    except Exception:  # NaN/Inf raised by the finite check.
                        error = float("nan")
                    rows.append(dict(schedule=schedule_name, sampler=name, spacing=spacing,
                                     nfe=nfe_fn(n), nfe_budget=budget, num_steps=n,
                                     error=error))
            best = min((r for r in rows if r["schedule"] == schedule_name
                        and r["sampler"] == name and r["nfe_budget"] == 10),
                       key=lambda r: np.nan_to_num(r["error"], nan=np.inf))
            print(f"[{schedule_name}] {name:28s} best at 10 NFE: {best['error']:.3e} "
                  f"({best['spacing']}), {time.time() - start_all:.0f}s", flush=True)
        if peers is not None:
            for name in DIFFUSERS:
                for budget in NFES:
                    x = run_diffusers(name, schedule_name, schedule, model_fn, noise, budget)
                    if x is None:
                        continue
                    rows.append(dict(schedule=schedule_name, sampler=name, spacing="default",
                                     nfe=budget, nfe_budget=budget, num_steps=budget,
                                     error=error_of(x)))
                    print(f"[{schedule_name}] {name} NFE {budget}: {rows[-1]['error']:.3e}",
                          flush=True)

    summary = summarize(rows, peers is not None)
    print(json.dumps(summary, indent=1))
    meta = {
        "command": "python " + " ".join(sys.argv),
        "wall_s": round(time.time() - start_all),
        "machine": machine(),
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "tensorflow_probability": tfp.__version__,
            "numpy": np.__version__,
            "backend": keras.backend.backend(),
            **(peers or {}),
        },
        "setup": {
            "data": f"GaussianMixture.random(num_modes={args.modes}, dim={args.dim}, seed=0)",
            "denoiser": "exact (closed-form posterior mean), prediction='epsilon'",
            "batch": args.batch,
            "error": "mean over samples of ||x - x_ode||_2",
            "reference": (f"ODESampler(rtol={args.tol}, atol={args.tol}) from t=1 to "
                          "t_min, then the DDIM step to 0"),
            "references": references,
            "nfe_note": ("Heun and EDM with N timesteps use 2N - 1 evaluations: the "
                         "largest N within the budget is used and its actual NFE "
                         "reported."),
            "diffusers": ("diffusers' DPMSolverMultistepScheduler and "
                          "UniPCMultistepScheduler with default options (order 2, "
                          "'linspace' grid, lower_order_final, final sigma 0) on "
                          "beta_schedule 'linear' / 'squaredcos_cap_v2'; on the EDM "
                          "schedule EDMDPMSolverMultistepScheduler (karras sigmas, "
                          "rho 7), fed the raw network output F = (D - c_skip x) / c_out "
                          "of the same exact denoiser. float32, same noise."
                          if peers else "not installed"),
        },
    }
    with open(os.path.join(args.out, "sampler_nfe.json"), "w") as f:
        json.dump({"meta": meta, "summary": summary, "results": rows}, f, indent=1)
    write_markdown(os.path.join(args.out, "sampler_nfe.md"), rows, summary, meta)
    plot(os.path.join(args.out, "sampler_nfe.png"), rows, meta)


def _best(rows, **where):
    pool = [r for r in rows if all(r[k] == v for k, v in where.items())
            and np.isfinite(r["error"])]
    return min(pool, key=lambda r: r["error"]) if pool else None


def summarize(rows, with_diffusers):
    """Per schedule and NFE: the best library sampler and the diffusers peers."""
    summary = {}
    for schedule_name in dict.fromkeys(r["schedule"] for r in rows):
        per = {}
        for budget in NFES:
            ours = [r for r in rows if r["schedule"] == schedule_name
                    and r["nfe_budget"] == budget and not r["sampler"].startswith("diffusers")]
            best = _best(ours)
            entry = {"best": {k: best[k] for k in ("sampler", "spacing", "nfe", "error")}}
            if with_diffusers:
                peers = [_best(rows, schedule=schedule_name, sampler=name, nfe_budget=budget)
                         for name in DIFFUSERS]
                peers = [p for p in peers if p is not None]
                peer = min(peers, key=lambda r: r["error"])
                entry["better_diffusers"] = {k: peer[k] for k in ("sampler", "error")}
                entry["ratio_best_over_diffusers"] = best["error"] / peer["error"]
                if budget in GOAL_NFES:
                    entry["goal_met"] = bool(best["error"] <= 0.5 * peer["error"])
            per[str(budget)] = entry
        summary[schedule_name] = per
    if with_diffusers:
        summary["goal"] = ("at 5 and 10 NFE, on each schedule, the best sampler's error "
                           "<= 0.5x the better of diffusers' DPM-Solver++(2M) and UniPC")
        summary["goal_met_everywhere"] = all(
            summary[s][str(b)]["goal_met"] for s in summary if s not in ("goal",)
            for b in GOAL_NFES)
    return summary


def write_markdown(path, rows, summary, meta):
    setup = meta["setup"]
    lines = [
        "# Sampler error vs NFE (64-D Gaussian mixture, exact denoiser)",
        "",
        f"Command: `{meta['command']}` ({meta.get('wall_s', '?')} s)",
        "",
        f"Machine: {meta['machine']['platform']}, {meta['machine']['cpu_count']} CPUs "
        f"({', '.join(meta['machine']['devices'])}). Versions: "
        + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        "",
        f"Setup: {setup['data']}, {setup['denoiser']}, batch {setup['batch']}. Error: "
        f"{setup['error']}; reference: {setup['reference']}. {setup['nfe_note']} "
        f"Diffusers: {setup['diffusers']}",
        "",
    ]
    if "goal" in summary:
        lines += [f"**Goal ({summary['goal']}): "
                  + ("met on every schedule.**" if summary["goal_met_everywhere"]
                     else "NOT met everywhere (see below).**"), ""]
    for schedule_name, ref in setup["references"].items():
        per = summary[schedule_name]
        lines += [f"## {schedule_name}: {ref['schedule']}", "",
                  f"Reference: {ref['nfe']} NFE; mean L2 to a 10x looser solve "
                  f"{ref['check']:.2e}.", ""]
        for budget in NFES:
            e = per[str(budget)]
            b = e["best"]
            line = (f"- {budget} NFE: best {b['sampler']} / {b['spacing']} "
                    f"({b['nfe']} NFE), {b['error']:.3e}")
            if "better_diffusers" in e:
                line += (f"; better diffusers: {e['better_diffusers']['sampler']} "
                         f"{e['better_diffusers']['error']:.3e}; ratio "
                         f"{e['ratio_best_over_diffusers']:.2f}")
                if "goal_met" in e:
                    line += " (goal <= 0.5: " + ("met" if e["goal_met"] else "NOT met") + ")"
            lines.append(line)
        lines += ["", "| sampler | spacing | " + " | ".join(f"NFE {n}" for n in NFES) + " |",
                  "|---|---|" + "---|" * len(NFES)]
        sub = [r for r in rows if r["schedule"] == schedule_name]
        for name in dict.fromkeys(r["sampler"] for r in sub):
            for spacing in dict.fromkeys(r["spacing"] for r in sub if r["sampler"] == name):
                cells = []
                for budget in NFES:
                    r = next((r for r in sub if r["sampler"] == name and r["spacing"] == spacing
                              and r["nfe_budget"] == budget), None)
                    if r is None:
                        cells.append("")
                        continue
                    mark = f" ({r['nfe']})" if r["nfe"] != budget else ""
                    cells.append(f"{r['error']:.2e}{mark}")
                lines.append(f"| {name} | {spacing} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += [
        "Notes: errors are to the probability-flow ODE solution from the same noise, "
        "so they measure the solver, not sample quality. The mixture (8 modes in 64-D, "
        "component stds 0.05-0.3) is hard for few steps. '3M' is the third-order "
        "Taylor update (default), '3M, diffusers' diffusers' update (half the D2 "
        "term). UniPC's lower_order_final, like diffusers', lowers the order on the "
        "last steps. The stochastic samplers are not in this table (they do not "
        "approximate the ODE solution).",
        "",
    ]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def plot(path, rows, meta):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(r["schedule"] for r in rows))
    fig, axes = plt.subplots(1, len(names), figsize=(6 * len(names), 5), sharey=True)
    axes = np.atleast_1d(axes)
    for ax, schedule_name in zip(axes, names):
        sub = [r for r in rows if r["schedule"] == schedule_name and np.isfinite(r["error"])]
        for name in dict.fromkeys(r["sampler"] for r in sub):
            # Each sampler's best spacing per NFE budget.
            pts = []
            for budget in NFES:
                pool = [r for r in sub if r["sampler"] == name and r["nfe_budget"] == budget]
                if pool:
                    best = min(pool, key=lambda r: r["error"])
                    pts.append((best["nfe"], best["error"]))
            style = "k--" if name.startswith("diffusers") else "-"
            ax.loglog(*zip(*pts), style, marker="o", markersize=3, label=name, linewidth=1)
        ax.set_title(f"{schedule_name} (best spacing per sampler)")
        ax.set_xlabel("NFE")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("mean L2 error to ODE solution")
    axes[-1].legend(fontsize=6, ncol=2)
    fig.suptitle("64-D Gaussian mixture, exact denoiser")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
