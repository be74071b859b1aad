"""Under MirroredStrategy every replica draws its own training noise."""

import os
import subprocess
import sys
import textwrap

from keras_diffusion.testing import TestCase

_SCRIPT = textwrap.dedent(
    """
    import tensorflow as tf

    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * 2
    )
    import keras
    from keras_diffusion.utils.tensorflow_ops import ReplicaSeed as _ReplicaSeed

    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        generator = keras.random.SeedGenerator(3)

    @tf.function
    def step(wrap):
        seed = _ReplicaSeed(generator) if wrap else generator
        return strategy.run(lambda: keras.random.normal((4,), seed=seed))

    for wrap in (False, True):
        a, b = strategy.experimental_local_results(step(wrap))
        print(wrap, float(tf.reduce_max(tf.abs(a - b))))
    """
)


class ReplicaSeedTest(TestCase):
    def test_replicas_draw_different_noise(self):
        self.skip_unless_tensorflow()
        root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
        env = dict(os.environ, PYTHONPATH=root, TF_CPP_MIN_LOG_LEVEL="2")
        out = subprocess.run(
            [sys.executable, "-c", _SCRIPT], env=env, capture_output=True, text=True,
            timeout=300,
        )
        self.assertEqual(out.returncode, 0, out.stderr[-3000:])
        lines = dict(line.split() for line in out.stdout.strip().splitlines()[-2:])
        # The bare shared generator repeats itself on every replica ...
        self.assertEqual(float(lines["False"]), 0.0)
        # ... the model's training seed does not.
        self.assertGreater(float(lines["True"]), 0.1)
