"""utils.fitting: the shuffle default of every model's fit."""

import numpy as np
import pytest

from keras_diffusion.testing import TestCase
from keras_diffusion.utils.fitting import without_shuffle_warning


@pytest.mark.jax
class WithoutShuffleWarningTest(TestCase):
    def test_shuffled_inputs_get_shuffle_false(self):
        def generator():
            yield np.zeros((2, 2))

        for x in (generator(), iter([np.zeros((2, 2))])):
            self.assertEqual(without_shuffle_warning(x, (), {"epochs": 2}),
                             {"epochs": 2, "shuffle": False})

    def test_arrays_and_explicit_shuffle_are_kept(self):
        arrays = (np.zeros((4, 2)), [np.zeros((4, 2))], {"images": np.zeros((4, 2))})
        for x in arrays:
            self.assertEqual(without_shuffle_warning(x, (), {}), {})
        gen = iter([np.zeros((2, 2))])
        self.assertEqual(without_shuffle_warning(gen, (), {"shuffle": True}), {"shuffle": True})
        # shuffle given positionally (fit's 8th argument): nothing added.
        self.assertEqual(without_shuffle_warning(gen, (None,) * 7, {}), {})
