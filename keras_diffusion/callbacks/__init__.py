"""keras_diffusion.callbacks."""
from keras_diffusion.callbacks.kid_callback import KIDCallback
