"""The README's main job, run as a new user runs it, and its samples judged.

Runs the README's two commands (train the MNIST config, then
`--mode=sample`), times each, and reads the samples written to
`workdir/samples/samples_step<num_steps>.npz` (100 samples, label i % 10) with
benchmarks/mnist.py's judge: the small CNN trained on the 1,000 digits of its
seeded held-out split. A second sample run with
`--config.sample.num_images=1000` gives a tighter estimate of the same
accuracy (the 100 of the README's grid resolve only about +-2%).

    python benchmarks/readme_job.py            # ~10-30 min on 2 CPU cores

Goal (issue 13): the judge reads the README job's samples at >= 95%.
Writes benchmarks/results/readme_job.{json,md}.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from training.configs.mnist import get_config  # noqa: E402

NUM_STEPS = get_config().train.num_steps  # The README config's training steps.
STEPS = f"samples_step{NUM_STEPS}"


def run(args, log):
    env = {**os.environ, "PYTHONPATH": ROOT, "TF_CPP_MIN_LOG_LEVEL": "2"}
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "training.train", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True)
    seconds = time.time() - start
    with open(log, "a") as f:
        f.write(proc.stdout + proc.stderr)
    if proc.returncode:
        raise RuntimeError(f"training.train {args} failed:\n{proc.stderr[-3000:]}")
    return seconds


def judge_accuracy(clf, samples, labels):
    logits = clf.predict(samples, verbose=0)
    predicted = np.argmax(logits, -1)
    per_class = {int(c): float(np.mean(predicted[labels == c] == c)) for c in range(10)}
    return float(np.mean(predicted == labels)), per_class


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--classifier_epochs", type=int, default=60)
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "readme_job"))
    args = parser.parse_args()
    workdir = args.workdir or tempfile.mkdtemp(prefix="readme_job_")
    os.makedirs(workdir, exist_ok=True)
    log = os.path.join(workdir, "log.txt")
    load_before = os.getloadavg()
    train_s = run(["--config=training/configs/mnist.py", f"--workdir={workdir}"], log)
    sample_s = run([f"--workdir={workdir}", "--mode=sample"], log)
    load_after = os.getloadavg()
    readme = np.load(os.path.join(workdir, "samples", f"{STEPS}.npz"))["samples"]
    shutil.copy(os.path.join(workdir, "samples", f"{STEPS}.png"), args.out + ".png")
    os.rename(os.path.join(workdir, "samples", f"{STEPS}.npz"),
              os.path.join(workdir, "samples", "readme_100.npz"))
    more_s = run([f"--workdir={workdir}", "--mode=sample", "--config.sample.num_images=1000",
                  "--config.sample.seed=1"], log)
    more = np.load(os.path.join(workdir, "samples", f"{STEPS}.npz"))["samples"]

    import keras

    from mnist import load_digits
    from mnist import trained_judge

    x, y = load_digits()
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order]
    clf, _, _ = trained_judge(x[4000:], y[4000:], epochs=args.classifier_epochs)
    clf_acc = float(clf.evaluate(x[:4000] / 127.5 - 1, y[:4000], verbose=0)[1])
    acc_100, per_100 = judge_accuracy(clf, readme, np.arange(len(readme)) % 10)
    acc_1000, per_1000 = judge_accuracy(clf, more, np.arange(len(more)) % 10)

    import keras as k
    import tensorflow as tf

    results = {
        "command": "python benchmarks/readme_job.py",
        "readme_commands": [
            "python -m training.train --config=training/configs/mnist.py --workdir=W",
            "python -m training.train --workdir=W --mode=sample",
        ],
        "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(),
                    "python": platform.python_version(), "tensorflow": tf.__version__,
                    "keras": k.__version__},
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_average_before": [round(v, 2) for v in load_before],
        "load_average_after": [round(v, 2) for v in load_after],
        "train_seconds": round(train_s, 1),
        "sample_seconds": round(sample_s, 1),
        "sample_1000_seconds": round(more_s, 1),
        "judge_accuracy_on_real_digits": clf_acc,
        "readme_samples": len(readme),
        "readme_sample_accuracy": acc_100,
        "readme_sample_accuracy_per_class": per_100,
        "samples_1000_accuracy": acc_1000,
        "samples_1000_accuracy_per_class": per_1000,
        "goal": ">= 0.95",
        "goal_met": acc_100 >= 0.95 and acc_1000 >= 0.95,
    }
    with open(args.out + ".json", "w") as f:
        json.dump(results, f, indent=2)
    lines = [
        "# The README's main job, judged",
        "",
        f"Command: `{results['command']}` ({results['date']}). Machine: "
        f"{results['machine']['platform']}, {os.cpu_count()} CPUs, TensorFlow "
        f"{tf.__version__}, Keras {k.__version__}. Load average (1/5/15 min) before "
        f"{results['load_average_before']}, after {results['load_average_after']} "
        "(other jobs shared the 2 cores).",
        "",
        "| part | seconds |",
        "|---|---|",
        f"| train (README command 1: {NUM_STEPS:,} steps of 64 digits) | "
        f"{results['train_seconds']} |",
        f"| sample (README command 2: 100 samples) | {results['sample_seconds']} |",
        f"| 1,000 more samples (seed 1) | {results['sample_1000_seconds']} |",
        "",
        f"Judge (benchmarks/mnist.py's CNN on its 1,000 held-out digits): "
        f"{clf_acc:.4f} on the other 4,000 real digits.",
        "",
        "| samples | judge accuracy | per class (0-9) |",
        "|---|---|---|",
        f"| the README's 100 | {acc_100:.3f} | "
        + ", ".join(f"{v:.2f}" for v in per_100.values()) + " |",
        f"| 1,000 (seed 1) | {acc_1000:.3f} | "
        + ", ".join(f"{v:.2f}" for v in per_1000.values()) + " |",
        "",
        f"Goal >= 0.95: **{'met' if results['goal_met'] else 'NOT met'}**. "
        "Grid: readme_job.png (each column one class).",
    ]
    with open(args.out + ".md", "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
