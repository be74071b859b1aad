"""TFRecord sources: wrong keys and unreadable files fail at once and say why;
a few bad records among good ones are skipped; good data reads as before."""

import os

import numpy as np
import tensorflow as tf

from keras_diffusion import data
from keras_diffusion.testing import TestCase


def _images(n=5, size=6, channels=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size, channels), dtype=np.uint8)


def _example(**features):
    def feature(value):
        if isinstance(value, int):
            return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    example = tf.train.Example(
        features=tf.train.Features(feature={k: feature(v) for k, v in features.items()})
    )
    return example.SerializeToString()


def _write(path, records):
    with tf.io.TFRecordWriter(path) as writer:
        for record in records:
            writer.write(record)
    return path


def _png(image):
    return tf.io.encode_png(image).numpy()


class TFRecordKeysTest(TestCase):
    def setUp(self):
        super().setUp()
        self.root = self.get_temp_dir()
        self.images = _images()
        data.write_tfrecords(os.path.join(self.root, "plain"), self.images, num_shards=2)
        self.pattern = os.path.join(self.root, "plain-*")

    def test_missing_label_names_pattern_key_and_features(self):
        with self.assertRaisesWithArgument(
            ValueError, "plain-\\*", "label_key='label'", "\\['image'\\]", "labels=False"
        ):
            data.tfrecord_dataset(self.pattern)

    def test_wrong_image_key(self):
        with self.assertRaisesWithArgument(ValueError, "plain-\\*", "image_key='img'"):
            data.tfrecord_dataset(self.pattern, labels=False, image_key="img")

    def test_missing_text_key(self):
        with self.assertRaisesWithArgument(ValueError, "plain-\\*", "text_key='caption'"):
            data.tfrecord_dataset(
                self.pattern, labels=False, captions=True, text_key="caption"
            )

    def test_label_of_the_wrong_type(self):
        path = _write(
            os.path.join(self.root, "typed.tfrecord"),
            [_example(image=_png(self.images[0]), label=b"seven")],
        )
        with self.assertRaisesWithArgument(ValueError, "typed.tfrecord", "label_key='label'"):
            data.tfrecord_dataset(path)

    def test_bad_dtype(self):
        with self.assertRaisesWithArgument(ValueError, "dtype", "float16"):
            data.tfrecord_dataset(self.pattern, labels=False, dtype="float16")

    def test_right_keys_read_the_images(self):
        examples = list(data.tfrecord_dataset(self.pattern, labels=False))
        # Files in sorted order, records in file order (round-robin shards).
        order = [0, 2, 4, 1, 3]
        self.assertEqual(len(examples), 5)
        for example, i in zip(examples, order):
            self.assertAllClose(example["images"], self.images[i])


class TFRecordGarbageTest(TestCase):
    def setUp(self):
        super().setUp()
        self.root = self.get_temp_dir()

    def test_random_bytes_name_the_file(self):
        path = os.path.join(self.root, "random.tfrecord")
        with open(path, "wb") as f:
            f.write(np.random.default_rng(0).bytes(4000))
        with self.assertRaisesWithArgument(ValueError, "random.tfrecord", "TFRecord"):
            data.tfrecord_dataset(path)

    def test_records_that_are_not_examples_name_the_file(self):
        rng = np.random.default_rng(1)
        path = _write(os.path.join(self.root, "junk.tfrecord"), [rng.bytes(64) for _ in range(3)])
        with self.assertRaisesWithArgument(ValueError, "junk.tfrecord", "tf.train.Example"):
            data.tfrecord_dataset(path, labels=False)

    def test_undecodable_images_name_the_file(self):
        path = _write(
            os.path.join(self.root, "raw.tfrecord"),
            [_example(image=b"\x00" * 48, label=1) for _ in range(3)],
        )
        with self.assertRaisesWithArgument(ValueError, "raw.tfrecord", "image file format"):
            data.tfrecord_dataset(path)

    def test_empty_files(self):
        path = _write(os.path.join(self.root, "empty.tfrecord"), [])
        with self.assertRaisesWithArgument(ValueError, "empty.tfrecord", "no records"):
            data.tfrecord_dataset(path)

    def test_files_emptied_after_construction_fail_when_read(self):
        (path,) = data.write_tfrecords(os.path.join(self.root, "x"), _images(3), labels=[0, 1, 2])
        ds = data.tfrecord_dataset(path)
        with open(path, "wb") as f:
            f.write(b"\x01" * 100)
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "(?s)x-00000.*could be read"):
            list(ds)


class TFRecordToleranceTest(TestCase):
    def test_bad_records_among_good_ones_are_skipped(self):
        root = self.get_temp_dir()
        images = _images(4)
        records = [
            _example(image=b"not a png", label=9),  # undecodable, first
            _example(image=_png(images[0]), label=0),
            _example(image=_png(images[1])),  # no label
            _example(image=_png(images[2]), label=2),
            b"not an example",
            _example(image=_png(images[3]), label=3),
        ]
        path = _write(os.path.join(root, "mixed.tfrecord"), records)
        examples = list(data.tfrecord_dataset(path))
        self.assertEqual([int(e["labels"]) for e in examples], [0, 2, 3])
        self.assertAllClose(examples[1]["images"], images[2])

    def test_unreadable_file_among_readable_ones_is_skipped_with_a_warning(self):
        root = self.get_temp_dir()
        images = _images(3)
        data.write_tfrecords(os.path.join(root, "b"), images, labels=[0, 1, 2])
        with open(os.path.join(root, "a-garbage.tfrecord"), "wb") as f:
            f.write(b"garbage")  # sorts first
        with self.assertLogs("keras_diffusion.data", level="WARNING") as logs:
            ds = data.tfrecord_dataset(os.path.join(root, "*.tfrecord"))
        self.assertTrue(any("a-garbage.tfrecord" in line for line in logs.output))
        examples = list(ds)
        self.assertEqual([int(e["labels"]) for e in examples], [0, 1, 2])
        self.assertAllClose(examples[2]["images"], images[2])

    def test_good_data_reads_as_before(self):
        root = self.get_temp_dir()
        images = _images(5, size=6)
        data.write_tfrecords(
            os.path.join(root, "train"), images, labels=[4, 3, 2, 1, 0],
            texts=[f"t{i}" for i in range(5)], num_shards=2,
        )
        ds = data.tfrecord_dataset(os.path.join(root, "train-*"), captions=True)
        self.assertEqual(
            ds.element_spec,
            {
                "images": tf.TensorSpec((None, None, 3), tf.uint8),
                "labels": tf.TensorSpec((), tf.int32),
                "text": tf.TensorSpec((), tf.string),
            },
        )
        examples = list(ds)
        order = [0, 2, 4, 1, 3]
        self.assertEqual([e["text"].numpy().decode() for e in examples], [f"t{i}" for i in order])
        self.assertEqual([int(e["labels"]) for e in examples], [4 - i for i in order])
        for example, i in zip(examples, order):
            self.assertAllClose(example["images"], images[i])
        # Resized float32 in [-1, 1], as the pipeline's own resize gives.
        ds = data.tfrecord_dataset(
            os.path.join(root, "train-*"), 4, dtype="float32", labels=False
        )
        first = next(iter(ds))["images"]
        expected = data.to_float_images(data.resize_image(tf.constant(images[0]), 4))
        self.assertAllClose(first, expected)
