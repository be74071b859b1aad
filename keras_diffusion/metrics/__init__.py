"""keras_diffusion.metrics: FID, KID and likelihoods (bits per dimension).

`likelihood` needs TensorFlow and TensorFlow Probability; it is imported on
first use of its functions.
"""

import importlib

from keras_diffusion.metrics.feature_extractor import FeatureExtractor
from keras_diffusion.metrics.feature_extractor import compute_statistics
from keras_diffusion.metrics.feature_extractor import inception_v3
from keras_diffusion.metrics.feature_extractor import load_or_compute_statistics
from keras_diffusion.metrics.feature_extractor import load_statistics
from keras_diffusion.metrics.feature_extractor import save_statistics
from keras_diffusion.metrics.fid import FID
from keras_diffusion.metrics.fid import frechet_distance
from keras_diffusion.metrics.kid import KID
from keras_diffusion.metrics.kid import kernel_inception_distance

_LIKELIHOOD = (
    "elbo",
    "elbo_bits_per_dim",
    "make_elbo_fn",
    "ode_log_likelihood",
    "ode_bits_per_dim",
    "make_ode_log_likelihood_fn",
    "discretized_gaussian_log_likelihood",
)


def __getattr__(name):
    if name in _LIKELIHOOD:
        module = importlib.import_module("keras_diffusion.metrics.likelihood")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_diffusion.metrics' has no attribute {name!r}")
