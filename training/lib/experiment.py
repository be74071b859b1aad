"""One training run's workdir: train, evaluate, sample from and export it."""

import json
import os
import sys
import time

from absl import logging

from training.lib import builders
from training.lib import config as config_lib
from training.lib import strategy as strategy_lib


def check_writable(workdir):
    """Raises `ConfigError` unless files can be written into `workdir` (created if missing).

    Each output folder that already exists (checkpoints, eval, samples,
    export, tensorboard) is checked too, so that a read-only workdir fails
    before any compute, not after the work is done.
    """
    def probe(folder):
        path = os.path.join(folder, f".write_test_{os.getpid()}")
        with open(path, "w") as f:
            f.write("ok")
        os.remove(path)

    folder = workdir
    try:
        os.makedirs(workdir, exist_ok=True)
        probe(workdir)
        for name in ("checkpoints", "eval", "samples", "export", "tensorboard"):
            folder = os.path.join(workdir, name)
            if os.path.isdir(folder):
                probe(folder)
    except OSError as e:
        raise config_lib.ConfigError(
            f"workdir={workdir!r} is not writable: cannot write into {folder!r} "
            f"({e.strerror or e}). Pass a --workdir this process can write to."
        ) from e


def _work_around_keras_multi_worker(model):
    """The one workaround of Keras internals, needed under MultiWorkerMirroredStrategy only.

    Keras 3.15's TensorFlow trainer has no public hook for either problem:

    1. `fit` first peeks a batch to build the model symbolically
       (`Trainer._maybe_symbolic_build`) and reduces it with
       `strategy.reduce("MEAN", batch)`, which fails on a dict of per-replica
       tensors ("Attempt to convert a value ({'images': PerReplica..."). The
       model, its metrics and its optimizer are built already (`build`), so
       the peek has nothing to do: skip it. (Under the other strategies the
       peek works, and its batch is not lost: fit restarts the iterator.)
    2. The train function reduces the step's outputs over workers with
       `strategy.reduce("MEAN", value, axis=0)` whatever
       `distribute_reduction_method` says, which fails on scalar metrics
       ("Invalid reduction dimension 0 for input with 0 dimensions",
       tensorflow/tensorflow#72388). Give them a leading axis of 1: the mean
       over it and the workers is the value (the metrics are synchronized).

    The model class is where (2) belongs: `DiffusionModel.train_step` could
    return its metric results with shape `[1]` when
    `tf.distribute.get_strategy()` is a MultiWorkerMirroredStrategy, and a
    model that is built before `fit` could say so to Keras; then this
    function goes away.
    """
    import tensorflow as tf

    model._maybe_symbolic_build = lambda *args, **kwargs: None
    step = model.train_step
    model.train_step = lambda data: {k: tf.reshape(v, [1]) for k, v in step(data).items()}


class Experiment:
    """The training run of one config in one workdir.

    Holds the strategy and, once `build` (or a mode) has run, the model, the
    optimizer and the checkpointer. Each mode restores the newest good
    checkpoint of `workdir/checkpoints`.

    Args:
        config: the resolved config (`training.lib.config.resolve`).
        workdir: the run's directory.
        strategy: the `tf.distribute.Strategy` (default: the default one).
        strategy_name: its `--strategy` name, for the XLA choice.

    Example:

    >>> experiment = Experiment.create(config, "/tmp/toy")  # checks first
    >>> experiment.train()
    >>> images = experiment.sample()
    >>> path = experiment.export()  # /tmp/toy/export/<step>
    """

    def __init__(self, config, workdir, strategy=None, strategy_name="default"):
        if strategy is None:
            import tensorflow as tf

            strategy = tf.distribute.get_strategy()
        self.config = config
        self.workdir = workdir
        self.strategy = strategy
        self.strategy_name = strategy_name
        self.chief = strategy_lib.is_chief(strategy)
        self.model = None
        self.optimizer = None
        self.checkpointer = None
        self.jit_compile = None
        self.step = None  # the step restored by the last mode

    @classmethod
    def create(cls, config, workdir, mode="train", strategy_name="default",
               allow_change=False, overrides=None):
        """Checks everything cheap, then creates the strategy and the experiment.

        `config` None reads the workdir's config (with `overrides`, the
        `--config.KEY=VALUE` values); see `training.lib.config.resolve`.
        Raises `ConfigError` (config, workdir not writable),
        `FileNotFoundError` (data, feature extractor) or the data loaders'
        errors, before any compute.
        """
        config, _ = config_lib.resolve(
            config, workdir, allow_change=allow_change or (mode != "train" and config is not None),
            overrides=overrides,
        )
        check_writable(workdir)
        strategy = strategy_lib.make_strategy(strategy_name, config)
        config_lib.check_batch_size(config.data.batch_size, strategy.num_replicas_in_sync)
        if mode in ("train", "eval"):
            builders.check_data_available(config)
        if mode == "eval":
            from training.lib import evaluation

            evaluation.check_feature_extractor(config)
        return cls(config, workdir, strategy, strategy_name)

    # --- state ----------------------------------------------------------
    def build(self):
        """Builds the model, optimizer and checkpointer under the strategy's scope."""
        if self.model is not None:
            return
        import keras

        from training.lib import checkpoint as checkpoint_lib

        config = self.config
        if config.train.mixed_precision:
            keras.mixed_precision.set_global_policy("mixed_float16")
        keras.utils.set_random_seed(config.seed)
        with self.strategy.scope():
            self.model = builders.build_model(config)
            self.optimizer = builders.build_optimizer(config)
            self.jit_compile = strategy_lib.choose_jit_compile(
                config.train.jit_compile, self.strategy_name
            )
            self.model.compile(optimizer=self.optimizer, jit_compile=self.jit_compile,
                               steps_per_execution=config.train.steps_per_execution)
            self.optimizer.build(self.model.trainable_variables)
        self.checkpointer = checkpoint_lib.Checkpointer(
            os.path.join(self.workdir, "checkpoints"), self.model, self.optimizer,
            keep=config.train.keep_checkpoints, chief=self.chief,
            worker_id=strategy_lib.worker_id(self.strategy),
        )

    def restore(self):
        """Builds, then restores the newest good checkpoint; returns its step (0: none)."""
        self.build()
        self.step = self.checkpointer.restore()
        return self.step

    def _restore_for_inference(self):
        if self.restore() == 0:
            raise FileNotFoundError(
                f"No checkpoint in {os.path.join(self.workdir, 'checkpoints')!r}: train "
                "first (--mode=train)."
            )
        return self.step

    # --- modes ----------------------------------------------------------
    def train(self):
        """Trains to `train.num_steps`, resuming from the newest good checkpoint.

        Returns the TensorBoard monitor (its `history` holds the logged
        (step, loss) pairs), or None when the run was already finished.
        """
        import tensorflow as tf

        from keras_diffusion import data as data_lib
        from training.lib import monitor as monitor_lib

        config = self.config
        if self.chief:
            config_lib.write(config, self.workdir)
        if config.train.deterministic:
            tf.config.experimental.enable_op_determinism()
        start = self.restore()
        total = config.train.num_steps
        chunk = config.train.checkpoint_every
        if start % chunk:
            raise RuntimeError(
                f"Checkpoint step {start} is not a multiple of "
                f"train.checkpoint_every={chunk}"
            )
        logging.info("Training %s from step %d to %d on %d replica(s), XLA %s.",
                     config.data.name, start, total, self.strategy.num_replicas_in_sync,
                     self.jit_compile)
        if start >= total:
            logging.info("Already trained to step %d.", start)
            return None
        dataset = data_lib.distribute_dataset(
            self.strategy, builders.source_fn(config), config.data.batch_size,
            start_step=start, **builders.pipeline_kwargs(config),
        )
        counter = monitor_lib.StepCounter(chunk)
        monitor = monitor_lib.TensorBoardMonitor(
            os.path.join(self.workdir, "tensorboard"), config, counter,
            config.data.batch_size, chief=self.chief, total_steps=total, start_step=start,
        )
        callbacks = [counter, monitor,
                     monitor_lib.CheckpointCallback(self.checkpointer, counter)]
        if isinstance(self.strategy, tf.distribute.MultiWorkerMirroredStrategy):
            _work_around_keras_multi_worker(self.model)
        # One fit "epoch" is one checkpoint interval; the dataset repeats.
        self.model.fit(dataset, epochs=total // chunk, steps_per_epoch=chunk,
                       initial_epoch=start // chunk, callbacks=callbacks, verbose=0,
                       shuffle=False)
        self.step = total
        if self.chief:
            logging.info("Trained to step %d: checkpoints in %s, TensorBoard logs in %s.",
                         total, self.checkpointer.directory,
                         os.path.join(self.workdir, "tensorboard"))
        return monitor

    def evaluate(self):
        """Loss, FID/KID and bits per dimension of the newest checkpoint (EMA weights).

        Logs what each part computes, its size and progress. Writes
        `workdir/eval/metrics.json` (and `metrics_step{N}.json`) and the
        `eval/*` scalars to TensorBoard. Returns the metrics dict.
        """
        import tensorflow as tf

        from training.lib import evaluation

        config, e = self.config, self.config.eval
        # The feature extractor first: InceptionV3's weights are fetched now,
        # so an offline machine fails before any sampling.
        extractor = evaluation.build_feature_extractor(config) if e.feature_extractor else None
        step = self._restore_for_inference()
        parts = [p for p, on in (("loss", e.num_batches), ("FID/KID", extractor is not None),
                                 ("bits/dim", e.bpd_num_batches)) if on]
        logging.info("Evaluating step %d (EMA weights): %s.", step, ", ".join(parts) or "nothing")
        metrics = {}
        with self.model.ema_weights():
            if e.num_batches:
                start = time.time()
                logging.info("loss: the training loss on a fixed grid of %s times and fixed "
                             "noise, over %d batches of %d.",
                             getattr(self.model, "num_eval_times", "a"),
                             e.num_batches, e.batch_size)
                # Repeated and cut by `steps`: evaluate never runs out of data.
                ds = evaluation._eval_batches(config, e.batch_size, drop_remainder=True)
                metrics = self.model.evaluate(ds.repeat(), steps=e.num_batches,
                                              return_dict=True,
                                              verbose=1 if sys.stdout.isatty() else 0)
                metrics = {k: float(v) for k, v in metrics.items()}
                logging.info("loss: %.5f (%.0f s)", metrics.get("loss", float("nan")),
                             time.time() - start)
            if extractor is not None:
                metrics.update(evaluation.sample_quality(self.model, config, self.workdir,
                                                         extractor))
            if e.bpd_num_batches:
                bpd = evaluation.bits_per_dim(self.model, config)
                if bpd is not None:
                    metrics["bpd"] = bpd
        if self.chief:
            out = os.path.join(self.workdir, "eval")
            os.makedirs(out, exist_ok=True)
            record = {"step": step, "feature_extractor": e.feature_extractor, **metrics}
            for name in ("metrics.json", f"metrics_step{step}.json"):
                with open(os.path.join(out, name), "w") as f:
                    json.dump(record, f, indent=2)
            with tf.summary.create_file_writer(
                os.path.join(self.workdir, "tensorboard")
            ).as_default():
                for k, v in metrics.items():
                    tf.summary.scalar(f"eval/{k}", v, step=step)
            logging.info("Eval at step %d: %s -> %s", step, metrics,
                         os.path.join(out, "metrics.json"))
        return metrics

    def sample(self):
        """`sample.num_images` samples into `workdir/samples/` (.npz, and .png for images)."""
        import numpy as np

        from training.lib import monitor as monitor_lib

        config, s = self.config, self.config.sample
        step = self._restore_for_inference()
        logging.info("Sampling %d images at step %d (%s, %d steps, guidance %s).",
                     s.num_images, step, s.sampler, s.num_steps, s.guidance_scale)
        images = self.model.generate(
            s.num_images, labels=monitor_lib.sample_labels(config, s.num_images),
            text=builders.sample_prompts(config, s.num_images), sampler=s.sampler, num_steps=s.num_steps, guidance_scale=s.guidance_scale,
            seed=s.seed, batch_size=s.batch_size, use_ema=s.use_ema, verbose=0,
        )
        out = os.path.join(self.workdir, "samples")
        os.makedirs(out, exist_ok=True)
        path = os.path.join(out, f"samples_step{step}.npz")
        np.savez(path, samples=images)
        written = [path]
        if images.ndim == 4:
            import tensorflow as tf

            grid = monitor_lib.image_grid(images, config.model.num_classes or None)
            png = os.path.join(out, f"samples_step{step}.png")
            tf.io.write_file(png, tf.io.encode_png(grid))
            written.append(png)
        logging.info("Wrote %d samples to %s%s", len(images), " and ".join(written),
                     " (one column per class)" if config.model.num_classes and
                     images.ndim == 4 else "")
        return images

    def export(self):
        """A SavedModel of the newest checkpoint into `workdir/export/<step>`.

        The sampler `export.sampler` (its loop), classifier-free guidance
        and the EMA weights go into the graph; `num_steps` and
        `guidance_scale` are its inputs. `workdir/export` is a TF Serving
        model base path (one numbered version folder per export).
        """
        from keras_diffusion.export import export_saved_model

        step = self._restore_for_inference()
        sampler = self.config.export.sampler
        path = os.path.join(self.workdir, "export", str(step))
        logging.info("Exporting step %d with the %s sampler (tracing the sampler and "
                     "the network: up to a few minutes).", step, sampler)
        start = time.time()
        export_saved_model(self.model, path, sampler=sampler, overwrite=True)
        logging.info("Exported step %d to %s in %.0f s: a TF Serving model version; serve "
                     "it with --model_base_path=%s.", step, path, time.time() - start,
                     os.path.abspath(os.path.dirname(path)))
        return path


MODES = ("train", "eval", "sample", "export")


def run(experiment, mode):
    """Runs `mode` ("train", "eval", "sample" or "export") of `experiment`."""
    if mode not in MODES:
        raise ValueError(f"Unknown mode={mode!r}. Valid modes: {list(MODES)}")
    return getattr(experiment, "evaluate" if mode == "eval" else mode)()
