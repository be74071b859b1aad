"""Train, evaluate, sample from and export diffusion models.

    python -m training.train --config=training/configs/mnist.py --workdir=/tmp/mnist
    python -m training.train --workdir=/tmp/mnist            # resume after a crash
    python -m training.train --workdir=/tmp/mnist --config.train.num_steps=3000
    python -m training.train --workdir=/tmp/mnist --mode=sample
    python -m training.train --config=training/configs/mnist.py \
        --config.optim.lr=5e-4 --workdir=/tmp/mnist2 --strategy=mirrored

Modes (the work itself is `training.lib.experiment.Experiment`):
    train   trains from the newest good checkpoint in `workdir/checkpoints`
            (or from scratch), writing checkpoints every
            `train.checkpoint_every` steps (keeping `train.keep_checkpoints`)
            and TensorBoard logs to `workdir/tensorboard`. A run killed at any
            point resumes from the last checkpoint with `--workdir` alone (the
            config is read back from `workdir/config.json`); a damaged
            checkpoint is skipped with a warning.
    eval    the loss on a fixed grid of times and noise (`eval.num_batches`
            batches), FID and KID of `eval.num_samples` samples (features
            from `eval.feature_extractor`: "inception", a saved Keras
            classifier's path, or "identity") and the negative ELBO in bits
            per dimension (`eval.bpd_num_batches` batches), into
            `workdir/eval/metrics.json` and TensorBoard (`eval/*`).
    sample  `sample.num_images` samples into `workdir/samples/` (.npz, .png).
    export  a SavedModel (sampler `export.sampler`) into
            `workdir/export/<step>`, a TF Serving model version folder.

`--workdir` alone with `--config.KEY=VALUE` overrides keys of the workdir's
config that a resumed run may change (`training.lib.config.CHANGEABLE`:
train.num_steps, train.log_every, train.sample_every, train.num_sample_images,
train.keep_checkpoints, sample.*, eval.*, export.*, distribution.*); any other
key is an error naming it (or pass --allow_config_change).

Strategies: default (one device), mirrored (all GPUs, or
`distribution.num_cpu_replicas` logical CPU devices), multi_worker
(TF_CONFIG), tpu. Every bad input (unknown config key, a workdir holding a
different config or not writable, a missing dataset, a batch size not
divisible by the replicas) is an error at start, before any compute.

TensorFlow's start-up logs (C++ INFO/WARNING lines, oneDNN and CUDA notices)
are hidden; `--verbose_logs` shows them.
"""

import os
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

# Without --config, the override flags (--config.train.num_steps=...) are
# parsed against the schema of every key, then applied to the workdir's config.
_SCHEMA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "base.py")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    "config", _SCHEMA, "Training config file (training/configs/*.py); overrides as "
    "--config.optim.lr=1e-3. Optional when the workdir holds a config.", lock_config=True
)
flags.DEFINE_string("workdir", None, "Directory of checkpoints, logs, samples.")
flags.DEFINE_enum("mode", "train", ["train", "eval", "sample", "export"], "What to do.")
flags.DEFINE_enum("strategy", "default", ["default", "mirrored", "multi_worker", "tpu"],
                  "tf.distribute strategy.")
flags.DEFINE_bool("allow_config_change", False,
                  "Continue a workdir whose config differs from --config.")
flags.DEFINE_bool("verbose_logs", False,
                  "Show TensorFlow's C++, XLA, CUDA and oneDNN logs (hidden by default).")
flags.mark_flag_as_required("workdir")


def main(argv):
    del argv
    from training.lib import logs

    logs.quiet_logs(FLAGS.verbose_logs)  # Before TensorFlow is imported.
    from training.lib.config import ConfigError
    from training.lib.experiment import Experiment
    from training.lib.experiment import run

    given = FLAGS["config"].present
    try:
        experiment = Experiment.create(
            FLAGS.config if given else None, FLAGS.workdir, FLAGS.mode, FLAGS.strategy,
            FLAGS.allow_config_change,
            overrides=None if given else config_flags.get_override_values(FLAGS["config"]),
        )
    except (ConfigError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")
    except Exception as e:
        if type(e).__name__ == "DatasetUnavailableError":
            sys.exit(f"error: {e}")
        raise
    from training.lib.checkpoint import CheckpointError

    try:
        run(experiment, FLAGS.mode)
    except (CheckpointError, FileNotFoundError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    app.run(main)
