import glob
import os

import keras
import numpy as np

from keras_diffusion.callbacks import KIDCallback
from keras_diffusion.testing import TestCase


class GeneratingModel(keras.Model):
    """A stub with DiffusionModel's generate(): noise shifted by `shift`."""

    def __init__(self, dim=4, **kwargs):
        super().__init__(**kwargs)
        self.dense = keras.layers.Dense(1)
        self.dim = dim
        self.shift = 4.0
        self.calls = []

    def call(self, x):
        return self.dense(x)

    def generate(self, num_images, seed=None, sampler=None, num_steps=None, verbose="auto"):
        self.calls.append(dict(num_images=num_images, seed=seed, sampler=sampler,
                               num_steps=num_steps, verbose=verbose))
        rng = np.random.default_rng(seed)
        return rng.normal(size=(num_images, self.dim)).astype("float32") + self.shift


class ShiftTowardsData(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        self.model.shift *= 0.5


def read_scalars(log_dir, tag):
    import tensorflow as tf

    values = []
    for path in glob.glob(os.path.join(log_dir, "events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                if value.tag == tag:
                    values.append((event.step, float(tf.make_ndarray(value.tensor))))
    return sorted(values)


class KIDCallbackTest(TestCase):
    def test_logs_kid_every_n_epochs(self):
        real = np.random.default_rng(0).normal(size=(64, 4)).astype("float32")
        model = GeneratingModel()
        model.compile(optimizer="sgd", loss="mse")
        log_dir = self.get_temp_dir()
        callback = KIDCallback(
            real_images=real, feature_extractor="identity", num_images=48, every_n_epochs=2,
            seed=7, num_steps=5, num_subsets=5, log_dir=log_dir,
        )
        # ShiftTowardsData runs first, so each measured epoch sees a closer model.
        history = model.fit(
            real, real[:, :1], epochs=4, batch_size=32, verbose=0,
            callbacks=[ShiftTowardsData(), callback],
        )
        self.assertEqual([c["num_images"] for c in model.calls], [48, 48])
        self.assertEqual({c["seed"] for c in model.calls}, {7})
        self.assertEqual(model.calls[0]["num_steps"], 5)
        self.assertIsNone(model.calls[0]["sampler"])  # Not given: the model's default.
        self.assertEqual(model.calls[0]["verbose"], 0)
        self.assertEqual([epoch for epoch, _ in callback.history], [1, 3])
        first, second = (value for _, value in callback.history)
        self.assertGreater(first, second)  # Closer samples, smaller KID.
        if "kid" in history.history:  # Keras' History ran after the callback.
            self.assertAllClose(history.history["kid"], [first, second])
        scalars = read_scalars(log_dir, "epoch_kid")
        self.assertEqual([step for step, _ in scalars], [1, 3])
        self.assertAllClose([v for _, v in scalars], [first, second], rtol=1e-5)

    def test_logs_dict_and_cached_statistics(self):
        real = np.random.default_rng(1).normal(size=(40, 4)).astype("float32")
        path = os.path.join(self.get_temp_dir(), "real.npz")
        callback = KIDCallback(real_images=real, real_statistics=path,
                               feature_extractor="identity", num_images=20, num_subsets=3)
        callback.set_model(GeneratingModel())
        logs = {}
        callback.on_epoch_end(0, logs)
        self.assertIn("kid", logs)
        self.assertTrue(os.path.exists(path))  # Computed once, cached.
        reused = KIDCallback(real_statistics=path, feature_extractor="identity",
                             num_images=20, num_subsets=3)
        reused.set_model(GeneratingModel())
        self.assertAllClose(reused.compute(), logs["kid"], rtol=1e-6)

    def test_bad_arguments(self):
        with self.assertRaisesWithArgument(ValueError, "real_images", "real_statistics"):
            KIDCallback(feature_extractor="identity")
        with self.assertRaisesWithArgument(ValueError, "every_n_epochs", "0"):
            KIDCallback(real_images=np.zeros((4, 2)), every_n_epochs=0)
        with self.assertRaisesWithArgument(FileNotFoundError, "real_statistics", "none.npz"):
            KIDCallback(real_statistics=os.path.join(self.get_temp_dir(), "none.npz"))
        callback = KIDCallback(real_images=np.zeros((4, 2)), feature_extractor="identity")
        callback.set_model(keras.Sequential([keras.layers.Dense(1)]))
        with self.assertRaisesWithArgument(ValueError, "generate", "Sequential"):
            callback.on_epoch_end(0, {})
