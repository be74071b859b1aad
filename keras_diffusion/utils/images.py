"""Image helpers: [-1, 1] floats -> uint8, image grids, PNG files."""

import keras
import numpy as np
from keras import ops


def to_float(images):
    """Images as a float32 tensor; integer images (uint8 in [0, 255]) are
    rescaled to [-1, 1] with x / 127.5 - 1, float images are only cast.
    """
    images = ops.convert_to_tensor(images)
    if "int" in keras.backend.standardize_dtype(images.dtype):
        return ops.cast(images, "float32") / 127.5 - 1.0
    return ops.cast(images, "float32")


def to_uint8(images):
    """Maps images in [-1, 1] to uint8 in [0, 255] (values outside are clipped).

    Args:
        images: array-like `(..., H, W, C)` floats in [-1, 1].

    Returns:
        A numpy uint8 array of the same shape.
    """
    x = np.asarray(images, dtype=np.float32)
    return np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)


def make_grid(images, num_rows=None, padding=2, pad_value=255, num_cols=None):
    """Tiles a batch of images into one image.

    Args:
        images: `(N, H, W, C)` (uint8, or floats in [-1, 1]) or `(N, H, W)`.
        num_rows: number of rows (default: about sqrt(N)); columns follow.
        padding: pixels between images.
        pad_value: uint8 value of the padding.
        num_cols: number of columns instead of `num_rows` (rows follow).

    Returns:
        A uint8 array `(rows * (H + padding) + padding, cols * (W + padding)
        + padding, C)`.
    """
    images = np.asarray(images)
    if images.ndim == 3:
        images = images[..., None]
    if images.ndim != 4:
        raise ValueError(
            f"`images` must have shape (N, H, W, C) or (N, H, W), received {images.shape}"
        )
    if images.dtype != np.uint8:
        images = to_uint8(images)
    n, h, w, c = images.shape
    if n == 0:
        raise ValueError("`images` is empty")
    if num_cols is not None:
        num_cols = max(1, int(num_cols))
        num_rows = int(np.ceil(n / num_cols))
    else:
        if num_rows is None:
            num_rows = int(np.ceil(np.sqrt(n)))
        num_rows = max(1, min(int(num_rows), n))
        num_cols = int(np.ceil(n / num_rows))
    grid = np.full(
        (num_rows * (h + padding) + padding, num_cols * (w + padding) + padding, c),
        pad_value,
        dtype=np.uint8,
    )
    for i in range(n):
        r, col = divmod(i, num_cols)
        y, x = padding + r * (h + padding), padding + col * (w + padding)
        grid[y : y + h, x : x + w] = images[i]
    return grid


def save_image_grid(images, path, num_rows=None, padding=2, scale=1):
    """Writes a batch of images as one PNG grid (see `make_grid`).

    Args:
        images: `(N, H, W, C)` uint8 or floats in [-1, 1].
        path: the PNG file to write.
        num_rows: rows of the grid.
        padding: pixels between images.
        scale: integer upscaling factor (nearest neighbour), for small images.

    Returns:
        The uint8 grid that was written.
    """
    from PIL import Image

    grid = make_grid(images, num_rows=num_rows, padding=padding)
    if scale > 1:
        grid = np.repeat(np.repeat(grid, int(scale), axis=0), int(scale), axis=1)
    Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid).save(path)
    return grid
