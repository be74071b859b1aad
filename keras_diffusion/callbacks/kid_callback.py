"""A callback that measures KID on generated samples during training."""

import inspect
import os

import keras
import numpy as np

from keras_diffusion.metrics.feature_extractor import compute_statistics
from keras_diffusion.metrics.feature_extractor import get as get_extractor
from keras_diffusion.metrics.feature_extractor import load_or_compute_statistics
from keras_diffusion.metrics.feature_extractor import load_statistics
from keras_diffusion.metrics.kid import KID


class KIDCallback(keras.callbacks.Callback):
    """Computes KID of `num_images` generated samples every N epochs.

    The samples come from `model.generate(num_images=..., seed=seed, ...)`
    with a fixed seed, so the same noise is denoised every time and changes
    in KID reflect the model, not the draw. The real features are computed
    once (and cached to `real_statistics` when it is a path). The value is
    added to the epoch's `logs` under `name` (so `History`, `CSVLogger`,
    `EarlyStopping` and a later `TensorBoard` callback see it) and, with a
    `log_dir`, written as the TensorBoard scalar `epoch_<name>` there.
    keras.io's DDIM example computes KID in its own training code; this is
    the same measurement as a reusable callback.

    Args:
        real_images: real images in [-1, 1] (an array or a dataset of
            batches); needed unless `real_statistics` is an existing file or
            a dict.
        real_statistics: optional `.npz` path (computed from `real_images`
            on first use and cached there when missing) or a dict from
            `compute_statistics` (with features).
        feature_extractor: as for `keras_diffusion.metrics.KID`.
        num_images: generated samples per measurement.
        every_n_epochs: measure after epochs N, 2N, ... (1-based).
        seed: the generation seed.
        sampler, num_steps, batch_size: passed to `generate` when set.
        generate_kwargs: other `generate` arguments (e.g. `labels`).
        num_subsets, subset_size: KID's subsets (`subset_size` is capped at
            `num_images`).
        log_dir: directory of the TensorBoard event file, or `None`.
        name: the key in `logs` and the scalar's name.
        verbose: 1 prints the value after each measurement.

    Example:
    >>> kid = KIDCallback(real_images=x_train[:1000], feature_extractor=trunk,
    ...                   num_images=500, every_n_epochs=5, num_steps=20,
    ...                   log_dir="runs/mnist")
    >>> model.fit(ds, epochs=50, callbacks=[kid, keras.callbacks.TensorBoard("runs/mnist")])

    References:
        Binkowski et al., Demystifying MMD GANs, 2018.
    """

    def __init__(
        self,
        real_images=None,
        real_statistics=None,
        feature_extractor="inception",
        num_images=1000,
        every_n_epochs=1,
        seed=0,
        sampler=None,
        num_steps=None,
        batch_size=None,
        generate_kwargs=None,
        num_subsets=100,
        subset_size=1000,
        log_dir=None,
        name="kid",
        verbose=0,
    ):
        super().__init__()
        if int(num_images) < 2:
            raise ValueError(f"`num_images` must be at least 2, received num_images={num_images}")
        if int(every_n_epochs) < 1:
            raise ValueError(
                f"`every_n_epochs` must be positive, received every_n_epochs={every_n_epochs}"
            )
        if real_images is None and real_statistics is None:
            raise ValueError("Pass `real_images` or `real_statistics`, received neither.")
        if (
            real_images is None
            and isinstance(real_statistics, (str, os.PathLike))
            and not os.path.exists(os.fspath(real_statistics))
        ):
            load_statistics(real_statistics)  # Raises the missing-file error.
        self.real_images = real_images
        self.real_statistics = real_statistics
        self.feature_extractor = get_extractor(feature_extractor)
        self.num_images = int(num_images)
        self.every_n_epochs = int(every_n_epochs)
        self.seed = seed
        self.sampler = sampler
        self.num_steps = num_steps
        self.batch_size = batch_size
        self.generate_kwargs = dict(generate_kwargs or {})
        self.num_subsets = int(num_subsets)
        self.subset_size = min(int(subset_size), self.num_images)
        self.log_dir = log_dir
        self.name = name
        self.verbose = verbose
        self.history = []  # (epoch, value) pairs.
        self._metric = None
        self._writer = None

    def _kid(self):
        if self._metric is None:
            stats = self.real_statistics
            if isinstance(stats, (str, os.PathLike)):
                stats = load_or_compute_statistics(
                    stats, self.real_images, self.feature_extractor
                )
            elif stats is None:
                stats = compute_statistics(self.real_images, self.feature_extractor)
            subset_size = min(self.subset_size, len(stats["features"]))
            self._metric = KID(
                feature_extractor=self.feature_extractor,
                real_statistics=stats,
                num_subsets=self.num_subsets,
                subset_size=subset_size,
                name=self.name,
            )
        return self._metric

    def _generate(self):
        kwargs = {"num_images": self.num_images, "seed": self.seed}
        for key in ("sampler", "num_steps", "batch_size"):
            if getattr(self, key) is not None:
                kwargs[key] = getattr(self, key)
        kwargs.update(self.generate_kwargs)
        try:
            if "verbose" in inspect.signature(self.model.generate).parameters:
                kwargs.setdefault("verbose", 0)
        except (TypeError, ValueError):
            pass
        return np.asarray(keras.ops.convert_to_numpy(self.model.generate(**kwargs)))

    def compute(self):
        """Generates the samples and returns their KID (a Python float)."""
        if not hasattr(self.model, "generate"):
            raise ValueError(
                f"KIDCallback needs a model with a generate() method, received "
                f"{type(self.model).__name__}"
            )
        kid = self._kid()
        kid.reset_state()
        kid.update_state(generated_images=self._generate())
        return float(kid.result())

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every_n_epochs:
            return
        value = self.compute()
        self.history.append((epoch, value))
        if logs is not None:
            logs[self.name] = value
        if self.log_dir is not None:
            import tensorflow as tf

            if self._writer is None:
                self._writer = tf.summary.create_file_writer(os.fspath(self.log_dir))
            with self._writer.as_default():
                tf.summary.scalar(f"epoch_{self.name}", value, step=epoch)
            self._writer.flush()
        if self.verbose:
            print(f"\nEpoch {epoch + 1}: {self.name} = {value:.5f}")

    def on_train_end(self, logs=None):
        if self._writer is not None:
            self._writer.close()
            self._writer = None
