"""keras_diffusion.export: one SavedModel for TF Serving (TensorFlow only).

`export_saved_model(model, path, sampler="dpm_solver", overwrite=False, ...)`
writes the signatures `serving_default` / `generate`, `generate_from_noise`
and `denoise`; see `keras_diffusion.export.saved_model`.
`export_text_saved_model(model, path)` writes a text model's `generate_text`
(see `keras_diffusion.export.text_saved_model`).
"""

from keras_diffusion.export.saved_model import SIGNATURES
from keras_diffusion.export.saved_model import export
from keras_diffusion.export.saved_model import export_saved_model
from keras_diffusion.export.saved_model import initial_noise
from keras_diffusion.export.saved_model import read_metadata
from keras_diffusion.export.saved_model import sampler_seed
from keras_diffusion.export.text_saved_model import TEXT_SIGNATURES
from keras_diffusion.export.text_saved_model import export_text_saved_model
