"""MLPDenoiser on an 8-mode ring of Gaussians: the four objectives compared.

For each prediction type ("epsilon", "x0", "v" on the linear DDPM schedule,
"flow" on rectified flow) an `MLPDenoiser` is trained by
`DiffusionModel.fit` for a fixed number of steps, then 4096 samples are drawn
with the DPM-Solver sampler (DDIM if unavailable). Reported: the sliced
Wasserstein distance to fresh samples of the true mixture (and, as a floor,
the distance between two true sample sets), the fraction of samples in each
mode (goal: every mode within 20% of 1/8), the fraction within 3 standard
deviations of a mode centre, training and sampling wall time. As references:
the same scores for the exact GMM denoiser with the same sampler, grid and
noise (the sampler's own error), and the mean squared difference between the
network and the exact denoiser at fixed times (where training lags).

Usage:
    python benchmarks/toy2d.py [--steps 10000] [--out benchmarks/results]

Writes toy2d.json, toy2d.md and toy2d.png to `--out`.
"""

import argparse
import json
import os
import time

import keras
import numpy as np

from keras_diffusion import samplers
from keras_diffusion.models import DiffusionModel
from keras_diffusion.models import MLPDenoiser
from keras_diffusion.testing.gaussian_mixture import GaussianMixture
from keras_diffusion.testing.gaussian_mixture import sliced_wasserstein

OBJECTIVES = (
    ("epsilon", "linear"),
    ("x0", "linear"),
    ("v", "linear"),
    ("flow", "rectified_flow"),
)


def run(prediction, schedule, data, gmm, args):
    keras.utils.set_random_seed(args.seed)
    model = DiffusionModel(
        MLPDenoiser(hidden_dim=args.hidden_dim, num_layers=args.num_layers),
        schedule=schedule,
        prediction=prediction,
        seed=args.seed,
    )
    steps_per_epoch = len(data) // args.batch_size
    epochs = max(1, args.steps // steps_per_epoch)
    lr = keras.optimizers.schedules.CosineDecay(args.learning_rate, epochs * steps_per_epoch)
    model.compile(keras.optimizers.Adam(lr))
    start = time.time()
    history = model.fit(data, batch_size=args.batch_size, epochs=epochs, verbose=0)
    train_time = time.time() - start
    sampler = "dpm_solver" if "dpm_solver" in samplers._NAMES else "ddim"
    num_steps = args.sampler_steps
    start = time.time()
    samples = model.generate(args.num_samples, sampler=sampler, num_steps=num_steps, seed=1)
    sample_time = time.time() - start
    reference = gmm.sample(args.num_samples, seed=123)
    scores = score(samples, gmm, reference, args.std)
    # The same sampler, grid and noise with the exact GMM denoiser: what a
    # perfectly trained network would give (the sampler's own error).
    noise = np.random.default_rng(1).standard_normal(samples.shape).astype("float32")
    exact = samplers.get(sampler).sample(
        gmm.denoiser(model.schedule, prediction),
        noise,
        schedule=model.schedule,
        prediction=prediction,
        num_steps=num_steps,
        seed=1,
    )
    exact_scores = score(np.asarray(exact), gmm, reference, args.std)
    loss_gap = denoiser_gap(model, gmm, data, prediction)
    return samples, {
        "prediction": prediction,
        "schedule": schedule,
        "train_steps": epochs * steps_per_epoch,
        "train_seconds": round(train_time, 1),
        "final_loss": float(history.history["loss"][-1]),
        "sampler": sampler,
        "sampler_steps": num_steps,
        "sample_seconds": round(sample_time, 2),
        **scores,
        "exact_denoiser_same_sampler": exact_scores,
        "mse_to_exact_denoiser_by_t": loss_gap,
    }


def score(samples, gmm, reference, std):
    fractions = np.bincount(gmm.classify(samples), minlength=len(gmm.weights)) / len(samples)
    distance = np.linalg.norm(samples[:, None] - gmm.means[None], axis=-1).min(1)
    return {
        "sliced_wasserstein": sliced_wasserstein(samples, reference),
        "mode_fractions": [round(float(f), 4) for f in fractions],
        "all_modes_within_20pct": bool(np.all(np.abs(fractions - 1 / 8) <= 0.2 / 8)),
        "fraction_within_3_std": float(np.mean(distance < 3 * std)),
    }


def denoiser_gap(model, gmm, data, prediction, times=(0.02, 0.05, 0.1, 0.2, 0.5, 0.8)):
    """Mean squared difference between the network and the exact denoiser.

    On 4096 training points noised at fixed times, in the units of the
    prediction type; 0 for a perfectly trained network. Large values at
    small t mean the fine structure (the separate modes) is not learned.
    """
    exact = gmm.denoiser(model.schedule, prediction)
    x0 = data[:4096]
    eps = np.random.default_rng(3).standard_normal(x0.shape).astype("float32")
    gap = {}
    for tv in times:
        t = np.full((len(x0),), tv, "float32")
        x_t = model.schedule.add_noise(x0, eps, t)
        net = np.asarray(keras.ops.convert_to_numpy(model.denoiser({"x_t": x_t, "t": t})))
        ref = np.asarray(keras.ops.convert_to_numpy(exact(x_t, t)))
        gap[str(tv)] = round(float(np.mean((net - ref) ** 2)), 5)
    return gap


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=10000)
    parser.add_argument("--sampler_steps", type=int, default=50)
    parser.add_argument("--batch_size", type=int, default=256)
    parser.add_argument("--learning_rate", type=float, default=2e-3)
    parser.add_argument("--hidden_dim", type=int, default=128)
    parser.add_argument("--num_layers", type=int, default=3)
    parser.add_argument("--num_samples", type=int, default=4096)
    parser.add_argument("--radius", type=float, default=1.0)
    parser.add_argument("--std", type=float, default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--notes", default=None, help="a text file appended to toy2d.md")
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results"))
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)

    gmm = GaussianMixture.ring(num_modes=8, radius=args.radius, std=args.std)
    data = gmm.sample(16384, seed=args.seed).astype("float32")
    floor = sliced_wasserstein(gmm.sample(args.num_samples, seed=7), gmm.sample(args.num_samples, seed=123))
    results, all_samples = [], {}
    for prediction, schedule in OBJECTIVES:
        samples, result = run(prediction, schedule, data, gmm, args)
        print(json.dumps(result), flush=True)
        results.append(result)
        all_samples[prediction] = samples
    for r in results:
        r["goal_met"] = bool(
            r["all_modes_within_20pct"] and r["fraction_within_3_std"] > 0.5
        )
    summary = {
        "benchmark": "toy2d",
        "data": f"8-mode ring, radius {args.radius}, std {args.std}, 16384 training points",
        "model": f"MLPDenoiser(hidden_dim={args.hidden_dim}, num_layers={args.num_layers})",
        "optimizer": f"Adam({args.learning_rate}, cosine decay), batch {args.batch_size}",
        "sliced_wasserstein_floor_true_vs_true": floor,
        "goal": "all 8 mode fractions within 20% of 1/8 and > 50% of samples within 3 std",
        "results": results,
    }
    with open(os.path.join(args.out, "toy2d.json"), "w") as f:
        json.dump(summary, f, indent=2)
    lines = [
        "# toy2d: MLPDenoiser on an 8-mode ring",
        "",
        f"{summary['data']}; {summary['model']}; {summary['optimizer']}; "
        f"{results[0]['train_steps']} steps each. CPU, shared machine (wall times are noisy).",
        f"Sliced Wasserstein between two true sample sets (floor): {floor:.4f}.",
        "Goal: every mode's fraction within 20% of 1/8 (0.100 to 0.150) and most samples "
        "(> 50%) within 3 std of a mode centre. `exact` is the same sampler, grid and noise "
        "with the exact GMM denoiser (`keras_diffusion.testing.GaussianMixture`): the best "
        "a network can do with this sampler.",
        "",
        "| prediction | schedule | SW | min / max mode fraction | within 3 std (exact) "
        "| goal | train s | sampler | sample s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        fr = r["mode_fractions"]
        ex = r["exact_denoiser_same_sampler"]
        lines.append(
            f"| {r['prediction']} | {r['schedule']} | {r['sliced_wasserstein']:.4f} | "
            f"{min(fr):.3f} / {max(fr):.3f} | "
            f"{r['fraction_within_3_std']:.3f} ({ex['fraction_within_3_std']:.3f}) | "
            f"{'met' if r['goal_met'] else 'not met'} | {r['train_seconds']} | "
            f"{r['sampler']} x{r['sampler_steps']} | {r['sample_seconds']} |"
        )
    lines += [
        "",
        "Mean squared difference between the network and the exact denoiser at fixed t "
        "(prediction units; 0 = perfectly trained):",
        "",
        "| prediction | " + " | ".join(f"t={t}" for t in results[0]["mse_to_exact_denoiser_by_t"]) + " |",
        "|---|" + "---|" * len(results[0]["mse_to_exact_denoiser_by_t"]),
    ]
    for r in results:
        lines.append(
            f"| {r['prediction']} | "
            + " | ".join(f"{v:.4f}" for v in r["mse_to_exact_denoiser_by_t"].values())
            + " |"
        )
    if args.notes:
        lines += ["", open(args.notes).read().strip()]
    with open(os.path.join(args.out, "toy2d.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 5, figsize=(20, 4))
    axes[0].scatter(*gmm.sample(args.num_samples, seed=5).T, s=1)
    axes[0].set_title("data")
    for ax, (name, samples) in zip(axes[1:], all_samples.items()):
        ax.scatter(*samples.T, s=1)
        ax.set_title(name)
    for ax in axes:
        lim = 1.6 * args.radius
        ax.set_xlim(-lim, lim)
        ax.set_ylim(-lim, lim)
        ax.set_aspect("equal")
    fig.savefig(os.path.join(args.out, "toy2d.png"), dpi=80, bbox_inches="tight")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
