"""Two-dimensional toy data for low-dimensional diffusion (with MLPDenoiser)."""

import numpy as np

TOY2D_DATASETS = ("gaussian_mixture", "moons", "swiss_roll")


def toy2d_points(name="gaussian_mixture", num_points=4096, seed=0):
    """float32 points `[num_points, 2]`, roughly in [-1, 1].

    Args:
        name: "gaussian_mixture" (8 Gaussians, std 0.05, on a circle of
            radius 0.8), "moons" or "swiss_roll".
        num_points: how many.
        seed: numpy seed.
    """
    is_int = isinstance(num_points, (int, np.integer)) and not isinstance(num_points, bool)
    if not is_int or num_points < 1:
        raise ValueError(
            f"`num_points` must be a positive int. Received: num_points={num_points!r}"
        )
    rng = np.random.default_rng(seed)
    if name == "gaussian_mixture":
        angles = 2 * np.pi * rng.integers(0, 8, num_points) / 8
        centers = 0.8 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
        points = centers + 0.05 * rng.standard_normal((num_points, 2))
    elif name == "moons":
        upper = rng.random(num_points) < 0.5
        angle = np.pi * rng.random(num_points)
        x = np.where(upper, np.cos(angle), 1 - np.cos(angle))
        y = np.where(upper, np.sin(angle), 0.5 - np.sin(angle))
        points = np.stack([x - 0.5, y - 0.25], axis=1) * 0.8
        points += 0.03 * rng.standard_normal((num_points, 2))
    elif name == "swiss_roll":
        t = 1.5 * np.pi * (1 + 2 * rng.random(num_points))
        points = np.stack([t * np.cos(t), t * np.sin(t)], axis=1) / 15.0
        points += 0.02 * rng.standard_normal((num_points, 2))
    else:
        raise ValueError(
            f"Unknown toy 2-D dataset: name={name!r}. Valid names: {list(TOY2D_DATASETS)}"
        )
    return points.astype(np.float32)


def toy2d_dataset(name="gaussian_mixture", num_points=4096, seed=0):
    """`toy2d_points` as an unbatched `tf.data.Dataset` of `{"images": [2]}`."""
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices({"images": toy2d_points(name, num_points, seed)})
