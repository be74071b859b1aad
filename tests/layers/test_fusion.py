"""The XLA islands' process-wide cache never keeps a model's variables."""

import gc

import numpy as np
import pytest

import keras_diffusion as kd
from keras_diffusion.testing import TestCase


def _fit_once(seed):
    denoiser = kd.models.UNet(
        input_channels=1, base_channels=16, channel_multipliers=(1,), num_res_blocks=1,
        attention_resolutions=(), num_groups=8,
    )
    model = kd.DiffusionModel(denoiser, seed=seed)
    images = np.random.default_rng(seed).uniform(-1, 1, (4, 8, 8, 1)).astype("float32")
    return model.fit(images, batch_size=4, epochs=1, verbose=0).history["loss"][0]


class FusionCacheTest(TestCase):
    def test_a_failed_fit_does_not_poison_the_process(self):
        self.skip_unless_tensorflow()
        model = kd.DiffusionModel()  # The default UNet, built from the data.

        def empty():
            return
            yield

        with pytest.raises(ValueError, match="yields no batch"):
            model.fit(empty(), epochs=1, verbose=0)
        images = np.zeros((4, 8, 8, 1), "float32")
        # Labels for an unconditional model: the step fails while it is traced,
        # after the UNet (built from the first batch) ran its islands.
        with pytest.raises(ValueError, match="unconditional"):
            model.fit(images, np.zeros(4, "int32"), batch_size=4, epochs=1, verbose=0)
        del model
        gc.collect()
        self.assertTrue(np.isfinite(_fit_once(2)))
