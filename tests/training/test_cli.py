"""`python -m training.train` as a user runs it: quiet logs, `--workdir` alone
with overrides, eval progress, the export's sampler and path (issue 13,
findings 6 and 7). One small toy run serves every assertion."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOY = [
    "--config=training/configs/toy2d.py",
    "--config.train.num_steps=20",
    "--config.train.checkpoint_every=10",
    "--config.train.log_every=10",
    "--config.data.toy2d_num_points=256",
    "--config.data.batch_size=32",
    "--config.data.shuffle_buffer=256",
    "--config.model.denoiser_kwargs.hidden_dim=16",
    "--config.optim.warmup_steps=0",
    "--config.eval.num_batches=2",
    "--config.eval.batch_size=32",
    "--config.eval.feature_extractor=",
    "--config.eval.bpd_num_batches=1",
    "--config.eval.bpd_num_steps=4",
]
# What a user must not see by default (the list).
NOISE = ("I0000", "W0000", "oneDNN", "cuda drivers", "cuInit", "absl::InitializeLog",
         "cpu_feature_guard", "Sharding callback", "contains input name(s)")


def cli(*args):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run([sys.executable, "-m", "training.train", *args], cwd=ROOT,
                          env={**env, "PYTHONPATH": ROOT}, capture_output=True, text=True,
                          timeout=400)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc.stdout + proc.stderr


def assert_quiet(out):
    noisy = [line for line in out.splitlines() if any(n in line for n in NOISE)]
    assert not noisy, noisy[:5]


@pytest.mark.slow
def test_train_resume_with_overrides_eval_export(tmp_path):
    workdir = str(tmp_path / "toy")
    out = cli(f"--workdir={workdir}", *TOY)
    assert_quiet(out)
    assert "step 20/20" in out and "Saved checkpoint" in out
    # --workdir alone with an override of a key that may change;
    # --verbose_logs brings TensorFlow's logs back.
    out = cli(f"--workdir={workdir}", "--config.train.num_steps=30", "--verbose_logs")
    assert "I0000" in out or "oneDNN" in out
    assert "from step 20 to 30" in out and "step 30/30" in out
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["train"]["num_steps"] == 30
    # Eval says what it computes, shows progress, and never runs out of data.
    out = cli(f"--workdir={workdir}", "--mode=eval")
    assert_quiet(out)
    assert "ran out of data" not in out
    assert "loss: the training loss on a fixed grid" in out
    assert "bits/dim: the negative ELBO of the 4-step chain" in out and "about" in out
    assert "bits/dim: batch 1/1" in out
    assert os.path.join(workdir, "eval", "metrics.json") in out
    # The export: DPM-Solver++ as the README says, its path logged, no log flood.
    out = cli(f"--workdir={workdir}", "--mode=export")
    assert_quiet(out)
    path = os.path.join(workdir, "export", "30")
    assert f"to {path}" in out
    assert max(len(line) for line in out.splitlines()) < 1000
    with open(os.path.join(path, "assets.extra", "keras_diffusion_export.json")) as f:
        assert json.load(f)["sampler"]["class"] == "DPMSolverSampler"
