"""keras_diffusion.pretrained."""
from keras_diffusion.pretrained import stable_diffusion
