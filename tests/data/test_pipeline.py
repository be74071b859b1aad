"""Tests of keras_diffusion.data: sources and the training pipeline."""

import json
import os

import numpy as np
import pytest
import tensorflow as tf

from keras_diffusion import data
from keras_diffusion.testing import TestCase


def _images(n=6, size=8, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)


class _TwoReplicas:
    num_replicas_in_sync = 2


class PipelineTest(TestCase):
    def test_prepare_scales_batches_and_is_deterministic(self):
        images = _images(10)
        ds = tf.data.Dataset.from_tensor_slices({"images": images, "labels": np.arange(10)})
        stream = data.prepare_dataset(ds, 4, seed=3, random_flip=True)
        batches = [b for b, _ in zip(stream, range(6))]
        self.assertEqual(batches[0]["images"].shape, (4, 8, 8, 3))
        self.assertEqual(batches[0]["images"].dtype, tf.float32)
        self.assertEqual(batches[0]["labels"].dtype, tf.int32)
        self.assertLessEqual(float(tf.reduce_max(batches[0]["images"])), 1.0)
        self.assertGreaterEqual(float(tf.reduce_min(batches[0]["images"])), -1.0)
        # Same seed: same stream; resuming at step 3 gives the same batches.
        again = data.prepare_dataset(ds, 4, seed=3, random_flip=True)
        resumed = data.prepare_dataset(ds, 4, seed=3, random_flip=True, start_step=3)
        for a, b in zip(batches, again):
            self.assertAllClose(a["images"], b["images"])
        for a, b in zip(batches[3:], resumed):
            self.assertAllClose(a["images"], b["images"])
            self.assertAllClose(a["labels"], b["labels"])
        # Every epoch of 10 examples covers each label once.
        labels = np.concatenate([b["labels"].numpy() for b in batches])[:10]
        self.assertEqual(sorted(labels.tolist()), list(range(10)))

    def test_stream_unchanged_by_the_empty_data_checks(self):
        # Golden values: the labels and flips this stream gave before the
        # checks for empty data were added (they must not change it).
        images = _images(10)
        ds = tf.data.Dataset.from_tensor_slices({"images": images, "labels": np.arange(10)})
        stream = data.prepare_dataset(ds, 4, seed=3, random_flip=True)
        batches = [b for b, _ in zip(stream, range(6))]
        labels = np.concatenate([b["labels"].numpy() for b in batches])
        self.assertEqual(
            labels.tolist(),
            [7, 5, 4, 0, 6, 8, 2, 9, 3, 1, 7, 5, 6, 8, 9, 3, 0, 2, 1, 4, 6, 8, 9, 1],
        )
        source = images.astype(np.float32) / 127.5 - 1.0
        flips = [1, 1, 0, 0, 1, 1, 0, 0, 1, 1, 1, 0, 1, 0, 0, 1, 0, 0, 1, 1, 0, 1, 1, 0]
        got = np.concatenate([b["images"].numpy() for b in batches])
        for image, label, flip in zip(got, labels, flips):
            self.assertAllClose(image, source[label][:, ::-1] if flip else source[label])
        resumed = data.prepare_dataset(ds, 4, seed=3, shuffle_buffer=4, start_step=2)
        labels = np.concatenate([b["labels"].numpy() for b, _ in zip(resumed, range(6))])
        self.assertEqual(
            labels.tolist(),
            [9, 8, 3, 0, 2, 1, 4, 5, 7, 6, 9, 8, 1, 0, 3, 2, 6, 5, 4, 7, 8, 9, 2, 0],
        )

    def test_one_pass_that_gives_no_batch(self):
        ds = tf.data.Dataset.from_tensor_slices({"images": _images(3)})
        with self.assertRaisesWithArgument(ValueError, "no batch of 4", "3 examples"):
            data.prepare_dataset(ds, 4, repeat=False)
        with self.assertRaisesWithArgument(ValueError, "no batch of 2", "start_step"):
            data.prepare_dataset(ds, 2, repeat=False, drop_remainder=False, start_step=2)
        # Unknown cardinality: the error comes when the stream is read.
        filtered = ds.filter(lambda x: True)
        stream = data.prepare_dataset(filtered, 4, repeat=False)
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "no batch of 4"):
            list(stream)
        # A partial batch is a batch.
        (batch,) = list(data.prepare_dataset(filtered, 4, repeat=False, drop_remainder=False))
        self.assertEqual(batch["images"].shape, (3, 8, 8, 3))

    def test_tuples_resize_and_center_crop(self):
        images = np.zeros((2, 8, 12, 3), np.uint8)
        images[:, :, 2:10] = 255  # the centred 8x8 square is white
        ds = tf.data.Dataset.from_tensor_slices((images, np.array([1, 2])))
        (batch,) = list(
            data.prepare_dataset(ds, 2, image_size=4, repeat=False, shuffle_buffer=0)
        )
        self.assertEqual(batch["images"].shape, (2, 4, 4, 3))
        self.assertAllClose(batch["images"], np.ones((2, 4, 4, 3)), atol=1e-5)
        self.assertAllClose(batch["labels"], [1, 2])

    def test_bad_arguments(self):
        ds = tf.data.Dataset.from_tensor_slices(_images(2))
        with self.assertRaisesWithArgument(ValueError, "batch_size", "0"):
            data.prepare_dataset(ds, 0)
        with self.assertRaisesWithArgument(ValueError, "crop", "zoom"):
            data.resize_image(tf.zeros((4, 4, 3)), 2, crop="zoom")

    def test_distributed_sharding_under_mirrored_strategy(self):
        strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
        ds = tf.data.Dataset.from_tensor_slices({"images": _images(8)})
        dist = data.distribute_dataset(strategy, lambda: ds, 4, shuffle_buffer=0)
        batch = next(iter(dist))
        self.assertEqual(batch["images"].shape, (4, 8, 8, 3))
        with self.assertRaisesWithArgument(ValueError, "batch_size", "3"):
            data.distribute_dataset(_TwoReplicas(), lambda: ds, 3)


class MnistTest(TestCase):
    def test_mnist_padded_with_labels_and_captions(self):
        ds = data.mnist_dataset(image_size=32, captions=True)
        example = next(iter(ds))
        self.assertEqual(example["images"].shape, (32, 32, 1))
        self.assertEqual(example["images"].dtype, tf.uint8)
        self.assertEqual(int(ds.cardinality()), 5000)
        label = int(example["labels"])
        self.assertIn(data.digit_caption(label, 0).split()[-1], str(example["text"].numpy()) + " " + data.digit_caption(label, 0))
        # The padding is background.
        self.assertEqual(int(tf.reduce_max(example["images"][:2])), 0)
        batch = next(iter(data.prepare_dataset(ds, 8)))
        self.assertAllClose(tf.reduce_min(batch["images"]), -1.0)

    def test_sizes_and_captions(self):
        self.assertEqual(next(iter(data.mnist_dataset(28)))["images"].shape, (28, 28, 1))
        self.assertEqual(next(iter(data.mnist_dataset(16)))["images"].shape, (16, 16, 1))
        self.assertEqual(data.digit_caption(7), "a handwritten seven")
        self.assertEqual(data.digit_caption(7, 1), "the digit 7")
        captions = data.mnist_captions([7, 1, 3], seed=0)
        self.assertEqual(len(captions), 3)
        self.assertTrue(all("7" in c or "seven" in c for c in captions[:1]))
        with self.assertRaisesWithArgument(ValueError, "label", "12"):
            data.digit_caption(12)


class ImageFolderTest(TestCase):
    def _folder(self):
        root = self.get_temp_dir()
        images = _images(4, size=10)
        for i, cls in enumerate(["cat", "cat", "dog", "dog"]):
            os.makedirs(os.path.join(root, cls), exist_ok=True)
            path = os.path.join(root, cls, f"{i}.png")
            tf.io.write_file(path, tf.io.encode_png(images[i]))
            with open(os.path.splitext(path)[0] + ".txt", "w") as f:
                f.write(f"a {cls} number {i}")
        # A corrupt PNG and a text file pretending to be a JPEG.
        with open(os.path.join(root, "dog", "broken.png"), "wb") as f:
            f.write(tf.io.encode_png(images[0]).numpy()[:40])
        with open(os.path.join(root, "cat", "fake.jpg"), "w") as f:
            f.write("not an image")
        return root

    def test_labels_captions_and_corrupt_files_skipped(self):
        root = self._folder()
        with self.assertLogs("keras_diffusion.data", level="WARNING") as logs:
            ds = data.image_folder_dataset(root, image_size=8, captions=True)
        self.assertTrue(any("broken.png" in line for line in logs.output))
        self.assertTrue(any("fake.jpg" in line for line in logs.output))
        self.assertEqual(ds.class_names, ["cat", "dog"])
        self.assertEqual(len(ds.skipped_files), 2)
        examples = list(ds)
        self.assertEqual(len(examples), 4)
        self.assertEqual([int(e["labels"]) for e in examples], [0, 0, 1, 1])
        self.assertEqual(examples[2]["text"].numpy().decode(), "a dog number 2")
        self.assertEqual(examples[0]["images"].shape, (8, 8, 3))

    def test_metadata_jsonl_and_unvalidated_reading(self):
        root = self._folder()
        with open(os.path.join(root, "metadata.jsonl"), "w") as f:
            f.write(json.dumps({"file_name": "cat/0.png", "text": "meta caption"}) + "\n")
        ds = data.image_folder_dataset(root, image_size=8, captions=True, validate=False)
        examples = list(ds)  # the corrupt files are skipped, not fatal
        self.assertEqual(len(examples), 4)
        self.assertEqual(examples[0]["text"].numpy().decode(), "meta caption")

    def test_missing_folder(self):
        with self.assertRaisesWithArgument(FileNotFoundError, "directory", "nowhere"):
            data.image_folder_dataset("/nowhere")


class TFRecordTest(TestCase):
    def test_round_trip(self):
        root = self.get_temp_dir()
        images = _images(5, size=6)
        files = data.write_tfrecords(
            os.path.join(root, "train"), images, labels=[0, 1, 2, 3, 4],
            texts=[f"t{i}" for i in range(5)], num_shards=2,
        )
        self.assertEqual(len(files), 2)
        with open(os.path.join(root, "train-99999-of-00002.tfrecord"), "wb") as f:
            f.write(b"garbage")
        ds = data.tfrecord_dataset(os.path.join(root, "train-*"), captions=True)
        examples = list(ds)
        self.assertEqual(len(examples), 5)
        got = {e["text"].numpy().decode(): e for e in examples}
        self.assertAllClose(got["t3"]["images"], images[3])
        self.assertEqual(int(got["t3"]["labels"]), 3)
        with self.assertRaisesWithArgument(FileNotFoundError, "file_pattern", "nothing"):
            data.tfrecord_dataset(os.path.join(root, "nothing*"))


class TFDSTest(TestCase):
    def test_unavailable_dataset_is_a_clear_error(self):
        pytest.importorskip("tensorflow_datasets")
        with self.assertRaisesRegex(data.DatasetUnavailableError, "cifar10"):
            data.tfds_dataset("cifar10", data_dir=self.get_temp_dir())
