"""Kernel Inception Distance."""

import warnings

import numpy as np
from keras import ops

from keras_diffusion.metrics.feature_extractor import FeatureMetric
from keras_diffusion.metrics.feature_extractor import numpy_result
from keras_diffusion.schedules.schedule import register


def polynomial_kernel(x, y):
    """k(x, y) = (x . y / d + 1)^3, the KID kernel, for rows of x and y."""
    d = x.shape[1]
    return (x @ y.T / d + 1.0) ** 3


def mmd2_unbiased(x, y):
    """The unbiased estimate of MMD^2 with the polynomial kernel.

    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1))
            + sum_{i != j} k(y_i, y_j) / (n (n - 1))
            - 2 sum_{i, j} k(x_i, y_j) / (m n)
    (Gretton et al., 2012, eq. 3). Its expectation is 0 when x and y come
    from the same distribution, so it can be negative.
    """
    m, n = len(x), len(y)
    k_xx = polynomial_kernel(x, x)
    k_yy = polynomial_kernel(y, y)
    k_xy = polynomial_kernel(x, y)
    return float(
        (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
        + (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
        - 2.0 * k_xy.sum() / (m * n)
    )


def kernel_inception_distance(real_features, generated_features, num_subsets=100,
                              subset_size=1000, seed=0):
    """KID: the mean (and std) of unbiased MMD^2 over random subsets.

    Each of `num_subsets` subsets draws `subset_size` real and as many
    generated features without replacement (as Binkowski et al. and
    torch-fidelity do); `subset_size` is lowered to the smaller set's size.

    Returns:
        `(mean, std)` over the subsets, Python floats.
    """
    x = np.asarray(real_features, np.float64)
    y = np.asarray(generated_features, np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise ValueError(
            "Real and generated features must be [n, d] with the same d, "
            f"received shapes {x.shape} and {y.shape}"
        )
    size = min(int(subset_size), len(x), len(y))
    if size < 2:
        raise ValueError(
            "KID needs at least 2 real and 2 generated samples, received "
            f"{len(x)} real and {len(y)} generated"
        )
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(int(num_subsets)):
        ix = rng.choice(len(x), size, replace=False) if size < len(x) else np.arange(len(x))
        iy = rng.choice(len(y), size, replace=False) if size < len(y) else np.arange(len(y))
        values.append(mmd2_unbiased(x[ix], y[iy]))
    return float(np.mean(values)), float(np.std(values))


@register
class KID(FeatureMetric):
    """Kernel Inception Distance: unbiased MMD^2 of Inception features.

    MMD^2 with the polynomial kernel k(x, y) = (x . y / d + 1)^3, estimated
    without bias and averaged over random subsets (Binkowski et al., 2018).
    Unlike FID it is unbiased for any sample size: near 0 for two samples of
    the same distribution (it can be slightly negative), larger as they
    differ. The metric keeps the features of every batch (KID needs them
    all), so any split into batches gives the same result. `result()` is the
    mean over subsets; `result_std()` the standard deviation.

    Args:
        feature_extractor: "inception" (default), "identity", any Keras model
            or callable mapping images in [-1, 1] to features, or a
            `FeatureExtractor`.
        real_statistics: `None` (real images come through `update_state`), a
            `.npz` path written by `compute_statistics` (with its features), or
            its dict.
        num_subsets: number of random subsets (100 in the paper).
        subset_size: samples per subset (1000 in the paper), lowered to the
            number of samples when there are fewer.
        seed: the seed of the subset draws, so `result()` is reproducible.
        name: the metric's name.

    Example:
    >>> kid = keras_diffusion.metrics.KID(feature_extractor=classifier_trunk)
    >>> kid.update_state(real_images, generated_images)
    >>> kid.result()

    References:
        Binkowski et al., Demystifying MMD GANs, 2018.
    """

    def __init__(
        self,
        feature_extractor="inception",
        real_statistics=None,
        num_subsets=100,
        subset_size=1000,
        seed=0,
        name="kid",
        **kwargs,
    ):
        super().__init__(
            feature_extractor=feature_extractor,
            real_statistics=real_statistics,
            name=name,
            **kwargs,
        )
        if int(num_subsets) < 1:
            raise ValueError(f"`num_subsets` must be positive, received num_subsets={num_subsets}")
        if int(subset_size) < 2:
            raise ValueError(f"`subset_size` must be at least 2, received subset_size={subset_size}")
        self.num_subsets = int(num_subsets)
        self.subset_size = int(subset_size)
        self.seed = int(seed)
        if self.real_statistics is not None and "features" not in self.real_statistics:
            raise ValueError(
                "KID needs the real features, but real_statistics="
                f"{self.real_statistics_path or 'the dict'} has none; compute it "
                "with compute_statistics(..., keep_features=True)."
            )
        self._features = {"real": [], "generated": []}
        self._std = None

    def _update_features(self, side, features):
        try:
            features = np.asarray(ops.convert_to_numpy(features), np.float64)
        except Exception as error:  # A symbolic tensor in a graph.
            raise ValueError(
                "KID keeps its features in numpy: call update_state eagerly "
                "(not inside a tf.function)."
            ) from error
        dims = {f.shape[1] for f in self._features["real"] + self._features["generated"]}
        if self.real_statistics is not None:
            dims.add(np.asarray(self.real_statistics["features"]).shape[1])
        if dims and features.shape[1] not in dims:
            raise ValueError(
                f"The {side} images give {features.shape[1]} features, but "
                f"earlier features have {dims.pop()}."
            )
        self._features[side].append(features)

    def features(self, side):
        """All "real" or "generated" features so far, `[n, d]` numpy."""
        if side == "real" and self.real_statistics is not None:
            return np.asarray(self.real_statistics["features"], np.float64)
        if not self._features[side]:
            raise ValueError(f"KID has no {side} features yet: call update_state first.")
        return np.concatenate(self._features[side], axis=0)

    def reset_state(self):
        self._features = {"real": [], "generated": []}
        self._std = None
        self._reset_shapes()

    def _compute(self):
        real, generated = self.features("real"), self.features("generated")
        if min(len(real), len(generated)) < self.subset_size:
            warnings.warn(
                f"KID: subset_size={self.subset_size} is larger than the "
                f"{len(real)} real / {len(generated)} generated samples; using "
                f"subsets of {min(len(real), len(generated))}.",
                stacklevel=3,
            )
        mean, self._std = kernel_inception_distance(
            real, generated, self.num_subsets, self.subset_size, self.seed
        )
        return mean

    def result(self):
        return numpy_result(self._compute, [])

    def result_std(self):
        """Standard deviation of MMD^2 over the subsets (Python float)."""
        self._compute()
        return self._std

    def get_config(self):
        return {
            **super().get_config(),
            "num_subsets": self.num_subsets,
            "subset_size": self.subset_size,
            "seed": self.seed,
        }

