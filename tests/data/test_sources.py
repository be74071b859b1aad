"""In-memory sources (MNIST, toy 2-D points) refuse sizes that give no data."""

import numpy as np

from keras_diffusion import data
from keras_diffusion.testing import TestCase


class InMemorySourcesTest(TestCase):
    def test_toy2d_needs_points(self):
        for bad in (0, -3, 2.5, True):
            with self.assertRaisesWithArgument(ValueError, "num_points", bad):
                data.toy2d_dataset(num_points=bad)
        ds = data.toy2d_dataset("moons", num_points=7)
        self.assertEqual(int(ds.cardinality()), 7)
        points = np.stack([e["images"].numpy() for e in ds])
        self.assertAllClose(points, data.toy2d_points("moons", 7))

    def test_mnist_needs_a_positive_image_size(self):
        for bad in (0, -28, 2.5):
            with self.assertRaisesWithArgument(ValueError, "image_size", bad):
                data.mnist_dataset(image_size=bad)
