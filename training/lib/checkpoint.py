"""Checkpoints of the whole training state, atomic, keeping the last K.

A checkpoint holds every model variable (weights and the random seed
generators' states), every optimizer variable (iterations, moments, EMA
weights) and the global step, which is also the data position: the input
pipeline is a deterministic stream that a resumed run skips to that step.

`tf.train.CheckpointManager` writes the checkpoint's files first (into a
`ckpt-N_temp/` folder, then merged into `ckpt-N.index` and
`ckpt-N.data-*`) and only then rewrites the `checkpoint` state file
(atomically, by rename), so a run killed while writing never takes a partly
written checkpoint as the latest.

Damage after the fact (a truncated or deleted file, flipped bytes: TensorFlow
checks each tensor's CRC32C when it reads it) is caught on restore: the
newest checkpoint that restores completely is used, with a warning naming
each damaged one; only when none does is it an error. `ckpt-N_temp/` folders
left by a run that died while writing (a full disk, a kill) are removed at
start.

Under MultiWorkerMirroredStrategy every worker saves (as TensorFlow requires);
the chief into the workdir, the others into a scratch directory they delete.
"""

import glob
import os
import re
import shutil

import tensorflow as tf
from absl import logging

_CKPT = re.compile(r"^ckpt-(\d+)$")


class CheckpointError(RuntimeError):
    """No checkpoint of the workdir can be restored."""


def _variables(variables):
    # Keyed by creation order, which is deterministic (paths are not: Keras
    # uniquifies layer names within a process). Shapes are checked on restore.
    return {f"v{i:04d}": v for i, v in enumerate(variables)}


def _step_of(path):
    match = _CKPT.match(os.path.basename(path))
    return int(match.group(1)) if match else None


def candidates(directory):
    """Checkpoint prefixes in `directory`, newest (highest step) first.

    Those the `checkpoint` state file lists and those whose `.index` file is
    on disk (the state file may itself be damaged or stale).
    """
    paths = set()
    try:
        state = tf.train.get_checkpoint_state(directory)
    except Exception as e:  # A damaged state file: fall back to the files.
        logging.warning("The checkpoint state file in %s is unreadable (%s); using the "
                        "checkpoint files found there.", directory, _short(e))
        state = None
    if state is not None:
        for path in state.all_model_checkpoint_paths:
            if not os.path.isabs(path):
                path = os.path.join(directory, path)
            paths.add(os.path.join(directory, os.path.basename(path)))
    for index in glob.glob(os.path.join(glob.escape(directory), "ckpt-*.index")):
        paths.add(index[: -len(".index")])
    paths = [p for p in paths if _step_of(p) is not None]
    return sorted(paths, key=_step_of, reverse=True)


def remove_temp_folders(directory):
    """Deletes the `ckpt-N_temp/` folders of interrupted writes; returns them."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(directory), "*_temp")):
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    if removed:
        logging.info("Removed %d unfinished checkpoint write(s): %s", len(removed),
                     ", ".join(os.path.basename(p) for p in removed))
    return removed


def _short(error, limit=300):
    text = " ".join(str(error).split())
    text = f"{type(error).__name__}: {text}"
    return text if len(text) <= limit else text[:limit] + "..."


class Checkpointer:
    """Saves and restores `(model, optimizer, step)`.

    Args:
        directory: the checkpoint directory (the workdir's `checkpoints/`).
        model: a built Keras model.
        optimizer: its built optimizer.
        keep: how many checkpoints to keep.
        chief: whether this process is the chief (writes to `directory`).
        worker_id: this worker's index (for the scratch directory).

    Example:

    >>> ckpt = Checkpointer("/tmp/run/checkpoints", model, optimizer)
    >>> step = ckpt.restore()  # 0 when there is no checkpoint yet
    >>> ckpt.save(step + 100)
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
        if chief and os.path.isdir(directory):
            remove_temp_folders(directory)
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, write_dir, max_to_keep=keep, step_counter=self.step
        )
        # Filled by `restore`: the damaged checkpoints skipped, (path, reason).
        self.skipped = []

    @property
    def latest(self):
        """The newest checkpoint's prefix on disk (damaged or not), or None."""
        paths = candidates(self.directory) if os.path.isdir(self.directory) else []
        return paths[0] if paths else None

    def _restore_one(self, path):
        self.checkpoint.restore(path).assert_existing_objects_matched()
        step = int(self.step.numpy())
        if step != _step_of(path):
            raise ValueError(f"the checkpoint holds step {step}, its name says {_step_of(path)}")
        return step

    def restore(self, path=None):
        """Restores the newest good checkpoint (or `path`); returns its step.

        Returns 0 when the directory holds no checkpoint. A checkpoint that
        fails to restore (damaged files) is skipped with a warning naming
        it, and the next older one is tried. Raises `CheckpointError`
        naming the directory when checkpoints exist and none restores.
        """
        if path is not None:
            return self._restore_one(path)
        paths = candidates(self.directory) if os.path.isdir(self.directory) else []
        self.skipped = []
        for path in paths:
            try:
                step = self._restore_one(path)
            except Exception as e:  # Damaged files raise many kinds of errors.
                self.skipped.append((path, _short(e)))
                logging.warning("Checkpoint %s is damaged and is skipped: %s", path, _short(e))
                continue
            if self.skipped:
                logging.warning(
                    "Resuming from %s, the newest good checkpoint (skipped: %s).", path,
                    ", ".join(os.path.basename(p) for p, _ in self.skipped),
                )
            return step
        if paths:
            details = "; ".join(f"{os.path.basename(p)}: {r}" for p, r in self.skipped)
            raise CheckpointError(
                f"No checkpoint in {self.directory!r} can be restored ({details}). Move "
                "that folder away to train from scratch, or use another --workdir."
            )
        return 0

    def save(self, step):
        self.step.assign(step)
        path = self.manager.save(checkpoint_number=step)
        if not self.chief:
            shutil.rmtree(self.write_dir, ignore_errors=True)
        return path
