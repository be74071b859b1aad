"""Fault injection: what a training run survives, in numbers.

Training half (this file): a short deterministic toy run of
`python -m training.train` is killed with SIGKILL at `--kills` random moments
(during start-up, between steps, and right at checkpoint writes) and resumed
each time with `--workdir` alone. It reports the steps lost per kill (goal:
at most one checkpoint interval), whether the final weights equal those of
an unkilled run bitwise (deterministic mode), and, for each way of damaging
the newest checkpoint (truncated / deleted / flipped data or index file, a
damaged state file, a leftover `ckpt-N_temp/` folder, every checkpoint
damaged), whether the rerun survives.

    python benchmarks/fault_injection.py               # ~10 min on 2 CPU cores
    python benchmarks/fault_injection.py --kills 5     # quicker
    python benchmarks/fault_injection.py --serving-only  # the serving half only

Serving half (benchmarks/fault_injection_serving.py): bad requests to the
exported SavedModel from 4 threads; every one must fail, the process must
survive, and good requests made meanwhile must return the same images.

Writes benchmarks/results/fault_injection.{json,md}.
"""

import argparse
import json
import os
import platform
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "benchmarks", "results")
TOTAL_STEPS = 400
INTERVAL = 20  # train.checkpoint_every
TOY_ARGS = [
    "--config=training/configs/toy2d.py",
    f"--config.train.num_steps={TOTAL_STEPS}",
    f"--config.train.checkpoint_every={INTERVAL}",
    "--config.train.keep_checkpoints=3",
    "--config.train.log_every=1",
    "--config.train.deterministic=True",
    "--config.data.toy2d_num_points=512",
    "--config.data.batch_size=32",
    "--config.data.shuffle_buffer=512",
    "--config.model.denoiser_kwargs.hidden_dim=16",
    "--config.optim.warmup_steps=10",
]
STEP = re.compile(r"\] step (\d+)/")
RESUME = re.compile(r"from step (\d+) to")


def _env():
    return {**os.environ, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}


def _cmd(workdir, *args):
    return [sys.executable, "-m", "training.train", f"--workdir={workdir}", *args]


def run_to_end(workdir, *args, timeout=600):
    proc = subprocess.run(_cmd(workdir, *args), cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=timeout)
    return proc.returncode, proc.stdout + proc.stderr


def checkpoint_values(workdir, step):
    import tensorflow as tf

    prefix = os.path.join(workdir, "checkpoints", f"ckpt-{step}")
    reader = tf.train.load_checkpoint(prefix)
    names = [n for n, _ in tf.train.list_variables(prefix)
             if n.startswith(("model/", "optimizer/"))]
    return {n: reader.get_tensor(n) for n in names}


def bitwise_equal(a, b):
    return a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)


def leftovers(workdir):
    """Files of unfinished checkpoint writes: `_temp` folders, unlisted files."""
    import tensorflow as tf

    directory = os.path.join(workdir, "checkpoints")
    if not os.path.isdir(directory):
        return []
    state = tf.train.get_checkpoint_state(directory)
    listed = {os.path.basename(p) for p in (state.all_model_checkpoint_paths if state else [])}
    out = []
    for name in sorted(os.listdir(directory)):
        if name.endswith("_temp"):
            out.append(name)
        elif name.startswith("ckpt-") and name.split(".")[0] not in listed:
            out.append(name)
    return out


def killed_run(workdir, first, kind, rng):
    """Starts a run (resuming), kills it as `kind` says; returns a record."""
    args = TOY_ARGS if first else []
    proc = subprocess.Popen(_cmd(workdir, *args), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    record = {"kind": kind, "resumed_from": None, "last_step_logged": None, "killed": False}
    lines = []
    start = time.time()
    timer = None
    if kind == "startup":
        delay = rng.uniform(0.2, 6.0)
        record["delay_s"] = round(delay, 2)
        timer = threading.Timer(delay, lambda: proc.poll() is None and proc.kill())
        timer.start()
    target = None
    for line in proc.stderr:
        lines.append(line)
        match = RESUME.search(line)
        if match:
            record["resumed_from"] = int(match.group(1))
            base = record["resumed_from"]
            if kind == "step":
                # Anywhere within the next two intervals, never on a write.
                target = min(base + rng.randint(1, 2 * INTERVAL), TOTAL_STEPS - 1)
                if target % INTERVAL == 0:
                    target -= 1 if target > base + 1 else -1
            elif kind == "checkpoint":
                target = min(base + INTERVAL * rng.randint(1, 2), TOTAL_STEPS - INTERVAL)
        match = STEP.search(line)
        if match:
            step = int(match.group(1))
            record["last_step_logged"] = step
            if target is not None and step >= target and proc.poll() is None:
                if kind == "checkpoint":
                    # The save starts right after this step's log line.
                    time.sleep(rng.uniform(0.0, 0.03))
                proc.send_signal(signal.SIGKILL)
                target = None
    # The rest of the pipe: lines written before the process died.
    proc.wait(timeout=120)
    if timer is not None:
        timer.cancel()
    record["killed"] = proc.returncode == -signal.SIGKILL
    record["seconds"] = round(time.time() - start, 1)
    record["leftovers"] = leftovers(workdir)
    if not record["killed"] and proc.returncode != 0:
        record["error"] = "".join(lines)[-2000:]
    return record


def kill_and_resume(workdir, kills, rng):
    kinds = ["startup", "step", "checkpoint"]
    records = []
    first = True
    while len(records) < kills:
        kind = kinds[len(records) % 3] if len(records) < 3 else rng.choice(kinds)
        record = killed_run(workdir, first, kind, rng)
        # A run killed before it wrote workdir/config.json has started
        # nothing: the next one is a fresh start with --config again.
        first = not os.path.exists(os.path.join(workdir, "config.json"))
        record["config_written"] = not first
        if "error" in record:
            raise RuntimeError(f"Run failed (not killed): {record['error']}")
        records.append(record)
        print(f"kill {len(records)}/{kills}: {kind}, resumed from {record['resumed_from']}, "
              f"last step {record['last_step_logged']}, killed {record['killed']}, "
              f"leftovers {record['leftovers']}", flush=True)
        if not record["killed"]:  # finished before the kill
            break
    code, out = run_to_end(workdir)
    if code:
        raise RuntimeError(out[-3000:])
    match = RESUME.search(out)
    return steps_lost(records, int(match.group(1)) if match else None)


def steps_lost(records, final_resume):
    """Adds `next_resumed_from` and `steps_lost` to each kill's record.

    A kill loses the steps its run had done (its last logged step, or the
    step it resumed from) beyond the step the next run that got as far as
    resuming restarts from. A run killed before it resumed lost nothing.
    """
    resumes = [r["resumed_from"] for r in records[1:]] + [final_resume]
    for i, record in enumerate(records):
        later = [x for x in resumes[i:] if x is not None]
        record["next_resumed_from"] = later[0] if later else None
        done = record["last_step_logged"]
        if done is None:
            done = record["resumed_from"]
        if done is None or record["next_resumed_from"] is None:
            record["steps_lost"] = 0
        else:
            record["steps_lost"] = max(done - record["next_resumed_from"], 0)
    return records


def _data(prefix):
    return prefix + ".data-00000-of-00001"


def _truncate(path, size=None):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2 if size is None else size)


def _flip(path):
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))


def _temp_folder(prefix):
    temp = os.path.join(os.path.dirname(prefix), f"ckpt-{TOTAL_STEPS + INTERVAL}_temp")
    os.makedirs(temp)
    with open(os.path.join(temp, "part-00000-of-00001.data-00000-of-00001"), "wb") as f:
        f.write(b"\x00" * 100)  # what a full disk leaves


def _all(prefix):
    directory = os.path.dirname(prefix)
    for name in os.listdir(directory):
        if name.endswith(".index"):
            _truncate(os.path.join(directory, name))


CORRUPTIONS = {
    "truncated data file": lambda p: _truncate(_data(p)),
    "truncated index file": lambda p: _truncate(p + ".index"),
    "empty index file": lambda p: _truncate(p + ".index", 0),
    "deleted data file": lambda p: os.remove(_data(p)),
    "deleted index file": lambda p: os.remove(p + ".index"),
    "flipped byte in data file": lambda p: _flip(_data(p)),
    "flipped byte in index file": lambda p: _flip(p + ".index"),
    "damaged state file": lambda p: open(os.path.join(os.path.dirname(p), "checkpoint"),
                                         "w").write("garbage {"),
    "leftover ckpt-N_temp/ folder": _temp_folder,
    "every checkpoint damaged": _all,
}


def corruption_cases(reference, root, reference_values, names=None):
    rows = []
    for name, damage in CORRUPTIONS.items():
        if names and name not in names:
            continue
        workdir = os.path.join(root, "corrupt_" + re.sub(r"\W+", "_", name))
        shutil.copytree(reference, workdir)
        prefix = os.path.join(workdir, "checkpoints", f"ckpt-{TOTAL_STEPS}")
        damage(prefix)
        start = time.time()
        code, out = run_to_end(workdir)
        match = RESUME.search(out)
        row = {"case": name, "exit_code": code, "seconds": round(time.time() - start, 1),
               "resumed_from": int(match.group(1)) if match else None}
        if name == "every checkpoint damaged":
            # Survived: a clear error naming the workdir, no traceback.
            row["survived"] = (code != 0 and "Traceback" not in out
                               and os.path.join(workdir, "checkpoints") in out)
            row["message"] = next((l for l in out.splitlines() if l.startswith("error:")), "")[:300]
        else:
            warned = f"ckpt-{TOTAL_STEPS}" in out and "damaged" in out
            equal = code == 0 and bitwise_equal(
                reference_values, checkpoint_values(workdir, TOTAL_STEPS))
            row.update(warned=warned, final_weights_bitwise_equal=equal,
                       temp_folders_left=[n for n in os.listdir(os.path.dirname(prefix))
                                          if n.endswith("_temp")])
            row["survived"] = code == 0 and equal and not row["temp_folders_left"]
        rows.append(row)
        print(f"{name}: survived {row['survived']} (exit {code}, resumed from "
              f"{row['resumed_from']})", flush=True)
        shutil.rmtree(workdir, ignore_errors=True)
    return rows


def training_half(root, kills, seed, cases=None):
    rng = random.Random(seed)
    reference = os.path.join(root, "reference")
    start = time.time()
    code, out = run_to_end(reference, *TOY_ARGS)
    if code:
        raise RuntimeError(out[-3000:])
    reference_seconds = time.time() - start
    reference_values = checkpoint_values(reference, TOTAL_STEPS)
    killed = os.path.join(root, "killed")
    records = kill_and_resume(killed, kills, rng)
    equal = bitwise_equal(reference_values, checkpoint_values(killed, TOTAL_STEPS))
    lost = [r["steps_lost"] for r in records]
    corruption = corruption_cases(reference, root, reference_values, cases)
    return {
        "total_steps": TOTAL_STEPS,
        "checkpoint_interval": INTERVAL,
        "unkilled_run_seconds": round(reference_seconds, 1),
        "kills": records,
        "num_kills": sum(r["killed"] for r in records),
        "max_steps_lost": max(lost) if lost else None,
        "mean_steps_lost": round(float(np.mean(lost)), 2) if lost else None,
        "steps_lost_within_one_interval": all(x <= INTERVAL for x in lost),
        "final_weights_bitwise_equal": equal,
        "corruption": corruption,
        "corruption_survived": all(r["survived"] for r in corruption),
    }


def machine():
    import keras
    import tensorflow as tf

    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
    }


def write_markdown(results, path):
    t = results["training"]
    lines = [
        "# Fault injection",
        "",
        f"Command: `{results['command']}`  ",
        f"Machine: {results['machine']['platform']}, {results['machine']['cpu_count']} CPUs, "
        f"Python {results['machine']['python']}, TensorFlow {results['machine']['tensorflow']}, "
        f"Keras {results['machine']['keras']}; {results['date']}.",
        "",
        "## Training: SIGKILL and resume with `--workdir` alone",
        "",
        f"Toy run of {t['total_steps']} steps, a checkpoint every {t['checkpoint_interval']} "
        f"steps, deterministic mode (unkilled: {t['unkilled_run_seconds']} s). "
        f"{t['num_kills']} kills.",
        "",
        "| # | moment | resumed from | last step logged | next run resumed from | steps lost | "
        "leftover files after the kill |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, r in enumerate(t["kills"], 1):
        moment = r["kind"] + (f" (+{r['delay_s']} s)" if "delay_s" in r else "")
        lines.append(f"| {i} | {moment} | {r['resumed_from']} | {r['last_step_logged']} | "
                     f"{r.get('next_resumed_from')} | {r.get('steps_lost')} | "
                     f"{', '.join(r['leftovers']) or '-'} |")
    lines += [
        "",
        f"- Steps lost per kill: max {t['max_steps_lost']}, mean {t['mean_steps_lost']} "
        f"(goal: at most one interval, {t['checkpoint_interval']}): "
        f"**{'met' if t['steps_lost_within_one_interval'] else 'NOT met'}**.",
        f"- Final weights equal the unkilled run's bitwise: "
        f"**{t['final_weights_bitwise_equal']}**.",
        "- Moments: `startup` is a random delay after launch (before the first "
        "step, so nothing to lose), `step` a random step within the next two "
        "intervals, `checkpoint` 0-30 ms after the log line of a checkpoint step "
        "(the save starts right after it). A kill there loses the interval when the "
        "save had not finished. The toy checkpoint is written in milliseconds, and "
        "no kill left a partial write (`ckpt-N_temp/` or unlisted files, last "
        "column); the leftover-folder case below covers that state.",
        "",
        "## Training: a damaged newest checkpoint, rerun with `--workdir` alone",
        "",
        "| damage | survived | exit code | resumed from | warning names it | final weights "
        "bitwise equal |",
        "|---|---|---|---|---|---|",
    ]
    for r in t["corruption"]:
        lines.append(f"| {r['case']} | {r['survived']} | {r['exit_code']} | {r['resumed_from']} "
                     f"| {r.get('warned', '-')} | {r.get('final_weights_bitwise_equal', '-')} |")
    for r in t["corruption"]:
        if r["case"] == "every checkpoint damaged":
            lines += ["", f"Every checkpoint damaged: the run ends with `{r['message']}`", ""]
    if "serving" in results:
        lines += ["## Serving", "", results["serving"].get("markdown", ""), ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", default="",
                        help="comma-separated damage cases to run (default: all)")
    parser.add_argument("--root", default=None, help="scratch folder (default: a temp dir)")
    parser.add_argument("--out", default=os.path.join(RESULTS, "fault_injection"))
    parser.add_argument("--serving-only", action="store_true",
                        help="rerun only the serving half, keeping the training results")
    args = parser.parse_args()
    root = args.root or tempfile.mkdtemp(prefix="fault_injection_")
    os.makedirs(root, exist_ok=True)
    results = {
        "command": "python benchmarks/fault_injection.py " + " ".join(sys.argv[1:]),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "train_args": TOY_ARGS,
    }
    if args.serving_only:
        with open(args.out + ".json") as f:
            results["training"] = json.load(f)["training"]
    else:
        results["training"] = training_half(root, args.kills, args.seed,
                                            [c for c in args.cases.split(",") if c])
    # Serving half: bad requests to the exported SavedModel from 4 threads.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from fault_injection_serving import serving_half

    results["serving"] = serving_half(os.path.join(root, "serving"))
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out + ".json", "w") as f:
        json.dump(results, f, indent=2)
    write_markdown(results, args.out + ".md")
    print(f"Wrote {args.out}.json and {args.out}.md")
    shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
