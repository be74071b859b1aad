"""Frechet Inception Distance."""

import numpy as np
import scipy.linalg
from keras import ops

from keras_diffusion.metrics.feature_extractor import FeatureMetric
from keras_diffusion.metrics.feature_extractor import numpy_result
from keras_diffusion.metrics.feature_extractor import warn_few_samples
from keras_diffusion.schedules.schedule import register


def frechet_distance(mu1, sigma1, mu2, sigma2, eps=1e-6):
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    d^2 = |mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2)),
    with the matrix square root from `scipy.linalg.sqrtm` and the usual
    corrections of the reference implementation (TTUR, pytorch-fid): if the
    square root is not finite (a singular product) `eps` is added to both
    diagonals and it is recomputed; a complex result from numerical error
    is replaced by its real part, and an imaginary part larger than 1e-3 on
    the diagonal (after the `eps` retry) is an error.

    Args:
        mu1, mu2: means `[d]`.
        sigma1, sigma2: covariances `[d, d]`.
        eps: the diagonal offset of the retry.

    Returns:
        The squared distance as a Python float.
    """
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape:
        raise ValueError(
            f"The means have different shapes: mu1 {mu1.shape}, mu2 {mu2.shape} "
            "(different feature extractors?)"
        )
    d = mu1.shape[0]
    for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
        if sigma.shape != (d, d):
            raise ValueError(f"`{name}` must have shape {(d, d)}, received {sigma.shape}")
    diff = mu1 - mu2

    def trace_sqrt(offset):
        eye = np.eye(d) * offset
        covmean = scipy.linalg.sqrtm((sigma1 + eye) @ (sigma2 + eye))
        if not np.all(np.isfinite(covmean)):
            return None
        if np.iscomplexobj(covmean):
            if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
                return None
            covmean = covmean.real
        return np.trace(covmean)

    tr_covmean = trace_sqrt(0.0)
    if tr_covmean is None:
        tr_covmean = trace_sqrt(eps)
        if tr_covmean is None:
            raise ValueError(
                "FID: the matrix square root of sigma1 @ sigma2 is not finite or "
                f"has a large imaginary part even with eps={eps} added to the "
                "diagonals; use more samples or a larger `eps`."
            )
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * tr_covmean)


def mean_and_covariance(count, total, outer):
    """Mean and unbiased covariance from n, sum(x) and sum(x x^T)."""
    count = float(count)
    mu = total / count
    sigma = (outer - count * np.outer(mu, mu)) / (count - 1.0)
    return mu, 0.5 * (sigma + sigma.T)


@register
class FID(FeatureMetric):
    """Frechet Inception Distance between real and generated images.

    Follows the published protocol: InceptionV3 pool3 features (2048) of
    8-bit images resized to 299x299, the Gaussians' means and unbiased
    covariances, and the Frechet distance with `scipy.linalg.sqrtm` (see
    `frechet_distance`). Batches stream through `update_state`: the metric
    keeps n, sum(f) and sum(f f^T) per side in float64 (float32 on JAX
    unless `jax_enable_x64`), so any split into batches gives the same
    result as computing at once. Real-data
    statistics are usually computed once with `compute_statistics(...,
    path=...)` and passed as `real_statistics`. `result()` computes with
    numpy/scipy (through `tf.numpy_function` inside a tf.function).

    FID is biased upwards for small sample sizes; the protocol uses 50,000
    (at least 10,000) generated images. With fewer samples than the feature
    dimension the covariance is singular: `result()` warns.

    Args:
        feature_extractor: "inception" (default), "identity" (inputs are
            feature vectors), any Keras model or callable mapping images in
            [-1, 1] to features, or a `FeatureExtractor`.
        real_statistics: `None` (real images come through `update_state`), a
            `.npz` path written by `compute_statistics`, or its dict.
        eps: diagonal offset used when the covariance product is singular.
        name: the metric's name.

    Example:
    >>> stats = keras_diffusion.metrics.compute_statistics(
    ...     real_images, path="cifar10_inception.npz")
    >>> fid = keras_diffusion.metrics.FID(real_statistics="cifar10_inception.npz")
    >>> for _ in range(10):
    ...     fid.update_state(generated_images=model.generate(num_images=1000))
    >>> fid.result()

    References:
        Heusel et al., GANs Trained by a Two Time-Scale Update Rule Converge to
        a Local Nash Equilibrium, 2017.
    """

    def __init__(
        self,
        feature_extractor="inception",
        real_statistics=None,
        eps=1e-6,
        name="fid",
        **kwargs,
    ):
        super().__init__(
            feature_extractor=feature_extractor,
            real_statistics=real_statistics,
            name=name,
            **kwargs,
        )
        self.eps = float(eps)
        self.feature_dim = None
        self._sums = {}
        if self.real_statistics is not None:
            self._build(int(np.asarray(self.real_statistics["mu"]).shape[0]))

    def _build(self, dim):
        self.feature_dim = dim
        for side in ("real", "generated"):
            self._sums[side] = (
                self.add_variable((), "zeros", dtype="float64", name=f"{side}_count"),
                self.add_variable((dim,), "zeros", dtype="float64", name=f"{side}_sum"),
                self.add_variable(
                    (dim, dim), "zeros", dtype="float64", name=f"{side}_outer"
                ),
            )

    def _update_features(self, side, features):
        dim = int(features.shape[-1])
        if self.feature_dim is None:
            self._build(dim)
        if dim != self.feature_dim:
            raise ValueError(
                f"The {side} images give {dim} features, but the metric has "
                f"{self.feature_dim} (from the real statistics or earlier batches)."
            )
        features = ops.cast(features, "float64")
        count, total, outer = self._sums[side]
        count.assign_add(ops.cast(ops.shape(features)[0], "float64"))
        total.assign_add(ops.sum(features, axis=0))
        outer.assign_add(ops.matmul(ops.transpose(features), features))

    def reset_state(self):
        for variables in self._sums.values():
            for v in variables:
                v.assign(ops.zeros(v.shape, v.dtype))
        self._reset_shapes()

    def statistics(self, side):
        """(mu, sigma) of "real" or "generated" features so far (numpy)."""
        if side == "real" and self.real_statistics is not None:
            return (
                np.asarray(self.real_statistics["mu"], np.float64),
                np.asarray(self.real_statistics["sigma"], np.float64),
            )
        if self.feature_dim is None:
            raise ValueError("FID has no features yet: call update_state first.")
        count, total, outer = (np.asarray(ops.convert_to_numpy(v.value)) for v in self._sums[side])
        return self._moments(side, count, total, outer)

    def _moments(self, side, count, total, outer):
        if count < 2:
            raise ValueError(
                f"FID needs at least 2 {side} samples, received num_samples={int(count)}"
            )
        warn_few_samples(int(count), self.feature_dim, f"the {side} set")
        return mean_and_covariance(count, total, outer)

    def result(self):
        if self.feature_dim is None:
            raise ValueError("FID has no features yet: call update_state first.")
        inputs = list(self._sums["generated"])
        if self.real_statistics is None:
            inputs += list(self._sums["real"])

        def compute(*arrays):
            mu2, sigma2 = self._moments("generated", *arrays[:3])
            if self.real_statistics is None:
                mu1, sigma1 = self._moments("real", *arrays[3:])
            else:
                mu1, sigma1 = self.statistics("real")
                num_real = int(self.real_statistics.get("num_samples", 0))
                if num_real:  # 0: not recorded.
                    warn_few_samples(num_real, self.feature_dim, "the real statistics")
            return frechet_distance(mu1, sigma1, mu2, sigma2, eps=self.eps)

        return numpy_result(compute, inputs)

    def get_config(self):
        return {**super().get_config(), "eps": self.eps}
