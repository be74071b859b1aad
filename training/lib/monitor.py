"""Keras callbacks of training/train.py: checkpoints, TensorBoard, progress."""

import json
import sys
import time

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from keras_diffusion.utils.images import make_grid
from training.lib import builders


class StepCounter(keras.callbacks.Callback):
    """Keeps the global step: an "epoch" of fit is one checkpoint interval."""

    def __init__(self, steps_per_epoch):
        super().__init__()
        self.steps_per_epoch = steps_per_epoch
        self.epoch = 0
        self.step = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def on_train_batch_end(self, batch, logs=None):
        self.step = self.epoch * self.steps_per_epoch + batch + 1


class CheckpointCallback(keras.callbacks.Callback):
    """Saves a checkpoint at the end of each interval (fit epoch)."""

    def __init__(self, checkpointer, counter):
        super().__init__()
        self.checkpointer = checkpointer
        self.counter = counter

    def on_epoch_end(self, epoch, logs=None):
        path = self.checkpointer.save((epoch + 1) * self.counter.steps_per_epoch)
        if self.checkpointer.chief:
            logging.info("Saved checkpoint %s", path)


def image_grid(images, columns=None):
    """`[N, H, W, C]` in [-1, 1] -> one uint8 grid image `[rows*H, cols*W, C]`."""
    columns = columns or int(np.ceil(np.sqrt(len(images))))
    return make_grid(images, num_cols=columns, padding=0)


def sample_labels(config, num):
    if config.model.num_classes:
        return np.arange(num) % config.model.num_classes
    return None


class TensorBoardMonitor(keras.callbacks.Callback):
    """TensorBoard and terminal progress.

    Every `log_every` steps: loss (mean over the interval), loss per quarter of
    t (`loss_q1` is t < 0.25, the least noisy; means since the last
    checkpoint), learning rate, images/s; every `sample_every` steps a grid of
    samples from fixed seeds and labels (EMA weights); at start the config as
    text. Validation metrics, when fit computes them, at each interval's end.
    """

    def __init__(self, logdir, config, counter, global_batch, chief=True, total_steps=None,
                 start_step=0):
        super().__init__()
        self.config = config
        self.counter = counter
        self.global_batch = global_batch
        self.chief = chief
        self.total_steps = total_steps
        self.start_step = start_step
        self.writer = tf.summary.create_file_writer(logdir) if chief else tf.summary.create_noop_writer()
        self.progbar = None
        self._last = None  # (step, running mean loss, time)
        self.history = []  # (step, interval mean loss) for tests

    def on_train_begin(self, logs=None):
        with self.writer.as_default():
            text = "```\n" + self.config.to_json_best_effort(indent=2, sort_keys=True) + "\n```"
            tf.summary.text("config", text, step=self.start_step)
        if sys.stdout.isatty() and self.chief:
            self.progbar = keras.utils.Progbar(self.total_steps, stateful_metrics=["loss", "lr"])
            self.progbar.update(self.start_step)
        self._last = (self.start_step, 0.0, time.time())

    def on_epoch_begin(self, epoch, logs=None):
        # Keras resets its running means each epoch.
        self._last = (self.counter.epoch * self.counter.steps_per_epoch, 0.0, self._last[2])

    def _lr(self):
        opt = self.model.optimizer
        lr = opt.learning_rate
        return float(keras.ops.convert_to_numpy(lr))

    def on_train_batch_end(self, batch, logs=None):
        step = self.counter.step
        logs = logs or {}
        every = self.config.train.log_every
        if every and step % every == 0 and "loss" in logs:
            epoch_start = self.counter.epoch * self.counter.steps_per_epoch
            n = step - epoch_start
            running = float(logs["loss"])
            last_step, last_running, last_time = self._last
            m = last_step - epoch_start
            interval = (n * running - m * last_running) / max(n - m, 1)
            now = time.time()
            images_per_s = (step - last_step) * self.global_batch / max(now - last_time, 1e-9)
            self._last = (step, running, now)
            self.history.append((step, interval))
            lr = self._lr()
            with self.writer.as_default():
                tf.summary.scalar("train/loss", interval, step=step)
                for i in range(1, 5):
                    if f"loss_q{i}" in logs:
                        tf.summary.scalar(f"train/loss_by_t/q{i}", float(logs[f"loss_q{i}"]), step=step)
                tf.summary.scalar("train/learning_rate", lr, step=step)
                tf.summary.scalar("train/images_per_second", images_per_s, step=step)
            if self.progbar is None and self.chief:
                logging.info("step %d/%s loss %.5f lr %.3g %.1f images/s", step,
                             self.total_steps, interval, lr, images_per_s)
        if self.progbar is not None:
            self.progbar.update(step, [("loss", float(logs.get("loss", np.nan)))])
        every = self.config.train.sample_every
        if every and step % every == 0 and self.chief:
            self.write_samples(step)

    def on_epoch_end(self, epoch, logs=None):
        val = {k: v for k, v in (logs or {}).items() if k.startswith("val_")}
        if val:
            with self.writer.as_default():
                for k, v in val.items():
                    tf.summary.scalar(f"eval/{k[4:]}", float(v), step=self.counter.step)
        self.writer.flush()

    def write_samples(self, step):
        model = self.model
        num = self.config.train.num_sample_images
        if len(model.image_shape or ()) != 3:
            return
        try:
            images = model.generate(
                num,
                labels=sample_labels(self.config, num),
                text=builders.sample_prompts(self.config, num),
                sampler=self.config.sample.sampler,
                num_steps=self.config.sample.num_steps,
                guidance_scale=self.config.sample.guidance_scale,
                seed=self.config.sample.seed,
                verbose=0,
            )
        except Exception as e:  # Monitoring must not kill a training run.
            logging.warning("Sampling for TensorBoard failed at step %d: %s", step, e)
            return
        columns = self.config.model.num_classes or None
        with self.writer.as_default():
            tf.summary.image("samples", image_grid(images, columns)[None], step=step)

    def on_train_end(self, logs=None):
        self.writer.flush()
