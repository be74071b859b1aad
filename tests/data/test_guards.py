"""assert_nonempty: same elements, an error at the end of an empty pass."""

import numpy as np
import tensorflow as tf

from keras_diffusion.data.guards import assert_nonempty
from keras_diffusion.testing import TestCase


class AssertNonemptyTest(TestCase):
    def test_elements_and_spec_unchanged(self):
        images = np.arange(3 * 2 * 2, dtype=np.uint8).reshape(3, 2, 2, 1)
        datasets = [
            tf.data.Dataset.range(3),
            tf.data.Dataset.from_tensor_slices({"images": images, "text": ["a", "b", "c"]}),
            tf.data.Dataset.from_tensor_slices((images, np.arange(3))),
            tf.data.Dataset.from_tensor_slices(images).map(
                lambda x: tf.image.resize(x, [2, 2])
            ).map(lambda x: tf.reshape(x, tf.shape(x))),  # unknown shape
        ]
        for ds in datasets:
            guarded = assert_nonempty(ds, "empty")
            self.assertEqual(guarded.element_spec, ds.element_spec)
            expected, got = list(ds), list(guarded)
            self.assertEqual(len(got), 3)
            for e, g in zip(expected, got):
                self.assertAllClose(tf.nest.map_structure(
                    lambda t: t.numpy() if t.dtype != tf.string else 0, g),
                    tf.nest.map_structure(
                    lambda t: t.numpy() if t.dtype != tf.string else 0, e))

    def test_empty_pass_raises_with_the_message(self):
        ds = tf.data.Dataset.from_tensor_slices({"images": np.zeros((0, 4, 4, 3))})
        with self.assertRaisesRegex(
            tf.errors.InvalidArgumentError, "my source path=`/a/b-\\*` is empty"
        ):
            list(assert_nonempty(ds, "my source path='/a/b-*' is empty"))

    def test_each_pass_of_a_repeat_is_checked(self):
        calls = []

        def once():
            calls.append(1)
            if len(calls) == 1:
                yield np.float32(1.0)

        ds = tf.data.Dataset.from_generator(
            once, output_signature=tf.TensorSpec((), tf.float32)
        )
        stream = iter(assert_nonempty(ds, "second pass empty").repeat())
        self.assertEqual(float(next(stream)), 1.0)
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "second pass empty"):
            next(stream)

    def test_bad_message(self):
        with self.assertRaisesWithArgument(ValueError, "message", "''"):
            assert_nonempty(tf.data.Dataset.range(1), "")
