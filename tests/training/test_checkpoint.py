"""A damaged newest checkpoint: resume from the newest good one, with a warning;
an error naming the workdir only when none is good; leftover `_temp` folders."""

import os
import shutil

import keras
import numpy as np
from absl.testing import absltest

from keras_diffusion.testing import TestCase
from tests.training.test_loop import tiny_toy_config
from training.lib.checkpoint import CheckpointError
from training.lib.checkpoint import Checkpointer
from training.lib.experiment import Experiment


def _data(prefix):
    return prefix + ".data-00000-of-00001"


def truncate(path, size=None):
    with open(path, "r+b") as f:
        f.truncate(os.path.getsize(path) // 2 if size is None else size)


def flip_byte(path, offset=None):
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2 if offset is None else offset] ^= 0xFF
    with open(path, "wb") as f:
        f.write(bytes(data))


# Each way the issue lists to damage a checkpoint (prefix -> None).
DAMAGE = {
    "truncated data": lambda p: truncate(_data(p)),
    "truncated index": lambda p: truncate(p + ".index"),
    "empty index": lambda p: truncate(p + ".index", 0),
    "deleted data": lambda p: os.remove(_data(p)),
    "deleted index": lambda p: os.remove(p + ".index"),
    "flipped data byte": lambda p: flip_byte(_data(p)),
    "flipped index byte": lambda p: flip_byte(p + ".index"),
}


def _model():
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8), keras.layers.Dense(4)])
    optimizer = keras.optimizers.Adam(use_ema=True)
    optimizer.build(model.trainable_variables)
    return model, optimizer


class DamagedCheckpointTest(TestCase):
    def setUp(self):
        super().setUp()
        self.clean = os.path.join(self.get_temp_dir(), "clean")
        model, optimizer = _model()
        ckpt = Checkpointer(os.path.join(self.clean, "checkpoints"), model, optimizer, keep=3)
        for step in (10, 20, 30):
            model.layers[0].kernel.assign(np.full((4, 8), float(step)))
            ckpt.save(step)

    def _damaged_copy(self, name, damage):
        workdir = os.path.join(self.get_temp_dir(), name.replace(" ", "_"))
        shutil.copytree(self.clean, workdir)
        directory = os.path.join(workdir, "checkpoints")
        damage(os.path.join(directory, "ckpt-30"))
        return directory

    def test_each_damage_falls_back_to_the_newest_good_checkpoint(self):
        for name, damage in DAMAGE.items():
            directory = self._damaged_copy(name, damage)
            model, optimizer = _model()
            ckpt = Checkpointer(directory, model, optimizer)
            with self.assertLogs(level="WARNING") as logs:
                step = ckpt.restore()
            self.assertEqual(step, 20, name)
            self.assertAllClose(model.layers[0].kernel, np.full((4, 8), 20.0))
            self.assertEqual([os.path.basename(p) for p, _ in ckpt.skipped], ["ckpt-30"], name)
            self.assertTrue(any("ckpt-30" in line for line in logs.output), (name, logs.output))
            # Training on overwrites the damaged checkpoint; it restores again.
            ckpt.save(30)
            self.assertEqual(Checkpointer(directory, *_model()).restore(), 30, name)

    def test_damaged_state_file_and_temp_folders(self):
        directory = self._damaged_copy(
            "state", lambda p: open(os.path.join(os.path.dirname(p), "checkpoint"), "w").write("x{")
        )
        # A write killed by a full disk leaves a `ckpt-N_temp/` folder.
        temp = os.path.join(directory, "ckpt-40_temp")
        os.makedirs(temp)
        with open(os.path.join(temp, "part-00000-of-00001.data-00000-of-00001"), "wb") as f:
            f.write(b"\x00" * 10)
        model, optimizer = _model()
        ckpt = Checkpointer(directory, model, optimizer)
        self.assertFalse(os.path.exists(temp))
        self.assertEqual(ckpt.restore(), 30)

    def test_no_good_checkpoint_is_a_clear_error(self):
        def damage_all(prefix):
            for step in (10, 20, 30):
                truncate(_data(os.path.join(os.path.dirname(prefix), f"ckpt-{step}")))

        directory = self._damaged_copy("all", damage_all)
        ckpt = Checkpointer(directory, *_model())
        with self.assertRaisesRegex(CheckpointError, f"{directory}.*ckpt-30.*ckpt-20.*ckpt-10"):
            ckpt.restore()
        # No checkpoint at all is not an error: a new run.
        empty = os.path.join(self.get_temp_dir(), "empty", "checkpoints")
        self.assertEqual(Checkpointer(empty, *_model()).restore(), 0)

    def test_training_resumes_past_a_damaged_newest_checkpoint(self):
        workdir = self.get_temp_dir()
        experiment = Experiment.create(tiny_toy_config(20), workdir)
        experiment.train()
        truncate(_data(os.path.join(workdir, "checkpoints", "ckpt-20")))
        experiment = Experiment.create(tiny_toy_config(30), workdir)
        with self.assertLogs(level="WARNING") as logs:
            monitor = experiment.train()
        self.assertTrue(any("ckpt-20" in line and "damaged" in line for line in logs.output))
        self.assertEqual([s for s, _ in monitor.history], [15, 20, 25, 30])
        self.assertEqual(int(experiment.optimizer.iterations.numpy()), 30)


if __name__ == "__main__":
    absltest.main()
