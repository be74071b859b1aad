"""training/train.py in-process: train, resume, TensorBoard, eval, sample."""

import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_diffusion.testing import TestCase
from training.configs import mnist
from training.configs import toy2d
from training.lib.experiment import Experiment
from training.lib.experiment import run


def read_events(logdir):
    """{tag: [(step, value)]} of the TensorBoard event files under logdir."""
    out = {}
    for path in sorted(glob.glob(os.path.join(logdir, "**", "events.*"), recursive=True)):
        for record in tf.data.TFRecordDataset(path):
            event = tf.compat.v1.Event.FromString(record.numpy())
            for value in event.summary.value:
                out.setdefault(value.tag, []).append((event.step, tf.make_ndarray(value.tensor)))
    return out


def tiny_toy_config(num_steps=20):
    config = toy2d.get_config()
    config.data.toy2d_num_points = 256
    config.data.batch_size = 32
    config.data.shuffle_buffer = 256
    config.model.denoiser_kwargs = {"hidden_dim": 16, "num_layers": 2}
    config.train.num_steps = num_steps
    config.train.checkpoint_every = 10
    config.train.keep_checkpoints = 2
    config.train.log_every = 5
    config.sample.num_images = 64
    config.sample.batch_size = 64
    config.sample.num_steps = 4
    config.eval.num_batches = 2
    config.eval.batch_size = 32
    config.eval.num_samples = 64
    config.eval.kid_num_subsets = 10
    config.eval.bpd_num_batches = 1
    config.eval.bpd_num_steps = 8
    return config


class TrainLoopTest(TestCase):
    def _run(self, mode, config, workdir):
        experiment = Experiment.create(config, workdir, mode)
        return experiment, run(experiment, mode)

    def test_train_resume_eval_sample(self):
        workdir = self.get_temp_dir()
        _, monitor = self._run("train", tiny_toy_config(20), workdir)
        ckpts = tf.train.get_checkpoint_state(os.path.join(workdir, "checkpoints"))
        self.assertTrue(ckpts.model_checkpoint_path.endswith("ckpt-20"))
        self.assertTrue(os.path.exists(os.path.join(workdir, "config.json")))
        self.assertEqual([s for s, _ in monitor.history], [5, 10, 15, 20])
        events = read_events(os.path.join(workdir, "tensorboard"))
        for tag in ("train/loss", "train/learning_rate", "train/images_per_second",
                    "train/loss_by_t/q1", "train/loss_by_t/q4", "config"):
            self.assertIn(tag, events)
        self.assertEqual([s for s, _ in events["train/loss"]], [5, 10, 15, 20])
        self.assertIn("seed", events["config"][0][1].item().decode())
        # Resuming with more steps continues from step 20, keeping the last 2.
        config = tiny_toy_config(40)
        experiment, monitor = self._run("train", config, workdir)
        self.assertEqual([s for s, _ in monitor.history], [25, 30, 35, 40])
        self.assertEqual(int(experiment.optimizer.iterations.numpy()), 40)
        ckpts = tf.train.get_checkpoint_state(os.path.join(workdir, "checkpoints"))
        self.assertEqual(
            [os.path.basename(p) for p in ckpts.all_model_checkpoint_paths],
            ["ckpt-30", "ckpt-40"],
        )
        # Finished: another call trains nothing.
        _, monitor = self._run("train", None, workdir)
        self.assertIsNone(monitor)
        _, metrics = self._run("eval", None, workdir)
        self.assertTrue(np.isfinite(metrics["loss"]))
        with open(os.path.join(workdir, "eval", "metrics.json")) as f:
            record = json.load(f)
        self.assertEqual(record["step"], 40)
        # FID/KID with the identity extractor (2-D points) and the 8-step ELBO.
        for key in ("loss", "fid", "kid", "kid_std", "bpd"):
            self.assertTrue(np.isfinite(record[key]), (key, record))
        self.assertEqual(record["num_samples"], 64)
        self.assertGreaterEqual(record["fid"], 0.0)
        self.assertTrue(os.path.exists(os.path.join(workdir, "eval", "metrics_step40.json")))
        events = read_events(os.path.join(workdir, "tensorboard"))
        for tag in ("eval/loss", "eval/fid", "eval/kid", "eval/bpd"):
            self.assertEqual([s for s, _ in events[tag]], [40])
        _, samples = self._run("sample", None, workdir)
        self.assertEqual(samples.shape, (64, 2))
        self.assertTrue(os.path.exists(os.path.join(workdir, "samples", "samples_step40.npz")))

    def test_eval_bad_feature_extractor_fails_at_start(self):
        workdir = self.get_temp_dir()
        config = tiny_toy_config(10)
        config.eval.feature_extractor = os.path.join(workdir, "no_classifier.keras")
        with self.assertRaisesRegex(FileNotFoundError, "eval.feature_extractor"):
            Experiment.create(config, workdir, "eval")

    @pytest.mark.slow  # builds a UNet and traces the sampler twice
    def test_conditional_images_with_sample_grid(self):
        workdir = self.get_temp_dir()
        config = mnist.get_config()
        config.data.image_size = 8
        config.data.batch_size = 8
        config.model.denoiser_kwargs.base_channels = 8
        config.model.denoiser_kwargs.channel_multipliers = (1, 2)
        config.model.denoiser_kwargs.attention_resolutions = ()
        config.model.denoiser_kwargs.num_groups = 4
        config.train.num_steps = 4
        config.train.checkpoint_every = 2
        config.train.log_every = 2
        config.train.sample_every = 4
        config.train.num_sample_images = 10
        config.sample.num_steps = 2
        config.sample.num_images = 10
        self._run("train", config, workdir)
        events = read_events(os.path.join(workdir, "tensorboard"))
        self.assertIn("samples", events)
        step, value = events["samples"][0]
        self.assertEqual(step, 4)
        grid = tf.io.decode_png(value[2]).numpy()  # [width, height, png]
        self.assertEqual(grid.shape, (8, 80, 1))  # one row of the 10 digits
        _, images = self._run("sample", None, workdir)
        self.assertEqual(images.shape, (10, 8, 8, 1))
        self.assertTrue(os.path.exists(os.path.join(workdir, "samples", "samples_step4.png")))
