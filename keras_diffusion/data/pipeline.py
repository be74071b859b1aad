"""tf.data input pipelines: preprocessing, augmentation, batching, sharding.

Every dataset in `keras_diffusion.data` yields dicts
`{"images": [H, W, C], "labels": int32 (optional), "text": string (optional)}`.
Sources may yield `uint8` images (compact to cache); `prepare_dataset` turns
them into float32 images scaled to [-1, 1], the library's convention.

The pipeline is deterministic given its `seed`: shuffling uses a fixed seed
and random flips draw from a stateless generator keyed by the element's index
in the stream. A run resumed at step `k` therefore sees exactly the batches an
uninterrupted run sees from step `k` on (`start_step=k` skips the first `k`
batches before any decoding or augmentation is done).

This module is TensorFlow-only.
"""

import tensorflow as tf

from keras_diffusion.data.guards import assert_nonempty

IMAGES = "images"
LABELS = "labels"
TEXT = "text"


def to_float_images(images):
    """Casts images to float32 in [-1, 1] (uint8 inputs are rescaled)."""
    images = tf.convert_to_tensor(images)
    if images.dtype == tf.uint8:
        return tf.cast(images, tf.float32) / 127.5 - 1.0
    return tf.cast(images, tf.float32)


def center_crop(image):
    """Crops the largest centred square out of an `[H, W, C]` image."""
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    side = tf.minimum(height, width)
    top = (height - side) // 2
    left = (width - side) // 2
    return image[top : top + side, left : left + side, :]


def resize_image(image, image_size, crop="center"):
    """Resizes an `[H, W, C]` image to `image_size`, keeping its dtype.

    Args:
        image: a `[H, W, C]` image tensor (uint8 or float).
        image_size: an int (square output) or a `(height, width)` pair; `None`
            returns the image unchanged.
        crop: `"center"` crops the centred square first (no distortion),
            `"none"` resizes the whole image (aspect ratio changes).
    """
    if image_size is None:
        return image
    if crop not in ("center", "none"):
        raise ValueError(f"Unknown `crop`: {crop!r}. Valid values: ['center', 'none']")
    if isinstance(image_size, int):
        image_size = (image_size, image_size)
    dtype = image.dtype
    if crop == "center":
        image = center_crop(image)
    image = tf.image.resize(image, image_size, method="bilinear", antialias=True)
    if dtype == tf.uint8:
        image = tf.cast(tf.clip_by_value(tf.round(image), 0, 255), tf.uint8)
    else:
        image = tf.cast(image, dtype)
    return image


def random_flip(image, seed):
    """Flips `image` left-right with probability 1/2, statelessly.

    Args:
        image: `[H, W, C]`.
        seed: a shape-`[2]` int tensor (e.g. `[run_seed, element_index]`).
    """
    flip = tf.random.stateless_uniform([], seed=seed) < 0.5
    return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


_random_flip = random_flip


def _as_dict(*element):
    if len(element) == 1:
        element = element[0]
    if isinstance(element, dict):
        return dict(element)
    if isinstance(element, (tuple, list)):
        if len(element) == 2:
            return {IMAGES: element[0], LABELS: element[1]}
        return {IMAGES: element[0]}
    return {IMAGES: element}


def prepare_dataset(
    dataset,
    batch_size,
    *,
    image_size=None,
    crop="center",
    random_flip=False,
    cache=True,
    shuffle_buffer=10_000,
    seed=0,
    repeat=True,
    drop_remainder=True,
    start_step=0,
    input_context=None,
    prefetch=True,
):
    """Turns a dataset of examples into a training stream of batches.

    Order: shard -> cache -> shuffle -> repeat -> skip `start_step` batches ->
    (resize/crop, to [-1, 1], random flip) -> batch -> prefetch.

    Args:
        dataset: a `tf.data.Dataset` of single (unbatched) examples: images,
            `(images, labels)` or dicts with `"images"` and optionally
            `"labels"` / `"text"`.
        batch_size: examples per batch. Under `input_context` this is the
            global batch size; each input pipeline batches its share.
        image_size: resize (after `crop`) to this size; `None` keeps it.
        crop: `"center"` or `"none"` (see `resize_image`).
        random_flip: flip images left-right with probability 1/2.
        cache: cache the examples in memory after the first pass.
        shuffle_buffer: shuffle buffer size; 0 or `None` disables shuffling.
        seed: seeds shuffling and flips; the stream is a function of it.
        repeat: repeat forever (training) or stop after one pass.
        drop_remainder: drop the last partial batch.
        start_step: number of batches to skip: the data position of a resumed
            run.
        input_context: a `tf.distribute.InputContext` (as passed by
            `strategy.distribute_datasets_from_function`): the dataset is
            sharded per input pipeline and batched per replica.
        prefetch: prefetch batches (`tf.data.AUTOTUNE`).

    Returns:
        A `tf.data.Dataset` of batched dicts.

    Raises:
        ValueError: `dataset` is known to be empty (its cardinality is 0), or
            `repeat=False` and it is known to give no batch.

    An input that yields nothing is an error, never an endless repeat: a
    pass over the data (an epoch, on each input pipeline) that yields no
    example raises `tf.errors.InvalidArgumentError` when the stream is read,
    and so does a `repeat=False` stream that gives no batch.
    """
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ValueError(f"`batch_size` must be a positive int. Received: batch_size={batch_size!r}")
    if start_step < 0:
        raise ValueError(f"`start_step` must be >= 0. Received: start_step={start_step}")
    dataset = dataset.map(_as_dict)
    # Examples this pipeline consumes per global step.
    examples_per_step = batch_size
    where = "the dataset passed to `prepare_dataset`"
    if input_context is not None:
        where = (
            f"input pipeline {input_context.input_pipeline_id} of "
            f"{input_context.num_input_pipelines} (its shard of the data)"
        )
        examples_per_step = batch_size // input_context.num_input_pipelines
        # Each replica takes its own consecutive batch from its pipeline.
        batch_size = input_context.get_per_replica_batch_size(batch_size)
        if input_context.num_input_pipelines > 1:
            dataset = dataset.shard(
                input_context.num_input_pipelines, input_context.input_pipeline_id
            )
    _check_cardinality(
        dataset, where, batch_size, repeat, drop_remainder, start_step * examples_per_step
    )
    if cache:
        dataset = dataset.cache()
    # Epoch e is shuffled in windows of `shuffle_buffer` examples, each
    # permuted by a stateless generator keyed by (seed, e, window): the stream
    # is a pure function of `seed`, however many iterators the dataset had (a
    # stateful `shuffle(reshuffle_each_iteration=True)` depends on that, so a
    # resumed run would see other batches).
    base = dataset
    empty = (
        f"{where} yielded no example in a pass over the data: repeating it "
        "would never produce a batch. Its source may be empty, or may have "
        "dropped every example as unreadable (wrong feature keys, corrupt "
        "files): see the warnings logged before this error."
    )

    def permute(window, examples):
        n = tf.shape(tf.nest.flatten(examples)[0])[0]
        key = tf.stack([tf.cast(seed, tf.int64), window])
        perm = tf.argsort(tf.random.stateless_uniform([n], seed=key))
        return tf.nest.map_structure(lambda x: tf.gather(x, perm), examples)

    def epoch(e):
        if not shuffle_buffer:
            return assert_nonempty(base, empty)
        # Checking the windows of an epoch is checking the epoch, and cheaper.
        windows = assert_nonempty(base.batch(shuffle_buffer), empty).enumerate()
        windows = windows.map(lambda w, x: permute(e * 1_000_003 + w, x))
        return windows.unbatch()

    epochs = tf.data.Dataset.range(2**62 if repeat else 1)
    dataset = epochs.flat_map(epoch)
    dataset = dataset.enumerate()
    if start_step:
        dataset = dataset.skip(start_step * examples_per_step)
    flip = random_flip

    def transform(index, example):
        example = dict(example)
        image = resize_image(example[IMAGES], image_size, crop)
        image = to_float_images(image)
        if flip:
            image = _random_flip(
                image, tf.stack([tf.cast(seed, tf.int64), index])
            )
        example[IMAGES] = image
        if LABELS in example:
            example[LABELS] = tf.cast(example[LABELS], tf.int32)
        return example

    dataset = dataset.map(
        transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    dataset = dataset.batch(batch_size, drop_remainder=drop_remainder)
    if not repeat:
        dataset = assert_nonempty(
            dataset,
            f"{where} gave no batch of {batch_size} in one pass (repeat=False, "
            f"drop_remainder={drop_remainder}, start_step={start_step}): it has "
            "fewer examples than that.",
        )
    if prefetch:
        dataset = dataset.prefetch(tf.data.AUTOTUNE)
    return dataset


def _check_cardinality(dataset, where, batch_size, repeat, drop_remainder, skipped):
    """Fails now when the (sharded) source is known to give no batch.

    `skipped`: the examples `start_step` skips.
    """
    if not tf.executing_eagerly():
        return
    count = int(dataset.cardinality())
    if count == 0:
        raise ValueError(
            f"{where} is empty (cardinality 0): there is nothing to train on."
        )
    if count < 0 or repeat:  # unknown or infinite, or repeated: enough
        return
    left = max(count - skipped, 0)
    batches = left // batch_size if drop_remainder else -(-left // batch_size)
    if not batches:
        raise ValueError(
            f"{where} gives no batch of {batch_size} in one pass (repeat=False, "
            f"drop_remainder={drop_remainder}): it has {count} examples, "
            f"{left} of them after the {skipped} that `start_step` skips."
        )


def distribute_dataset(strategy, dataset_fn, batch_size, **kwargs):
    """Builds a per-worker sharded distributed dataset.

    Args:
        strategy: a `tf.distribute.Strategy`.
        dataset_fn: a callable returning the unbatched source dataset.
        batch_size: the global batch size; must be divisible by the number of
            replicas.
        **kwargs: passed to `prepare_dataset`.

    Returns:
        A `tf.distribute.DistributedDataset` (which `keras.Model.fit` takes
        as is).
    """
    replicas = strategy.num_replicas_in_sync
    if batch_size % replicas:
        raise ValueError(
            f"`batch_size` must be divisible by the number of replicas "
            f"({replicas}). Received: batch_size={batch_size}"
        )

    def fn(input_context):
        return prepare_dataset(
            dataset_fn(), batch_size, input_context=input_context, **kwargs
        )

    return strategy.distribute_datasets_from_function(fn)
