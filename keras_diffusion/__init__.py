"""keras_diffusion: diffusion and flow-matching models for Keras 3.

Train with `keras_diffusion.DiffusionModel().fit(ds)`, sample with any of the
samplers in `keras_diffusion.samplers`, evaluate with
`keras_diffusion.metrics` and export one SavedModel for TF Serving.

Importing this package does not import TensorFlow: the schedules' arithmetic,
objectives, samplers and networks use `keras.ops` only and also run on the JAX
backend. TensorFlow-only parts (training step, export, tf.data, TFP) import
TensorFlow where they are first used.
"""

import importlib

from keras_diffusion import objectives
from keras_diffusion import samplers
from keras_diffusion import schedules

__version__ = "0.1.0"

_LAZY = {
    "DiffusionModel": "keras_diffusion.models.diffusion_model",
    "LatentDiffusionModel": "keras_diffusion.models.latent_diffusion_model",
    "guidance": "keras_diffusion.guidance",
    "models": "keras_diffusion.models",
    "layers": "keras_diffusion.layers",
    "metrics": "keras_diffusion.metrics",
    "callbacks": "keras_diffusion.callbacks",
    "data": "keras_diffusion.data",
    "export": "keras_diffusion.export",
    "pretrained": "keras_diffusion.pretrained",
    "testing": "keras_diffusion.testing",
}


def __getattr__(name):
    if name in _LAZY:
        module = importlib.import_module(_LAZY[name])
        value = module if _LAZY[name].endswith(name) else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'keras_diffusion' has no attribute {name!r}")
