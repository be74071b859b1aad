"""Train, evaluate, sample from and export diffusion models.

    python -m training.train --config=training/configs/mnist.py --workdir=/tmp/mnist
    python -m training.train --workdir=/tmp/mnist            # resume after a crash
    python -m training.train --workdir=/tmp/mnist --mode=sample
    python -m training.train --config=training/configs/mnist.py \
        --config.optim.lr=5e-4 --workdir=/tmp/mnist2 --strategy=mirrored

Modes:
    train   trains from the latest checkpoint in `workdir/checkpoints` (or
            from scratch), writing checkpoints every `train.checkpoint_every`
            steps (keeping `train.keep_checkpoints`) and TensorBoard logs to
            `workdir/tensorboard`. A run killed at any point resumes from the
            last checkpoint with `--workdir` alone (the config is read back
            from `workdir/config.json`).
    eval    the loss on a fixed grid of times and noise (`eval.num_batches`
            batches), FID and KID of `eval.num_samples` samples (features
            from `eval.feature_extractor`: "inception", a saved Keras
            classifier's path, or "identity") and the negative ELBO in bits
            per dimension (`eval.bpd_num_batches` batches), into
            `workdir/eval/metrics.json` and TensorBoard (`eval/*`).
    sample  `sample.num_images` samples into `workdir/samples/` (.npz, .png).
    export  a SavedModel into `workdir/export/` (keras_diffusion.export).

Strategies: default (one device), mirrored (all GPUs, or
`distribution.num_cpu_replicas` logical CPU devices), multi_worker
(TF_CONFIG), tpu. Every bad input (unknown config key, a workdir holding a
different config, a missing dataset, a batch size not divisible by the
replicas) is an error at start, before any compute.
"""

import json
import os
import sys

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", None, "Training config file (training/configs/*.py); overrides as "
    "--config.optim.lr=1e-3. Optional when the workdir holds a config.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory of checkpoints, logs, samples.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample", "export"], "What to do.")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker", "tpu"],
                  "tf.distribute strategy.")
flags.DEFINE_bool("allow_config_change", False,
                  "Continue a workdir whose config differs from --config.")
flags.mark_flag_as_required("workdir")


def setup(config, workdir, mode, strategy_name, allow_change=False):
    """Checks everything cheap, then creates the strategy. Returns (config, strategy)."""
    from training.lib import builders
    from training.lib import config as config_lib
    from training.lib import strategy as strategy_lib

    config, _ = config_lib.resolve(config, workdir, allow_change=allow_change or mode != "train")
    strategy = strategy_lib.make_strategy(strategy_name, config)
    config_lib.check_batch_size(config.data.batch_size, strategy.num_replicas_in_sync)
    if mode in ("train", "eval"):
        builders.check_data_available(config)
    if mode == "eval":
        from training.lib import evaluation

        evaluation.check_feature_extractor(config)
    return config, strategy


def _compile(model, optimizer, config, strategy_name):
    from training.lib import strategy as strategy_lib

    jit = strategy_lib.choose_jit_compile(config.train.jit_compile, strategy_name)
    model.compile(optimizer=optimizer, jit_compile=jit,
                  steps_per_execution=config.train.steps_per_execution)
    optimizer.build(model.trainable_variables)
    return jit


def build_state(config, strategy, workdir, strategy_name):
    """Model, optimizer and checkpointer under the strategy's scope."""
    import keras

    from training.lib import builders
    from training.lib import checkpoint as checkpoint_lib
    from training.lib import strategy as strategy_lib

    if config.train.mixed_precision:
        keras.mixed_precision.set_global_policy("mixed_float16")
    keras.utils.set_random_seed(config.seed)
    with strategy.scope():
        model = builders.build_model(config)
        optimizer = builders.build_optimizer(config)
        jit = _compile(model, optimizer, config, strategy_name)
    checkpointer = checkpoint_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), model, optimizer,
        keep=config.train.keep_checkpoints, chief=strategy_lib.is_chief(strategy),
        worker_id=strategy_lib.worker_id(strategy),
    )
    return model, optimizer, checkpointer, jit


def train(config, strategy, workdir, strategy_name="default"):
    """Trains to `train.num_steps`, resuming from the latest checkpoint.

    Returns the model and the TensorBoard monitor (its `history` holds the
    logged (step, loss) pairs).
    """
    import tensorflow as tf

    from keras_diffusion import data as data_lib
    from training.lib import builders
    from training.lib import config as config_lib
    from training.lib import monitor as monitor_lib
    from training.lib import strategy as strategy_lib

    chief = strategy_lib.is_chief(strategy)
    if chief:
        config_lib.write(config, workdir)
    if config.train.deterministic:
        tf.config.experimental.enable_op_determinism()
    model, optimizer, checkpointer, jit = build_state(config, strategy, workdir, strategy_name)
    start = checkpointer.restore()
    total = config.train.num_steps
    chunk = config.train.checkpoint_every
    if start % chunk:
        raise RuntimeError(f"Checkpoint step {start} is not a multiple of train.checkpoint_every={chunk}")
    logging.info("Training %s from step %d to %d on %d replica(s), XLA %s.",
                 config.data.name, start, total, strategy.num_replicas_in_sync, jit)
    if start >= total:
        logging.info("Already trained to step %d.", start)
        return model, None
    dataset = data_lib.distribute_dataset(
        strategy, builders.source_fn(config), config.data.batch_size,
        start_step=start, **builders.pipeline_kwargs(config),
    )
    counter = monitor_lib.StepCounter(chunk)
    monitor = monitor_lib.TensorBoardMonitor(
        os.path.join(workdir, "tensorboard"), config, counter, config.data.batch_size,
        chief=chief, total_steps=total, start_step=start,
    )
    callbacks = [counter, monitor, monitor_lib.CheckpointCallback(checkpointer, counter)]
    # Under a strategy Keras' fit peeks one batch from the training iterator
    # to build the model symbolically: that batch is lost (the data position
    # would drift on each resume) and the peek fails under
    # MultiWorkerMirroredStrategy for dict batches. The model, its metrics and
    # the optimizer are built already, so skip it.
    model._maybe_symbolic_build = lambda *args, **kwargs: None
    # Metric results are already reduced over replicas (their variables are
    # synchronized): take the first replica's.
    model.distribute_reduction_method = "first"
    if isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy):
        # Keras 3.15 reduces the step's outputs over workers with
        # strategy.reduce("MEAN", v, axis=0), which fails on scalars: give
        # them a leading axis of 1 (the mean over it and the workers is the
        # value, the metrics being synchronized already).
        step = model.train_step
        model.train_step = lambda data: {
            k: tf.reshape(v, [1]) for k, v in step(data).items()
        }
    model.fit(dataset, epochs=total // chunk, steps_per_epoch=chunk, initial_epoch=start // chunk,
              callbacks=callbacks, verbose=0, shuffle=False)
    return model, monitor


def _restore_for_inference(config, strategy, workdir, strategy_name):
    model, optimizer, checkpointer, _ = build_state(config, strategy, workdir, strategy_name)
    step = checkpointer.restore()
    if step == 0:
        raise FileNotFoundError(
            f"No checkpoint in {os.path.join(workdir, 'checkpoints')!r}: train first "
            "(--mode=train)."
        )
    return model, step


def evaluate(config, strategy, workdir, strategy_name="default"):
    """Loss, FID/KID and bits per dimension of the latest checkpoint (EMA weights).

    Writes `workdir/eval/metrics.json` (and `metrics_step{N}.json`) and the
    `eval/*` scalars to TensorBoard. Returns the metrics dict.
    """
    import tensorflow as tf

    from training.lib import evaluation
    from training.lib import strategy as strategy_lib

    e = config.eval
    # The feature extractor first: InceptionV3's weights are fetched now, so
    # an offline machine fails before any sampling.
    extractor = evaluation.build_feature_extractor(config) if e.feature_extractor else None
    model, step = _restore_for_inference(config, strategy, workdir, strategy_name)
    ds = evaluation._eval_batches(config, e.batch_size, drop_remainder=True).take(e.num_batches)
    metrics = {}
    with model.ema_weights():
        if e.num_batches:
            metrics = model.evaluate(ds, return_dict=True, verbose=0)
            metrics = {k: float(v) for k, v in metrics.items()}
        if extractor is not None:
            metrics.update(evaluation.sample_quality(model, config, workdir, extractor))
        if e.bpd_num_batches:
            bpd = evaluation.bits_per_dim(model, config)
            if bpd is not None:
                metrics["bpd"] = bpd
    if strategy_lib.is_chief(strategy):
        out = os.path.join(workdir, "eval")
        os.makedirs(out, exist_ok=True)
        record = {"step": step, "feature_extractor": e.feature_extractor, **metrics}
        for name in ("metrics.json", f"metrics_step{step}.json"):
            with open(os.path.join(out, name), "w") as f:
                json.dump(record, f, indent=2)
        with tf.summary.create_file_writer(os.path.join(workdir, "tensorboard")).as_default():
            for k, v in metrics.items():
                tf.summary.scalar(f"eval/{k}", v, step=step)
    logging.info("Eval at step %d: %s", step, metrics)
    return metrics


def sample(config, strategy, workdir, strategy_name="default"):
    import numpy as np

    from training.lib import monitor as monitor_lib

    model, step = _restore_for_inference(config, strategy, workdir, strategy_name)
    s = config.sample
    images = model.generate(
        s.num_images, labels=monitor_lib.sample_labels(config, s.num_images),
        sampler=s.sampler, num_steps=s.num_steps, guidance_scale=s.guidance_scale,
        seed=s.seed, batch_size=s.batch_size, use_ema=s.use_ema, verbose=0,
    )
    out = os.path.join(workdir, "samples")
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, f"samples_step{step}.npz")
    np.savez(path, samples=images)
    if images.ndim == 4:
        import tensorflow as tf

        grid = monitor_lib.image_grid(images, config.model.num_classes or None)
        tf.io.write_file(os.path.join(out, f"samples_step{step}.png"), tf.io.encode_png(grid))
    logging.info("Wrote %d samples to %s", len(images), out)
    return images


def export(config, strategy, workdir, strategy_name="default"):
    import keras_diffusion

    model, step = _restore_for_inference(config, strategy, workdir, strategy_name)
    path = os.path.join(workdir, "export", str(step))
    e = config.export
    try:
        export_lib = keras_diffusion.export
    except ImportError:
        export_lib = None
    fn = getattr(export_lib, "export_saved_model", None) or getattr(export_lib, "export", None)
    if callable(fn):
        # The sampler loop, guidance and EMA weights go into the SavedModel;
        # num_steps and guidance_scale are its inputs.
        fn(model, path, sampler=e.sampler, overwrite=True)
    else:
        logging.warning("keras_diffusion.export is not available: exporting the "
                        "denoiser's forward pass only with model.export().")
        with model.ema_weights():
            model.export(path)
    logging.info("Exported step %d to %s", step, path)
    return path


MODES = {"train": train, "eval": evaluate, "sample": sample, "export": export}


def main(argv):
    del argv
    workdir = FLAGS.workdir
    from training.lib.config import ConfigError

    try:
        config, strategy = setup(FLAGS.config, workdir, FLAGS.mode, FLAGS.strategy,
                                 FLAGS.allow_config_change)
    except (ConfigError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    except Exception as e:
        if type(e).__name__ == "DatasetUnavailableError":
            sys.exit(f"error: {e}")
        raise
    MODES[FLAGS.mode](config, strategy, workdir, FLAGS.strategy)


if __name__ == "__main__":
    app.run(main)
