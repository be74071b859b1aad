"""MaskedDiffusionLM: fit on strings, ELBO metrics, generation, bad input,
saving in a fresh process and the text SavedModel."""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from keras_diffusion.models import MaskedDiffusionLM
from keras_diffusion.testing import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXTS = ["the cat sat on the mat.", "a dog ate the red hat!", "to be or not to be, that",
         "hello world, hello text."] * 2
SMALL = dict(sequence_length=12, hidden_dim=16, num_layers=1, num_heads=2, seed=0)


def _dataset(texts=TEXTS, batch=4):
    import tensorflow as tf

    return tf.data.Dataset.from_tensor_slices(texts).batch(batch)


class MaskedDiffusionLMTest(TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.model = MaskedDiffusionLM(**SMALL)
        cls.history = cls.model.fit(_dataset(), epochs=1, verbose=0)

    def test_fit_builds_the_vocabulary_and_reports_the_elbo(self):
        model = self.model
        self.assertEqual(model.vocabulary[:2], ["", "[UNK]"])
        self.assertEqual(set(model.vocabulary[2:]), set("".join(TEXTS)))
        self.assertEqual(model.mask_id, len(model.vocabulary))
        self.assertEqual(set(self.history.history), {"loss", "bpc", "bpc_stderr"})
        first = model.evaluate(_dataset(), return_dict=True, verbose=0)
        again = model.evaluate(_dataset(), return_dict=True, verbose=0)
        self.assertEqual(first, again)  # evaluate's draws are seeded.
        self.assertTrue(np.isfinite(first["bpc"]) and first["bpc"] > 0)
        self.assertGreater(first["bpc_stderr"], 0.0)
        self.assertLess(first["bpc_stderr"], first["bpc"])
        # A list of strings is the same data.
        listed = model.evaluate(np.array(TEXTS), batch_size=4, return_dict=True, verbose=0)
        self.assertAllClose(listed["bpc"], first["bpc"], rtol=1e-5)

    def test_generator_of_token_ids(self):
        ids = np.asarray(self.model.tokenize(TEXTS[:4]))
        self.assertEqual(ids.shape, (4, 12))
        weights = [w.numpy().copy() for w in self.model.trainable_weights]
        history = self.model.fit((ids for _ in range(2)), epochs=1, steps_per_epoch=2,
                                 verbose=0)
        self.assertTrue(np.isfinite(history.history["bpc"][0]))
        changed = [not np.allclose(a, w.numpy()) for a, w in
                   zip(weights, self.model.trainable_weights)]
        self.assertTrue(any(changed))

    def test_generator_of_strings_adapts_and_keeps_every_batch(self):
        model = MaskedDiffusionLM(**SMALL)
        model.fit((np.array(TEXTS[i: i + 2]) for i in range(0, 6, 2)), verbose=0)
        self.assertEqual(set(model.vocabulary[2:]), set("".join(TEXTS[:6])))
        # Adapting consumed no batch (Keras may add one empty step at the end
        # of a generator's data).
        self.assertGreaterEqual(int(model.optimizer.iterations), 3)

    def test_generate_infill_and_seeds(self):
        model = self.model
        a = model.generate(2, length=10, num_steps=4, seed=5)
        self.assertEqual(a, model.generate(2, length=10, num_steps=4, seed=5))
        self.assertNotEqual(a, model.generate(2, length=10, num_steps=4, seed=6))
        self.assertEqual(len(a), 2)
        # Longer than the context: semi-autoregressive blocks.
        tokens = model.generate(2, length=30, num_steps=3, seed=0, prefix="the ",
                                return_tokens=True)
        self.assertEqual(tokens.shape, (2, 30))
        self.assertFalse((tokens == model.mask_id).any())
        self.assertEqual(model.last_num_calls <= 3 * 4, True)  # 4 blocks of <= 3 steps.
        self.assertTrue(all(t.startswith("the ") for t in model.detokenize(tokens)))
        greedy = model.generate(1, length=8, num_steps=8, seed=0, temperature=0.0, top_k=2)
        self.assertEqual(len(greedy), 1)
        filled = model.infill(["the c_t s_t", "_ dog"], seed=0)
        # The given characters stay, in order (a filled position may be the
        # padding token, which decodes to nothing).
        self.assertTrue(filled[0].startswith("the c") and " s" in filled[0][5:])
        self.assertTrue(filled[1].endswith(" dog") and len(filled[1]) <= 5)
        self.assertNotIn("_", "".join(filled))

    def test_generation_and_export_read_the_average_and_mutate_nothing(self):
        from keras_diffusion.export import export_text_saved_model

        trained = self.model
        self.assertGreater(float(trained.ema.count.numpy()), 0)
        # A fresh model whose average holds the trained weights: sampling
        # with the average must give the trained model's texts exactly.
        model = MaskedDiffusionLM(**SMALL, vocabulary=trained.vocabulary)
        model.ema.update()
        for average, weight in zip(model.ema.averages, trained.denoiser.trainable_variables):
            average.assign(weight)
        own = [v.numpy().copy() for v in model.denoiser.variables]
        args = dict(batch_size=2, length=12, num_steps=6, seed=4)
        expected = trained.generate(**args, use_ema=False)
        self.assertEqual(model.generate(**args), expected)
        self.assertNotEqual(model.generate(**args, use_ema=False), expected)
        self.assertEqual(model.infill(["the ca_ sa_"], seed=1),
                         trained.infill(["the ca_ sa_"], seed=1, use_ema=False))
        # `ema_weights()` swaps the average in for code that reads the
        # variables (evaluate), then swaps it back.
        with model.ema_weights() as swapped:
            bpc = model.evaluate(_dataset(TEXTS[:4]), return_dict=True, verbose=0)["bpc"]
        self.assertTrue(swapped)
        self.assertAllClose(
            bpc, trained.evaluate(_dataset(TEXTS[:4]), return_dict=True, verbose=0)["bpc"])
        path = os.path.join(self.get_temp_dir(), "ema_export")
        export_text_saved_model(model, path, max_batch_size=2, max_num_steps=6)
        for weight, value in zip(model.denoiser.variables, own):
            np.testing.assert_array_equal(weight.numpy(), value)
        import tensorflow as tf

        served = tf.saved_model.load(path).signatures["generate_text"](
            seed=tf.constant(4, tf.int64), batch_size=tf.constant(2), length=tf.constant(12),
            num_steps=tf.constant(6))
        self.assertEqual([t.decode() for t in served["text"].numpy()], expected)

    def test_bad_input(self):
        model = self.model
        with self.assertRaisesWithArgument(ValueError, "x", "outside the vocabulary"):
            model.fit(np.full((2, 12), 999, "int32"), verbose=0)
        with self.assertRaisesWithArgument(ValueError, "x", "sequence_length=12", "13"):
            model.evaluate(np.zeros((2, 13), "int32"), verbose=0)
        with self.assertRaisesWithArgument(ValueError, "num_steps", "0"):
            model.generate(1, length=4, num_steps=0)
        with self.assertRaisesWithArgument(ValueError, "length", "0"):
            model.generate(1, length=0)
        with self.assertRaisesWithArgument(ValueError, "prefix", "longer than `length`", "5"):
            model.generate(1, length=5, prefix="abcdef")
        with self.assertRaisesWithArgument(ValueError, "texts", "sequence_length=12"):
            model.infill(["x" * 13])
        fresh = MaskedDiffusionLM(**SMALL)
        with self.assertRaisesWithArgument(ValueError, "texts", "empty"):
            fresh.adapt([])
        with self.assertRaisesWithArgument(ValueError, "texts", "empty"):
            fresh.adapt(["", ""])
        with self.assertRaisesWithArgument(ValueError, "x", "empty"):
            fresh.fit(_dataset([""]).take(0), verbose=0)
        with self.assertRaisesWithArgument(ValueError, "x", "empty"):
            fresh.fit([], verbose=0)
        with self.assertRaisesWithArgument(ValueError, "x", "batch"):
            fresh.fit(_dataset().unbatch(), verbose=0)
        with self.assertRaisesWithArgument(ValueError, "vocabulary"):
            fresh.generate(1)

    def test_save_load_in_a_fresh_process_and_export(self):
        import tensorflow as tf

        from keras_diffusion.export import export_text_saved_model

        model = self.model
        path = os.path.join(self.get_temp_dir(), "mdlm.keras")
        model.save(path)
        # The export makes texts longer than the context (12) in blocks, as
        # generate does: 30 characters are 3 blocks, with a prefix too.
        export_path = os.path.join(self.get_temp_dir(), "text_export")
        export_text_saved_model(model, export_path, max_batch_size=4, max_num_steps=8,
                                max_length=30)
        expected = model.generate(2, length=9, num_steps=5, seed=3, prefix="th")
        long = model.generate(2, length=30, num_steps=5, seed=3, prefix="th")
        long_plain = model.generate(2, length=30, num_steps=5, seed=3)
        bpc = model.evaluate(_dataset(TEXTS[:4]), return_dict=True, verbose=0)["bpc"]
        code = textwrap.dedent(
            f"""
            import keras
            import tensorflow as tf
            import keras_diffusion
            model = keras.models.load_model({path!r})
            out = model.generate(2, length=9, num_steps=5, seed=3, prefix="th")
            assert out == {expected!r}, out
            served = tf.saved_model.load({export_path!r})
            text = served.signatures["generate_text_with_prefix"](
                seed=tf.constant(3, tf.int64), batch_size=tf.constant(2),
                length=tf.constant(30), num_steps=tf.constant(5), prefix=tf.constant("th"))
            text = [t.decode() for t in text["text"].numpy()]
            assert text == {long!r}, text
            print("ok", type(model).__name__)
            """
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=600, cwd=ROOT)
        self.assertEqual(out.returncode, 0, out.stderr[-3000:])
        self.assertIn("ok MaskedDiffusionLM", out.stdout)
        revived = keras.models.load_model(path)
        revived_bpc = revived.evaluate(_dataset(TEXTS[:4]), return_dict=True, verbose=0)["bpc"]
        self.assertAllClose(revived_bpc, bpc, rtol=1e-6)

        served = tf.saved_model.load(export_path)
        self.assertEqual(set(served.signatures),
                         {"serving_default", "generate_text", "generate_text_with_prefix"})
        args = dict(seed=tf.constant(3, tf.int64), batch_size=tf.constant(2),
                    length=tf.constant(9), num_steps=tf.constant(5))
        text = served.signatures["generate_text_with_prefix"](**args, prefix=tf.constant("th"))
        self.assertEqual([t.decode() for t in text["text"].numpy()], expected)
        plain = served.signatures["generate_text"](**args)["text"].numpy()
        self.assertEqual([t.decode() for t in plain],
                         model.generate(2, length=9, num_steps=5, seed=3))
        long_served = served.signatures["generate_text"](**{**args, "length": tf.constant(30)})
        self.assertEqual([t.decode() for t in long_served["text"].numpy()], long_plain)
        # A prefix longer than the context: its last half is the first block's.
        over = served.signatures["generate_text_with_prefix"](
            **{**args, "length": tf.constant(30)}, prefix=tf.constant(TEXTS[0][:14]))
        self.assertEqual([t.decode() for t in over["text"].numpy()],
                         model.generate(2, length=30, num_steps=5, seed=3, prefix=TEXTS[0][:14]))
        for key, value, name in (("length", 31, "length"), ("length", 0, "length"),
                                 ("num_steps", 0, "num_steps"), ("batch_size", 5, "batch_size")):
            bad = {**args, key: tf.constant(value)}
            with self.assertRaisesRegex(tf.errors.InvalidArgumentError,
                                        rf"`{name}` must be.*received {name} =\] \[{value}\]"):
                served.signatures["generate_text"](**bad)
        with self.assertRaisesRegex(tf.errors.InvalidArgumentError, "`prefix` is longer"):
            served.signatures["generate_text_with_prefix"](
                **{**args, "length": tf.constant(1)}, prefix=tf.constant("th"))
        with self.assertRaisesWithArgument(FileExistsError, "already exists"):
            export_text_saved_model(model, export_path)
        with self.assertRaisesWithArgument(ValueError, "max_length", "0"):
            export_text_saved_model(model, export_path, overwrite=True, max_length=0)


@pytest.mark.jax
class MaskedDiffusionLMConfigTest(TestCase):
    def test_config_round_trip_and_bad_arguments(self):
        model = MaskedDiffusionLM(**SMALL, vocabulary=["", "[UNK]", "a", "b"], schedule="cosine")
        self.assertEqual(model.mask_id, 4)
        revived = MaskedDiffusionLM.from_config(model.get_config())
        self.assertEqual(revived.get_config(), model.get_config())
        self.assertEqual(revived.schedule.kind, "cosine")
        with self.assertRaisesWithArgument(ValueError, "sequence_length", "1"):
            MaskedDiffusionLM(sequence_length=1)
        with self.assertRaisesWithArgument(ValueError, "vocabulary"):
            MaskedDiffusionLM(vocabulary=["a", "b"])
        with self.assertRaisesWithArgument(ValueError, "kind", "'square'"):
            MaskedDiffusionLM(schedule="square")
        # The weight average: on by default, saved in the config; None
        # turns it off, as for a config saved before it existed.
        self.assertEqual(len(model.ema.averages), len(model.denoiser.trainable_variables))
        self.assertEqual(revived.ema.decay, 0.999)
        self.assertIsNone(MaskedDiffusionLM(**SMALL, vocabulary=["", "[UNK]", "a"],
                                            ema_decay=None).ema)
        old = {k: v for k, v in model.get_config().items() if k != "ema_decay"}
        self.assertIsNone(MaskedDiffusionLM.from_config(old).ema)
        for bad in (1.0, -0.1, "0.9"):
            with self.assertRaisesWithArgument(ValueError, "ema_decay", repr(bad)):
                MaskedDiffusionLM(ema_decay=bad)
