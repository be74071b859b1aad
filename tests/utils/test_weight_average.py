"""WeightAverage: the warm-up, frozen variables, skipped steps."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_diffusion.testing import TestCase
from keras_diffusion.utils.weight_average import WeightAverage


@pytest.mark.jax
class WeightAverageTest(TestCase):
    def test_warmup_and_decay(self):
        w = keras.Variable(np.zeros((3,), "float32"))
        average = WeightAverage([w], decay=0.5)
        self.assertFalse(average.has_updates())
        expected = np.zeros(3)
        for n, value in enumerate([4.0, 8.0, -2.0, 6.0, 1.0]):
            w.assign(np.full((3,), value, "float32"))
            average.update()
            decay = min(0.5, n / (n + 9.0))  # 0 at the first update: a copy
            expected = decay * expected + (1 - decay) * value
            self.assertAllClose(average.averages[0], expected, atol=1e-6)
        self.assertTrue(average.has_updates())
        self.assertAllClose(average.count, 5.0)
        # 0.5 caps the warm-up from the 10th update on (9 / 18).
        for _ in range(20):
            average.update()
        self.assertAllClose(average.by_variable()[id(w)], np.full((3,), 1.0), atol=1e-6)

    def test_frozen_variables_and_skipped_steps_keep_their_average(self):
        a = keras.Variable(np.ones((2,), "float32"))
        b = keras.Variable(np.ones((2,), "float32"))
        average = WeightAverage([a, b], decay=0.9)
        b.trainable = False
        a.assign(np.full((2,), 3.0, "float32"))
        b.assign(np.full((2,), 3.0, "float32"))
        average.update(applied=ops.convert_to_tensor(False))
        self.assertAllClose(average.count, 0.0)
        self.assertAllClose(average.averages[0], [1.0, 1.0])
        average.update(applied=ops.convert_to_tensor(True))
        self.assertAllClose(average.count, 1.0)
        self.assertAllClose(average.averages[0], [3.0, 3.0])  # the first update copies
        self.assertAllClose(average.averages[1], [1.0, 1.0])  # frozen: kept

    def test_bad_decay(self):
        w = keras.Variable(np.zeros((2,), "float32"))
        for bad in (1.0, -0.1):
            with self.assertRaisesWithArgument(ValueError, "decay", str(bad)):
                WeightAverage([w], decay=bad)
