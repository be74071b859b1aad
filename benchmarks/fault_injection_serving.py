"""Fault injection, serving half: bad requests to an exported SavedModel.

A small class-conditional model is exported with `model.export(...)`. A
separate serving process (`tf.saved_model.load`, no keras_diffusion import)
runs 4 threads: each sends its share of bad requests (batch sizes and step
counts over the export's bounds, negative and huge seeds, NaN and negative
guidance, out-of-range and mis-sized labels, t outside [0, 1] or NaN for
`denoise`, wrong noise shapes), interleaved with good requests. Goals: every
bad request gets an error, the process survives, and every good request made
meanwhile returns the same images as when made alone.

    python benchmarks/fault_injection_serving.py     # ~2 min on 2 CPU cores

Run by benchmarks/fault_injection.py (its `--serving-only` flag runs just
this half); it returns a dict with a markdown table under "markdown".
"""

import json
import os
import subprocess
import sys
import tempfile
import textwrap

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
THREADS = 4
ROUNDS = 3  # Each thread sends every bad request this many times.

# Each bad request: (name, signature, inputs as Python values).
BAD_REQUESTS = [
    ("batch_size over max_batch_size", "generate", {"batch_size": 10**6}),
    ("batch_size 0", "generate", {"batch_size": 0}),
    ("num_steps over max_num_steps", "generate", {"num_steps": 10**8}),
    ("num_steps 0", "generate", {"num_steps": 0}),
    ("seed -1", "generate", {"seed": -1}),
    ("seed 2**40", "generate", {"seed": 2**40}),
    ("guidance_scale NaN", "generate", {"guidance_scale": float("nan")}),
    ("guidance_scale -1", "generate", {"guidance_scale": -1.0}),
    ("label 10 (num_classes 10)", "generate", {"labels": [10]}),
    ("label -3", "generate", {"labels": [-3]}),
    ("3 labels for a batch of 2", "generate", {"labels": [1, 2, 3]}),
    ("denoise t = 1.5", "denoise", {"t": [1.5, 0.5]}),
    ("denoise t = NaN", "denoise", {"t": [float("nan"), 0.5]}),
    ("denoise 3 labels for 2 images", "denoise", {"labels": [0, 1, 2]}),
    ("noise of the wrong shape", "generate_from_noise", {"noise_shape": [2, 4, 4, 1]}),
]

SERVER = textwrap.dedent(
    r'''
    import json, os, sys, threading
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np
    import tensorflow as tf

    path, requests_json, threads, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    bad = json.loads(requests_json)
    served = tf.saved_model.load(path)
    size = None

    def good_request(seed):
        out = served.signatures["generate"](
            batch_size=tf.constant(2), seed=tf.constant(seed, tf.int64),
            labels=tf.constant([seed % 10], tf.int32), guidance_scale=tf.constant(2.0),
            num_steps=tf.constant(4))
        return next(iter(out.values())).numpy()

    def bad_request(signature, changes):
        base = {
            "generate": dict(batch_size=2, seed=0, labels=[3], guidance_scale=2.0, num_steps=4),
            "denoise": dict(x_t=np.zeros((2, 8, 8, 1), "float32"), t=[0.5, 0.5], labels=[1, 2]),
            "generate_from_noise": dict(noise_shape=[2, 8, 8, 1], seed=0, labels=[3],
                                        guidance_scale=2.0, num_steps=4),
        }[signature]
        inputs = {**base, **changes}
        if signature == "generate_from_noise":
            inputs["noise"] = np.zeros(inputs.pop("noise_shape"), "float32")
        dtypes = {"batch_size": tf.int32, "num_steps": tf.int32, "seed": tf.int64,
                  "labels": tf.int32, "guidance_scale": tf.float32, "t": tf.float32,
                  "x_t": tf.float32, "noise": tf.float32}
        tensors = {k: tf.constant(v, dtypes[k]) for k, v in inputs.items()}
        served.signatures[signature](**tensors)

    alone = {seed: good_request(seed) for seed in range(threads)}
    results = {name: [] for name, _, _ in bad}
    mismatches = []
    lock = threading.Lock()

    def worker(index):
        for r in range(rounds):
            for name, signature, changes in bad:
                try:
                    bad_request(signature, changes)
                    outcome = "no error"
                except tf.errors.InvalidArgumentError as e:
                    # The check's own message: the line naming the input.
                    named = [l for l in e.message.splitlines() if "`" in l or "must" in l]
                    line = (named or e.message.strip().splitlines()[-1:] or [""])[0]
                    outcome = "InvalidArgumentError: " + line.strip()[:160]
                except Exception as e:  # A wrong-shape input is refused before the graph runs.
                    outcome = type(e).__name__ + ": " + str(e).splitlines()[0][:160]
                with lock:
                    results[name].append(outcome)
            images = good_request(index)
            same = np.array_equal(images, alone[index])
            with lock:
                if not same:
                    mismatches.append((index, r, float(np.abs(images - alone[index]).max())))

    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    print("RESULT " + json.dumps({"bad": results, "mismatches": mismatches,
                                  "good_requests": threads * rounds}))
    '''
)


def export_model(path):
    import keras
    import numpy as np

    import keras_diffusion as kd
    from keras_diffusion.models import UNet

    net = UNet(input_channels=1, base_channels=8, channel_multipliers=(1,), num_res_blocks=1,
               attention_resolutions=(), num_groups=4, num_classes=10)
    model = kd.DiffusionModel(denoiser=net, image_shape=(8, 8, 1), num_classes=10, seed=0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3))
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (16, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 16).astype("int32")
    model.fit({"images": x, "labels": y}, batch_size=8, epochs=1, verbose=0)
    model.export(path, sampler="dpm_solver")


def serving_half(root=None):
    root = root or tempfile.mkdtemp(prefix="fault_serving_")
    path = os.path.join(root, "export")
    export_model(path)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    proc = subprocess.run(
        [sys.executable, "-c", SERVER, path, json.dumps(BAD_REQUESTS), str(THREADS), str(ROUNDS)],
        capture_output=True, text=True, env=env, timeout=900,
    )
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    survived = proc.returncode == 0 and bool(lines)
    out = {"threads": THREADS, "rounds": ROUNDS, "process_exit_code": proc.returncode,
           "process_survived": survived}
    if not lines:
        out["stderr_tail"] = proc.stderr[-2000:]
        out["markdown"] = f"The serving process died (exit code {proc.returncode})."
        return out
    result = json.loads(lines[-1][len("RESULT "):])
    rows = []
    for name, signature, _ in BAD_REQUESTS:
        outcomes = result["bad"][name]
        errors = sum(not o.startswith("no error") for o in outcomes)
        rows.append({"request": name, "signature": signature, "sent": len(outcomes),
                     "errors": errors, "example": outcomes[0]})
    out.update(
        bad_requests=rows,
        every_bad_request_refused=all(r["errors"] == r["sent"] for r in rows),
        good_requests=result["good_requests"],
        good_requests_identical_to_alone=not result["mismatches"],
        mismatches=result["mismatches"],
    )
    md = [
        f"{THREADS} threads in one serving process (`tf.saved_model.load`, no keras_diffusion), "
        f"each sending every bad request {ROUNDS} times, with a good `generate` request "
        "(batch 2, 4 steps, guidance 2) after each round.",
        "",
        "| bad request | signature | sent | refused | first error |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        md.append(f"| {r['request']} | `{r['signature']}` | {r['sent']} | {r['errors']} | "
                  f"{r['example'].replace('|', '/')} |")
    md += [
        "",
        f"- Every bad request refused: **{out['every_bad_request_refused']}**.",
        f"- The serving process survived (exit code {proc.returncode}): **{survived}**.",
        f"- Good requests made meanwhile ({out['good_requests']}) bitwise equal to the same "
        f"requests made alone: **{out['good_requests_identical_to_alone']}**.",
    ]
    out["markdown"] = "\n".join(md)
    return out


if __name__ == "__main__":
    result = serving_half()
    print(result["markdown"])
