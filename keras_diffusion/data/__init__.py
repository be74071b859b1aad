"""keras_diffusion.data: tf.data input pipelines (TensorFlow-only).

Sources yield unbatched dicts `{"images", "labels"?, "text"?}`;
`prepare_dataset` shuffles, augments, scales to [-1, 1] and batches them.
Data that yields nothing is an error, never a silent end or an endless
repeat: each source checks its input when it is made and `assert_nonempty`
fails a pass over the data that yields no example.

Example:
>>> ds = keras_diffusion.data.mnist_dataset(image_size=32)
>>> ds = keras_diffusion.data.prepare_dataset(ds, batch_size=64, seed=0)
>>> model.fit(ds, steps_per_epoch=100)

TensorFlow is imported only when a function is first used.
"""

import importlib

_LAZY = {
    "prepare_dataset": "pipeline",
    "distribute_dataset": "pipeline",
    "resize_image": "pipeline",
    "center_crop": "pipeline",
    "random_flip": "pipeline",
    "to_float_images": "pipeline",
    "mnist_dataset": "mnist",
    "load_mnist": "mnist",
    "mnist_captions": "mnist",
    "digit_caption": "mnist",
    "image_folder_dataset": "image_folder",
    "find_unreadable_images": "image_folder",
    "tfrecord_dataset": "tfrecord",
    "write_tfrecords": "tfrecord",
    "toy2d_dataset": "toy2d",
    "toy2d_points": "toy2d",
    "tfds_dataset": "tfds",
    "check_tfds_available": "tfds",
    "DatasetUnavailableError": "tfds",
    "assert_nonempty": "guards",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(f"keras_diffusion.data.{_LAZY[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_diffusion.data' has no attribute {name!r}")
