"""A Gaussian mixture with its exact denoiser, the ground truth of the tests."""


import numpy as np
from keras import ops

from keras_diffusion import objectives
from keras_diffusion.schedules.schedule import broadcast_like


class GaussianMixture:
    """A mixture of diagonal Gaussians with a closed-form posterior mean.

    Under any schedule x_t | component k is N(alpha mu_k, alpha^2 s_k^2 +
    sigma^2), so E[x0 | x_t] is a responsibility-weighted sum of per-component
    Wiener estimates:

        E[x0 | x_t] = sum_k r_k(x_t) (mu_k + alpha s_k^2 / v_k (x_t - alpha mu_k)),
        v_k = alpha^2 s_k^2 + sigma^2.

    `denoiser(schedule, prediction)` turns it into the exact model function
    of any prediction type, which is what a perfectly trained network would
    compute, so samplers can be checked against exact answers.

    Args:
        means: array `[K, D]`.
        stds: component standard deviations, broadcastable to `[K, D]`.
        weights: mixture weights `[K]` (normalized here); uniform if `None`.

    Example:
    >>> gmm = GaussianMixture.ring(num_modes=8, radius=2.0, std=0.1)
    >>> model_fn = gmm.denoiser(schedules.CosineSchedule(), "epsilon")
    """

    def __init__(self, means, stds, weights=None):
        self.means = np.asarray(means, dtype=np.float64)
        if self.means.ndim != 2:
            raise ValueError(f"`means` must be [K, D], received shape {self.means.shape}")
        self.stds = np.broadcast_to(np.asarray(stds, np.float64), self.means.shape).copy()
        if np.any(self.stds <= 0):
            raise ValueError("`stds` must be positive")
        k = self.means.shape[0]
        w = np.ones(k) if weights is None else np.asarray(weights, np.float64)
        if w.shape != (k,) or np.any(w <= 0):
            raise ValueError(f"`weights` must be {k} positive numbers, received {w}")
        self.weights = w / w.sum()

    @property
    def dim(self):
        return self.means.shape[1]

    @classmethod
    def ring(cls, num_modes=8, radius=2.0, std=0.1):
        """Modes evenly spaced on a circle in 2-D."""
        angles = 2 * np.pi * np.arange(num_modes) / num_modes
        means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        return cls(means, std)

    @classmethod
    def random(cls, num_modes, dim, seed=0, spread=1.0, std=(0.05, 0.3)):
        """Random means in [-spread, spread]^D and stds uniform in `std`."""
        rng = np.random.default_rng(seed)
        means = rng.uniform(-spread, spread, size=(num_modes, dim))
        stds = rng.uniform(std[0], std[1], size=(num_modes, dim))
        weights = rng.uniform(0.5, 1.5, size=num_modes)
        return cls(means, stds, weights)

    def sample(self, num, seed=0, return_components=False):
        rng = np.random.default_rng(seed)
        comp = rng.choice(len(self.weights), size=num, p=self.weights)
        x = self.means[comp] + self.stds[comp] * rng.normal(size=(num, self.dim))
        return (x, comp) if return_components else x

    def log_prob(self, x, alpha=1.0, sigma=0.0):
        """log density of alpha x0 + sigma eps at `x` (float64 numpy)."""
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        var = alpha**2 * self.stds**2 + sigma**2  # [K, D]
        diff = x[:, None, :] - alpha * self.means[None]
        log_comp = -0.5 * np.sum(diff**2 / var + np.log(2 * np.pi * var), axis=-1)
        log_comp += np.log(self.weights)
        top = log_comp.max(axis=1, keepdims=True)
        return (top + np.log(np.exp(log_comp - top).sum(1, keepdims=True)))[:, 0]

    def classify(self, x):
        """Index of the most likely component of each data point."""
        x = np.asarray(x, np.float64).reshape(len(x), -1)
        var = self.stds**2
        diff = x[:, None, :] - self.means[None]
        log_comp = -0.5 * np.sum(diff**2 / var + np.log(var), axis=-1)
        return np.argmax(log_comp + np.log(self.weights), axis=1)

    def posterior_mean(self, x_t, t, schedule):
        """E[x0 | x_t] in keras.ops (float32), `x_t` of shape [B, ...]."""
        x_t = ops.cast(ops.convert_to_tensor(x_t), "float32")
        shape = ops.shape(x_t)
        x = ops.reshape(x_t, (shape[0], -1))
        t = ops.cast(ops.convert_to_tensor(t), "float32")
        if len(t.shape) == 0:
            t = ops.full((shape[0],), t)
        alpha, sigma = schedule.alpha_sigma(t)
        alpha = broadcast_like(alpha, x)[:, :, None]  # [B, 1, 1]
        sigma = broadcast_like(sigma, x)[:, :, None]
        means = ops.convert_to_tensor(self.means.astype("float32"))[None]  # [1, K, D]
        var0 = ops.convert_to_tensor((self.stds**2).astype("float32"))[None]
        var = ops.square(alpha) * var0 + ops.square(sigma)
        diff = x[:, None, :] - alpha * means  # [B, K, D]
        log_r = -0.5 * ops.sum(ops.square(diff) / var + ops.log(var), axis=-1)
        log_r = log_r + ops.convert_to_tensor(np.log(self.weights).astype("float32"))
        r = ops.softmax(log_r, axis=-1)[:, :, None]
        x0 = ops.sum(r * (means + alpha * var0 / var * diff), axis=1)
        return ops.reshape(x0, shape)

    def denoiser(self, schedule, prediction="epsilon"):
        """The exact model function `model_fn(x_t, t)` of a prediction type."""
        objectives.validate_prediction(prediction)

        def model_fn(x_t, t):
            x_t = ops.cast(x_t, "float32")
            x0 = self.posterior_mean(x_t, t, schedule)
            alpha, sigma = schedule.alpha_sigma(ops.cast(t, "float32"))
            eps = (x_t - broadcast_like(alpha, x_t) * x0) / broadcast_like(sigma, x_t)
            return objectives.from_x0_epsilon(prediction, x0, eps, t, schedule)

        return model_fn


def sliced_wasserstein(x, y, num_projections=256, seed=0):
    """Sliced 1-Wasserstein distance between two equal-size point sets."""
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    y = np.asarray(y, np.float64).reshape(len(y), -1)
    n = min(len(x), len(y))
    rng = np.random.default_rng(seed)
    dirs = rng.normal(size=(x.shape[1], num_projections))
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    px = np.sort(x[:n] @ dirs, axis=0)
    py = np.sort(y[:n] @ dirs, axis=0)
    return float(np.mean(np.abs(px - py)))


