"""training/: config files, config checks and start-up errors (no training)."""

import importlib
import os
import subprocess
import sys


from keras_diffusion.testing import TestCase
from training.lib import config as config_lib

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Every config file that ships (a new one is checked without being listed).
CONFIGS = sorted(
    name[:-3] for name in os.listdir(os.path.join(ROOT, "training", "configs"))
    if name.endswith(".py") and name != "__init__.py"
)


def get_config(name):
    return importlib.import_module(f"training.configs.{name}").get_config()


class ConfigTest(TestCase):
    def test_every_config_is_valid(self):
        for name in CONFIGS:
            config = get_config(name)
            if config.data.name in ("image_folder", "tfrecord"):
                config.data.path = "/some/folder"
            config_lib.validate(config)

    def test_unknown_key_is_an_error(self):
        config = get_config("mnist")
        with config.unlocked() if hasattr(config, "unlocked") else _null():
            config.optim.learning_rte = 1.0
        with self.assertRaisesRegex(config_lib.ConfigError, "optim.learning_rte"):
            config_lib.validate(config)

    def test_bad_values_are_errors(self):
        config = get_config("mnist")
        config.train.checkpoint_every = 300  # does not divide train.num_steps (2,000)
        with self.assertRaisesRegex(config_lib.ConfigError, "checkpoint_every=300"):
            config_lib.validate(config)
        config = get_config("mnist")
        config.data.image_size = 30
        with self.assertRaisesRegex(config_lib.ConfigError, "image_size=30"):
            config_lib.validate(config)
        config = get_config("latent_dit_flow")
        with self.assertRaisesRegex(config_lib.ConfigError, "data.path"):
            config_lib.validate(config)
        with self.assertRaisesRegex(config_lib.ConfigError, "batch_size=63.*2"):
            config_lib.check_batch_size(63, 2)

    def test_workdir_config(self):
        workdir = self.get_temp_dir()
        config = get_config("toy2d")
        with self.assertRaisesRegex(config_lib.ConfigError, "No --config"):
            config_lib.resolve(None, workdir)
        resolved, saved = config_lib.resolve(config, workdir)
        self.assertFalse(saved)
        config_lib.write(resolved, workdir)
        # --workdir alone reads the config back.
        again, saved = config_lib.resolve(None, workdir)
        self.assertTrue(saved)
        self.assertEqual(config_lib.to_dict(again), config_lib.to_dict(config))
        # Training longer is allowed; a different model is not.
        longer = get_config("toy2d")
        longer.train.num_steps = 4000
        config_lib.resolve(longer, workdir)
        other = get_config("toy2d")
        other.optim.lr = 0.5
        with self.assertRaisesRegex(config_lib.ConfigError, "optim.lr"):
            config_lib.resolve(other, workdir)
        config_lib.resolve(other, workdir, allow_change=True)

    def test_missing_datasets_fail_fast(self):
        from training.lib import builders

        config = get_config("cifar10_ddpm")
        config.data.data_dir = self.get_temp_dir()
        with self.assertRaisesRegex(Exception, "cifar10"):
            builders.check_data_available(config)
        config = get_config("latent_dit_flow")
        config.data.path = "/no/such/folder"
        with self.assertRaisesRegex(FileNotFoundError, "/no/such/folder"):
            builders.check_data_available(config)

    def test_jit_per_strategy(self):
        from training.lib import strategy as strategy_lib

        self.assertFalse(strategy_lib.choose_jit_compile("auto", "mirrored"))
        self.assertTrue(strategy_lib.choose_jit_compile("auto", "tpu"))
        self.assertTrue(strategy_lib.choose_jit_compile(True, "default"))
        with self.assertRaisesRegex(RuntimeError, "TPU"):
            strategy_lib.make_strategy("tpu", get_config("mnist"))


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *args):
        return False


def run_cli(*args, env=None, timeout=240):
    return subprocess.run(
        [sys.executable, "-m", "training.train", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONPATH": ROOT, **(env or {})},
    )


def test_cli_rejects_bad_input_before_compute(tmp_path):
    """Unknown override keys and a different config in the workdir: clear errors."""
    proc = run_cli("--config=training/configs/toy2d.py", "--config.optim.lrr=1",
                   f"--workdir={tmp_path}")
    assert proc.returncode != 0
    assert "lrr" in proc.stderr
    workdir = tmp_path / "w"
    workdir.mkdir()
    other = get_config("toy2d")
    other.model.prediction = "x0"
    config_lib.write(other, str(workdir))
    proc = run_cli("--config=training/configs/toy2d.py", f"--workdir={workdir}")
    assert proc.returncode != 0
    assert "different config" in proc.stderr and "model.prediction" in proc.stderr
    assert not (workdir / "checkpoints").exists()


class ResumeOverridesTest(TestCase):
    """`--workdir` alone with `--config.KEY=VALUE` (issue 13, finding 6)."""

    def _workdir(self):
        workdir = self.get_temp_dir()
        config_lib.write(config_lib.validate(get_config("toy2d")), workdir)
        return workdir

    def test_changeable_keys_override_the_workdir_config(self):
        workdir = self._workdir()
        config, saved = config_lib.resolve(
            None, workdir, overrides={"train.num_steps": 4000, "sample.num_steps": 7,
                                      "export.sampler": "ddim"})
        self.assertTrue(saved)
        self.assertEqual(config.train.num_steps, 4000)
        self.assertEqual(config.sample.num_steps, 7)
        self.assertEqual(config.export.sampler, "ddim")
        self.assertEqual(config.optim.lr, get_config("toy2d").optim.lr)

    def test_other_keys_are_an_error_naming_the_key(self):
        workdir = self._workdir()
        with self.assertRaisesRegex(config_lib.ConfigError,
                                    r"--config\.optim\.lr cannot change.*train\.num_steps"):
            config_lib.resolve(None, workdir, overrides={"optim.lr": 0.5})
        config, _ = config_lib.resolve(None, workdir, allow_change=True,
                                       overrides={"optim.lr": 0.5})
        self.assertEqual(config.optim.lr, 0.5)
        with self.assertRaisesRegex(config_lib.ConfigError, "train.num_stepz"):
            config_lib.resolve(None, workdir, overrides={"train.num_stepz": 5})

    def test_workdir_that_cannot_be_written_fails_at_start(self):
        from training.lib.experiment import Experiment

        # A path below a regular file (chmod does not stop root, which CI may be).
        blocker = os.path.join(self.get_temp_dir(), "a_file")
        with open(blocker, "w") as f:
            f.write("x")
        workdir = os.path.join(blocker, "run")
        for mode in ("train", "eval"):
            with self.assertRaisesRegex(config_lib.ConfigError,
                                        f"workdir='{workdir}' is not writable"):
                Experiment.create(get_config("toy2d"), workdir, mode)
        # An existing workdir whose checkpoints folder cannot take files.
        workdir = self.get_temp_dir()
        os.makedirs(os.path.join(workdir, "checkpoints"))
        os.chmod(os.path.join(workdir, "checkpoints"), 0o500)
        try:
            if os.access(os.path.join(workdir, "checkpoints"), os.W_OK):
                return  # root: permission bits do not apply
            with self.assertRaisesRegex(config_lib.ConfigError, "checkpoints"):
                Experiment.create(get_config("toy2d"), workdir, "train")
        finally:
            os.chmod(os.path.join(workdir, "checkpoints"), 0o700)
