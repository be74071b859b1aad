"""Checks that hung before empty data became an error (run by `bounded`).

Each reads the first batch of a repeated training stream whose source yields
nothing. Before, tf.data repeated the empty pass forever; now each must
raise. Each takes a fresh folder and returns what it read (it should not).
"""

import os

import numpy as np
import tensorflow as tf

from keras_diffusion import data


def _images(n=4, size=8, channels=3):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)


def _nothing():
    # Unknown cardinality, as after `ignore_errors` or `filter`.
    ds = tf.data.Dataset.from_tensor_slices({"images": _images()})
    return ds.filter(lambda x: False)


def _first(ds):
    return {k: v.shape for k, v in next(iter(ds)).items()}


def empty_arrays(workdir):
    ds = tf.data.Dataset.from_tensor_slices({"images": _images()[:0]})
    return _first(data.prepare_dataset(ds, 2))


def filtered_shuffled(workdir):
    return _first(data.prepare_dataset(_nothing(), 2))


def filtered_unshuffled(workdir):
    return _first(data.prepare_dataset(_nothing(), 2, shuffle_buffer=0, cache=False))


def filtered_resumed(workdir):
    return _first(data.prepare_dataset(_nothing(), 2, start_step=5))


def distributed(workdir):
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    return _first(data.distribute_dataset(strategy, _nothing, 2, start_step=3))


def empty_shard(workdir):
    # One example, two input pipelines: the second gets nothing.
    ds = tf.data.Dataset.from_tensor_slices({"images": _images(1)})
    context = tf.distribute.InputContext(
        num_input_pipelines=2, input_pipeline_id=1, num_replicas_in_sync=2
    )
    return _first(data.prepare_dataset(ds, 2, input_context=context))


def tfrecord_without_labels(workdir):
    # The reproduction, as training/lib/builders.py builds the
    # mnist config's source with data.name=tfrecord (labels=True).
    data.write_tfrecords(os.path.join(workdir, "digits"), _images(channels=1))
    pattern = os.path.join(workdir, "digits-*")

    def source():
        return data.tfrecord_dataset(pattern, 28, labels=True, channels=1)

    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    return _first(data.distribute_dataset(strategy, source, 2, shuffle_buffer=5000))


def tfrecord_emptied_after_construction(workdir):
    # The first records parse when the dataset is made; then the file is
    # replaced: every record is skipped while reading.
    (path,) = data.write_tfrecords(os.path.join(workdir, "x"), _images())
    ds = data.tfrecord_dataset(path, labels=False)
    with open(path, "wb") as f:
        f.write(np.random.default_rng(0).bytes(1000))
    return _first(data.prepare_dataset(ds, 2))


def image_folder_all_corrupt_unvalidated(workdir):
    for i in range(3):
        with open(os.path.join(workdir, f"{i}.png"), "wb") as f:
            f.write(b"not a png")
    ds = data.image_folder_dataset(workdir, 8, labels=None, validate=False)
    return _first(data.prepare_dataset(ds, 2))


def keras_fit(workdir):
    import keras

    ds = data.prepare_dataset(_nothing(), 2).map(lambda b: (b["images"], b["images"]))
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Dense(3)])
    model.compile(optimizer="sgd", loss="mse")
    history = model.fit(ds, epochs=1, steps_per_epoch=2, verbose=0)
    return history.history


CASES = [
    "empty_arrays",
    "filtered_shuffled",
    "filtered_unshuffled",
    "filtered_resumed",
    "distributed",
    "empty_shard",
    "tfrecord_without_labels",
    "tfrecord_emptied_after_construction",
    "image_folder_all_corrupt_unvalidated",
    "keras_fit",
]
