"""Latency and throughput of the exported SavedModel's `generate` signature
against the library's own `DiffusionModel.generate()`, on this CPU.

Both sides run in the same process, interleaved (library, exported, library,
...) so that the load of a shared machine hits both alike; each number is the
median of `--repeats` timed calls after one warm-up call (which traces the
graph). The model is a class-conditional DiffusionModel with the default UNet
for its image size (random weights: latency does not depend on them), sampled
with DPM-Solver++ (order 2), `--num_steps` steps, with and without
classifier-free guidance.

Usage:
    python benchmarks/export_latency.py                  # 32x32, batch 1 and 16
    python benchmarks/export_latency.py --image_size 16 --repeats 2   # quicker
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import keras_diffusion  # noqa: E402
from keras_diffusion.export import export_saved_model  # noqa: E402
from keras_diffusion.models.diffusion_model import DiffusionModel  # noqa: E402

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--image_size", type=int, default=32)
    parser.add_argument("--num_classes", type=int, default=10)
    parser.add_argument("--batch_sizes", default="1,16")
    parser.add_argument("--guidance_scales", default="1.0,3.0")
    parser.add_argument("--num_steps", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=os.path.join(RESULTS, "export_latency"))
    return parser.parse_args()


def timed(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main():
    args = parse_args()
    size = args.image_size
    keras.utils.set_random_seed(0)
    model = DiffusionModel(image_shape=(size, size, 3), num_classes=args.num_classes)
    model.build(None)
    denoiser = model.denoiser
    num_params = int(sum(np.prod(v.shape) for v in denoiser.weights))
    unet = {
        k: denoiser.get_config()[k]
        for k in ("base_channels", "channel_multipliers", "num_res_blocks",
                  "attention_resolutions")
    }
    root = tempfile.mkdtemp()
    path = os.path.join(root, "diffusion", "1")
    start = time.perf_counter()
    export_saved_model(model, path, sampler="dpm_solver")
    export_seconds = time.perf_counter() - start
    start = time.perf_counter()
    served = tf.saved_model.load(path)
    load_seconds = time.perf_counter() - start
    # The same model exported with its layers' XLA islands (fused_layers=True):
    # as the library runs it, but TF Serving needs --xla_cpu_compilation_enabled.
    fused_path = os.path.join(root, "fused", "1")
    export_saved_model(model, fused_path, sampler="dpm_solver", fused_layers=True)
    signatures = {
        "exported": served.signatures["generate"],
        "fused": tf.saved_model.load(fused_path).signatures["generate"],
    }
    load_before = os.getloadavg()

    rows = []
    for batch in [int(b) for b in args.batch_sizes.split(",")]:
        for scale in [float(g) for g in args.guidance_scales.split(",")]:
            labels = np.arange(batch) % args.num_classes

            def library(seed):
                return model.generate(
                    labels=labels, sampler="dpm_solver", num_steps=args.num_steps,
                    guidance_scale=scale, seed=seed, verbose=0,
                )

            def exported(seed, name="exported"):
                out = signatures[name](
                    seed=tf.constant(seed, tf.int64), batch_size=tf.constant(batch),
                    labels=tf.constant(labels, tf.int32),
                    guidance_scale=tf.constant(scale), num_steps=tf.constant(args.num_steps),
                )
                return out["images"].numpy()

            first_library = timed(lambda: library(0))  # Traces the tf.function.
            first_exported = timed(lambda: exported(0))
            timed(lambda: exported(0, "fused"))
            lib_times, exp_times, fused_times = [], [], []
            for i in range(args.repeats):
                lib_times.append(timed(lambda: library(i + 1)))
                exp_times.append(timed(lambda: exported(i + 1)))
                fused_times.append(timed(lambda: exported(i + 1, "fused")))
            lib, exp = statistics.median(lib_times), statistics.median(exp_times)
            fused = statistics.median(fused_times)
            row = {
                "batch_size": batch,
                "guidance_scale": scale,
                "num_steps": args.num_steps,
                "library_first_call_s": round(first_library, 3),
                "exported_first_call_s": round(first_exported, 3),
                "library_s": [round(t, 3) for t in lib_times],
                "exported_s": [round(t, 3) for t in exp_times],
                "library_median_s": round(lib, 3),
                "exported_median_s": round(exp, 3),
                "library_min_s": round(min(lib_times), 3),
                "exported_min_s": round(min(exp_times), 3),
                "library_images_per_s": round(batch / lib, 3),
                "exported_images_per_s": round(batch / exp, 3),
                "exported_over_library_time": round(exp / lib, 3),
                "fused_s": [round(t, 3) for t in fused_times],
                "fused_median_s": round(fused, 3),
                "fused_over_library_time": round(fused / lib, 3),
            }
            rows.append(row)
            print(json.dumps(row), flush=True)

    shutil.rmtree(root, ignore_errors=True)
    result = {
        "benchmark": "export_latency",
        "what": "exported SavedModel `generate` signature vs DiffusionModel.generate(), "
        "same process, interleaved, median of repeats after one warm-up call",
        "model": f"DiffusionModel(image_shape=({size}, {size}, 3), num_classes="
        f"{args.num_classes}), default UNet {unet}, {num_params} parameters",
        "sampler": "dpm_solver (DPM-Solver++ order 2, clip_x0=1)",
        "repeats": args.repeats,
        "export_seconds": round(export_seconds, 2),
        "load_seconds": round(load_seconds, 2),
        "saved_model_mb": round(_dir_size(path) / 2**20, 2) if os.path.exists(path) else None,
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "load_average_before": [round(x, 2) for x in load_before],
            "load_average_after": [round(x, 2) for x in os.getloadavg()],
            "note": "CPU shared with other developers' jobs: wall times are noisy",
        },
        "versions": {
            "python": platform.python_version(),
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "keras_diffusion": keras_diffusion.__version__,
        },
        "command": " ".join([os.path.basename(sys.executable)] + sys.argv),
        "results": rows,
    }
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(result, f, indent=2)
    with open(args.out + ".md", "w") as f:
        f.write(_markdown(result))
    print(f"wrote {args.out}.json and {args.out}.md")


def _dir_size(path):
    return sum(
        os.path.getsize(os.path.join(d, name)) for d, _, names in os.walk(path) for name in names
    )


def _markdown(result):
    machine = result["machine"]
    lines = [
        "# export_latency: exported SavedModel `generate` vs `DiffusionModel.generate()`",
        "",
        f"{result['model']}; {result['sampler']}. {result['what']} "
        f"({result['repeats']} repeats).",
        f"CPU: {machine['cpu_count']} cores, {machine['platform']}; load average "
        f"{machine['load_average_before'][0]} before, {machine['load_average_after'][0]} "
        f"after ({machine['note']}). TensorFlow {result['versions']['tensorflow']}, "
        f"Keras {result['versions']['keras']}.",
        f"Export took {result['export_seconds']} s, loading {result['load_seconds']} s.",
        "",
        "| batch | guidance | steps | library s (median / min) | exported s (median / min) "
        "| library img/s | exported img/s | exported / library (median) | "
        "exported / library (min) | first call s (lib / exp) | "
        "fused_layers export s (median) | fused / library (median) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["results"]:
        lines.append(
            f"| {r['batch_size']} | {r['guidance_scale']} | {r['num_steps']} | "
            f"{r['library_median_s']} / {r['library_min_s']} | "
            f"{r['exported_median_s']} / {r['exported_min_s']} | "
            f"{r['library_images_per_s']} | {r['exported_images_per_s']} | "
            f"{r['exported_over_library_time']} | "
            f"{round(r['exported_min_s'] / r['library_min_s'], 3)} | "
            f"{r['library_first_call_s']} / "
            f"{r['exported_first_call_s']} | "
            f"{r['fused_median_s']} | {r['fused_over_library_time']} |"
        )
    lines += [
        "",
        "`first call` includes tracing for the library (its tf.function is built on "
        "the first generate() of a configuration) and the loaded graph's first "
        "optimisation for the export. Guidance 1.0 runs one network call per step "
        "(the exported graph picks the unguided branch with a `tf.cond`), 3.0 two "
        "(conditional and unconditional halves in one batched call).",
        "",
        "**Reading these numbers.** The library's generate() is one tf.function "
        "over the same sampler loop as the export (which adds input checks and one "
        "`tf.cond` around it). The default export traces the layers' XLA islands "
        "(`keras_diffusion.layers.fusion`) unfused, so that TF Serving runs it "
        "without flags; `fused_layers=True` keeps them and runs the library's "
        "graph. On a shared CPU single calls vary between repeats: compare the "
        "ratios with the spread of the repeats in the JSON.",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
