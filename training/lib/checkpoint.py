"""Checkpoints of the whole training state, atomic, keeping the last K.

A checkpoint holds every model variable (weights and the random seed
generators' states), every optimizer variable (iterations, moments, EMA
weights) and the global step, which is also the data position: the input
pipeline is a deterministic stream that a resumed run skips to that step.

`tf.train.CheckpointManager` writes the checkpoint's files first and only
then rewrites the `checkpoint` index file (atomically, by rename), so a run
killed while writing never takes a partly written checkpoint as the latest.

Under MultiWorkerMirroredStrategy every worker saves (as TensorFlow requires);
the chief into the workdir, the others into a scratch directory they delete.
"""

import os
import shutil

import tensorflow as tf


def _variables(variables):
    # Keyed by creation order, which is deterministic (paths are not: Keras
    # uniquifies layer names within a process). Shapes are checked on restore.
    return {f"v{i:04d}": v for i, v in enumerate(variables)}


class Checkpointer:
    """Saves and restores `(model, optimizer, step)`.

    Args:
        directory: the checkpoint directory (the workdir's `checkpoints/`).
        model: a built Keras model.
        optimizer: its built optimizer.
        keep: how many checkpoints to keep.
        chief: whether this process is the chief (writes to `directory`).
        worker_id: this worker's index (for the scratch directory).
    """

    def __init__(self, directory, model, optimizer, keep=3, chief=True, worker_id=0):
        self.directory = directory
        self.chief = chief
        self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        self.checkpoint = tf.train.Checkpoint(
            step=self.step,
            model=_variables(model.variables),
            optimizer=_variables(optimizer.variables),
        )
        write_dir = directory if chief else os.path.join(
            os.path.dirname(directory.rstrip("/")), f".worker_{worker_id}_tmp"
        )
        self.write_dir = write_dir
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, write_dir, max_to_keep=keep, step_counter=self.step
        )

    @property
    def latest(self):
        return tf.train.latest_checkpoint(self.directory)

    def restore(self, path=None):
        """Restores the latest checkpoint (or `path`); returns its step (0 if none)."""
        path = path or self.latest
        if path is None:
            return 0
        self.checkpoint.restore(path).assert_existing_objects_matched()
        return int(self.step.numpy())

    def save(self, step):
        self.step.assign(step)
        path = self.manager.save(checkpoint_number=step)
        if not self.chief:
            shutil.rmtree(self.write_dir, ignore_errors=True)
        return path
