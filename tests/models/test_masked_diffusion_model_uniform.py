"""MaskedDiffusionLM(process="uniform"): one fit step on strings, the ELBO,
seeded generation and infilling, saving in a fresh process. (The text export
is protocol-based and tested on the masked process in
test_masked_diffusion_model.py.)"""

import os
import subprocess
import sys
import textwrap

import numpy as np

from keras_diffusion.models import MaskedDiffusionLM
from keras_diffusion.samplers import UniformDiffusionSampler
from keras_diffusion.testing import TestCase

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEXTS = ["the cat sat on the mat.", "a dog ate the red hat!", "to be or not to be, that",
         "hello world, hello text."]
SMALL = dict(sequence_length=10, hidden_dim=16, num_layers=1, num_heads=2, seed=0,
             process="uniform")


class UniformDiffusionLMTest(TestCase):
    def test_fit_generate_and_load_in_a_fresh_process(self):
        model = MaskedDiffusionLM(**SMALL)
        self.assertTrue(model.time_conditioning)  # The default of the uniform process.
        history = model.fit(np.array(TEXTS), batch_size=4, epochs=1, verbose=0)
        self.assertEqual(int(model.optimizer.iterations), 1)
        self.assertTrue(np.isfinite(history.history["bpc"][0]))
        # No mask token: the network's logits cover the vocabulary only.
        logits = model(np.zeros((1, 10), "int32"))
        self.assertEqual(logits.shape[-1], model.vocabulary_size)
        self.assertIsInstance(model.sampler(), UniformDiffusionSampler)
        ev = model.evaluate(np.array(TEXTS), batch_size=4, return_dict=True, verbose=0)
        self.assertEqual(ev, model.evaluate(np.array(TEXTS), batch_size=4, return_dict=True,
                                            verbose=0))
        self.assertTrue(0 < ev["bpc"] < 100 and ev["bpc_stderr"] > 0)

        a = model.generate(2, length=8, num_steps=3, seed=5, prefix="th")
        self.assertEqual(a, model.generate(2, length=8, num_steps=3, seed=5, prefix="th"))
        self.assertNotEqual(a, model.generate(2, length=8, num_steps=3, seed=6, prefix="th"))
        self.assertTrue(all(t.startswith("th") for t in a))
        tokens = model.generate(2, length=14, num_steps=2, seed=0, return_tokens=True)
        self.assertEqual(tokens.shape, (2, 14))  # Two semi-autoregressive blocks.
        self.assertTrue(((tokens >= 0) & (tokens < model.vocabulary_size)).all())
        filled = model.infill(["the c_t"], seed=0)
        self.assertTrue(filled[0].startswith("the c"))

        path = os.path.join(self.get_temp_dir(), "uniform.keras")
        model.save(path)
        code = textwrap.dedent(
            f"""
            import keras
            import keras_diffusion
            model = keras.models.load_model({path!r})
            assert model.process == "uniform", model.process
            out = model.generate(2, length=8, num_steps=3, seed=5, prefix="th")
            assert out == {a!r}, out
            print("ok")
            """
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=600, cwd=ROOT)
        self.assertEqual(out.returncode, 0, out.stderr[-3000:])
        self.assertIn("ok", out.stdout)

    def test_config_and_bad_process(self):
        model = MaskedDiffusionLM(**SMALL, vocabulary=["", "[UNK]", "a", "b"])
        config = model.get_config()
        self.assertEqual((config["process"], config["time_conditioning"]), ("uniform", True))
        revived = MaskedDiffusionLM.from_config(config)
        self.assertEqual(revived.get_config(), config)
        self.assertFalse(MaskedDiffusionLM(sequence_length=4).time_conditioning)
        with self.assertRaisesWithArgument(ValueError, "process", "'gaussian'"):
            MaskedDiffusionLM(process="gaussian")
