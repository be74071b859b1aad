"""Image folders that give no image fail with the folder's name; good ones
read as before."""

import os

import numpy as np
import tensorflow as tf

from keras_diffusion import data
from keras_diffusion.testing import TestCase


def _write_png(path, image):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tf.io.write_file(path, tf.io.encode_png(image))


class ImageFolderEmptyTest(TestCase):
    def _corrupt_folder(self, n=3):
        root = self.get_temp_dir()
        for i in range(n):
            with open(os.path.join(root, f"{i}.png"), "wb") as f:
                f.write(b"not a png")
        return root

    def test_all_corrupt_unvalidated_fails_when_read(self):
        root = self._corrupt_folder()
        ds = data.image_folder_dataset(root, 8, labels=None, validate=False)
        with self.assertRaisesRegex(
            tf.errors.InvalidArgumentError, f"(?s)None of the 3 images in directory=`{root}`"
        ):
            list(ds)

    def test_all_corrupt_validated_fails_at_construction(self):
        root = self._corrupt_folder()
        with self.assertRaisesWithArgument(ValueError, "directory", root, "0.png"):
            data.image_folder_dataset(root, 8, labels=None)

    def test_no_image_in_the_class_subfolders(self):
        root = self.get_temp_dir()
        _write_png(os.path.join(root, "top.png"), np.zeros((4, 4, 3), np.uint8))
        os.makedirs(os.path.join(root, "cats"))
        with self.assertRaisesWithArgument(ValueError, "directory", root, "labels=None"):
            data.image_folder_dataset(root, 4)

    def test_folder_without_images(self):
        root = self.get_temp_dir()
        with open(os.path.join(root, "notes.txt"), "w") as f:
            f.write("no images here")
        with self.assertRaisesWithArgument(ValueError, "directory", root):
            data.image_folder_dataset(root)

    def test_good_folder_reads_as_before(self):
        root = self.get_temp_dir()
        rng = np.random.default_rng(0)
        images = rng.integers(0, 256, size=(4, 6, 6, 3), dtype=np.uint8)
        for i, cls in enumerate(["a", "a", "b", "b"]):
            _write_png(os.path.join(root, cls, f"{i}.png"), images[i])
        for validate in (True, False):
            ds = data.image_folder_dataset(root, validate=validate)
            self.assertEqual(ds.class_names, ["a", "b"])
            self.assertEqual(
                ds.element_spec,
                {
                    "labels": tf.TensorSpec((), tf.int32),
                    "images": tf.TensorSpec((None, None, 3), tf.uint8),
                },
            )
            examples = list(ds)
            self.assertEqual([int(e["labels"]) for e in examples], [0, 0, 1, 1])
            for example, image in zip(examples, images):
                self.assertAllClose(example["images"], image)
