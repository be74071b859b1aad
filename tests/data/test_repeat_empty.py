"""A training stream over data that yields nothing fails, never hangs.

The checks run in a child process with a time limit (`bounded`): before the
fix each of them spun forever in tf.data.
"""

import shutil
import tempfile

from keras_diffusion.testing import TestCase
from tests.data import repeat_cases
from tests.data.bounded import run_bounded


class RepeatEmptyTest(TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.tmpdir = tempfile.mkdtemp()
        cls.results = run_bounded(
            "tests.data.repeat_cases", repeat_cases.CASES, cls.tmpdir, timeout=30
        )

    @classmethod
    def tearDownClass(cls):
        shutil.rmtree(cls.tmpdir, ignore_errors=True)
        super().tearDownClass()

    def assertFails(self, case, error, *fragments):
        """`case` raised `error` (in time) with `fragments` in its message."""
        outcome = self.results[case]
        self.assertEqual(outcome["outcome"], "raised", f"{case}: {outcome}")
        self.assertEqual(outcome["type"], error, f"{case}: {outcome}")
        for fragment in fragments:
            self.assertIn(fragment, outcome["message"], f"{case}: {outcome}")

    def test_known_empty_arrays_fail_at_construction(self):
        self.assertFails(
            "empty_arrays", "ValueError", "prepare_dataset", "is empty (cardinality 0)"
        )

    def test_empty_pass_fails_shuffled_unshuffled_and_resumed(self):
        for case in ("filtered_shuffled", "filtered_unshuffled", "filtered_resumed"):
            self.assertFails(
                case, "InvalidArgumentError", "prepare_dataset", "yielded no example"
            )

    def test_empty_pass_fails_under_tf_distribute(self):
        self.assertFails(
            "distributed", "InvalidArgumentError", "input pipeline 0 of 1",
            "yielded no example",
        )

    def test_empty_shard_names_the_input_pipeline(self):
        self.assertFails("empty_shard", "ValueError", "input pipeline 1 of 2", "is empty")

    def test_tfrecord_without_labels_names_pattern_and_key(self):
        self.assertFails(
            "tfrecord_without_labels", "ValueError", "digits-*", "label_key='label'",
            "['image']", "labels=False",
        )

    def test_tfrecord_that_becomes_unreadable_names_pattern(self):
        self.assertFails(
            "tfrecord_emptied_after_construction", "InvalidArgumentError",
            "x-00000-of-00001.tfrecord", "could be read, parsed and decoded",
        )

    def test_image_folder_of_corrupt_images_unvalidated(self):
        self.assertFails(
            "image_folder_all_corrupt_unvalidated", "InvalidArgumentError",
            "image_folder_all_corrupt_unvalidated", "None of the 3 images",
        )

    def test_keras_fit_fails(self):
        self.assertFails("keras_fit", "InvalidArgumentError", "yielded no example")
