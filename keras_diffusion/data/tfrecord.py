"""TFRecord files of PNG-encoded images with optional labels and captions.

Each record is a `tf.train.Example` with `image` (encoded bytes), optionally
`label` (int64) and `text` (bytes). `write_tfrecords` writes them.
"""

import logging
import re

logger = logging.getLogger("keras_diffusion.data")


def write_tfrecords(path, images, labels=None, texts=None, num_shards=1):
    """Writes uint8 images (and labels, captions) to `num_shards` files.

    Args:
        path: file name prefix; files are `{path}-{i:05d}-of-{n:05d}.tfrecord`.
        images: uint8 array `[N, H, W, C]`.
        labels: optional int array `[N]`.
        texts: optional list of `N` strings.
        num_shards: number of files (round-robin).

    Returns:
        The list of file names written.
    """
    import numpy as np
    import tensorflow as tf

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(
            f"`images` must be uint8 [N, H, W, C]. Received: dtype={images.dtype}, shape={images.shape}"
        )
    files = [
        f"{path}-{i:05d}-of-{num_shards:05d}.tfrecord" for i in range(num_shards)
    ]
    writers = [tf.io.TFRecordWriter(f) for f in files]
    try:
        for i, image in enumerate(images):
            feature = {
                "image": tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[tf.io.encode_png(image).numpy()])
                )
            }
            if labels is not None:
                feature["label"] = tf.train.Feature(
                    int64_list=tf.train.Int64List(value=[int(labels[i])])
                )
            if texts is not None:
                feature["text"] = tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[texts[i].encode("utf-8")])
                )
            example = tf.train.Example(features=tf.train.Features(feature=feature))
            writers[i % num_shards].write(example.SerializeToString())
    finally:
        for w in writers:
            w.close()
    return files


def tfrecord_dataset(
    file_pattern,
    image_size=None,
    *,
    labels=True,
    captions=False,
    channels=3,
    crop="center",
    image_key="image",
    label_key="label",
    text_key="text",
    dtype="uint8",
):
    """TFRecord files as an unbatched `tf.data.Dataset` of dicts.

    Args:
        file_pattern: a glob (or list of globs) of TFRecord files.
        image_size: center-crop and resize to it; `None` keeps the size.
        labels: read `label_key` into `"labels"`.
        captions: read `text_key` into `"text"`.
        channels: 1 or 3.
        crop: `"center"` or `"none"`.
        image_key, label_key, text_key: the feature names.
        dtype: `"uint8"` or `"float32"` (scaled to [-1, 1]).

    Returns:
        A `tf.data.Dataset` of `{"images", "labels"?, "text"?}`.

    Raises:
        FileNotFoundError: no file matches `file_pattern`.
        ValueError: the data cannot give one example: no file can be read as
            TFRecord (the error names them), or the first records lack a
            feature (the error names the key, the file and the features
            the records have), or their features do not parse or decode.

    The first records are read when the dataset is made, so wrong keys or
    files that are not TFRecords fail at once. Past them, a record that fails
    to parse or decode, or an unreadable file among readable ones, is skipped
    with a warning; a pass over the files that yields no example at all
    raises `tf.errors.InvalidArgumentError` naming `file_pattern`.
    """
    import tensorflow as tf

    from keras_diffusion.data.guards import assert_nonempty
    from keras_diffusion.data.pipeline import resize_image
    from keras_diffusion.data.pipeline import to_float_images

    if dtype not in ("uint8", "float32"):
        raise ValueError(f"`dtype` must be 'uint8' or 'float32'. Received: dtype={dtype!r}")
    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = sorted(f for p in patterns for f in tf.io.gfile.glob(p))
    if not files:
        raise FileNotFoundError(f"No TFRecord files match file_pattern={file_pattern!r}")
    keys = {"image_key": image_key}
    spec = {image_key: tf.io.FixedLenFeature([], tf.string)}
    if labels:
        keys["label_key"] = label_key
        spec[label_key] = tf.io.FixedLenFeature([], tf.int64)
    if captions:
        keys["text_key"] = text_key
        spec[text_key] = tf.io.FixedLenFeature([], tf.string)

    def parse(record):
        example = tf.io.parse_single_example(record, spec)
        image = tf.io.decode_image(example[image_key], channels=channels, expand_animations=False)
        image.set_shape([None, None, channels])
        image = resize_image(image, image_size, crop)
        if dtype == "float32":
            image = to_float_images(image)
        out = {"images": image}
        if labels:
            out["labels"] = tf.cast(example[label_key], tf.int32)
        if captions:
            out["text"] = example[text_key]
        return out

    if tf.executing_eagerly():
        _check_first_records(files, file_pattern, keys, parse)
    ds = tf.data.TFRecordDataset(files)
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.ignore_errors(log_warning=True)
    return assert_nonempty(
        ds,
        f"No record of the {len(files)} TFRecord file(s) matching "
        f"file_pattern={file_pattern!r} could be read, parsed and decoded with "
        + ", ".join(f"{k}={v!r}" for k, v in keys.items())
        + f", channels={channels}: every one was skipped (the errors are "
        "logged as warnings).",
    )


def _error_text(error):
    """A TensorFlow error's message without its graph-node decorations."""
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", error.message)
    text = re.sub(r"\s*\[Op:\w+\].*$", "", text.strip().splitlines()[0])
    return text.strip()


# Records read per file when the dataset is made (a few bad ones among
# good ones are tolerated, as when reading).
_PROBE_RECORDS = 8


def _check_first_records(files, file_pattern, keys, parse):
    """Reads the first records: fails if none gives an example.

    Files that cannot be read as TFRecord are skipped (with a warning) until
    one can; the first readable file decides: one of its first records must
    have every key and parse, else a `ValueError` says what is wrong.
    """
    import tensorflow as tf

    unreadable = []
    for path in files:
        records = []
        try:
            for record in tf.data.TFRecordDataset(path).take(_PROBE_RECORDS):
                records.append(record)
        except tf.errors.OpError as e:
            if not records:
                unreadable.append(f"{path} ({_error_text(e)})")
                logger.warning(
                    "Skipping %s: not a readable TFRecord file (%s)", path, _error_text(e)
                )
                continue
        if not records:
            unreadable.append(f"{path} (no records)")
            logger.warning("Skipping %s: no TFRecord records in it", path)
            continue
        _check_records(path, records, file_pattern, keys, parse)
        return
    shown = "; ".join(unreadable[:5])
    if len(unreadable) > 5:
        shown += f"; and {len(unreadable) - 5} more"
    raise ValueError(
        f"None of the {len(files)} file(s) matching file_pattern={file_pattern!r} "
        f"holds a readable TFRecord record: {shown}"
    )


def _check_records(path, records, file_pattern, keys, parse):
    """One of `records` must have every key and parse, else a ValueError."""
    import tensorflow as tf
    from google.protobuf.message import DecodeError

    # Per record: (the missing keys, the features it has) or (None, why).
    problems = []
    for record in records:
        try:
            features = sorted(tf.train.Example.FromString(record.numpy()).features.feature)
        except DecodeError:
            features = []
        if not features:
            problems.append((None, "the records are not tf.train.Example protos"))
            continue
        missing = [f"{arg}={key!r}" for arg, key in keys.items() if key not in features]
        if missing:
            problems.append((missing, features))
            continue
        try:
            parse(record)
            return
        except tf.errors.OpError as e:
            problems.append((
                None,
                "their features do not parse or decode with "
                + ", ".join(f"{k}={v!r}" for k, v in keys.items())
                + f": {_error_text(e)}",
            ))
    if all(missing is not None for missing, _ in problems):
        missing, features = problems[0]
        hint = ""
        if f"label_key={keys.get('label_key')!r}" in missing:
            hint = " For unlabelled data pass `labels=False`."
        raise ValueError(
            f"The TFRecord files matching file_pattern={file_pattern!r} have no "
            f"feature {', '.join(missing)}: the first {len(records)} record(s) of "
            f"{path} have the features {features}. Pass the feature names the "
            f"files use.{hint}"
        )
    why = next(text for missing, text in problems if missing is None)
    raise ValueError(
        f"None of the first {len(records)} record(s) of {path} (matching "
        f"file_pattern={file_pattern!r}) gives an example: {why}"
    )
