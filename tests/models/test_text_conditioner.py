"""TextConditioner: tokenizer, encoder outputs, bad input, config and saving."""

import numpy as np
import pytest
from keras import ops

from keras_diffusion.models.text_conditioner import TextConditioner
from keras_diffusion.testing import TestCase

SMALL = dict(vocabulary_size=40, sequence_length=6, embedding_dim=16, num_layers=1, num_heads=2)
CAPTIONS = ["a handwritten seven", "the digit 7", "a handwritten one", "the digit 1"]


def _adapted(**kwargs):
    conditioner = TextConditioner(**{**SMALL, **kwargs})
    conditioner.adapt(CAPTIONS)
    return conditioner


@pytest.mark.jax
class TextConditionerOpsTest(TestCase):
    def test_token_ids_outputs(self):
        conditioner = TextConditioner(**SMALL)
        ids = np.array([[3, 2, 5, 0, 0], [0, 0, 0, 0, 0]], "int32")
        self.assertEqual(tuple(conditioner(ids).shape), (2, 6, 16))
        out = conditioner.encode(ids)
        self.assertEqual(tuple(out["context"].shape), (2, 6, 16))
        self.assertEqual(tuple(out["pooled"].shape), (2, 16))
        self.assertFalse(np.isnan(ops.convert_to_numpy(out["context"])).any())
        # The empty prompt (all padding) is the null context.
        self.assertAllClose(out["pooled"][1:], conditioner.null_context(1)["pooled"], atol=1e-6)
        # "first" pooling: the start token's state.
        first = TextConditioner(**SMALL, pooling="first")
        self.assertEqual(tuple(first.encode(ids)["pooled"].shape), (2, 16))
        with_pooled = TextConditioner(**SMALL, return_pooled=True)
        self.assertEqual(set(with_pooled(ids)), {"context", "pooled"})

    def test_bad_arguments(self):
        with self.assertRaisesWithArgument(ValueError, "pooling", "'max'"):
            TextConditioner(**SMALL, pooling="max")
        with self.assertRaisesWithArgument(ValueError, "on_overflow", "'drop'"):
            TextConditioner(**SMALL, on_overflow="drop")
        with self.assertRaisesWithArgument(ValueError, "sequence_length", "1"):
            TextConditioner(**{**SMALL, "sequence_length": 1})
        with self.assertRaisesWithArgument(ValueError, "num_heads", "3", "16"):
            TextConditioner(**{**SMALL, "num_heads": 3})
        conditioner = TextConditioner(**SMALL)
        with self.assertRaisesWithArgument(ValueError, "token_ids", "5", "(2, 7)"):
            conditioner(np.zeros((2, 7), "int32"))


class TextConditionerTest(TestCase):
    def setUp(self):
        super().setUp()
        self.skip_unless_tensorflow()

    def test_adapt_and_prompts(self):
        conditioner = _adapted()
        vocabulary = conditioner.get_vocabulary()
        self.assertEqual(vocabulary[:2], ["", "[UNK]"])
        self.assertIn("handwritten", vocabulary)
        ids = ops.convert_to_numpy(conditioner.tokenize(["A handwritten, seven!", ""]))
        self.assertEqual(ids.shape, (2, 5))
        self.assertEqual(list(ids[1]), [0] * 5)
        self.assertEqual(list(ids[0][3:]), [0, 0])
        self.assertEqual(tuple(conditioner(["a", ""]).shape), (2, 6, 16))
        out = conditioner.encode(["a handwritten seven", ""])
        self.assertEqual(tuple(out["context"].shape), (2, 6, 16))
        # The empty prompt is the unconditional input.
        self.assertAllClose(out["context"][1:], conditioner.null_context(1)["context"], atol=1e-6)
        # Case and punctuation are standardized; different prompts differ.
        again = conditioner.encode(["A Handwritten SEVEN.", "the digit 1"])
        self.assertAllClose(again["pooled"][0], out["pooled"][0], atol=1e-6)
        self.assertFalse(np.allclose(ops.convert_to_numpy(again["pooled"][1]),
                                     ops.convert_to_numpy(out["pooled"][0])))

    def test_overlong_prompts(self):
        conditioner = _adapted()
        long_prompt = "the digit 7 a handwritten seven one"  # 7 words > 5
        truncated = "the digit 7 a handwritten"
        self.assertAllClose(
            conditioner([long_prompt]), conditioner([truncated]), atol=1e-6
        )
        strict = _adapted(on_overflow="error")
        strict([truncated])
        import tensorflow as tf

        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "more than sequence_length - 1 = 5"):
            strict([long_prompt, ""])

    def test_bad_captions(self):
        conditioner = TextConditioner(**SMALL)
        with self.assertRaisesWithArgument(ValueError, "captions", r"\[\]"):
            conditioner.adapt([])
        with self.assertRaisesWithArgument(ValueError, "captions", "empty"):
            conditioner.adapt(["", "  "])
        with self.assertRaisesWithArgument(ValueError, "captions", "one string"):
            conditioner.adapt("a handwritten seven")
        with self.assertRaisesRegex(ValueError, "no vocabulary.*adapt"):
            conditioner(["a prompt"])
        with self.assertRaisesWithArgument(ValueError, "vocabulary", "41", "vocabulary_size=40"):
            conditioner.set_vocabulary([f"w{i}" for i in range(41)])

    def test_adapt_on_dataset(self):
        import tensorflow as tf

        conditioner = TextConditioner(**SMALL)
        conditioner.adapt(tf.data.Dataset.from_tensor_slices(CAPTIONS).batch(2))
        self.assertIn("digit", conditioner.get_vocabulary())

    def test_config_round_trip_keeps_vocabulary(self):
        conditioner = _adapted()
        revived = self.run_serialization_test(conditioner)
        self.assertEqual(revived.get_vocabulary(), conditioner.get_vocabulary())
        self.assertAllClose(revived.tokenize(CAPTIONS), conditioner.tokenize(CAPTIONS))

    def test_saving_with_string_inputs(self):
        import keras
        import tensorflow as tf

        conditioner = _adapted(return_pooled=True)
        inputs = keras.Input(shape=(), dtype="string")
        model = keras.Model(inputs, conditioner(inputs))
        prompts = tf.constant(["the digit 7", "", "a handwritten one"])
        restored = self.run_model_saving_test(model, prompts, atol=1e-6)
        layer = [l for l in restored.layers if isinstance(l, TextConditioner)][0]
        self.assertEqual(layer.get_vocabulary(), conditioner.get_vocabulary())

    def test_in_graph_tokenization(self):
        import tensorflow as tf

        conditioner = _adapted()

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def encode(prompts):
            return conditioner.encode(prompts)["pooled"]

        self.assertAllClose(
            encode(tf.constant(["the digit 7"])),
            conditioner.encode(["the digit 7"])["pooled"],
            atol=1e-6,
        )

    def test_trainable_and_frozen(self):
        import keras
        import tensorflow as tf

        conditioner = _adapted()
        inputs = keras.Input(shape=(), dtype="string")
        pooled = keras.layers.GlobalAveragePooling1D()(conditioner(inputs))
        model = keras.Model(inputs, keras.layers.Dense(1)(pooled))
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse", jit_compile=False)
        before = [ops.convert_to_numpy(w) for w in conditioner.trainable_weights]
        model.fit(tf.constant(CAPTIONS), np.ones((4, 1), "float32"), epochs=1, verbose=0)
        after = [ops.convert_to_numpy(w) for w in conditioner.trainable_weights]
        self.assertTrue(any(not np.allclose(a, b) for a, b in zip(before, after)))

        frozen = _adapted(trainable=False)
        self.assertEqual(frozen.trainable_weights, [])
        frozen(["a"])
        self.assertEqual(frozen.trainable_weights, [])
        self.assertGreater(len(frozen.non_trainable_weights), 0)
