"""An image folder as a dataset, with labels from subfolders and captions.

Follows `keras.utils.image_dataset_from_directory`'s layout and label
convention (one subfolder per class, classes sorted by name) but reads the
files with tf.data itself so that a corrupt or unreadable image is reported by
file name and skipped instead of stopping training.

Captions, when asked for, come from a `metadata.jsonl` file in the folder
(lines `{"file_name": "a/1.png", "text": "..."}`, the Hugging Face
imagefolder convention) or from a sidecar text file next to each image
(`1.png` -> `1.txt`).
"""

import json
import logging
import os

ALLOWED_FORMATS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")

logger = logging.getLogger("keras_diffusion.data")


def list_images(directory, labels="inferred"):
    """Lists the images under `directory`.

    Args:
        directory: the folder.
        labels: `"inferred"` (one subfolder per class, sorted) or `None`.

    Returns:
        `(paths, label_indices or None, class_names or None)`, paths sorted.
    """
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            f"Image folder not found: directory={directory!r}"
        )
    if labels not in ("inferred", None):
        raise ValueError(f"`labels` must be 'inferred' or None. Received: labels={labels!r}")
    paths = []
    for root, _, files in os.walk(directory, followlinks=True):
        for name in files:
            if name.lower().endswith(ALLOWED_FORMATS):
                paths.append(os.path.join(root, name))
    paths.sort()
    if not paths:
        raise ValueError(
            f"No images ({', '.join(ALLOWED_FORMATS)}) found in directory={directory!r}"
        )
    if labels is None:
        return paths, None, None
    class_names = sorted(
        d for d in os.listdir(directory) if os.path.isdir(os.path.join(directory, d))
    )
    if not class_names:
        return paths, None, None
    index = {name: i for i, name in enumerate(class_names)}
    kept, label_indices = [], []
    for path in paths:
        parts = os.path.relpath(path, directory).split(os.sep)
        if len(parts) > 1 and parts[0] in index:
            kept.append(path)
            label_indices.append(index[parts[0]])
    if not kept:
        raise ValueError(
            f"No images in the class subfolders {class_names} of "
            f"directory={directory!r} (labels='inferred' reads one subfolder "
            f"per class; the {len(paths)} images found are outside them). Pass "
            "labels=None to read them unlabelled."
        )
    return kept, label_indices, class_names


def read_captions(directory, paths):
    """Captions for `paths`: from `metadata.jsonl` or sidecar `.txt` files."""
    metadata = os.path.join(directory, "metadata.jsonl")
    by_name = {}
    if os.path.exists(metadata):
        with open(metadata) as f:
            for line in f:
                if line.strip():
                    entry = json.loads(line)
                    by_name[os.path.normpath(entry["file_name"])] = entry["text"]
    captions, missing = [], []
    for path in paths:
        rel = os.path.normpath(os.path.relpath(path, directory))
        if rel in by_name:
            captions.append(by_name[rel])
            continue
        sidecar = os.path.splitext(path)[0] + ".txt"
        if os.path.exists(sidecar):
            with open(sidecar) as f:
                captions.append(f.read().strip())
        else:
            captions.append("")
            missing.append(rel)
    if missing:
        logger.warning(
            "%d images have no caption (empty caption used), e.g. %s",
            len(missing),
            missing[:5],
        )
    return captions


def _decode(contents, channels):
    import tensorflow as tf

    image = tf.io.decode_image(contents, channels=channels, expand_animations=False)
    image.set_shape([None, None, channels])
    return image


def find_unreadable_images(paths, channels=3):
    """Returns the paths that cannot be read or decoded.

    Decodes every file once with the same tf.data decoder training uses (in
    parallel) and lists those that fail.
    """
    import tensorflow as tf

    if not paths:
        return []
    ds = tf.data.Dataset.from_tensor_slices(
        (tf.range(len(paths), dtype=tf.int64), tf.constant(paths))
    )

    def check(i, path):
        image = _decode(tf.io.read_file(path), channels)
        return i, tf.shape(image)[0]

    ds = ds.map(check, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors().batch(1024)
    good = set()
    for indices, _ in ds:
        good.update(indices.numpy().tolist())
    return [p for i, p in enumerate(paths) if i not in good]


def image_folder_dataset(
    directory,
    image_size=None,
    *,
    labels="inferred",
    captions=False,
    crop="center",
    channels=3,
    validate=True,
    dtype="uint8",
):
    """An image folder as an unbatched `tf.data.Dataset` of dicts.

    Args:
        directory: the folder; subfolders are classes when `labels` is
            `"inferred"`.
        image_size: int or `(height, width)`: images are center-cropped and
            resized to it (`crop="none"` resizes without cropping). Needed
            when the images differ in size and are batched.
        labels: `"inferred"` (from subfolders) or `None`.
        captions: add `"text"` from `metadata.jsonl` or sidecar `.txt` files.
        crop: `"center"` or `"none"`.
        channels: 1 or 3.
        validate: decode every image once up front and skip (reporting each
            file name) those that fail; with `validate=False` failures are
            skipped as they come, reported without file name.
        dtype: `"uint8"` or `"float32"` (scaled to [-1, 1]).

    Returns:
        A `tf.data.Dataset` of `{"images", "labels"?, "text"?}`; its
        `class_names` and `skipped_files` attributes are set.

    Raises:
        FileNotFoundError: `directory` does not exist.
        ValueError: it holds no image (in the class subfolders, with labels
            `"inferred"`), or, with `validate`, no readable one. With
            `validate=False`, a pass that yields no image raises
            `tf.errors.InvalidArgumentError` naming `directory`.
    """
    import tensorflow as tf

    from keras_diffusion.data.guards import assert_nonempty
    from keras_diffusion.data.pipeline import resize_image
    from keras_diffusion.data.pipeline import to_float_images

    paths, label_indices, class_names = list_images(directory, labels)
    texts = read_captions(directory, paths) if captions else None
    skipped = []
    if validate:
        skipped = find_unreadable_images(paths, channels)
        for path in skipped:
            logger.warning("Skipping unreadable or corrupt image: %s", path)
        if skipped:
            bad = set(skipped)
            keep = [i for i, p in enumerate(paths) if p not in bad]
            paths = [paths[i] for i in keep]
            if label_indices is not None:
                label_indices = [label_indices[i] for i in keep]
            if texts is not None:
                texts = [texts[i] for i in keep]
        if not paths:
            raise ValueError(
                f"Every image in directory={directory!r} is unreadable "
                f"({len(skipped)} files, e.g. {skipped[:3]})."
            )
    features = {"path": paths}
    if label_indices is not None:
        features["labels"] = tf.constant(label_indices, tf.int32)
    if texts is not None:
        features["text"] = tf.constant(texts)
    ds = tf.data.Dataset.from_tensor_slices(features)

    def load(example):
        example = dict(example)
        image = _decode(tf.io.read_file(example.pop("path")), channels)
        image = resize_image(image, image_size, crop)
        if dtype == "float32":
            image = to_float_images(image)
        example["images"] = image
        return example

    ds = ds.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    # A file that became unreadable after validation is skipped, not fatal.
    ds = ds.ignore_errors(log_warning=True)
    ds = assert_nonempty(
        ds,
        f"None of the {len(paths)} images in directory={directory!r} could be "
        f"read and decoded with channels={channels} (validate={validate}): every "
        "one was skipped (the errors are logged as warnings).",
    )
    ds.class_names = class_names
    ds.skipped_files = skipped
    return ds
