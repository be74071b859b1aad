"""Runs checks that could hang in a child process, each with a time limit.

An empty dataset that is repeated can spin forever inside tf.data's C++ code,
where no Python timeout reaches it. The checks of such cases run here: one
child process (TensorFlow is imported once) runs the named functions one
after the other, each in a thread it waits for at most `timeout` seconds, and
prints each outcome as one JSON line. A check that does not finish in time is
reported as `"timeout"`; the child then exits with `os._exit`, so a spinning
thread cannot keep it (or the test suite) alive.
"""

import json
import os
import subprocess
import sys

_RUNNER = r"""
import importlib, json, os, sys, threading
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
module_name, timeout, tmpdir, names = sys.argv[1], float(sys.argv[2]), sys.argv[3], sys.argv[4:]
module = importlib.import_module(module_name)
for name in names:
    outcome = {}

    def target():
        workdir = os.path.join(tmpdir, name)
        os.makedirs(workdir, exist_ok=True)
        try:
            value = getattr(module, name)(workdir)
            outcome.update(outcome="returned", value=repr(value)[:2000])
        except BaseException as e:
            outcome.update(outcome="raised", type=type(e).__name__, message=str(e)[:8000])

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        outcome = {"outcome": "timeout", "timeout": timeout}
    print("@@" + json.dumps(dict(outcome, name=name)), flush=True)
os._exit(0)
"""

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run_bounded(module, names, tmpdir, timeout=30.0):
    """Runs `module.<name>(workdir)` for each name in a child process.

    Args:
        module: the importable name of the module holding the checks.
        names: the functions to run, in order; each takes a fresh folder.
        tmpdir: the folder under which each check gets its own.
        timeout: seconds each check may take.

    Returns:
        `{name: outcome}`, the outcome a dict: `{"outcome": "returned",
        "value"}`, `{"outcome": "raised", "type", "message"}` or
        `{"outcome": "timeout"}`.
    """
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    command = [sys.executable, "-c", _RUNNER, module, str(timeout), tmpdir, *names]
    results = {}
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True,
            timeout=timeout * len(names) + 120,
        )
        stdout, stderr = done.stdout, done.stderr
    except subprocess.TimeoutExpired as e:
        stdout = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        stderr = ""
    for line in stdout.splitlines():
        if line.startswith("@@"):
            outcome = json.loads(line[2:])
            results[outcome.pop("name")] = outcome
    for name in names:
        results.setdefault(name, {"outcome": "no result", "stderr": stderr[-4000:]})
    return results
