"""Checkpoints: atomic, and a SIGKILLed run resumes to the same weights."""

import os
import random
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from keras_diffusion.testing import TestCase
from training.lib.checkpoint import Checkpointer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOTAL_STEPS = 60
TOY_ARGS = [
    "--config=training/configs/toy2d.py",
    f"--config.train.num_steps={TOTAL_STEPS}",
    "--config.train.checkpoint_every=10",
    "--config.train.keep_checkpoints=2",
    "--config.train.log_every=1",
    "--config.train.deterministic=True",
    "--config.data.toy2d_num_points=512",
    "--config.data.batch_size=32",
    "--config.data.shuffle_buffer=512",
    "--config.model.denoiser_kwargs.hidden_dim=16",
    "--config.optim.warmup_steps=10",
]


def _env():
    return {**os.environ, "PYTHONPATH": ROOT, "PYTHONUNBUFFERED": "1"}


def train_cmd(workdir, *args):
    return [sys.executable, "-m", "training.train", f"--workdir={workdir}", *args]


def checkpoint_values(workdir, step):
    reader = tf.train.load_checkpoint(os.path.join(workdir, "checkpoints", f"ckpt-{step}"))
    names = [n for n, _ in tf.train.list_variables(os.path.join(workdir, "checkpoints", f"ckpt-{step}"))
             if n.startswith(("model/", "optimizer/"))]
    return {n: reader.get_tensor(n) for n in names}


class AtomicCheckpointTest(TestCase):
    def test_partial_checkpoint_is_never_latest_and_last_k_kept(self):
        directory = os.path.join(self.get_temp_dir(), "checkpoints")
        model = keras.Sequential([keras.Input((2,)), keras.layers.Dense(2)])
        optimizer = keras.optimizers.Adam(use_ema=True)
        optimizer.build(model.trainable_variables)
        ckpt = Checkpointer(directory, model, optimizer, keep=2)
        for step in (10, 20, 30):
            model.layers[0].kernel.assign(np.full((2, 2), float(step)))
            ckpt.save(step)
        self.assertEqual(sorted(f for f in os.listdir(directory) if f.endswith(".index")),
                         ["ckpt-20.index", "ckpt-30.index"])
        # A run killed while writing step 40 leaves its files without the index update.
        with open(os.path.join(directory, "ckpt-40.index"), "wb") as f:
            f.write(b"\x00partial")
        with open(os.path.join(directory, "ckpt-40.data-00000-of-00001"), "wb") as f:
            f.write(b"\x00partial")
        model.layers[0].kernel.assign(np.zeros((2, 2)))
        self.assertEqual(ckpt.restore(), 30)
        self.assertAllClose(model.layers[0].kernel, np.full((2, 2), 30.0))
        ckpt.save(40)  # overwrites the partial files
        self.assertEqual(Checkpointer(directory, model, optimizer).restore(), 40)


@pytest.mark.slow
def test_sigkill_at_random_step_then_resume_matches_unkilled_run(tmp_path):
    reference, killed = str(tmp_path / "reference"), str(tmp_path / "killed")
    ref = subprocess.Popen(train_cmd(reference, *TOY_ARGS), cwd=ROOT, env=_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    kill_at = random.Random(time.time()).randint(12, TOTAL_STEPS - 8)
    proc = subprocess.Popen(train_cmd(killed, *TOY_ARGS), cwd=ROOT, env=_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    seen = 0
    for line in proc.stderr:
        if "] step " in line:
            seen = int(line.split("] step ")[1].split("/")[0])
            if seen >= kill_at:
                proc.send_signal(signal.SIGKILL)
                break
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, f"run ended before the kill at step {kill_at}"
    latest = tf.train.latest_checkpoint(os.path.join(killed, "checkpoints"))
    assert latest is not None and int(latest.rsplit("-", 1)[1]) <= seen
    # Resume with --workdir alone.
    resumed = subprocess.run(train_cmd(killed), cwd=ROOT, env=_env(), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"from step {int(latest.rsplit('-', 1)[1])} to {TOTAL_STEPS}" in resumed.stderr
    _, err = ref.communicate(timeout=300)
    assert ref.returncode == 0, err[-3000:]
    a, b = checkpoint_values(reference, TOTAL_STEPS), checkpoint_values(killed, TOTAL_STEPS)
    assert a.keys() == b.keys() and len(a) > 10
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=f"{name} (killed at {seen})")
