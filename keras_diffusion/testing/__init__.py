"""Test helpers: the TestCase base class and exact denoisers."""

from keras_diffusion.testing.gaussian_mixture import GaussianMixture
from keras_diffusion.testing.test_case import TestCase
