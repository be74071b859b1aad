"""tensorflow-datasets sources: wrong keys, unknown or empty splits fail at
once and name them; a prepared dataset reads as before."""

import shutil
import tempfile

import numpy as np
import pytest

from keras_diffusion import data
from keras_diffusion.testing import TestCase

tfds = pytest.importorskip("tensorflow_datasets")


class KdTinyDigits(tfds.core.GeneratorBasedBuilder):
    """Four 8x8 images, prepared locally (no download)."""

    VERSION = tfds.core.Version("1.0.0")
    # No checksums file to look for next to this module (tfds would import
    # `importlib_resources` to find it).
    code_path = None

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(num_classes=4),
                }
            ),
        )

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(4):
            yield i, {"image": np.full((8, 8, 1), 10 * i, np.uint8), "label": i}


NAME = "kd_tiny_digits"


class TFDSKeysAndSplitsTest(TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.data_dir = tempfile.mkdtemp()
        KdTinyDigits(data_dir=cls.data_dir).download_and_prepare()

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.data_dir, ignore_errors=True)
        super().tearDownClass()

    def test_reads_images_and_labels(self):
        ds = data.tfds_dataset(NAME, data_dir=self.data_dir, download=False)
        self.assertEqual(int(ds.cardinality()), 4)
        examples = list(ds)
        self.assertEqual(sorted(int(e["labels"]) for e in examples), [0, 1, 2, 3])
        for e in examples:
            self.assertEqual(e["images"].shape, (8, 8, 1))
            self.assertAllClose(e["images"], np.full((8, 8, 1), 10 * int(e["labels"])))

    def test_wrong_keys(self):
        with self.assertRaisesWithArgument(ValueError, "image_key='img'", NAME, "'image'"):
            data.tfds_dataset(NAME, data_dir=self.data_dir, image_key="img")
        with self.assertRaisesWithArgument(ValueError, "label_key='digit'", NAME, "'label'"):
            data.tfds_dataset(NAME, data_dir=self.data_dir, label_key="digit")

    def test_empty_and_unknown_splits(self):
        with self.assertRaisesWithArgument(ValueError, "split='train\\[:0\\]'", NAME, "empty"):
            data.tfds_dataset(NAME, split="train[:0]", data_dir=self.data_dir)
        with self.assertRaisesWithArgument(ValueError, "split='test'", NAME, "'train'"):
            data.tfds_dataset(NAME, split="test", data_dir=self.data_dir)
