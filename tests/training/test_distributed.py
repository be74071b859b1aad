"""tf.distribute: MirroredStrategy over two logical CPU devices and
MultiWorkerMirroredStrategy with two worker processes on 127.0.0.1 give the
loss curve of a single-device run of the same global batch and seed."""

import json
import os
import socket
import subprocess

import numpy as np
import pytest

from tests.training.test_fault_tolerance import ROOT
from tests.training.test_fault_tolerance import _env
from tests.training.test_fault_tolerance import train_cmd
from tests.training.test_loop import read_events

ARGS = [
    "--config=training/configs/toy2d.py",
    "--config.train.num_steps=120",
    "--config.train.checkpoint_every=60",
    "--config.train.log_every=20",
    "--config.data.toy2d_num_points=1024",
    "--config.data.batch_size=64",
    "--config.data.shuffle_buffer=1024",
    "--config.model.denoiser_kwargs.hidden_dim=32",
    "--config.optim.warmup_steps=0",
    "--config.optim.clipnorm=0",
]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def loss_curve(workdir):
    events = read_events(os.path.join(workdir, "tensorboard"))
    return np.array([float(v) for _, v in events["train/loss"]])


def _check_close(curve, reference):
    assert curve.shape == reference.shape == (6,)
    # Same data, seed and global batch; the replicas draw their own t and
    # noise, so the curves agree statistically, not bit for bit.
    np.testing.assert_allclose(curve, reference, rtol=0.15)
    assert curve[-1] < 0.9 * curve[0] and reference[-1] < 0.9 * reference[0]


@pytest.mark.slow
def test_mirrored_and_multi_worker_match_single_device(tmp_path):
    single, mirrored = str(tmp_path / "single"), str(tmp_path / "mirrored")
    multi = str(tmp_path / "multi")
    ports = [_free_port(), _free_port()]
    cluster = {"worker": [f"127.0.0.1:{p}" for p in ports]}
    procs = [
        subprocess.Popen(train_cmd(single, *ARGS), cwd=ROOT, env=_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
        subprocess.Popen(train_cmd(mirrored, "--strategy=mirrored", *ARGS), cwd=ROOT,
                         env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True),
    ]
    for index in range(2):
        tf_config = {"cluster": cluster, "task": {"type": "worker", "index": index}}
        procs.append(subprocess.Popen(
            train_cmd(multi, "--strategy=multi_worker", *ARGS), cwd=ROOT,
            env={**_env(), "TF_CONFIG": json.dumps(tf_config)},
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    errors = []
    for proc in procs:
        _, err = proc.communicate(timeout=400)
        if proc.returncode:
            errors.append(err[-3000:])
    assert not errors, "\n\n".join(errors)
    reference = loss_curve(single)
    print("single", reference, "mirrored", loss_curve(mirrored), "multi", loss_curve(multi))
    _check_close(loss_curve(mirrored), reference)
    _check_close(loss_curve(multi), reference)
    # The chief wrote the checkpoints; the other worker cleaned up its scratch copy.
    assert os.path.exists(os.path.join(multi, "checkpoints", "ckpt-120.index"))
    assert not os.path.exists(os.path.join(multi, ".worker_1_tmp"))


@pytest.mark.slow
def test_batch_size_not_divisible_by_replicas_fails_before_compute(tmp_path):
    proc = subprocess.run(
        train_cmd(str(tmp_path), "--strategy=mirrored", *ARGS, "--config.data.batch_size=63"),
        cwd=ROOT, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "batch_size=63" in proc.stderr and "replicas (2)" in proc.stderr
    assert not os.path.exists(os.path.join(str(tmp_path), "checkpoints"))
