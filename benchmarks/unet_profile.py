"""Where a UNet training step spends its time on this CPU: convolutions vs the
rest, keras_diffusion (TensorFlow) and diffusers (PyTorch), same config and
step as `unet_throughput.py` (AdamW on the epsilon loss, batch 32, 2 threads).

Both frameworks run their convolutions through oneDNN, so the convolution time
of a step is a floor neither side can go below by changing anything else. This
script measures, per side and precision, the wall time of a step and the time
its convolution ops take (TensorFlow profiler / torch.profiler, averaged over
`--profile-steps` steps), and from them the largest speed-up over diffusers
that keras_diffusion could reach if all its non-convolution work were free:

    bound = diffusers step time / keras_diffusion convolution time

Usage (from the repository root):
    python benchmarks/unet_profile.py
Writes benchmarks/results/unet_profile.{json,md}.
"""

import collections
import glob
import os
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from unet_throughput import _emit  # noqa: E402
from unet_throughput import keras_training  # noqa: E402
from unet_throughput import run_and_write  # noqa: E402
from unet_throughput import side_argv  # noqa: E402
from unet_throughput import side_parser  # noqa: E402
from unet_throughput import torch_training  # noqa: E402


# --------------------------------------------------------------------- keras
def _tf_op_times(logdir):
    """Total duration (ms) per op type of the TF ops in a profiler trace."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    path = sorted(glob.glob(os.path.join(logdir, "plugins", "profile", "*", "*.xplane.pb")))[-1]
    space = xplane_pb2.XSpace()
    with open(path, "rb") as f:
        space.ParseFromString(f.read())
    times = collections.Counter()
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if ":" in name:  # "node_name:OpType"
                    times[name.rsplit(":", 1)[1]] += event.duration_ps / 1e9
    return times


def run_keras(args):
    os.environ["KERAS_BACKEND"] = "tensorflow"
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    for policy in args.policies:
        _, train_step, x0 = keras_training(policy)
        for _ in range(args.warmup):
            train_step(x0).numpy()
        start = time.perf_counter()
        for _ in range(args.steps):
            loss = train_step(x0)
        loss.numpy()
        step_ms = (time.perf_counter() - start) / args.steps * 1e3
        logdir = tempfile.mkdtemp(prefix="unet_profile_")
        tf.profiler.experimental.start(logdir)
        for _ in range(args.profile_steps):
            train_step(x0).numpy()
        tf.profiler.experimental.stop()
        ops = _tf_op_times(logdir)
        conv = sum(v for k, v in ops.items() if "Conv2D" in k or k == "BiasAddGrad")
        top = sorted(((k, v) for k, v in ops.items() if "Conv2D" not in k), key=lambda kv: -kv[1])
        _emit(
            side="keras_diffusion (TF)", precision=policy, step_ms=step_ms,
            conv_ms=conv / args.profile_steps,
            top_other_ops_ms={k: round(v / args.profile_steps, 1) for k, v in top[:8]},
        )


# --------------------------------------------------------------------- torch
def run_torch(args):
    import torch
    from torch.profiler import profile

    torch.set_num_threads(args.threads)
    for precision in args.torch_precisions:
        torch.manual_seed(0)
        model, train_step, _, _ = torch_training(precision)
        model.train()
        for _ in range(args.warmup):
            train_step()
        start = time.perf_counter()
        for _ in range(args.steps):
            train_step()
        step_ms = (time.perf_counter() - start) / args.steps * 1e3
        with profile() as prof:
            for _ in range(args.profile_steps):
                train_step()
        self_ms = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
        conv = sum(v for k, v in self_ms.items() if "convolution" in k)
        top = sorted(((k, v) for k, v in self_ms.items() if "convolution" not in k),
                     key=lambda kv: -kv[1])
        _emit(
            side="diffusers UNet2DModel (PyTorch)", precision=precision, step_ms=step_ms,
            conv_ms=conv / args.profile_steps,
            top_other_ops_ms={k: round(v / args.profile_steps, 1) for k, v in top[:8]},
        )


# ---------------------------------------------------------------------- main
def _markdown(results, meta):
    lines = [
        "# UNet training step: convolution time vs the rest (CPU)",
        "",
        f"Machine: {meta['machine']['cpu']}, {meta['threads']} threads per side. "
        f"Versions: {', '.join(f'{k} {v}' for k, v in meta['versions'].items())}.",
        f"Command: `{meta['command']}`; load average during the run: {meta['load']}.",
        "",
        "Config and step as `unet_throughput.py` (8.95M-parameter UNet, 32x32x3, AdamW, "
        "batch 32). `conv ms`: the convolution ops' own time per step (forward, "
        "input and weight gradients; TensorFlow profiler / torch.profiler).",
        "",
        "| precision | side | step ms | conv ms | conv share | rest ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['precision']} | {r['side']} | {r['step_ms']:.0f} | {r['conv_ms']:.0f} | "
            f"{r['conv_ms'] / r['step_ms']:.0%} | {r['step_ms'] - r['conv_ms']:.0f} |"
        )
    lines += [
        "",
        "| precision | bound: diffusers step / our conv | rest allowed for 1.5x | our rest |",
        "| --- | --- | --- | --- |",
    ]
    for ours, theirs in _pairs(results):
        allowed = theirs["step_ms"] / 1.5 - ours["conv_ms"]
        lines.append(
            f"| {ours['precision']} | {theirs['step_ms'] / ours['conv_ms']:.2f}x | "
            f"{allowed:.0f} ms | {ours['step_ms'] - ours['conv_ms']:.0f} ms |"
        )
    return "\n".join(lines) + "\n"


def _pairs(results):
    for ours in results:
        if not ours["side"].startswith("keras"):
            continue
        want = "float32" if ours["precision"] == "float32" else "bfloat16"
        for theirs in results:
            if theirs["side"].startswith("diffusers") and theirs["precision"] == want:
                yield ours, theirs


def main():
    parser = side_parser(steps=4)
    parser.add_argument("--profile-steps", type=int, default=2)
    args = parser.parse_args()
    if args.side == "keras":
        return run_keras(args)
    if args.side == "torch":
        return run_torch(args)
    argv = side_argv(args) + ["--profile-steps", str(args.profile_steps)]
    run_and_write(__file__, argv, args, "unet_profile", _markdown)


if __name__ == "__main__":
    main()
