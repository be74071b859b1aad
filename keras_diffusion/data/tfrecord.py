"""TFRecord files of PNG-encoded images with optional labels and captions.

Each record is a `tf.train.Example` with `image` (encoded bytes), optionally
`label` (int64) and `text` (bytes). `write_tfrecords` writes them.
"""

import logging

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

    Records that fail to parse or decode are skipped with a warning.
    """
    import tensorflow as tf

    from keras_diffusion.data.pipeline import resize_image
    from keras_diffusion.data.pipeline import to_float_images

    patterns = [file_pattern] if isinstance(file_pattern, str) else list(file_pattern)
    files = sorted(f for p in patterns for f in tf.io.gfile.glob(p))
    if not files:
        raise FileNotFoundError(f"No TFRecord files match file_pattern={file_pattern!r}")
    spec = {image_key: tf.io.FixedLenFeature([], tf.string)}
    if labels:
        spec[label_key] = tf.io.FixedLenFeature([], tf.int64)
    if captions:
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

    ds = tf.data.TFRecordDataset(files)
    ds = ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    return ds.ignore_errors(log_warning=True)
