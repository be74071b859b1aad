"""keras_diffusion: diffusion and flow-matching models for Keras 3.

Train with `keras_diffusion.DiffusionModel().fit(ds)`, sample with any of the
samplers in `keras_diffusion.samplers`, evaluate with
`keras_diffusion.metrics` and export one SavedModel for TF Serving.

Importing this package registers every serializable class with Keras, so
`keras.models.load_model("model.keras")` works after a plain
`import keras_diffusion`. It does not import TensorFlow: the schedules'
arithmetic, objectives, samplers, networks, `fit` and `generate` use
`keras.ops` and also run on the JAX backend. TensorFlow-only parts (export,
tf.data, TFP likelihoods, the callbacks) import TensorFlow where they are
first used.
"""

import importlib

from keras_diffusion import conditioning
from keras_diffusion import guidance
from keras_diffusion import layers
from keras_diffusion import models
from keras_diffusion import objectives
from keras_diffusion import pipelines
from keras_diffusion import pretrained
from keras_diffusion import random
from keras_diffusion import samplers
from keras_diffusion import schedules
from keras_diffusion.models import DiffusionModel
from keras_diffusion.models import LatentDiffusionModel
from keras_diffusion.models import MaskedDiffusionLM
from keras_diffusion.utils.saving import load_model

__version__ = "0.2.0"

_LAZY = {
    "metrics": "keras_diffusion.metrics",
    "callbacks": "keras_diffusion.callbacks",
    "data": "keras_diffusion.data",
    "export": "keras_diffusion.export",
    "testing": "keras_diffusion.testing",
}


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        globals()[name] = module
        return module
    raise AttributeError(f"module 'keras_diffusion' has no attribute {name!r}")
