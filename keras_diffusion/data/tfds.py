"""A tensorflow-datasets dataset by name, with a clear error when offline."""

import os
import socket


class DatasetUnavailableError(RuntimeError):
    """A dataset is neither on disk nor downloadable."""


def _online(host="storage.googleapis.com", port=443, timeout=3.0):
    try:
        socket.create_connection((host, port), timeout=timeout).close()
        return True
    except OSError:
        return False


def check_tfds_available(name, data_dir=None, download=True):
    """Returns the prepared `tfds` builder or raises `DatasetUnavailableError`.

    Cheap (no data is read): call it before any compute is spent.
    """
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise DatasetUnavailableError(
            f"Dataset {name!r} needs tensorflow-datasets: "
            "`pip install tensorflow-datasets`."
        ) from e
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception as e:  # tfds raises DatasetNotFoundError and others.
        raise DatasetUnavailableError(
            f"Unknown tensorflow-datasets name: {name!r} ({e})"
        ) from e
    prepared = os.path.exists(os.path.join(builder.data_dir, "dataset_info.json"))
    if prepared:
        return builder
    if not download:
        raise DatasetUnavailableError(
            f"tensorflow-datasets dataset {name!r} is not prepared in "
            f"{builder.data_dir!r} and download=False."
        )
    if not _online():
        raise DatasetUnavailableError(
            f"tensorflow-datasets dataset {name!r} is not on disk (looked in "
            f"{builder.data_dir!r}) and cannot be downloaded: no network. "
            f"Prepare it on a machine with network (`tfds build {name} "
            f"--data_dir=DIR`), copy DIR here and pass its path as `data_dir` "
            f"(in training configs: `--config.data.data_dir=DIR`)."
        )
    try:
        builder.download_and_prepare()
    except Exception as e:
        raise DatasetUnavailableError(
            f"Downloading tensorflow-datasets dataset {name!r} failed: {e}"
        ) from e
    return builder


def tfds_dataset(
    name,
    split="train",
    data_dir=None,
    image_key="image",
    label_key="label",
    download=True,
):
    """A tensorflow-datasets dataset as an unbatched dataset of dicts.

    Args:
        name: a tensorflow-datasets name, e.g. `"cifar10"`.
        split: the split to read.
        data_dir: where the prepared dataset lives (tfds' default if `None`).
        image_key: the feature holding the image.
        label_key: the feature holding the class label, or `None`.
        download: download and prepare it if it is not on disk.

    Returns:
        A `tf.data.Dataset` of `{"images": uint8, "labels": int32}`.

    Raises:
        DatasetUnavailableError: the dataset is not on disk and cannot be
            downloaded (e.g. no network), with the steps to fix it.
        ValueError: `image_key` or `label_key` is not one of its features, or
            `split` is unknown or empty.
    """
    import tensorflow as tf

    builder = check_tfds_available(name, data_dir=data_dir, download=download)
    features = list(getattr(builder.info.features, "keys", list)())
    for arg, key in (("image_key", image_key), ("label_key", label_key)):
        if key and features and key not in features:
            raise ValueError(
                f"{arg}={key!r} is not a feature of tensorflow-datasets dataset "
                f"{name!r}; its features: {features}"
            )
    try:
        num_examples = builder.info.splits[split].num_examples
    except (KeyError, ValueError) as e:
        raise ValueError(
            f"Unknown split={split!r} of tensorflow-datasets dataset {name!r}; "
            f"its splits: {list(builder.info.splits.keys())} ({e})"
        ) from e
    if num_examples == 0:
        raise ValueError(
            f"split={split!r} of tensorflow-datasets dataset {name!r} is empty "
            f"(in {builder.data_dir!r})."
        )
    ds = builder.as_dataset(split=split, shuffle_files=False)

    def to_dict(example):
        out = {"images": example[image_key]}
        if label_key:
            out["labels"] = tf.cast(example[label_key], tf.int32)
        return out

    # The split's size is known (checked above): the dataset keeps it as
    # its cardinality.
    return ds.map(to_dict)
