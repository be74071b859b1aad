"""TokenTransformer: logits shape, time conditioning, bad input, config and saving."""

import os

import keras
import numpy as np
import pytest
from keras import ops

from keras_diffusion.models import TokenTransformer
from keras_diffusion.testing import TestCase

SMALL = dict(vocabulary_size=7, max_length=6, hidden_dim=16, num_layers=1, num_heads=2)


@pytest.mark.jax
class TokenTransformerTest(TestCase):
    def test_logits_time_and_bidirectional(self):
        tokens = np.array([[1, 2, 3, 4, 5], [6, 0, 0, 1, 2]], "int32")
        t = np.array([0.2, 0.9], "float32")
        net = TokenTransformer(**SMALL, time_conditioning=True)
        out = ops.convert_to_numpy(net({"x_t": tokens, "t": t}))
        self.assertEqual(out.shape, (2, 5, 7))
        # adaLN-Zero starts each block as the identity: perturb the weights so
        # that attention and time matter.
        for w in net.weights:
            w.assign(np.random.default_rng(0).normal(size=w.shape).astype("float32") * 0.2)
        base = ops.convert_to_numpy(net({"x_t": tokens, "t": t}))
        later = ops.convert_to_numpy(net({"x_t": tokens, "t": t + 0.05}))
        self.assertGreater(np.abs(base - later).max(), 1e-4)
        changed = tokens.copy()
        changed[:, -1] = 3  # The last token changes the first position's logits.
        first = ops.convert_to_numpy(net({"x_t": changed, "t": t}))[:, 0]
        self.assertGreater(np.abs(first - base[:, 0]).max(), 1e-4)
        with self.assertRaisesWithArgument(ValueError, "max_length", "6"):
            net({"x_t": np.zeros((1, 7), "int32"), "t": t[:1]})
        with self.assertRaisesWithArgument(ValueError, "num_heads", "3"):
            TokenTransformer(**{**SMALL, "num_heads": 3})

    def test_config_and_saving(self):
        net = TokenTransformer(**SMALL)
        self.run_serialization_test(net)
        tokens = np.array([[1, 2, 3]], "int32")
        for w in net.weights:
            w.assign(np.random.default_rng(1).normal(size=w.shape).astype("float32") * 0.2)
        out = ops.convert_to_numpy(net({"x_t": tokens}))
        path = os.path.join(self.get_temp_dir(), "net.keras")
        net.save(path)
        revived = keras.models.load_model(path)
        self.assertAllClose(ops.convert_to_numpy(revived({"x_t": tokens})), out, atol=1e-6)
