import numpy as np

from keras_diffusion.models.mlp_denoiser import MLPDenoiser
from keras_diffusion.testing import TestCase


def _inputs(batch=4, dim=3, labels=False):
    rng = np.random.default_rng(0)
    data = {
        "x_t": rng.normal(size=(batch, dim)).astype("float32"),
        "t": rng.uniform(size=(batch,)).astype("float32"),
    }
    if labels:
        data["labels"] = np.array([0, 1, 2, 3][:batch], dtype="int32")
    return data


class MLPDenoiserTest(TestCase):
    def test_layer(self):
        self.run_layer_test(
            MLPDenoiser,
            {"data_dim": 3, "hidden_dim": 16, "num_layers": 2, "time_embedding_dim": 8},
            _inputs(),
            expected_output_shape=(4, 3),
        )

    def test_conditional_layer(self):
        model = self.run_layer_test(
            MLPDenoiser,
            {"data_dim": 3, "hidden_dim": 16, "num_layers": 1, "num_classes": 3},
            _inputs(labels=True),
            expected_output_shape=(4, 3),
        )
        self.assertEqual(model.null_label, 3)
        # Missing labels mean the null class.
        data = _inputs(labels=True)
        null = dict(data, labels=np.full((4,), 3, "int32"))
        self.assertAllClose(model(null), model({"x_t": data["x_t"], "t": data["t"]}), atol=1e-6)

    def test_infers_data_dim_and_time_matters(self):
        model = MLPDenoiser(hidden_dim=16, num_layers=1)
        data = _inputs(dim=5)
        out = model(data)
        self.assertEqual(model.data_dim, 5)
        self.assertEqual(out.dtype, "float32")
        other = model(dict(data, t=data["t"] * 0.5))
        self.assertGreater(float(np.abs(np.asarray(out) - np.asarray(other)).max()), 0.0)

    def test_bad_inputs(self):
        with self.assertRaisesWithArgument(ValueError, "hidden_dim", "-1"):
            MLPDenoiser(hidden_dim=-1)
        model = MLPDenoiser(data_dim=3, hidden_dim=8, num_layers=1)
        with self.assertRaisesWithArgument(ValueError, "labels"):
            model(_inputs(labels=True))
        with self.assertRaisesWithArgument(ValueError, "data_dim", "(4, 2)"):
            MLPDenoiser(data_dim=3, hidden_dim=8)(_inputs(dim=2))
